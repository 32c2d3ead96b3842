"""Shopper query kinds (augment.shopper_query): deterministic, and shaped like their description."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from visual_search.training.augment import QUERY_KINDS, shopper_query


def _studio(
    colour: tuple[int, int, int], size: int = 400, item: tuple[int, int, int, int] = (100, 80, 300, 320)
):
    """A studio shot: a plain ``colour`` block on white (foreground_mask finds it)."""
    img = Image.new("RGB", (size, size), (255, 255, 255))
    ImageDraw.Draw(img).rectangle(item, fill=colour)
    return img


def _count(img: Image.Image, test) -> int:
    px = np.asarray(img, np.int32)
    return int(test(px[..., 0], px[..., 1], px[..., 2]).sum())


def _greenish(r, g, b):
    return (g > 120) & (g > 2 * r) & (g > 2 * b)


@pytest.mark.parametrize("kind", QUERY_KINDS)
def test_kinds_are_deterministic_by_seed(kind: str) -> None:
    item, other = _studio((200, 30, 30)), _studio((30, 30, 200))
    a = shopper_query(kind, item, random.Random("s1"), distractor=other)
    b = shopper_query(kind, item, random.Random("s1"), distractor=other)
    c = shopper_query(kind, item, random.Random("s2"), distractor=other)
    assert a.mode == "RGB" and a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    assert max(a.size) == 512


def test_clutter_contains_the_distractor_product() -> None:
    item = _studio((200, 30, 30))
    green, magenta = _studio((20, 220, 20)), _studio((220, 20, 220))
    for seed in range(4):
        with_green = shopper_query("clutter", item, random.Random(seed), distractor=green)
        with_magenta = shopper_query("clutter", item, random.Random(seed), distractor=magenta)
        assert with_green.size == (512, 512)
        # the same scene except the distractor: the green one adds thousands of green pixels
        assert _count(with_green, _greenish) - _count(with_magenta, _greenish) > 3000
        # and the item itself is small: red covers well under half the frame
        red = _count(with_green, lambda r, g, b: (r > 120) & (r > 2 * g) & (r > 2 * b))
        assert 1000 < red < 0.25 * 512 * 512
    with pytest.raises(ValueError, match="distractor"):
        shopper_query("clutter", item, random.Random(0))


def test_close_up_is_a_tight_crop_of_the_item() -> None:
    # left half red, right half blue: a crop of 40-70% of the item shows no studio white, and an
    # off-centre one is dominated by one half
    item = _studio((200, 30, 30))
    ImageDraw.Draw(item).rectangle((200, 80, 300, 320), fill=(30, 30, 200))
    lopsided = 0
    for seed in range(6):
        photo = shopper_query("close_up", item, random.Random(seed))
        white = _count(photo, lambda r, g, b: (r > 200) & (g > 200) & (b > 200))
        assert white < 0.02 * photo.width * photo.height
        red = _count(photo, lambda r, g, b: r > b + 40)
        blue = _count(photo, lambda r, g, b: b > r + 40)
        assert red + blue > 0.9 * photo.width * photo.height
        lopsided += max(red, blue) > 0.55 * (red + blue)
    assert lopsided >= 4


def test_handheld_is_the_cut_out_item_on_a_new_background() -> None:
    item = _studio((20, 220, 20))
    for seed in range(4):
        photo = shopper_query("handheld", item, random.Random(seed))
        assert photo.size == (512, 512)
        green = _count(photo, _greenish) / (512 * 512)
        white = _count(photo, lambda r, g, b: (r > 235) & (g > 235) & (b > 235)) / (512 * 512)
        assert 0.05 < green < 0.7 and white < 0.05  # the studio white is gone, the item is there
    with pytest.raises(ValueError, match="unknown query kind"):
        shopper_query("nope", item, random.Random(0))


@pytest.mark.parametrize("kind", QUERY_KINDS)
def test_info_says_where_the_item_is_and_leaves_the_photo_unchanged(kind: str) -> None:
    # analysis metadata (bench/quality_lab.py): the item's box in the photo; asking for it must not
    # change the photo (the query sets stay byte-identical)
    item, other = _studio((200, 30, 30)), _studio((20, 220, 20))
    for seed in range(3):
        info: dict = {}
        plain = shopper_query(kind, item, random.Random(seed), distractor=other)
        told = shopper_query(kind, item, random.Random(seed), distractor=other, info=info)
        assert told.tobytes() == plain.tobytes()
        x0, y0, x1, y1 = info["item_box"]
        assert 0 <= x0 < x1 <= told.width and 0 <= y0 < y1 <= told.height
        px = np.asarray(told, np.int32)
        red = (px[..., 0] > 100) & (px[..., 0] > 2 * px[..., 1]) & (px[..., 0] > 2 * px[..., 2])
        inside = red[y0:y1, x0:x1].sum()
        assert inside > 0.9 * red.sum()  # (nearly) all of the red item lies in its box
        if kind == "clutter":  # the distractor's box holds the green product
            dx0, dy0, dx1, dy1 = info["distractor_box"]
            green = _greenish(px[..., 0], px[..., 1], px[..., 2])
            assert green[dy0:dy1, dx0:dx1].sum() > 0.9 * green.sum()
