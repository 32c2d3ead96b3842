"""Catalog upload: zip safety, layout handling, row issues; one end-to-end import with the tiny model."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

import visual_search.importer as importer
from visual_search.catalog import read_catalog
from visual_search.core.errors import CatalogError
from visual_search.importer import import_catalog, prepare_upload


def _jpeg(colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(buf, format="JPEG")
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    frame = pd.DataFrame(rows, columns=["product_id", "image", "category"])
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def upload(tmp_path: Path) -> Path:
    folder = tmp_path / "upload"
    folder.mkdir()
    return folder


def _folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir()) if root.exists() else []


# ---------------------------------------------------------------- zip safety


@pytest.mark.parametrize(
    "evil", ["../../etc/passwd", "images/../../x.jpg", "/etc/passwd", "C:/Windows/x.jpg"]
)
def test_zip_slip_is_rejected_and_nothing_is_left(upload: Path, tmp_path: Path, evil: str) -> None:
    csv = _csv(upload / "cat.csv", [("p1", "images/a.jpg", "shoes")])
    archive = _zip(upload / "imgs.zip", {"images/a.jpg": _jpeg(), evil: b"root:x:0:0"})
    with pytest.raises(CatalogError, match="a path outside the upload; refusing it") as err:
        prepare_upload(csv, archive, tmp_path / "imports")
    assert evil in str(err.value)
    assert _folders(tmp_path / "imports") == []
    assert not (tmp_path / "etc").exists()


def test_symlink_member_is_rejected(upload: Path, tmp_path: Path) -> None:
    csv = _csv(upload / "cat.csv", [("p1", "a.jpg", "shoes")])
    archive = upload / "imgs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        link = zipfile.ZipInfo("a.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(CatalogError, match="a.jpg, a symbolic link"):
        prepare_upload(csv, archive, tmp_path / "imports")


def test_too_many_members_is_rejected(upload: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importer, "MAX_MEMBERS", 5)
    csv = _csv(upload / "cat.csv", [("p1", "a.jpg", "shoes")])
    archive = _zip(upload / "imgs.zip", {f"{i}.jpg": b"x" for i in range(6)})
    with pytest.raises(CatalogError, match="6 entries; at most 5"):
        prepare_upload(csv, archive, tmp_path / "imports")


def test_too_large_in_total_is_rejected(
    upload: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importer, "MAX_TOTAL_BYTES", 1000)
    csv = _csv(upload / "cat.csv", [("p1", "a.jpg", "shoes")])
    archive = _zip(upload / "imgs.zip", {"a.jpg": b"x" * 600, "b.jpg": b"y" * 600})
    with pytest.raises(CatalogError, match="unpacks to more than"):
        prepare_upload(csv, archive, tmp_path / "imports")


def test_compression_bomb_is_rejected(upload: Path, tmp_path: Path) -> None:
    csv = _csv(upload / "cat.csv", [("p1", "a.png", "shoes")])
    archive = _zip(upload / "imgs.zip", {"a.png": bytes(8 * 1024**2)}, compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(CatalogError, match=r"a\.png, which unpacks .* times larger"):
        prepare_upload(csv, archive, tmp_path / "imports")


def test_not_a_zip_and_not_a_catalog(upload: Path, tmp_path: Path) -> None:
    csv = _csv(upload / "cat.csv", [("p1", "a.jpg", "shoes")])
    bogus = upload / "imgs.zip"
    bogus.write_bytes(b"this is not a zip")
    with pytest.raises(CatalogError, match="not a readable zip"):
        prepare_upload(csv, bogus, tmp_path / "imports")
    doc = upload / "cat.docx"
    doc.write_bytes(b"x")
    with pytest.raises(CatalogError, match=r"\.csv or \.parquet"):
        prepare_upload(doc, None, tmp_path / "imports")


# ---------------------------------------------------------------- layout


def test_non_image_members_are_skipped(upload: Path, tmp_path: Path) -> None:
    csv = _csv(upload / "cat.csv", [("p1", "images/a.jpg", "shoes")])
    archive = _zip(
        upload / "imgs.zip",
        {
            "images/a.jpg": _jpeg(),
            "images/B.PNG": _jpeg(),  # extension check ignores case
            "images/notes.txt": b"hello",
            "images/run.sh": b"rm -rf /",
            "__MACOSX/images/._a.jpg": b"\x00\x05\x16\x07",
            "images/.DS_Store": b"x",
        },
    )
    copied = prepare_upload(csv, archive, tmp_path / "imports")
    dest = copied.parent
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == ["cat.csv", "images/B.PNG", "images/a.jpg"]
    assert read_catalog(copied).issues == []


@pytest.mark.parametrize(
    ("members", "entry", "expected"),
    [
        (["photos/a.jpg", "photos/b.jpg"], "{}.jpg", ["a.jpg", "b.jpg"]),  # CSV says x.jpg: flatten
        (["images/a.jpg", "images/b.jpg"], "images/{}.jpg", ["images/a.jpg", "images/b.jpg"]),  # as-is
        (["export/images/a.jpg", "export/images/b.jpg"], "images/{}.jpg", ["images/a.jpg", "images/b.jpg"]),
        (["a.jpg", "b.jpg"], "{}.jpg", ["a.jpg", "b.jpg"]),  # no top folder
    ],
    ids=["flat-csv", "as-is", "strip-export", "no-folder"],
)
def test_single_top_folder_is_resolved(
    upload: Path, tmp_path: Path, members: list[str], entry: str, expected: list[str]
) -> None:
    csv = _csv(
        upload / "my catalog!.csv", [("p1", entry.format("a"), "shoes"), ("p2", entry.format("b"), "bags")]
    )
    archive = _zip(upload / "imgs.zip", {m: _jpeg() for m in members})
    copied = prepare_upload(csv, archive, tmp_path / "imports")
    assert copied.name == "my-catalog.csv"
    assert copied.parent.parent == tmp_path / "imports"
    assert copied.parent.name.endswith("-my-catalog")
    dest = copied.parent
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*.jpg")) == expected
    catalog = read_catalog(copied)
    assert catalog.issues == []
    assert sorted(catalog.product_ids) == ["p1", "p2"]


def test_missing_image_is_a_row_issue_with_its_row_number(upload: Path, tmp_path: Path) -> None:
    csv = _csv(
        upload / "cat.csv",
        [
            ("p1", "images/a.jpg", "shoes"),
            ("p2", "images/missing.jpg", "shoes"),
            ("p3", "images/b.jpg", "bags"),
        ],
    )
    archive = _zip(upload / "imgs.zip", {"images/a.jpg": _jpeg(), "images/b.jpg": _jpeg()})
    catalog = read_catalog(prepare_upload(csv, archive, tmp_path / "imports"))
    assert sorted(catalog.product_ids) == ["p1", "p3"]
    assert [(i.row, i.product_id) for i in catalog.issues] == [(3, "p2")]
    assert "images/missing.jpg" in catalog.issues[0].reason


def test_parquet_and_repeated_uploads_get_their_own_folders(upload: Path, tmp_path: Path) -> None:
    frame = pd.DataFrame({"product_id": ["p1"], "image": ["a.jpg"]})
    parquet = upload / "cat.parquet"
    frame.to_parquet(parquet)
    archive = _zip(upload / "imgs.zip", {"a.jpg": _jpeg()})
    first = prepare_upload(parquet, archive, tmp_path / "imports")
    second = prepare_upload(parquet, archive, tmp_path / "imports")
    assert first.parent != second.parent
    assert first.suffix == ".parquet"
    assert read_catalog(second).issues == []


def test_csv_without_zip_keeps_urls_and_absolute_paths_for_the_operator(upload: Path, tmp_path: Path) -> None:
    photo = upload / "abs.jpg"
    photo.write_bytes(_jpeg())
    csv = _csv(upload / "cat.csv", [("p1", str(photo), "shoes"), ("p2", "https://example.com/x.jpg", "bags")])
    copied = prepare_upload(csv, None, tmp_path / "imports")
    operator = read_catalog(copied)  # no image_root: the CLI's view, any file may be named
    assert operator.issues == []
    assert [i.source for i in operator.images] == [str(photo), "https://example.com/x.jpg"]
    confined = read_catalog(copied, image_root=copied.parent)  # the app's view of an upload
    assert [i.source for i in confined.images] == ["https://example.com/x.jpg"]
    assert [i.reason for i in confined.issues] == [f"image not found in the zip: {photo}"]


# ---------------------------------------------------------------- confinement to the zip


def test_uploaded_catalog_may_only_use_files_of_its_own_zip(upload: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"  # a real image outside the upload
    secret.write_bytes(_jpeg())
    not_image = tmp_path / "passwd"
    not_image.write_text("root:x:0:0")
    entries = [
        str(secret),  # absolute, exists, an image
        str(not_image),  # absolute, exists, not an image
        str(tmp_path / "nonexistent.jpg"),  # absolute, missing
        "../../secret.jpg",  # climbs out of the upload folder to the real file
        "images/../../../secret.jpg",
        "~/secret.jpg",
        "link.jpg",  # a symlink inside the folder that leads out
        "images/a.jpg",  # the only good one
    ]
    csv = _csv(upload / "cat.csv", [(f"p{i}", e, "x") for i, e in enumerate(entries)])
    archive = _zip(upload / "imgs.zip", {"images/a.jpg": _jpeg()})
    copied = prepare_upload(csv, archive, tmp_path / "imports")
    (copied.parent / "link.jpg").symlink_to(secret)
    assert (copied.parent / "../../secret.jpg").resolve() == secret.resolve()
    catalog = read_catalog(copied, image_root=copied.parent)
    assert [i.source for i in catalog.images] == [str((copied.parent / "images/a.jpg").resolve())]
    reasons = {i.product_id: i.reason for i in catalog.issues}
    assert len(reasons) == len(entries) - 1
    # One message for all of them: nothing tells a file that exists outside from one that does not.
    assert all(reasons[f"p{i}"] == f"image not found in the zip: {e}" for i, e in enumerate(entries[:-1]))


def test_ui_import_reads_no_outside_file_and_fetches_no_private_link(upload: Path, tmp_path: Path) -> None:
    import http.server
    import threading

    from visual_search import encoders
    from visual_search.engine import SearchEngine
    from visual_search.images.fetch import FetchPolicy, default_policy, set_default_policy
    from visual_search.store import open_store

    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            body = _jpeg()
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    link = f"http://127.0.0.1:{server.server_address[1]}/img.jpg"
    outside = tmp_path / "outside" / "pic.jpg"
    outside.parent.mkdir()
    outside.write_bytes(_jpeg((10, 200, 10)))
    csv = _csv(
        upload / "cat.csv",
        [("inside", "a.jpg", "x"), ("outside", str(outside), "x"), ("local-link", link, "x")],
    )
    archive = _zip(upload / "imgs.zip", {"a.jpg": _jpeg()})
    engine = SearchEngine(
        encoders.create_encoder("test:tiny", device="cpu"), open_store(tmp_path / "idx", None, None)
    )
    before = default_policy()
    set_default_policy(FetchPolicy())  # what the app runs with: public links only
    try:
        report = import_catalog(engine, csv, archive, tmp_path / "imports")
        assert report.embedded == 1 and engine.status().products == 1
        reasons = {i.product_id: i.reason for i in report.issues}
        assert reasons["outside"] == f"image not found in the zip: {outside}"
        assert "local or private address" in reasons["local-link"]
        assert hits == []  # the loopback server never saw a request
        # The operator (CLI) may name outside files and LAN hosts.
        set_default_policy(FetchPolicy(allow_private=True))
        report = import_catalog(engine, csv, archive, tmp_path / "imports", confine=False)
        assert report.issues == [] and engine.status().products == 3
        assert hits == ["/img.jpg", "/img.jpg"]  # hashed, then loaded
    finally:
        set_default_policy(before)
        engine.close()
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- end to end


def test_import_catalog_end_to_end(upload: Path, tmp_path: Path) -> None:
    from visual_search import encoders
    from visual_search.engine import SearchEngine
    from visual_search.store import open_store

    csv = _csv(
        upload / "cat.csv",
        [
            ("red", "red.jpg", "shoes"),
            ("green", "green.jpg", "shoes"),
            ("ghost", "ghost.jpg", "bags"),
            ("blue", "blue.jpg", "bags"),
        ],
    )
    archive = _zip(
        upload / "imgs.zip",
        {
            "pics/red.jpg": _jpeg((220, 20, 20)),
            "pics/green.jpg": _jpeg((20, 220, 20)),
            "pics/blue.jpg": _jpeg((20, 20, 220)),
            "pics/readme.txt": b"not an image",
        },
    )
    engine = SearchEngine(
        encoders.create_encoder("test:tiny", device="cpu"), open_store(tmp_path / "idx", None, None)
    )
    seen: list[tuple[int, int]] = []
    try:
        report = import_catalog(
            engine,
            csv,
            archive,
            tmp_path / "imports",
            progress=lambda done, total: seen.append((done, total)),
        )
        assert (report.products, report.images, report.embedded) == (3, 3, 3)
        assert [(i.row, i.product_id) for i in report.issues] == [(4, "ghost")]
        assert seen[-1] == (3, 3)
        assert engine.status().products == 3
        assert {r.product_id for r in engine.more_like_this("red", top_k=5).results} == {"green", "blue"}
    finally:
        engine.close()
