"""Pilot safety of the web surfaces (issue 7, findings 2, 6 and 9), loopback only.

The shopper surface (``/``) can run search and nothing else, by any ``fn_index``; the admin surface
(``/admin``) needs the password, and without one it exists only on a loopback host; images are
served by product id, never by path; uploads are gone once answered; ``/monitoring`` is off.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi.testclient import TestClient
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from ui_fixtures import ADMIN_PASSWORD, ROOT, app_env, build_ui_catalog, free_port, wait_until_up

from visual_search.engine import SearchEngine, product_image
from visual_search.store import open_store
from visual_search.ui import UIOptions, build_admin, build_shopper, create_app, decide_surfaces
from visual_search.ui.common import (
    ClientLimiter,
    UIContext,
    client_key,
    discard_upload,
    public_message,
)
from visual_search.ui.tabs.search import SearchHandlers

ADMIN_ONLY_WORDS = ("catalog", "import", "audit", "evaluat", "analytics", "export", "duplicate", "suspect")
ADMIN_ELEM_IDS = ("import-btn", "export-btn", "eval-btn", "dup-btn", "mis-btn", "nn-btn", "index-status")


# ---------------------------------------------------------------------------------- helpers


def _status(url: str, **headers: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _config(base: str, cookies: httpx.Cookies | None = None) -> dict:
    reply = httpx.get(base + "config", cookies=cookies, timeout=10)
    reply.raise_for_status()
    return reply.json()


def _fn_index(config: dict, elem_id: str) -> int:
    """The fn_index of the click on the component with ``elem_id``."""
    ids = {c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id}
    for i, dep in enumerate(config["dependencies"]):
        if any(target[0] in ids for target in dep["targets"]):
            return dep.get("id", i)
    raise AssertionError(f"no event on #{elem_id}")


def _login(admin_url: str, password: str = ADMIN_PASSWORD) -> httpx.Cookies:
    reply = httpx.post(admin_url + "login", data={"username": "admin", "password": password}, timeout=10)
    assert reply.status_code == 200, reply.text
    return reply.cookies


def _run_event(base: str, fn_index: int, data: list, cookies: httpx.Cookies | None = None) -> dict:
    """Call a handler the way the browser does (queue join, then the server-sent events)."""
    session = "security-test"
    with httpx.Client(base_url=base, cookies=cookies, timeout=120) as http:
        joined = http.post(
            "gradio_api/queue/join", json={"fn_index": fn_index, "data": data, "session_hash": session}
        )
        if joined.status_code != 200:
            return {"refused": joined.status_code, "detail": joined.text}
        with http.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as events:
            for line in events.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        return message
    raise AssertionError("the event never completed")


def _upload(base: str, path: Path, cookies: httpx.Cookies | None = None) -> str:
    with path.open("rb") as f:
        reply = httpx.post(
            base + "gradio_api/upload", files={"files": (path.name, f)}, cookies=cookies, timeout=30
        )
    reply.raise_for_status()
    return reply.json()[0]


def _file_data(server_path: str) -> dict:
    return {"path": server_path, "meta": {"_type": "gradio.FileData"}}


# ---------------------------------------------------------------------------------- in-process


@pytest.fixture(scope="module")
def engine(tiny_encoder, tmp_path_factory) -> SearchEngine:
    root = tmp_path_factory.mktemp("security-ui")
    catalog = build_ui_catalog(root)
    eng = SearchEngine(tiny_encoder, open_store(root / "data", None, None))
    eng.index_catalog(catalog)
    yield eng
    eng.close()


@pytest.fixture
def ctx(engine, tmp_path) -> UIContext:
    return UIContext.create(engine, None, UIOptions(import_root=tmp_path / "imports", examples=[]))


def _handler_names(blocks) -> list[str]:
    return [getattr(fn.fn, "__qualname__", repr(fn.fn)) for fn in blocks.fns.values() if fn.fn is not None]


def test_shopper_blocks_hold_search_handlers_only(ctx):
    names = _handler_names(build_shopper(ctx))
    assert any("SearchHandlers.search" in n for n in names) and any(
        "SearchAPI.search_image" in n for n in names
    )
    for name in names:
        assert name.split(".")[0] in ("SearchHandlers", "SearchAPI", "build_search_tab", "build_shopper"), (
            name
        )
        assert not any(word in name.lower() for word in ADMIN_ONLY_WORDS), name


def test_admin_blocks_hold_the_admin_handlers(ctx):
    names = _handler_names(build_admin(ctx))
    for wanted in (
        "CatalogHandlers.import_catalog",
        "CatalogHandlers.evaluate",
        "AnalyticsHandlers.export_csv",
    ):
        assert wanted in names
    assert not any(n.startswith(("SearchHandlers", "SearchAPI")) for n in names)


@pytest.mark.parametrize(
    ("host", "share", "password", "admin", "auth"),
    [
        ("127.0.0.1", False, None, True, False),
        ("localhost", False, None, True, False),
        ("::1", False, None, True, False),
        ("0.0.0.0", False, None, False, False),
        ("192.168.1.20", False, None, False, False),
        ("127.0.0.1", True, None, False, False),
        ("0.0.0.0", True, "s3cret", True, True),
        ("127.0.0.1", False, "s3cret", True, True),
    ],
)
def test_which_surfaces_are_served(host, share, password, admin, auth):
    surfaces = decide_surfaces(host, share, password)
    assert surfaces.admin is admin
    assert (surfaces.admin_auth == ("admin", password)) is auth
    assert ("search only" in surfaces.message) is (not admin)


def test_no_password_and_a_public_host_mounts_no_admin(engine, tmp_path):
    app = create_app(
        engine, None, UIOptions(import_root=tmp_path / "imp"), decide_surfaces("0.0.0.0", False, None)
    )
    with TestClient(app) as client:  # in-process: nothing listens on 0.0.0.0
        assert client.get("/").status_code == 200
        for path in ("/admin/", "/admin/config", "/admin/login"):
            assert client.get(path).status_code == 404, path
        assert client.post("/admin/gradio_api/queue/join", json={"fn_index": 0, "data": []}).status_code in (
            404,
            405,
        )


def test_admin_with_a_password_refuses_anonymous_calls(engine, tmp_path):
    surfaces = decide_surfaces("127.0.0.1", False, "s3cret")
    app = create_app(engine, None, UIOptions(import_root=tmp_path / "imp"), surfaces)
    with TestClient(app) as client:
        assert client.get("/admin/config").status_code == 401
        assert client.get("/admin", follow_redirects=False).headers["location"] == "/admin/"
        join = {"fn_index": 0, "data": [0.9, 10], "session_hash": "anon"}
        assert client.post("/admin/gradio_api/queue/join", json=join).status_code == 401
        assert client.post("/admin/login", data={"username": "admin", "password": "wrong"}).status_code != 200
        assert (
            client.post("/admin/login", data={"username": "admin", "password": "s3cret"}).status_code == 200
        )
        assert "import-btn" in client.get("/admin/config").text


def test_product_image_by_id(engine):
    path = product_image(engine, "juice-orange", 0)
    assert path is not None and path.is_file() and path.name == "juice-orange.jpg"
    assert product_image(engine, "juice-orange", 1) is None
    assert product_image(engine, "no-such-product", 0) is None
    assert product_image(engine, "../../etc/passwd", 0) is None


def test_public_message_names_no_server_path(tmp_path):
    message = public_message(f"cannot read {tmp_path}/secret/x.jpg: blocked by /srv/app/data/index")
    assert str(tmp_path) not in message and "/srv/app" not in message and "cannot read" in message
    assert public_message("see https://example.com/a/b.jpg") == "see https://example.com/a/b.jpg"


def test_client_limiter_bounds_searches_per_client():
    limiter = ClientLimiter(2)
    with limiter.slot("a"), limiter.slot("a"):
        with pytest.raises(Exception, match="Too many searches at once"), limiter.slot("a"):
            pass
        with limiter.slot("b"):  # another client is not affected
            pass
    with limiter.slot("a"), limiter.slot("a"):  # slots come back when searches end
        pass


def _request(host: str = "127.0.0.1", session: str = "s1"):
    return SimpleNamespace(client=SimpleNamespace(host=host), session_hash=session)


def _search_args(photo, state=None):
    return (photo, "", "", 0.5, "off", [], [], None, None, 5, 0.0, state)  # off: the photo finds itself


def test_search_deletes_the_upload_and_keeps_the_photo_in_the_session(ctx, engine, tmp_path, monkeypatch):
    cache = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    upload = cache / "0123abcd" / "photo.jpg"
    upload.parent.mkdir(parents=True)
    Image.open(product_image(engine, "paint-red", 0)).save(upload)
    handlers = SearchHandlers(ctx)
    html, _, _, state = handlers.search(*_search_args({"path": str(upload)}), request=_request())
    assert not upload.exists() and not upload.parent.exists()
    assert 'data-pid="paint-red"' in html and "vs-error" not in html
    assert str(tmp_path) not in html and "/img/" not in html and "img/paint-red/0" in html
    # The same photo again (its file is gone): the session's copy answers.
    html, *_ = handlers.search(*_search_args({"path": str(upload)}, state), request=_request())
    assert 'data-pid="paint-red"' in html and "vs-error" not in html


def test_discard_upload_touches_only_gradio_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    outside = tmp_path / "catalog.jpg"
    outside.write_bytes(b"x")
    assert not discard_upload(str(outside)) and outside.exists()
    assert not discard_upload(str(tmp_path / "gradio" / ".." / "catalog.jpg")) and outside.exists()


def test_too_many_searches_from_one_client_get_a_clear_message(ctx):
    handlers = SearchHandlers(ctx)
    request = _request()
    key = client_key(request)
    with ctx.limiter.slot(key), ctx.limiter.slot(key), ctx.limiter.slot(key), ctx.limiter.slot(key):
        args = (None, "", "juice", 0.5, False, [], [], None, None, 5, 0.0, None)
        html, *_ = handlers.search(*args, request=request)
        assert "Too many searches at once" in html
        html, *_ = handlers.search(*args, request=_request(session="other-tab"))
        assert "Too many searches" not in html and "vs-card" in html


# ---------------------------------------------------------------------------------- the running app


def test_shopper_config_has_no_admin_component_or_endpoint(ui_app):
    config = _config(ui_app.url)
    elem_ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert not elem_ids & set(ADMIN_ELEM_IDS)
    assert "search-btn" in elem_ids
    api_names = {d.get("api_name") for d in config["dependencies"] if d.get("api_visibility") != "private"}
    assert api_names <= {"search_image", "search_text", "search_combined", "more_like_this", "recommend"}


def test_admin_fn_indexes_are_refused_on_the_shopper_surface(ui_app):
    shopper = _config(ui_app.url)
    admin = _config(ui_app.admin_url, _login(ui_app.admin_url))
    export = _fn_index(admin, "export-btn")
    imports = _fn_index(admin, "import-btn")
    n = len(shopper["dependencies"])
    for fn_index in {export, imports, *range(n, n + len(admin["dependencies"]))}:
        reply = _run_event(ui_app.url, fn_index, [])
        if "refused" in reply:
            continue
        # Same number on the shopper page is a search handler (or nothing): never a log or an import.
        text = json.dumps(reply)
        assert not reply.get("success", False) or ("pilot-log" not in text and "Imported" not in text), text


def test_admin_surface_needs_the_password(ui_app):
    assert _status(ui_app.admin_url + "config") == 401
    joined = httpx.post(
        ui_app.admin_url + "gradio_api/queue/join", json={"fn_index": 0, "data": [], "session_hash": "x"}
    )
    assert joined.status_code == 401
    assert (
        httpx.post(ui_app.admin_url + "login", data={"username": "admin", "password": "nope"}).status_code
        != 200
    )
    config = _config(ui_app.admin_url, _login(ui_app.admin_url))
    assert "export-btn" in json.dumps(config)


def test_monitoring_is_off_by_default(ui_app):
    for path in ("monitoring", "admin/monitoring", "monitoring/summary", "gradio_api/monitoring/summary"):
        assert _status(ui_app.url + path) == 404, path


def test_image_route_by_product_id(ui_app):
    assert _status(ui_app.url + "img/juice-orange/0") == 200
    assert _status(ui_app.url + "img/juice-orange/0?size=thumb") == 200
    for bad in (
        "img/no-such-product/0",
        "img/juice-orange/7",
        "img/juice-orange/-1",
        "img/juice-orange/x",
        "img/..%2F..%2F..%2Fetc%2Fpasswd/0",
        "img/%2Fetc%2Fpasswd/0",
        "examples/999",
    ):
        assert _status(ui_app.url + bad) == 404, bad
    reply = httpx.get(ui_app.url + "img/no-such-product/0")
    assert reply.content == b""  # no detail


def test_shopper_page_names_no_server_path(ui_app):
    page = httpx.get(ui_app.url).text + httpx.get(ui_app.url + "config").text
    for path in (str(ui_app.root), str(ROOT), str(ui_app.images), str(ui_app.data_dir)):
        assert path not in page, path
    assert "gradio_api/file=" not in page


def test_file_route_refuses_indexed_images(ui_app):
    for path in (ui_app.image_of("juice-orange"), ui_app.catalog, ui_app.data_dir / "imports"):
        assert _status(ui_app.url + f"gradio_api/file={path}") == 403, path


def test_uploaded_photo_is_gone_once_answered(ui_app, tmp_path):
    # Control: a plain upload stays in the app's Gradio cache (so the check below can fail).
    kept = tmp_path / "control-upload-4f1c.jpg"
    Image.open(ui_app.image_of("paint-red")).save(kept)
    assert Path(_upload(ui_app.url, kept)).is_relative_to(ui_app.gradio_cache)
    assert list(ui_app.gradio_cache.rglob(kept.name))

    photo = tmp_path / "shopper-photo-9d2e.jpg"
    Image.open(ui_app.image_of("paint-navy")).save(photo)
    client = Client(ui_app.url, verbose=False)
    answer = client.predict(
        image=handle_file(str(photo)), top_k=3, background="off", api_name="/search_image"
    )
    assert answer["results"][0]["product_id"] == "paint-navy"
    assert not list(ui_app.gradio_cache.rglob(photo.name))
    # Refused requests delete theirs too (a bad filter before the photo is even read).
    refused = tmp_path / "refused-photo-77ab.jpg"
    Image.open(ui_app.image_of("paint-navy")).save(refused)
    with pytest.raises(AppError, match="above the maximum"):
        client.predict(image=handle_file(str(refused)), min_price=9, max_price=1, api_name="/search_image")
    assert not list(ui_app.gradio_cache.rglob(refused.name))

    # The browser path: the search button's handler gets Gradio's upload and deletes it too.
    uploaded = _upload(ui_app.url, photo)
    assert Path(uploaded).is_file()
    search = _fn_index(_config(ui_app.url), "search-btn")
    data = [_file_data(uploaded), "", "", 0.5, False, [], [], None, None, 3, 0, None]
    reply = _run_event(ui_app.url, search, data)
    assert reply.get("success"), reply
    assert "paint-navy" in json.dumps(reply["output"])
    assert not Path(uploaded).exists()


# ---------------------------------------------------------------------------------- finding 2


def _start_app(root: Path, data_dir: Path, catalog: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = (root / f"app-{port}.log").open("w")
    env = {**app_env(None, root / "gradio-cache"), "VS_ADMIN_PASSWORD": ADMIN_PASSWORD}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--model", "test:tiny", "--device", "cpu"]
        + ["--data-dir", str(data_dir), "--catalog", str(catalog), "--port", str(port)],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    wait_until_up(url, process, Path(log.name))
    return process, url


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def test_import_then_restart_discloses_no_file(tmp_path):
    """Finding 2: a UI import whose image column pointed outside its zip made that folder servable
    after a restart. Import such a CSV through the admin surface, restart, and ask for the files."""
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(outside / "pic.png")
    (outside / "secret.txt").write_text("not for shoppers")
    catalog = build_ui_catalog(tmp_path / "seed")
    upload_csv = tmp_path / "evil.csv"
    with upload_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["product_id", "image", "title"])
        writer.writerow(["evil-1", str(outside / "pic.png"), "Outside"])
        writer.writerow(["ok-1", "pics/ok.png", "Inside"])
    upload_zip = tmp_path / "pics.zip"
    Image.new("RGB", (64, 64), (20, 30, 200)).save(tmp_path / "ok.png")
    with zipfile.ZipFile(upload_zip, "w") as zf:
        zf.write(tmp_path / "ok.png", "pics/ok.png")

    data_dir = tmp_path / "data"
    process, url = _start_app(tmp_path, data_dir, catalog)
    try:
        admin = url + "admin/"
        cookies = _login(admin)
        csv_path, zip_path = _upload(admin, upload_csv, cookies), _upload(admin, upload_zip, cookies)
        importer = _fn_index(_config(admin, cookies), "import-btn")
        reply = _run_event(admin, importer, [_file_data(csv_path), _file_data(zip_path)], cookies)
        assert reply.get("success"), reply
        assert "Imported." in json.dumps(reply["output"])
    finally:
        _stop(process)
    process, url = _start_app(tmp_path, data_dir, catalog)
    try:
        for path in (outside / "pic.png", outside / "secret.txt", outside):
            assert _status(url + f"gradio_api/file={path}") == 403, path
        assert _status(url + "img/ok-1/0") == 200  # the zip's image is served by product id
    finally:
        _stop(process)
