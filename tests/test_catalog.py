"""Catalog reading and per-row validation."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from visual_search.catalog import parse_price, point_id, read_catalog
from visual_search.core.errors import CatalogError


def _img(path: Path, color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), color).save(path)
    return path


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        _img(tmp_path / "images" / name)
    return tmp_path


def _write(folder: Path, text: str, name: str = "catalog.csv") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_messy_csv_reports_bad_rows_with_numbers_and_keeps_the_rest(folder: Path) -> None:
    csv = _write(
        folder,
        "product_id, image, title, category, brand, price, color\n"
        "p1, images/a.jpg, Red mug, Kitchen, Acme, $12.50, red\n"
        ", images/b.jpg, No id, Kitchen, Acme, 3, blue\n"
        "p3, images/missing.jpg, Ghost, Kitchen, Acme, 3, blue\n"
        "p4, images/c.jpg, Cheap, Kitchen, Acme, twelve, blue\n"
        "p5, , No image, Kitchen, Acme, 3, blue\n"
        'p6, images/d.jpg|images/b.jpg, Two views, Shoes, , "1,299.00", green\n',
    )
    catalog = read_catalog(csv)
    assert [p.product_id for p in catalog.products] == ["p1", "p6"]
    reasons = {(i.row, i.product_id): i.reason for i in catalog.issues}
    assert reasons[(3, None)] == "missing product_id"
    assert "image file not found: images/missing.jpg" in reasons[(4, "p3")]
    assert "price 'twelve'" in reasons[(5, "p4")]
    assert reasons[(6, "p5")] == "missing image"
    p1, p6 = catalog.products
    assert p1.price == 12.5 and p1.category == "Kitchen" and p1.attributes == {"color": "red"}
    assert p6.price == 1299.0 and p6.brand is None
    assert [img.image_index for img in p6.images] == [0, 1]
    assert Path(p6.images[1].source) == (folder / "images" / "b.jpg").resolve()
    assert catalog.extra_columns == ["color"]


def test_several_rows_add_images_and_conflicting_duplicates_are_skipped(folder: Path) -> None:
    csv = _write(
        folder,
        "product_id,image,title,price\n"
        "p1,images/a.jpg,Mug,10\n"
        "p1,images/b.jpg,,\n"
        "p1,images/c.jpg,Mug,11\n"
        "p1,images/a.jpg,Mug,10\n",
    )
    catalog = read_catalog(csv)
    (p1,) = catalog.products
    assert [Path(i.source).name for i in p1.images] == ["a.jpg", "b.jpg"]
    assert len(catalog.issues) == 1
    assert catalog.issues[0].row == 4 and "different price" in catalog.issues[0].reason


def test_missing_required_column_is_one_clear_error(folder: Path) -> None:
    csv = _write(folder, "id,picture\n1,images/a.jpg\n")
    with pytest.raises(CatalogError, match="lacks the column.*product_id, image"):
        read_catalog(csv)


def test_unreadable_and_unknown_files(folder: Path) -> None:
    with pytest.raises(CatalogError, match="not found"):
        read_catalog(folder / "nope.csv")
    with pytest.raises(CatalogError, match="use a .csv or .parquet"):
        read_catalog(_write(folder, "x", "catalog.xlsx"))


def test_parquet_and_urls(folder: Path) -> None:
    frame = pd.DataFrame(
        {
            "product_id": ["p1", "p2"],
            "image": ["images/a.jpg", "https://example.com/x.jpg"],
            "price": [1.5, None],
        }
    )
    path = folder / "catalog.parquet"
    frame.to_parquet(path)
    catalog = read_catalog(path)
    assert [p.price for p in catalog.products] == [1.5, None]
    assert catalog.products[1].images[0].source == "https://example.com/x.jpg"
    assert catalog.issues == []


def test_point_ids_are_stable_across_processes() -> None:
    # uuid5 of a fixed namespace: this literal must hold in every process, or re-indexing duplicates.
    assert point_id("p1", 0) == "243ff16d-6026-5e43-84b3-a5508b2c2c5c"
    assert len({point_id("p1", 0), point_id("p1", 1), point_id("p2", 0)}) == 3


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("12", 12.0), (" $1,299.99 ", 1299.99), ("EUR 5", 5.0), ("", None), (None, None)],
)
def test_parse_price(raw, expected) -> None:
    assert parse_price(raw) == expected


@pytest.mark.parametrize("raw", ["abc", "-3", "nan", "inf", "1.2.3"])
def test_parse_price_rejects(raw) -> None:
    with pytest.raises(ValueError):
        parse_price(raw)


def test_sample_catalog_is_clean() -> None:
    catalog = read_catalog(Path(__file__).parent.parent / "sample_catalog" / "catalog.csv")
    assert catalog.issues == []
    assert len(catalog.products) >= 80
    assert all(p.price is not None and p.category for p in catalog.products)
