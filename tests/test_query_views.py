"""The object-aware query pipeline: objects in the mask, fusion, views, and search_views end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from counting import CountingEncoder
from PIL import Image, ImageDraw

from visual_search.core.errors import VisualSearchError
from visual_search.engine import SearchEngine
from visual_search.images.background import BackgroundRemoval
from visual_search.query_views import (
    AUTO_VIEWS,
    detect_objects,
    fuse,
    fuse_max,
    fuse_mean,
    fuse_rrf,
    search_views,
)
from visual_search.store import open_store

# ------------------------------------------------------------------------------------------ objects


def _mask(size: tuple[int, int], *boxes: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for box in boxes:
        draw.rectangle(box, fill=255)
    return mask


def test_detect_objects_finds_two_blobs_and_orders_them_by_area_and_centrality() -> None:
    # a big square in the corner, a smaller one in the middle, a speck
    mask = _mask((400, 300), (0, 0, 99, 99), (170, 110, 249, 189), (380, 280, 383, 283))
    first, second = detect_objects(mask)
    assert first.as_tuple() == pytest.approx((170, 110, 250, 190), abs=3)  # central beats bigger
    assert second.as_tuple() == pytest.approx((0, 0, 100, 100), abs=3)
    assert second.area > first.area and first.centrality > second.centrality
    assert first.area == pytest.approx(80 * 80 / (400 * 300), rel=0.1)
    # same areas, both off-centre by the same amount: the bigger one wins
    bigger, smaller = detect_objects(_mask((400, 400), (20, 150, 139, 269), (280, 170, 359, 249)))
    assert bigger.x0 < 30 and smaller.x0 > 270
    assert detect_objects(Image.new("L", (50, 50), 0)) == []
    # a faint blob below the threshold and a tiny one are not objects
    faint = Image.new("L", (200, 200), 0)
    ImageDraw.Draw(faint).rectangle((50, 50, 150, 150), fill=90)
    assert detect_objects(faint) == []
    assert len(detect_objects(_mask((400, 400), (0, 0, 199, 199), (390, 390, 399, 399)))) == 1


def test_the_object_near_the_centre_beats_a_bigger_neighbour_beside_it() -> None:
    # clutter: the item slightly off-centre, a distractor twice its area beside it (area x
    # centrality^2 picked the distractor; ^4 picks the item, as it did on 47 of 47 matched photos)
    item = (262, 211, 351, 300)  # 90 px square, its centre 10% right of the middle
    distractor = (371, 181, 511, 330)  # 2.6x the item's area, centre 36% right, cut by the frame
    first, second = detect_objects(_mask((512, 512), item, distractor))
    assert first.as_tuple() == pytest.approx((262, 211, 352, 301), abs=3)
    assert second.area > 2 * first.area and first.centrality > second.centrality
    assert second.area * second.centrality**2 > first.area * first.centrality**2  # the old rule's pick


# ------------------------------------------------------------------------------------------ fusion


def test_fusion_ranks_the_product_every_view_likes_first() -> None:
    # each view alone ranks another product first; "right" is second everywhere
    photo = {"a": 0.90, "right": 0.85, "b": 0.30, "c": 0.20}
    cutout = {"b": 0.92, "right": 0.86, "a": 0.35, "c": 0.25}
    assert max(photo, key=photo.get) != "right" and max(cutout, key=cutout.get) != "right"
    ranked = fuse_mean([photo, cutout])
    assert [p for p, _ in ranked] == ["right", "a", "b", "c"]
    assert ranked[0][1] == pytest.approx((0.85 + 0.86) / 2)
    assert fuse("mean", [photo, cutout]) == ranked
    # max keeps each product's best view: b (0.92) then a (0.90)
    assert [p for p, _ in fuse_max([photo, cutout])] == ["b", "a", "right", "c"]
    # rrf: ranks only; with a third view preferring "right" it wins, c stays last
    third = {"right": 0.5, "c": 0.4, "a": 0.1, "b": 0.0}
    rrf = fuse_rrf([photo, cutout, third])
    assert [p for p, _ in rrf][0] == "right" and rrf[-1][0] == "c"
    assert rrf[0][1] == pytest.approx(2 / 62 + 1 / 61)
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse("median", [photo])


def test_mean_fusion_gives_a_missing_product_the_views_lowest_score() -> None:
    ranked = dict(fuse_mean([{"a": 0.9, "b": 0.5}, {"a": 0.4, "c": 0.8}]))
    assert ranked["b"] == pytest.approx((0.5 + 0.4) / 2)  # b absent from view 2: its floor, 0.4
    assert ranked["c"] == pytest.approx((0.5 + 0.8) / 2)
    assert ranked["a"] == pytest.approx(0.65)
    weighted = dict(fuse_mean([{"a": 1.0}, {"a": 0.0}], weights=[3, 1]))
    assert weighted["a"] == pytest.approx(0.75)


# ------------------------------------------------------------------------------------------ pipeline

COLOURS = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 40), "yellow": (240, 220, 20)}


def _product(colour: tuple[int, int, int]) -> Image.Image:
    img = Image.new("RGB", (200, 200), (255, 255, 255))
    ImageDraw.Draw(img).ellipse((40, 40, 160, 160), fill=colour)
    return img


class MaskRemover:
    """Background removal with a known mask: the photo's non-background pixels (no model)."""

    def __init__(self, background: tuple[int, int, int]) -> None:
        self.background = np.array(background)
        self.calls = 0

    def remove(self, image: Image.Image) -> BackgroundRemoval:
        self.calls += 1
        px = np.asarray(image.convert("RGB"), np.int32)
        on = (np.abs(px - self.background).max(axis=2) > 40).astype(np.uint8) * 255
        mask = Image.fromarray(on, "L")
        bbox = mask.getbbox()
        white = Image.new("RGB", image.size, (255, 255, 255))
        return BackgroundRemoval(image, Image.composite(image, white, mask), mask, bbox, 0.5)


@pytest.fixture()
def colour_engine(tmp_path: Path, tiny_encoder) -> SearchEngine:
    rows = []
    for name, colour in COLOURS.items():
        _product(colour).save(tmp_path / f"{name}.png")
        rows.append([name, f"{name}.png", name.title(), "Toys"])
    with (tmp_path / "catalog.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["product_id", "image", "title", "category"], *rows])
    engine = SearchEngine(tiny_encoder, open_store(tmp_path / "index", None, None))
    engine.index_catalog(tmp_path / "catalog.csv")
    engine.background_remover = MaskRemover((128, 128, 128))  # type: ignore[assignment]
    return engine


def _two_products() -> Image.Image:
    """A grey table: a big blue disc in the middle, a smaller red one at the left edge."""
    photo = Image.new("RGB", (480, 360), (128, 128, 128))
    draw = ImageDraw.Draw(photo)
    draw.ellipse((170, 110, 310, 250), fill=COLOURS["blue"])
    draw.ellipse((10, 140, 90, 220), fill=COLOURS["red"])
    return photo


def test_search_views_returns_every_view_and_box_and_searches_the_chosen_object(colour_engine) -> None:
    photo = _two_products()
    found = search_views(colour_engine, photo, "auto", top_k=3)
    assert list(found.views) == list(AUTO_VIEWS) and found.mode == "auto"
    assert all(isinstance(v, Image.Image) for v in found.views.values())
    assert len(found.boxes) == 2 and found.box_index == 0
    assert found.boxes[0].x0 >= 160 and found.boxes[1].x1 <= 100  # blue (central) first
    assert len(found.results) == 3 and found.vectors.shape[0] == len(AUTO_VIEWS)
    assert set(found.per_view) == set(AUTO_VIEWS)
    assert found.results[0].product_id == "blue"
    cut = np.asarray(found.views["cutout"], np.int32)
    assert (np.abs(cut - COLOURS["red"]).max(axis=2) < 30).sum() == 0  # the other object is not in it
    assert found.total_ms >= found.embed_ms + found.search_ms  # the parts add up inside the total

    second = search_views(colour_engine, photo, "auto", top_k=3, box_index=1)
    assert second.box_index == 1 and second.results[0].product_id == "red"
    cut = np.asarray(second.views["cutout"], np.int32)
    assert (np.abs(cut - COLOURS["red"]).max(axis=2) < 30).sum() > 1000
    assert (np.abs(cut - COLOURS["blue"]).max(axis=2) < 30).sum() == 0
    with pytest.raises(VisualSearchError, match="no object 3"):
        search_views(colour_engine, photo, "auto", box_index=2)


def test_off_and_on_modes_are_todays_two_settings(colour_engine) -> None:
    photo = _two_products()
    remover = colour_engine.background_remover
    off = search_views(colour_engine, photo, "off", top_k=4)
    assert list(off.views) == ["photo"] and off.boxes == [] and remover.calls == 0
    assert [r.product_id for r in off.results] == [
        r.product_id for r in colour_engine.search(image=photo, top_k=4).results
    ]
    on = search_views(colour_engine, photo, "on", top_k=4)
    assert list(on.views) == ["cutout"] and remover.calls == 1 and len(on.boxes) == 2
    assert on.fusion == "single"
    embed = search_views(colour_engine, photo, "auto", top_k=4, fusion="embed")
    assert embed.fusion == "embed" and len(embed.results) == 4
    with pytest.raises(VisualSearchError, match="Unknown query mode"):
        search_views(colour_engine, photo, "sometimes")


def test_without_background_removal_auto_searches_the_whole_photo(colour_engine, tmp_path) -> None:
    from visual_search.images.background import BackgroundRemover

    colour_engine.background_remover = BackgroundRemover("u2netp")
    import os

    old = os.environ.get("U2NET_HOME")
    os.environ["U2NET_HOME"] = str(tmp_path / "nothing-here")
    try:
        found = search_views(colour_engine, _two_products(), "auto", top_k=2)
    finally:
        if old is None:
            os.environ.pop("U2NET_HOME")
        else:
            os.environ["U2NET_HOME"] = old
    assert list(found.views) == ["photo"] and found.boxes == [] and len(found.results) == 2
    assert any("Background removal is off" in n for n in found.notes)


# ------------------------------------------------------------------------------------------ engine


def test_search_photo_returns_views_and_normalised_boxes_and_searches_the_tapped_object(
    colour_engine,
) -> None:
    photo = _two_products()
    first = colour_engine.search_photo(photo, top_k=3)  # background defaults to auto
    assert first.mode == "image" and first.pipeline == "auto" and first.fusion == "max"
    assert [v.name for v in first.views] == list(AUTO_VIEWS)
    assert [v.label for v in first.views] == ["cut-out", "object box"]
    assert len(first.objects) == 2 and first.box_index == 0
    blue, red = first.objects
    # the blue disc spans x 170..310 of 480, y 110..250 of 360
    assert (blue.x0, blue.y0, blue.x1, blue.y1) == pytest.approx(
        (170 / 480, 110 / 360, 311 / 480, 251 / 360), abs=0.02
    )
    assert red.x1 <= 0.2 and 0 < red.area < blue.area < 1
    assert first.results[0].product_id == "blue"
    assert first.query_vector is not None and first.query_vector.shape == (colour_engine.encoder.dim,)
    assert np.linalg.norm(first.query_vector) == pytest.approx(1.0, abs=1e-5)

    second = colour_engine.search_photo(photo, box_index=1, top_k=3)
    assert second.box_index == 1 and second.results[0].product_id == "red"

    off = colour_engine.search_photo(photo, background="off", top_k=3)
    assert [v.name for v in off.views] == ["photo"] and off.objects == [] and off.box_index is None
    assert [r.product_id for r in off.results] == [
        r.product_id for r in colour_engine.search(image=photo, top_k=3).results
    ]
    on = colour_engine.search_photo(photo, background="on", top_k=3)
    assert [v.name for v in on.views] == ["cutout"] and len(on.objects) == 2
    # "on" with a tapped object: that object's cut-out alone
    on_red = colour_engine.search_photo(photo, background="on", box_index=1, top_k=3)
    assert [v.name for v in on_red.views] == ["cutout"] and on_red.results[0].product_id == "red"
    # engine.search(background=...) is the same call
    routed = colour_engine.search(image=photo, background="auto", box_index=1, top_k=3)
    assert routed.pipeline == "auto" and [r.product_id for r in routed.results] == [
        r.product_id for r in second.results
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"background": "sometimes"}, "background must be one of auto, off, on"),
        ({"background": True}, "background must be one of"),
        ({"box_index": -1}, "object number must be a whole number"),
        ({"box_index": 1.5}, "object number must be a whole number"),
        ({"box_index": True}, "object number must be a number"),
        ({"box_index": 5}, "no object 6 in this photo"),
        ({"top_k": 0}, "top_k must be between"),
        ({"text_weight": 2}, "text weight must be between 0 and 1"),
    ],
)
def test_search_photo_refuses_bad_options_in_one_line(colour_engine, kwargs, message) -> None:
    with pytest.raises(VisualSearchError, match=message) as info:
        colour_engine.search_photo(_two_products(), **kwargs)
    assert "\n" not in str(info.value)


def test_photo_plus_text_blends_the_text_into_every_view(colour_engine) -> None:
    photo = _two_products()
    plain = search_views(colour_engine, photo, "auto", top_k=4)
    both = colour_engine.search_photo(photo, text="a red toy", text_weight=0.3, top_k=4)
    assert both.mode == "image+text" and both.text_weight == pytest.approx(0.3)
    text_vec = colour_engine.encoder.embed_texts(["a red toy"])[0]
    expected = 0.7 * plain.vectors + 0.3 * text_vec[None, :]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    again = search_views(colour_engine, photo, "auto", top_k=4, text_vector=text_vec, text_weight=0.3)
    np.testing.assert_allclose(again.vectors, expected, atol=1e-5)
    mean = expected.mean(axis=0)
    np.testing.assert_allclose(both.query_vector, mean / np.linalg.norm(mean), atol=1e-5)
    # the text pulls the scores: the blended search is not the photo search
    assert [r.score for r in both.results] != pytest.approx([r.score for r in plain.results])


def test_search_photo_refuses_an_index_of_another_model(colour_engine, tmp_path) -> None:
    from visual_search.core.errors import ModelMismatchError

    class Other:
        model_id, dim, supports_text, device = "test:other", colour_engine.encoder.dim, True, "cpu"

    other = SearchEngine(Other(), colour_engine.store)  # type: ignore[arg-type]
    with pytest.raises(ModelMismatchError, match="test:tiny"):
        other.search_photo(_two_products())


# ------------------------------------------------------------------------------------------ object views in the index


def _catalog(folder: Path) -> Path:
    rows = []
    for name, colour in COLOURS.items():
        photo = Image.new("RGB", (200, 200), (128, 128, 128))  # the product on a grey backdrop
        ImageDraw.Draw(photo).ellipse((40, 40, 160, 160), fill=colour)
        photo.save(folder / f"{name}.png")
        rows.append([name, f"{name}.png", name.title(), "Toys"])
    with (folder / "catalog.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["product_id", "image", "title", "category"], *rows])
    return folder / "catalog.csv"


def _object_engine(tmp_path: Path, tiny_encoder, object_views: bool) -> SearchEngine:
    engine = SearchEngine(
        CountingEncoder(tiny_encoder),  # type: ignore[arg-type]
        open_store(tmp_path / "index", None, None),
        object_views=object_views,
    )
    engine.background_remover = MaskRemover((128, 128, 128))  # type: ignore[assignment]
    return engine


def test_object_views_add_a_cutout_point_per_image_and_results_stay_one_per_product(tmp_path, tiny_encoder):
    from visual_search.indexing import object_point_id

    catalog = _catalog(tmp_path)
    engine = _object_engine(tmp_path, tiny_encoder, object_views=True)
    report = engine.index_catalog(catalog)
    assert report.embedded == 4 and report.object_views == 4 and "4 object views" in report.summary()
    points = {hit.id: hit.payload for hit in engine.store.scroll()}
    assert len(points) == 8
    objects = {i: p for i, p in points.items() if p.get("view") == "object"}
    assert set(objects) == {object_point_id(name, 0) for name in COLOURS}
    assert all(p["product_id"] in COLOURS and p["image_hash"] for p in objects.values())
    # the object point holds the cut-out on white, not the grey photo
    blue = engine.store.get_vectors([object_point_id("blue", 0)])[object_point_id("blue", 0)]
    cut = engine.background_remover.remove(Image.open(tmp_path / "blue.png").convert("RGB")).cleaned
    np.testing.assert_allclose(blue, tiny_encoder.embed_images([cut])[0], atol=1e-5)
    # both points of a product match; each product is listed once
    for found in (
        engine.search(image=tmp_path / "red.png", top_k=4),
        engine.search_photo(_two_products(), top_k=4),
    ):
        ids = [r.product_id for r in found.results]
        assert len(ids) == len(set(ids)) == 4
    assert engine.search(image=tmp_path / "red.png", top_k=1).results[0].product_id == "red"

    # a re-run is idempotent: nothing embedded, no point added
    before = engine.encoder.images
    again = engine.index_catalog(catalog)
    assert (again.embedded, again.object_views, again.unchanged) == (0, 0, 4)
    assert engine.encoder.images == before and engine.store.count() == 8


def test_an_existing_index_upgrades_without_re_embedding_its_photos(tmp_path, tiny_encoder):
    catalog = _catalog(tmp_path)
    plain = _object_engine(tmp_path, tiny_encoder, object_views=False)
    assert plain.index_catalog(catalog).embedded == 4
    assert plain.store.count() == 4
    plain.close()

    upgraded = _object_engine(tmp_path, tiny_encoder, object_views=True)
    report = upgraded.index_catalog(catalog)
    assert (report.embedded, report.unchanged, report.object_views) == (0, 4, 4)
    assert upgraded.encoder.images == 4  # the four cut-outs only, no photo again
    assert upgraded.store.count() == 8
    upgraded.close()

    # object views off again: sync drops the object points, the photos stay
    back = _object_engine(tmp_path, tiny_encoder, object_views=False)
    report = back.index_catalog(catalog, sync=True)
    assert report.removed == 4 and back.store.count() == 4
    assert all(hit.payload.get("view") is None for hit in back.store.scroll())


def test_object_views_need_background_removal(tmp_path, tiny_encoder, monkeypatch):
    from visual_search.images.background import BackgroundRemover

    engine = _object_engine(tmp_path, tiny_encoder, object_views=True)
    engine.background_remover = BackgroundRemover("u2netp")
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no-model-here"))
    report = engine.index_catalog(_catalog(tmp_path))
    assert report.embedded == 4 and report.object_views == 0 and engine.store.count() == 4
    assert len(report.notes) == 1 and report.notes[0].startswith("No object views:")
