"""The colour descriptor (images/colour.py), the colour re-rank of the auto photo query
(query_views.colour_similarities / rerank_by_colour / search_views) and colours in the index (engine.index_catalog)."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
from counting import CountingEncoder
from PIL import Image, ImageDraw

from visual_search.core.config import Settings
from visual_search.core.types import IndexPoint
from visual_search.engine import SearchEngine
from visual_search.images.background import BackgroundRemoval
from visual_search.images.colour import (
    COLOUR_BINS,
    bhattacharyya,
    catalog_colour,
    colour_histogram,
    hsv_histogram,
    white_patch,
)
from visual_search.query_views import (
    COLOUR_KEY,
    COLOUR_WEIGHT,
    colour_similarities,
    rerank_by_colour,
    search_views,
)
from visual_search.store import open_store

RED, BLUE, GREEN = (220, 30, 30), (30, 40, 220), (30, 200, 40)
GREY = (128, 128, 128)


def _pure(colour: tuple[int, int, int]) -> np.ndarray:
    """The histogram of pixels of one colour (no normalisation: one colour alone would turn white)."""
    return hsv_histogram(np.array([colour] * 10, np.float32))


def _disc(colour: tuple[int, int, int], background=(255, 255, 255), size: int = 200) -> Image.Image:
    img = Image.new("RGB", (size, size), background)
    ImageDraw.Draw(img).ellipse((size // 5, size // 5, 4 * size // 5, 4 * size // 5), fill=colour)
    return img


# ------------------------------------------------------------------------------------------ descriptor


def test_histogram_is_normalised_and_separates_hues_and_greys() -> None:
    red = colour_histogram(_disc(RED), _disc((255, 255, 255), (0, 0, 0)).convert("L"))
    blue, grey = _pure(BLUE), _pure((90, 90, 90))
    for h in (red, blue, grey):
        assert h.dtype == np.float32 and h.shape == (COLOUR_BINS,)
        assert h.sum() == pytest.approx(1.0)
    assert bhattacharyya(red, red) == pytest.approx(1.0)
    assert bhattacharyya(red, blue) == pytest.approx(0.0)
    assert grey[:36].sum() == 0 and grey[36:].sum() == pytest.approx(1.0)  # greys have no hue
    assert bhattacharyya(red, colour_histogram(_disc((200, 40, 40), GREY))) > 0


def test_hue_votes_are_split_around_the_circle() -> None:
    """Two reds a few degrees either side of hue 0 share bins (a hard bin edge sat on pure red), and
    a hue between two bin centres splits its vote between them."""
    just_below, just_above = (230, 20, 45), (230, 45, 20)  # hue ~353 and ~7 degrees
    assert bhattacharyya(_pure(just_below), _pure(just_above)) > 0.6
    orange = _pure((230, 125, 20))  # hue 30 degrees: exactly between the centres at 15 and 45
    chromatic = orange[:36].reshape(12, 3).sum(axis=1)
    assert chromatic[0] == pytest.approx(0.5, abs=0.02) and chromatic[1] == pytest.approx(0.5, abs=0.02)
    assert bhattacharyya(_pure(RED), _pure(BLUE)) == pytest.approx(0.0)


def test_mask_limits_the_pixels_and_a_tiny_mask_falls_back_to_the_whole_image() -> None:
    photo = _disc(RED)  # on white
    mask = Image.new("L", photo.size, 0)
    ImageDraw.Draw(mask).ellipse((40, 40, 160, 160), fill=255)
    inside = colour_histogram(photo, mask)
    assert bhattacharyya(inside, _pure(RED)) > 0.95
    whole = colour_histogram(photo)
    tiny = Image.new("L", photo.size, 0)
    tiny.putpixel((100, 100), 255)
    np.testing.assert_allclose(colour_histogram(photo, tiny), whole)


def test_white_patch_undoes_a_colour_cast_of_the_whole_frame() -> None:
    clean = _disc((220, 90, 30))  # mid-bin hue (pure red sits on the bin edge at hue 0 / 1)
    cast = Image.fromarray((np.asarray(clean, np.float32) * [1.0, 0.85, 0.6]).astype(np.uint8))
    assert np.asarray(white_patch(np.asarray(cast, np.float32)))[0, 0] == pytest.approx(
        [255, 255, 255], abs=1
    )
    assert bhattacharyya(colour_histogram(clean), colour_histogram(cast)) > 0.99


def test_catalog_colour_uses_the_product_pixels_of_a_studio_shot() -> None:
    studio = catalog_colour(_disc(RED))  # white studio background: the disc only
    assert bhattacharyya(studio, _pure(RED)) > 0.95
    rng = np.random.default_rng(0)
    scene = Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
    np.testing.assert_allclose(catalog_colour(scene), colour_histogram(scene))  # no mask: all of it


# ------------------------------------------------------------------------------------------ re-rank


def test_colour_rerank_reorders_the_top_k_only_and_keeps_the_scores() -> None:
    query = _pure(RED)
    red, blue = [query], [_pure(BLUE)]
    fused = [("blue", 0.80), ("nocolour", 0.79), ("red", 0.78), ("far-red", 0.40)]
    colours = {"blue": blue, "red": red, "far-red": red}
    sims = colour_similarities(fused[:3], colours, query)
    assert sims == {"red": pytest.approx(1.0), "blue": pytest.approx(0.0)}
    order = rerank_by_colour(fused, sims, COLOUR_WEIGHT, top_k=3)
    assert order == [("red", 0.78), ("blue", 0.80), ("nocolour", 0.79), ("far-red", 0.40)]
    # a product's colour is its best image's; no similarities or weight 0: nothing changes
    assert colour_similarities(fused[:3], {"blue": blue + red}, query)["blue"] == pytest.approx(1.0)
    assert rerank_by_colour(fused, {}, COLOUR_WEIGHT) == fused
    assert rerank_by_colour(fused, sims, 0.0) == fused
    # the weight sets what the bonus can overtake: 0.005 is less than red's gap to nocolour (0.01),
    # 0.05 lifts red (0.78 + 0.05) over both
    assert [p for p, _ in rerank_by_colour(fused, sims, 0.005, top_k=3)] == [
        "blue",
        "nocolour",
        "red",
        "far-red",
    ]
    assert [p for p, _ in rerank_by_colour(fused, sims, 0.05, top_k=3)] == [
        "red",
        "blue",
        "nocolour",
        "far-red",
    ]


class FixedEncoder:
    """Every image embeds to the same unit vector, so the store's scores are set by hand."""

    model_id, dim, supports_text, device = "test:fixed", 4, True, "cpu"

    def __init__(self) -> None:
        self.images = 0

    def embed_images(self, images, batch_size: int = 32):
        self.images += len(images)
        return np.tile(np.array([1.0, 0.0, 0.0, 0.0], np.float32), (len(images), 1))

    def embed_texts(self, texts):
        return np.tile(np.array([0.0, 1.0, 0.0, 0.0], np.float32), (len(texts), 1))


class MaskRemover:
    """Background removal with a known mask: the photo's non-grey pixels (no model)."""

    def remove(self, image: Image.Image) -> BackgroundRemoval:
        px = np.asarray(image.convert("RGB"), np.int32)
        on = (np.abs(px - np.array(GREY)).max(axis=2) > 40).astype(np.uint8) * 255
        mask = Image.fromarray(on, "L")
        white = Image.new("RGB", image.size, (255, 255, 255))
        return BackgroundRemoval(image, Image.composite(image, white, mask), mask, mask.getbbox(), 0.5)


def _vector(cos: float) -> np.ndarray:
    """A unit vector with cosine ``cos`` to FixedEncoder's image vector (and to its text vector)."""
    rest = float(np.sqrt(max(0.0, 1.0 - 2 * cos * cos)))
    return np.array([cos, cos, rest, 0.0], np.float32)


def _engine(tmp_path: Path, colours: bool) -> SearchEngine:
    """A blue and a red product whose embedding scores are near-equal (blue a hair ahead)."""
    store = open_store(tmp_path / "index", None, None)
    store.ensure_collection(4, "test:fixed", ())
    points = []
    for i, (pid, cos, colour) in enumerate(
        (("blue", 0.70, BLUE), ("red", 0.69, RED), ("green", 0.30, GREEN))
    ):
        payload = {"product_id": pid, "image_index": 0, "image": f"{pid}.png", "title": pid.title()}
        if colours:
            payload[COLOUR_KEY] = [round(float(x), 4) for x in catalog_colour(_disc(colour))]
        points.append(IndexPoint(f"00000000-0000-0000-0000-00000000000{i}", _vector(cos), payload))
    store.upsert(points)
    engine = SearchEngine(FixedEncoder(), store)  # type: ignore[arg-type]
    engine.background_remover = MaskRemover()  # type: ignore[assignment]
    return engine


def _red_photo() -> Image.Image:
    """A shopper's photo: a red disc on a grey table."""
    return _disc((230, 45, 25), background=GREY, size=240)


def test_colour_decides_between_near_equal_products_only_with_the_re_rank(tmp_path) -> None:
    engine = _engine(tmp_path, colours=True)
    found = search_views(engine, _red_photo(), "auto", top_k=3)
    assert [r.product_id for r in found.results] == ["red", "blue", "green"]
    # the shown scores stay the embedding scores (what the threshold applies to)
    assert [round(r.score, 3) for r in found.results] == [0.69, 0.70, 0.30]
    assert found.colour_similarity["red"] > 0.8 > 0.2 > found.colour_similarity["blue"]
    assert any("re-ordered by colour" in note for note in found.notes)

    response = engine.search_photo(_red_photo(), top_k=3)  # the engine's default path
    assert [r.product_id for r in response.results][:2] == ["red", "blue"]
    assert any("colour" in note for note in response.notes)

    engine.colour_weight = 0.0  # VS_COLOUR_WEIGHT=0: off (the window is still kept, for calibration)
    off = search_views(engine, _red_photo(), "auto", top_k=3)
    assert [r.product_id for r in off.results] == ["blue", "red", "green"]
    assert [pid for pid, _ in off.colour_window] == ["blue", "red", "green"]
    assert off.colour_similarity == found.colour_similarity
    assert not any("colour" in note for note in off.notes)


def test_photo_with_text_and_other_modes_skip_the_colour_re_rank(tmp_path) -> None:
    engine = _engine(tmp_path, colours=True)
    text = engine.search_photo(_red_photo(), text="like this but in blue", top_k=3)
    assert [r.product_id for r in text.results][:2] == ["blue", "red"]
    assert not any("colour" in note for note in text.notes)
    for mode in ("off", "on"):
        found = search_views(engine, _red_photo(), mode, top_k=3)
        assert [r.product_id for r in found.results][:2] == ["blue", "red"] and not found.colour_similarity
        assert not found.colour_window


def test_an_index_without_colours_is_not_re_ranked(tmp_path) -> None:
    engine = _engine(tmp_path, colours=False)
    found = search_views(engine, _red_photo(), "auto", top_k=3)
    assert [r.product_id for r in found.results] == ["blue", "red", "green"]
    assert not found.colour_similarity and not found.colour_window
    assert not any("colour" in note for note in found.notes)


def test_colour_weight_setting(monkeypatch) -> None:
    monkeypatch.setenv("VS_COLOUR_WEIGHT", "0")
    assert Settings.from_env().colour_weight == 0.0
    monkeypatch.setenv("VS_COLOUR_WEIGHT", "0.5")
    assert Settings.from_env().colour_weight == 0.5
    for bad in ("lots", "-1", "nan"):
        monkeypatch.setenv("VS_COLOUR_WEIGHT", bad)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert Settings.from_env().colour_weight is None
        assert any("VS_COLOUR_WEIGHT" in str(w.message) for w in caught)
    monkeypatch.delenv("VS_COLOUR_WEIGHT")
    assert Settings.from_env().colour_weight is None


# ------------------------------------------------------------------------------------------ index


def _catalog(folder: Path) -> Path:
    rows = []
    for name, colour in (("red", RED), ("blue", BLUE), ("green", GREEN)):
        _disc(colour).save(folder / f"{name}.png")
        rows.append([name, f"{name}.png", name.title(), "Toys"])
    with (folder / "catalog.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["product_id", "image", "title", "category"], *rows])
    return folder / "catalog.csv"


@pytest.mark.parametrize("older", ["no colour", "older descriptor"])
def test_index_stores_colours_and_backfills_an_older_index_without_re_embedding(
    tmp_path, tiny_encoder, older
):
    catalog = _catalog(tmp_path)
    engine = SearchEngine(CountingEncoder(tiny_encoder), open_store(tmp_path / "index", None, None))  # type: ignore[arg-type]
    assert engine.index_catalog(catalog).embedded == 3
    points = {hit.payload["product_id"]: hit for hit in engine.store.scroll()}
    red_hist = _pure(RED)
    for pid, hit in points.items():
        colour = hit.payload[COLOUR_KEY]
        assert len(colour) == COLOUR_BINS and all(round(x, 4) == x for x in colour)
        assert (bhattacharyya(red_hist, np.asarray(colour)) > 0.95) == (pid == "red")
    again = engine.index_catalog(catalog)
    assert (again.embedded, again.payload_updated, again.unchanged) == (0, 0, 3)

    # an index from before colours (the payloads lack them), or from the hard-hue-bin descriptor
    # (stored under the key ``colour``: same length, so only the key tells them apart)
    vectors = engine.store.get_vectors([h.id for h in points.values()])
    legacy = {"colour": [0.0] * (COLOUR_BINS - 1) + [1.0]} if older == "older descriptor" else {}
    engine.store.upsert(
        [
            IndexPoint(
                h.id, vectors[h.id], {**{k: v for k, v in h.payload.items() if k != COLOUR_KEY}, **legacy}
            )
            for h in points.values()
        ]
    )
    assert not any(COLOUR_KEY in h.payload for h in engine.store.scroll())
    before = engine.encoder.images
    upgrade = engine.index_catalog(catalog)
    assert (upgrade.embedded, upgrade.payload_updated) == (0, 3)
    assert engine.encoder.images == before  # decoded for the colour, never re-embedded
    after = {h.payload["product_id"]: h.payload[COLOUR_KEY] for h in engine.store.scroll()}
    assert after == {pid: h.payload[COLOUR_KEY] for pid, h in points.items()}
    assert not any("colour" in h.payload for h in engine.store.scroll())  # the old key is gone
    third = engine.index_catalog(catalog)
    assert (third.embedded, third.payload_updated, third.unchanged) == (0, 0, 3)


def test_object_points_carry_their_image_colour(tmp_path, tiny_encoder):
    engine = SearchEngine(
        CountingEncoder(tiny_encoder),  # type: ignore[arg-type]
        open_store(tmp_path / "index", None, None),
        object_views=True,
    )
    engine.background_remover = MaskRemover()  # type: ignore[assignment]
    catalog = _catalog(tmp_path)
    report = engine.index_catalog(catalog)
    assert report.object_views == 3
    payloads = [h.payload for h in engine.store.scroll()]
    assert len(payloads) == 6 and all(len(p[COLOUR_KEY]) == COLOUR_BINS for p in payloads)
    again = engine.index_catalog(catalog)
    assert (again.embedded, again.payload_updated, again.object_views) == (0, 0, 0)


def test_an_auto_evaluation_records_the_colour_window_for_calibration(tmp_path) -> None:
    from visual_search.evaluation import Query, evaluate_engine

    engine = _engine(tmp_path, colours=True)
    photo = tmp_path / "red.png"
    _red_photo().save(photo)
    queries = [Query(("red",), image=str(photo), query_id="q1")]
    auto = evaluate_engine(engine, queries, pipeline="auto").queries[0]
    assert [pid for pid, _, _ in auto.colour_window] == ["blue", "red", "green"]  # before the re-rank
    sims = dict((pid, sim) for pid, _, sim in auto.colour_window)
    assert sims["red"] > 0.8 > 0.2 > sims["blue"] and auto.rank == 1  # and the re-rank ran
    assert not evaluate_engine(engine, queries, pipeline="off").queries[0].colour_window
