"""End-to-end engine behaviour on the real sample catalog.

Retrieval assertions use real ImageNet EfficientNet-Lite0 features (from a PyPI wheel); bookkeeping
tests (re-index, resume, sync) use the tiny random CLIP, where only ids and counts matter.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from visual_search.catalog import point_id, read_catalog
from visual_search.core.errors import ImageError, ModelMismatchError, UnsupportedQueryError, VisualSearchError
from visual_search.core.types import SearchFilters
from visual_search.encoders import create_encoder
from visual_search.engine import SearchEngine
from visual_search.store import open_store

SAMPLE = Path(__file__).resolve().parent.parent / "sample_catalog" / "catalog.csv"


@pytest.fixture(scope="module")
def real_engine(tmp_path_factory, efficientnet_weights) -> SearchEngine:
    encoder = create_encoder(f"timm:efficientnet_lite0@{efficientnet_weights}", device="cpu")
    engine = SearchEngine(encoder, open_store(tmp_path_factory.mktemp("real"), None, None))
    report = engine.index_catalog(SAMPLE)
    assert report.issues == []
    return engine


def _shopper_variants(photo: Image.Image) -> list[Image.Image]:
    w, h = photo.size
    crop = photo.crop((int(w * 0.1), int(h * 0.1), int(w * 0.92), int(h * 0.9)))
    rotated = photo.rotate(12, expand=True, fillcolor=(255, 255, 255))
    recoloured = ImageEnhance.Color(ImageEnhance.Brightness(photo).enhance(0.75)).enhance(1.4)
    return [crop, rotated, recoloured, ImageOps.mirror(photo)]


def test_every_sample_product_finds_itself_after_crop_rotate_recolour(real_engine: SearchEngine) -> None:
    catalog = read_catalog(SAMPLE)
    ranks: list[int] = []
    for product in catalog.products:
        photo = Image.open(product.images[0].source).convert("RGB")
        for variant in _shopper_variants(photo):
            results = real_engine.search(image=variant, top_k=10).results
            ids = [r.product_id for r in results]
            assert len(ids) == len(set(ids)), "a product appeared twice"
            ranks.append(ids.index(product.product_id) if product.product_id in ids else 99)
    ranks_arr = np.array(ranks)
    assert (ranks_arr < 10).all(), f"{(ranks_arr >= 10).sum()} queries missed their product in the top 10"
    assert (ranks_arr == 0).mean() >= 0.9, f"top-1 rate {(ranks_arr == 0).mean():.2f}"


def test_filters_give_exactly_the_expected_subset(real_engine: SearchEngine) -> None:
    catalog = read_catalog(SAMPLE)
    categories = sorted({p.category for p in catalog.products})
    query = Image.open(catalog.products[0].images[0].source)
    cases = [
        SearchFilters(categories=(categories[0],)),
        SearchFilters(categories=tuple(categories[:2]), max_price=50.0),
        SearchFilters(min_price=20.0, max_price=200.0),
        SearchFilters(attributes={"source": ("saleor",)}),
    ]
    for filters in cases:
        expected = {
            p.product_id
            for p in catalog.products
            if (not filters.categories or p.category in filters.categories)
            and (filters.min_price is None or p.price >= filters.min_price)
            and (filters.max_price is None or p.price <= filters.max_price)
            and all(p.attributes.get(k) in v for k, v in filters.attributes.items())
        }
        assert expected, filters
        got = real_engine.search(image=query, filters=filters, top_k=500).results
        assert {r.product_id for r in got} == expected, filters.describe()


def test_threshold_and_top_k(real_engine: SearchEngine) -> None:
    catalog = read_catalog(SAMPLE)
    query = catalog.products[3].images[0].source
    everything = real_engine.search(image=query, top_k=500).results
    assert len(everything) == len(catalog.products)
    assert [r.score for r in everything] == sorted((r.score for r in everything), reverse=True)
    cut = (everything[5].score + everything[6].score) / 2  # between two scores: no float-equality edge
    above = real_engine.search(image=query, top_k=500, score_threshold=cut).results
    assert {r.product_id for r in above} == {r.product_id for r in everything[:6]}
    assert len(real_engine.search(image=query, top_k=3).results) == 3


def test_more_like_this_and_recommend(real_engine: SearchEngine) -> None:
    catalog = read_catalog(SAMPLE)
    pid = catalog.products[0].product_id
    similar = real_engine.more_like_this(pid, top_k=5)
    ids = [r.product_id for r in similar.results]
    assert pid not in ids and len(ids) == 5
    disliked = ids[0]
    refined = real_engine.recommend([pid], [disliked], top_k=5)
    assert disliked not in [r.product_id for r in refined.results]
    assert refined.mode == "recommend"
    with pytest.raises(VisualSearchError, match="not in the index: nope"):
        real_engine.more_like_this("nope")


def test_image_only_model_refuses_text_clearly(real_engine: SearchEngine) -> None:
    with pytest.raises(UnsupportedQueryError, match="images only"):
        real_engine.search(text="red handbag")


def test_bad_photos_give_clear_errors(real_engine: SearchEngine, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError):
        real_engine.search(image=broken)
    with pytest.raises(ImageError):
        real_engine.search(image=b"")
    with pytest.raises(VisualSearchError, match="photo, a text, or both"):
        real_engine.search(image=None, text="   ")


# ------------------------------------------------------------------ bookkeeping on the tiny model


def _small_catalog(tmp_path: Path, n: int = 12) -> Path:
    catalog = read_catalog(SAMPLE)
    folder = tmp_path / "cat"
    (folder / "images").mkdir(parents=True)
    lines = ["product_id,image,title,category,price"]
    for product in catalog.products[:n]:
        src = Path(product.images[0].source)
        shutil.copy(src, folder / "images" / src.name)
        lines.append(
            f"{product.product_id},images/{src.name},{product.title},{product.category},{product.price}"
        )
    (folder / "catalog.csv").write_text("\n".join(lines) + "\n")
    return folder / "catalog.csv"


def _engine(tiny_encoder, data_dir: Path) -> SearchEngine:
    return SearchEngine(tiny_encoder, open_store(data_dir, None, None))


def test_reindex_is_idempotent_and_updates_details_without_reembedding(tiny_encoder, tmp_path: Path) -> None:
    csv = _small_catalog(tmp_path)
    engine = _engine(tiny_encoder, tmp_path / "idx")
    first = engine.index_catalog(csv)
    assert (first.embedded, first.unchanged) == (12, 0)
    second = engine.index_catalog(csv)
    assert (second.embedded, second.unchanged, second.payload_updated) == (0, 12, 0)
    assert engine.store.count() == 12

    text = csv.read_text().splitlines()
    pid = text[1].split(",")[0]
    text[1] = text[1].rsplit(",", 1)[0] + ",999.99"
    csv.write_text("\n".join(text) + "\n")
    third = engine.index_catalog(csv)
    assert (third.embedded, third.payload_updated, third.unchanged) == (0, 1, 11)
    hit = engine.search(text=pid, top_k=50).results
    assert next(r for r in hit if r.product_id == pid).price == 999.99
    assert engine.store.count() == 12


def test_changed_photo_is_reembedded(tiny_encoder, tmp_path: Path) -> None:
    csv = _small_catalog(tmp_path, n=4)
    engine = _engine(tiny_encoder, tmp_path / "idx")
    engine.index_catalog(csv)
    photo = sorted((csv.parent / "images").iterdir())[0]
    ImageOps.flip(Image.open(photo).convert("RGB")).save(photo)
    report = engine.index_catalog(csv)
    assert (report.embedded, report.unchanged) == (1, 3)


def test_resume_after_crash_without_duplicates(tiny_encoder, tmp_path: Path, monkeypatch) -> None:
    csv = _small_catalog(tmp_path)
    engine = _engine(tiny_encoder, tmp_path / "idx")
    real_embed = tiny_encoder.embed_images
    calls = {"n": 0}

    def crashing(images, batch_size=32):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real_embed(images, batch_size=batch_size)

    monkeypatch.setattr(tiny_encoder, "embed_images", crashing)
    with pytest.raises(KeyboardInterrupt):
        engine.index_catalog(csv, batch_size=4)
    assert engine.store.count() == 8  # two batches landed whole, the third not at all
    monkeypatch.setattr(tiny_encoder, "embed_images", real_embed)
    resumed = engine.index_catalog(csv, batch_size=4)
    assert (resumed.embedded, resumed.unchanged) == (4, 8)
    assert engine.store.count() == 12


def test_sync_removes_products_that_left_the_catalog(tiny_encoder, tmp_path: Path) -> None:
    csv = _small_catalog(tmp_path)
    engine = _engine(tiny_encoder, tmp_path / "idx")
    engine.index_catalog(csv)
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-3]) + "\n")
    kept = engine.index_catalog(csv)
    assert kept.removed == 0 and engine.store.count() == 12
    synced = engine.index_catalog(csv, sync=True)
    assert synced.removed == 3 and engine.store.count() == 9


def test_bad_rows_are_reported_and_the_rest_indexed(tiny_encoder, tmp_path: Path) -> None:
    csv = _small_catalog(tmp_path, n=3)
    (csv.parent / "images" / "corrupt.jpg").write_bytes(b"garbage")
    with csv.open("a") as f:
        f.write("bad1,images/corrupt.jpg,Corrupt,X,1\n")
        f.write("bad2,images/none.jpg,Missing,X,1\n")
        f.write("bad3,images/corrupt.jpg,Price,X,cheap\n")
    engine = _engine(tiny_encoder, tmp_path / "idx")
    report = engine.index_catalog(csv)
    assert report.embedded == 3 and engine.store.count() == 3
    by_row = {issue.row: str(issue) for issue in report.issues}
    assert set(by_row) == {5, 6, 7}
    assert "bad1" in by_row[5] and "not found" in by_row[6] and "price" in by_row[7]


def test_other_model_is_refused(tiny_encoder, efficientnet_weights, tmp_path: Path) -> None:
    csv = _small_catalog(tmp_path, n=2)
    _engine(tiny_encoder, tmp_path / "idx").index_catalog(csv)
    other = create_encoder(f"timm:efficientnet_lite0@{efficientnet_weights}", device="cpu")
    with pytest.raises(ModelMismatchError, match="test:tiny"):
        SearchEngine(other, open_store(tmp_path / "idx", None, None)).index_catalog(csv)


def test_text_and_combined_queries_on_a_clip_model(tiny_encoder, tmp_path: Path) -> None:
    csv = _small_catalog(tmp_path, n=6)
    engine = _engine(tiny_encoder, tmp_path / "idx")
    engine.index_catalog(csv)
    photo = read_catalog(csv).products[0].images[0].source
    text_only = engine.search_by_text("a red mug", top_k=3)
    both = engine.search(image=photo, text="a red mug", text_weight=0.3, top_k=3)
    image_only = engine.search(image=photo, top_k=3)
    assert (text_only.mode, both.mode, image_only.mode) == ("text", "image+text", "image")
    img_vec, _ = engine.embed_query(Image.open(photo).convert("RGB"), None)
    txt_vec, _ = engine.embed_query(None, "a red mug")
    mixed, _ = engine.embed_query(Image.open(photo).convert("RGB"), "a red mug", text_weight=0.3)
    expected = 0.7 * img_vec + 0.3 * txt_vec
    np.testing.assert_allclose(mixed, expected / np.linalg.norm(expected), atol=1e-5)


def test_dislikes_refine_the_current_search_through_its_query_vector(tiny_encoder, tmp_path: Path) -> None:
    csv = _small_catalog(tmp_path, n=12)
    engine = _engine(tiny_encoder, tmp_path / "idx")
    engine.index_catalog(csv)
    photo = read_catalog(csv).products[0].images[0].source
    first = engine.search(image=photo, text="a red mug", top_k=12)
    assert first.query_vector is not None and first.query_vector.shape == (tiny_encoder.dim,)
    disliked = first.results[0].product_id

    refined = engine.recommend([], [disliked], query_vector=first.query_vector.tolist(), top_k=12)
    assert refined.mode == "recommend"
    ids = [r.product_id for r in refined.results]
    assert disliked not in ids and len(ids) == 11

    # Same as Qdrant's average_vector by hand: q + (q - disliked), ranked by cosine, best image per product.
    q = first.query_vector / np.linalg.norm(first.query_vector)
    neg = engine.store.get_vectors([point_id(disliked, 0)])[point_id(disliked, 0)]
    manual = 2 * q - neg
    manual /= np.linalg.norm(manual)
    expected = sorted(
        ((float(manual @ v), pid) for pid, v in _product_vectors(engine).items() if pid != disliked),
        reverse=True,
    )
    assert ids == [pid for _, pid in expected]
    np.testing.assert_allclose([r.score for r in refined.results], [s for s, _ in expected], atol=1e-5)

    # Likes and the query vector together; the liked product itself is left out.
    liked = ids[-1]
    both = engine.recommend([liked], [disliked], query_vector=first.query_vector, top_k=3)
    assert both.mode == "recommend" and not {liked, disliked} & {r.product_id for r in both.results}
    assert engine.more_like_this(liked, top_k=3).mode == "more-like-this"

    with pytest.raises(VisualSearchError, match="Like at least one product"):
        engine.recommend([], [disliked])
    with pytest.raises(VisualSearchError, match="dimensions"):
        engine.recommend([], [disliked], query_vector=[1.0, 0.0])


def _product_vectors(engine: SearchEngine) -> dict[str, np.ndarray]:
    ids = {hit.id: str(hit.payload["product_id"]) for hit in engine.store.scroll()}
    return {ids[i]: v for i, v in engine.store.get_vectors(list(ids)).items()}
