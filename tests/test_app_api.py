"""The app's Gradio API through gradio_client, its startup errors and what it serves.

The app runs on the tiny random CLIP (``test:tiny``): its image-to-image scores are meaningful
(a catalog photo finds itself first), its text scores are not, so text tests check shape and
filters rather than relevance.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from ui_fixtures import ROOT, XSS_TITLE, app_env, two_item_photo

ENDPOINTS = ("/search_image", "/search_text", "/search_combined", "/more_like_this", "/recommend")


@pytest.fixture(scope="module")
def client(ui_app) -> Client:
    return Client(ui_app.url, verbose=False)


def _ids(response: dict) -> list[str]:
    return [r["product_id"] for r in response["results"]]


def test_named_endpoints_are_public(client):
    info = client.view_api(print_info=False, return_format="dict")
    assert set(ENDPOINTS) <= set(info["named_endpoints"])
    params = {p["parameter_name"] for p in info["named_endpoints"]["/search_combined"]["parameters"]}
    assert {"image", "text", "text_weight", "top_k", "categories", "remove_background"} <= params
    assert {"background", "box_index"} <= params
    image_params = {p["parameter_name"] for p in info["named_endpoints"]["/search_image"]["parameters"]}
    assert {"image", "background", "box_index", "remove_background"} <= image_params
    # The UI's own events are private: only the documented API is listed.
    assert not info["unnamed_endpoints"]


def test_search_image_finds_the_same_product_first(client, ui_app):
    # the whole photo (background off): the catalog photo itself scores 1
    r = client.predict(
        image=handle_file(str(ui_app.image_of("juice-orange"))),
        top_k=5,
        background="off",
        api_name="/search_image",
    )
    assert r["mode"] == "image"
    assert r["results"][0]["product_id"] == "juice-orange"
    assert r["results"][0]["score"] > 0.99
    assert [x["rank"] for x in r["results"]] == list(range(1, len(r["results"]) + 1))
    first = r["results"][0]
    assert {"title", "price", "category", "brand", "image_url", "score"} <= set(first)
    assert first["price"] == 4.5 and first["category"] == "Juices"
    timing = r["latency_ms"]
    assert set(timing) == {"total", "embed", "search"}
    assert (
        timing["total"] >= timing["embed"] + timing["search"] - 0.02
    )  # parts of the total (2-decimal rounding)
    json.dumps(r)  # JSON-able end to end


def test_search_text_with_filters(client):
    r = client.predict(
        text="a bottle of juice", top_k=20, categories=["Juices"], max_price=4.6, api_name="/search_text"
    )
    assert r["mode"] == "text"
    assert r["filters"]["categories"] == ["Juices"]
    assert "category: Juices" in r["filters"]["description"]
    assert set(_ids(r)) == {"juice-orange", "juice-banana", "juice-carrot"}
    assert all(x["price"] <= 4.6 for x in r["results"])


def test_search_text_threshold_can_empty_the_results(client):
    r = client.predict(text="anything", score_threshold=0.999, api_name="/search_text")
    assert r["results"] == []
    assert r["score_threshold"] == pytest.approx(0.999)


def test_search_combined_and_brand_filter(client, ui_app):
    r = client.predict(
        image=handle_file(str(ui_app.image_of("hoodie-blue"))),
        text="but in black",
        text_weight=0.3,
        top_k=5,
        brands=["Northwind"],
        api_name="/search_combined",
    )
    assert r["mode"] == "image+text"
    assert r["text_weight"] == pytest.approx(0.3)
    assert set(_ids(r)) <= {"hoodie-blue", "hoodie-black"}
    assert r["results"]


def test_search_image_with_background_removal(client, ui_app):
    r = client.predict(
        image=handle_file(str(ui_app.image_of("paint-red"))),
        top_k=3,
        remove_background=True,
        api_name="/search_image",
    )
    assert r["results"]
    if ui_app.has_background_removal:
        assert r["background_removed_fraction"] is not None
    else:
        assert any("Background removal is off" in n for n in r["notes"])


def test_search_image_defaults_to_the_object_aware_pipeline(client, ui_app):
    r = client.predict(
        image=handle_file(str(ui_app.image_of("paint-red"))), top_k=3, api_name="/search_image"
    )
    assert r["background"] == "auto"
    assert [v["name"] for v in r["views"]] == ["cutout", "box"]
    assert [v["label"] for v in r["views"]] == ["cut-out", "object box"]
    assert r["fusion"] == "max" and len(r["objects"]) >= 1 and r["box_index"] == 0
    box = r["objects"][0]
    assert 0 <= box["x0"] < box["x1"] <= 1 and 0 <= box["y0"] < box["y1"] <= 1 and 0 < box["area"] <= 1
    assert r["results"][0]["product_id"] == "paint-red"
    off = client.predict(
        image=handle_file(str(ui_app.image_of("paint-red"))),
        top_k=3,
        background="off",
        api_name="/search_image",
    )
    assert off["background"] == "off" and [v["name"] for v in off["views"]] == ["photo"]
    assert off["objects"] == [] and off["box_index"] is None and off["background_removed_fraction"] is None


def test_two_items_come_back_as_objects_and_box_index_searches_the_second(client, ui_app, tmp_path):
    photo = two_item_photo(ui_app.images, "hoodie-blue", "paint-yellow", tmp_path / "two.jpg")
    first = client.predict(image=handle_file(str(photo)), top_k=3, api_name="/search_image")
    assert len(first["objects"]) == 2 and first["box_index"] == 0
    left, right = first["objects"]
    assert left["x1"] < 0.5 < right["x0"]  # the hoodie (left, larger) first, the paint tin second
    assert first["results"][0]["product_id"] == "hoodie-blue"
    second = client.predict(image=handle_file(str(photo)), top_k=3, box_index=1, api_name="/search_image")
    assert second["box_index"] == 1 and second["objects"] == first["objects"]
    assert second["results"][0]["product_id"] == "paint-yellow"
    combined = client.predict(
        image=handle_file(str(photo)),
        text="a tin of paint",
        text_weight=0.2,
        box_index=1,
        top_k=3,
        api_name="/search_combined",
    )
    assert combined["mode"] == "image+text" and combined["box_index"] == 1 and len(combined["views"]) == 2
    with pytest.raises(AppError, match="no object 3 in this photo"):
        client.predict(image=handle_file(str(photo)), box_index=2, api_name="/search_image")


def test_legacy_remove_background_flag_maps_to_on_and_off(client, ui_app):
    photo = handle_file(str(ui_app.image_of("paint-red")))
    on = client.predict(image=photo, top_k=3, remove_background=True, api_name="/search_image")
    assert on["background"] == "on" and [v["name"] for v in on["views"]] == ["cutout"]
    off = client.predict(image=photo, top_k=3, remove_background=False, api_name="/search_image")
    assert off["background"] == "off" and [v["name"] for v in off["views"]] == ["photo"]
    # an explicit background wins over the legacy flag
    explicit = client.predict(
        image=photo, top_k=3, remove_background=False, background="on", api_name="/search_image"
    )
    assert explicit["background"] == "on"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"background": "sometimes"}, "background must be one of auto, off, on"),
        ({"box_index": -1}, "object number must be a whole number"),
        ({"remove_background": "yes"}, "remove_background must be true or false"),
    ],
)
def test_bad_photo_options_give_human_errors(client, ui_app, kwargs, message):
    with pytest.raises(AppError, match=message) as info:
        client.predict(
            image=handle_file(str(ui_app.image_of("paint-red"))), api_name="/search_image", **kwargs
        )
    assert "Traceback" not in str(info.value)


def test_more_like_this_and_recommend(client):
    r = client.predict(product_id="juice-orange", top_k=4, api_name="/more_like_this")
    assert r["mode"] == "more-like-this"
    assert "juice-orange" not in _ids(r) and len(r["results"]) == 4
    r = client.predict(
        positive_ids=["juice-orange", "juice-banana"],
        negative_ids=["paint-red"],
        top_k=5,
        api_name="/recommend",
    )
    assert r["mode"] == "recommend"
    assert not {"juice-orange", "juice-banana", "paint-red"} & set(_ids(r))


def test_html_in_catalog_text_comes_back_as_plain_text(client):
    r = client.predict(product_id="juice-orange", top_k=10, categories=["Juices"], api_name="/more_like_this")
    assert XSS_TITLE in [x["title"] for x in r["results"]]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": "   ", "api_name": "/search_text"}, "text query is empty"),
        ({"text": "x", "top_k": 0, "api_name": "/search_text"}, "top_k must be between 1 and 100"),
        (
            {"text": "x", "min_price": 10, "max_price": 5, "api_name": "/search_text"},
            r"minimum price \(10\) is above",
        ),
        ({"text": "x", "min_price": -1, "api_name": "/search_text"}, "cannot be negative"),
        ({"product_id": "no-such-product", "api_name": "/more_like_this"}, "not in the index"),
        ({"positive_ids": [], "api_name": "/recommend"}, "Like at least one product"),
        ({"image": None, "api_name": "/search_image"}, "Send a photo"),
    ],
)
def test_bad_inputs_give_human_errors(client, kwargs, message):
    with pytest.raises(AppError, match=message):
        client.predict(**kwargs)


def test_bad_photos_give_human_errors(client, ui_app, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    with pytest.raises(AppError, match="not an image this app can read|damaged"):
        client.predict(image=handle_file(str(corrupt)), api_name="/search_image")
    # 12k x 10k pixels: a few hundred KB as PNG, but over the 100-megapixel limit.
    bomb = tmp_path / "huge.png"
    Image.new("L", (12_000, 10_000)).save(bomb, optimize=True)
    with pytest.raises(AppError, match="megapixels"):
        client.predict(image=handle_file(str(bomb)), api_name="/search_image")
    with pytest.raises(AppError, match="text part is empty"):
        client.predict(
            image=handle_file(str(ui_app.image_of("paint-red"))), text="", api_name="/search_combined"
        )
    with pytest.raises(AppError, match="text weight must be between 0 and 1"):  # the engine's one message
        client.predict(
            image=handle_file(str(ui_app.image_of("paint-red"))),
            text="red",
            text_weight=2,
            api_name="/search_combined",
        )


def test_uploads_are_size_capped(client, tmp_path):
    big = tmp_path / "big.jpg"  # the test app runs with --max-upload-mb 5
    big.write_bytes(b"\xff\xd8" + b"\0" * (6 * 1024 * 1024))
    with pytest.raises(Exception, match="(?i)size|large|413"):
        client.predict(image=handle_file(str(big)), api_name="/search_image")


def test_app_keeps_serving_after_errors(client):
    with pytest.raises(AppError):
        client.predict(text="", api_name="/search_text")
    assert client.predict(text="paint", top_k=2, api_name="/search_text")["results"]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_catalog_images_are_served_by_product_id_not_by_path(client, ui_app):
    r = client.predict(product_id="juice-orange", top_k=3, api_name="/more_like_this")
    url = r["results"][0]["image_url"]
    assert url.startswith("/img/") and str(ui_app.root) not in url
    with urllib.request.urlopen(ui_app.url + url.lstrip("/"), timeout=10) as resp:
        assert resp.headers["content-type"].startswith("image/")
        served = resp.read()
    assert served == ui_app.image_of(r["results"][0]["product_id"]).read_bytes()  # the catalog file itself
    with urllib.request.urlopen(ui_app.url + "img/juice-orange/0?size=thumb", timeout=10) as resp:
        with Image.open(resp) as img:
            assert max(img.size) <= 384
    assert _status(ui_app.url + "examples/0") == 200


def test_file_route_serves_no_catalog_image_or_server_file(ui_app):
    file_route = ui_app.url + "gradio_api/file="
    for forbidden in (
        str(ui_app.image_of("juice-orange")),  # served by product id only
        "/etc/passwd",
        str(ROOT / "app.py"),
        str(ui_app.catalog),  # the CSV next to the images
        str(ui_app.data_dir / "analytics" / "search_log.jsonl"),
        str(ui_app.images / ".." / "catalog.csv"),
    ):
        assert _status(file_route + forbidden) in (403, 404), forbidden


def test_searches_and_feedback_are_logged_without_photos(client, ui_app):
    client.predict(
        image=handle_file(str(ui_app.image_of("paint-navy"))),
        top_k=3,
        background="off",
        api_name="/search_image",
    )
    log = ui_app.data_dir / "analytics" / "search_log.jsonl"
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    searches = [e for e in events if e["event"] == "search"]
    assert searches and searches[-1]["mode"] == "image"
    assert searches[-1]["result_ids"][0] == "paint-navy"
    assert isinstance(searches[-1]["latency_ms"], float)
    assert searches[-1]["photo_path"] is None
    assert not (ui_app.data_dir / "analytics" / "photos").exists()


def _run_app(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--data-dir", str(tmp_path / "data"), *args],
        cwd=tmp_path,
        env=app_env(None),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_unavailable_model_is_one_line_and_exit_2(tmp_path):
    done = _run_app(["--model", "test:nonexistent", "--no-auto-index"], tmp_path)
    assert done.returncode == 2
    assert "error:" in done.stderr and "test:nonexistent" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_unreachable_qdrant_is_one_line_and_exit_2(tmp_path):
    done = _run_app(
        ["--model", "test:tiny", "--qdrant-url", "http://127.0.0.1:9", "--no-auto-index"], tmp_path
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "error:" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


# ---------------------------------------------------------------- UI helpers (no app needed)


def test_cards_escape_catalog_text_and_refuse_script_links():
    from visual_search.ui import render

    card = {
        "product_id": 'p"1',
        "title": XSS_TITLE,
        "price": 5,
        "category": "<b>Juices</b>",
        "brand": "A & B",
        "image": "/data/img's/x y.jpg",
        "image_url": "img/p%221/0?size=thumb",
        "score": 0.5,
        "url": "javascript:alert(1)",
    }
    html = render.product_card(card, 1)
    assert "<img src=x" not in html and "&lt;img src=x onerror=&quot;window.__xss=1&quot;&gt;" in html
    assert "<b>Juices</b>" not in html and "&lt;b&gt;Juices&lt;/b&gt;" in html
    assert 'data-pid="p&quot;1"' in html
    assert "javascript:" not in html
    assert "/data/" not in html  # no server path, whatever the card carries
    summary = render.summary_bar(
        {"mode": "text", "text": "<script>x</script>", "filters_text": "category: <i>", "results": []}
    )
    assert "<script>" not in summary and "<i>" not in summary


def test_filters_from_widgets():
    from visual_search.core.errors import VisualSearchError
    from visual_search.ui.common import build_filters, threshold_or_none

    f = build_filters(["Juices"], None, 0, 10)
    assert f.categories == ("Juices",) and f.min_price is None and f.max_price == 10
    assert build_filters(None, "Acme", None, None).brands == ("Acme",)
    with pytest.raises(VisualSearchError, match="above the maximum"):
        build_filters(None, None, 20, 10)
    assert threshold_or_none(0) is None and threshold_or_none(0.25) == 0.25


def test_price_histogram_bins_in_price_order():
    from visual_search.evaluation.calibration import builtin_threshold as default_threshold
    from visual_search.stats import PriceBin
    from visual_search.ui.tabs.catalog import price_histogram

    bins = [
        PriceBin(0, 5, 2),
        PriceBin(5, 10, 0),
        PriceBin(10, 15, 1),
        PriceBin(15, 20, 1),
        PriceBin(30, 35, 1),
    ]
    frame, labels = price_histogram(bins, "$")
    assert labels[0] == "$0–5" and labels[-1] == "$30–35" and labels == list(frame["price range"])
    assert list(frame["products"]) == [2, 0, 1, 1, 1]
    assert default_threshold("test:tiny@random-seed0") == 0.0
    assert default_threshold("ViT-B-32@laion2b_s34b_b79k") == pytest.approx(0.2)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/x.jpg",
        "http://localhost/x.jpg",
        "http://10.1.2.3/x.jpg",
        "http://192.168.0.10/x.jpg",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/x.jpg",
    ],
)
def test_image_links_to_private_addresses_are_refused(url, monkeypatch):
    """The link box goes through the one guard: refused before any connection is made."""
    import socket

    from visual_search.core.errors import VisualSearchError
    from visual_search.ui.common import load_link

    def no_connect(*args, **kwargs):
        raise AssertionError("the guard let a private link reach the network")

    monkeypatch.setattr(socket, "create_connection", no_connect)
    monkeypatch.setattr(socket.socket, "connect", no_connect)
    with pytest.raises(VisualSearchError) as caught:
        load_link(url, allow_private=False)
    assert "private" in str(caught.value).lower() or "local" in str(caught.value).lower()
