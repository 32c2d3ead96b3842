"""The app in real headless Chromium (Debian chromium + Playwright), on the tiny model.

Covers the issue's 'done means': upload a photo, type a text, apply a filter, pick the background
mode and see every view that was searched, tap the second of two items in a photo, click a result
for more-like-this, like/dislike and reset, a phone viewport, and the visible error and empty
states. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
from ui_fixtures import ADMIN_PASSWORD, two_item_photo

pytestmark = pytest.mark.browser


def _find_chromium() -> str | None:
    """The system's Chromium (Debian's package), else the one Playwright installs for itself
    (`python -m playwright install chromium`, the ecosystem's way where its download host is reachable)."""
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return _playwright_chromium()


def _playwright_chromium() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return None
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as p:
            path = p.chromium.executable_path
    except Exception:  # noqa: BLE001 - no driver or no browser: the caller reports one line
        return None
    return path if path and Path(path).is_file() else None


def _missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if importlib.util.find_spec("playwright") is None:
        return "Playwright is not installed (pip install -r requirements-dev.txt)"
    if _find_chromium() is None:
        return "Chromium is not installed (apt-get install -y chromium, or python -m playwright install chromium)"
    return None


# One line for the whole module, not an error per test: skipped on a machine without the browser,
# a failure where the browser is required (.ci/run sets VS_REQUIRE_BROWSER=1).
if (_why := _missing()) is not None:
    if os.environ.get("VS_REQUIRE_BROWSER"):
        pytest.fail(f"browser tests required (VS_REQUIRE_BROWSER) but {_why}", pytrace=False)
    pytest.skip(f"browser tests skipped: {_why}", allow_module_level=True)

CHROMIUM = _find_chromium()
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
RESULTS = "#results .vs-results"
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    from playwright import sync_api  # requirements-dev.txt; imported here so collection stays cheap

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, ui_app):
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    open_app(page, ui_app.url)
    yield page
    context.close()
    assert not [e for e in errors if "__xss" in e]


@pytest.fixture
def admin_page(browser, ui_app):
    """The admin surface, logged in through Gradio's login form endpoint (cookie in the context)."""
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    reply = context.request.post(
        ui_app.admin_url + "login", form={"username": "admin", "password": ADMIN_PASSWORD}
    )
    assert reply.ok, reply.status
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(ui_app.admin_url)
    page.wait_for_selector("#index-status")
    yield page
    context.close()


def open_app(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector(RESULTS)
    page.wait_for_selector("#photo input[type=file]", state="attached")


def results_html(page) -> str:
    return page.locator(RESULTS).evaluate("e => e.outerHTML")


def wait_for_new_results(page, before: str) -> None:
    page.wait_for_function(
        """prev => { const e = document.querySelector('#results .vs-results');
                     return e && e.outerHTML !== prev; }""",
        arg=before,
        timeout=TIMEOUT_MS,
    )


def run(page, action) -> None:
    """Do something that re-renders the results panel and wait until it has."""
    before = results_html(page)
    action()
    wait_for_new_results(page, before)


def card_ids(page) -> list[str]:
    return page.locator(f"{RESULTS} .vs-grid .vs-card").evaluate_all("cards => cards.map(c => c.dataset.pid)")


def summary(page) -> str:
    bar = page.locator(f"{RESULTS} .vs-summary")
    assert bar.count() == 1, page.locator(RESULTS).inner_text()
    return bar.inner_text()


def upload_photo(page, path: Path) -> None:
    page.locator("#photo input[type=file]").set_input_files(str(path))
    page.wait_for_function(
        "() => { const i = document.querySelector('#photo img'); return i && i.complete && i.naturalWidth > 0; }"
    )


def photo_size(page) -> list[int]:
    return page.locator("#photo img").evaluate("i => [i.naturalWidth, i.naturalHeight]")


def search(page) -> None:
    run(page, lambda: page.locator("#search-btn").click())


def open_filters(page) -> None:
    if not page.locator("#filter-category").is_visible():
        page.locator("#filters").get_by_text("Filters & ranking").click()
        page.locator("#filter-category").wait_for(state="visible")


def pick_category(page, name: str) -> None:
    open_filters(page)
    page.locator("#filter-category input").click()
    page.get_by_role("option", name=name).first.click()
    page.keyboard.press("Escape")


def set_slider(page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_timeout(200)


def shot(page, artifacts_dir: Path, name: str) -> None:
    page.screenshot(path=str(artifacts_dir / name), full_page=True)


def log_events(ui_app) -> list[dict]:
    log = ui_app.data_dir / "analytics" / "search_log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------- tests


def test_photo_then_photo_plus_text(page, ui_app, artifacts_dir):
    upload_photo(page, ui_app.image_of("hoodie-blue"))
    search(page)
    assert summary(page).startswith("Photo search")
    assert card_ids(page)[0] == "hoodie-blue"
    first = page.locator(f"{RESULTS} .vs-card").first
    assert "$30.00" in first.inner_text() and "Apparel" in first.inner_text()
    assert first.locator(".vs-score-num").inner_text()
    assert "ms" in page.locator(f"{RESULTS} .vs-latency").inner_text()
    shot(page, artifacts_dir, "desktop-photo-search.png")

    page.locator("#query-text textarea").fill("like this but in black")
    search(page)
    assert "Photo + text" in summary(page)
    assert "like this but in black" in summary(page)
    shot(page, artifacts_dir, "desktop-photo-plus-text.png")


def test_text_search_with_category_filter_and_empty_state(page, ui_app, artifacts_dir):
    page.locator("#query-text textarea").fill("fresh juice")
    pick_category(page, "Juices (4)")
    search(page)
    assert "Text search" in summary(page)
    assert "category: Juices" in summary(page)
    chips = page.locator(f"{RESULTS} .vs-card .vs-chip").all_inner_texts()
    assert chips and set(chips) == {"Juices"}, page.locator(RESULTS).inner_text()
    assert set(card_ids(page)) == {"juice-orange", "juice-banana", "juice-carrot", "juice-green"}
    # Catalog text with HTML in it is shown as text, never parsed.
    titles = page.locator(f"{RESULTS} .vs-card .vs-title").all_inner_texts()
    assert any('<img src=x onerror="window.__xss=1">' in t for t in titles)
    assert page.locator(f'{RESULTS} img[src="x"]').count() == 0
    assert page.evaluate("() => window.__xss") is None
    shot(page, artifacts_dir, "desktop-text-filter.png")

    set_slider(page, "threshold", 1)
    search(page)
    empty = page.locator(f"{RESULTS} .vs-noresults")
    assert empty.is_visible()
    assert "No product above the threshold" in empty.inner_text()
    assert "lower the score threshold" in empty.inner_text() and "clear the filters" in empty.inner_text()
    shot(page, artifacts_dir, "desktop-empty-state.png")


def set_background(page, label: str) -> None:
    page.locator("#background").get_by_label(label, exact=True).check()


def preview_labels(page) -> list[str]:
    return page.locator("#views-preview figcaption").all_inner_texts()


def test_background_choice_shows_every_view_that_was_searched(page, ui_app, artifacts_dir):
    assert ui_app.has_background_removal
    assert page.locator("#background").get_by_label("Auto", exact=True).is_checked()  # the default
    upload_photo(page, ui_app.image_of("paint-red"))
    search(page)
    preview = page.locator("#views-preview")
    preview.wait_for(state="visible")
    assert preview_labels(page) == ["your photo", "cut-out", "object box"]
    page.wait_for_function(
        "() => [...document.querySelectorAll('#views-preview img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert "Background: auto · searched cut-out + object box" in summary(page)
    assert card_ids(page)
    shot(page, artifacts_dir, "desktop-background-auto.png")

    set_background(page, "On")
    search(page)
    assert preview_labels(page) == ["your photo", "cut-out"]
    assert "Background: on · searched cut-out" in summary(page)

    set_background(page, "Off")
    search(page)
    assert not preview.is_visible()
    assert "Background: off · searched whole photo" in summary(page)


def test_two_items_show_chips_and_tapping_the_second_searches_it(page, ui_app, tmp_path, artifacts_dir):
    photo = two_item_photo(ui_app.images, "hoodie-blue", "paint-yellow", tmp_path / "two-items.jpg")
    upload_photo(page, photo)
    chips = page.locator("#object-chips .vs-obj-chip")
    assert chips.count() == 0
    search(page)
    chips.first.wait_for(state="visible")
    assert chips.count() == 2 and page.locator("#object-chips .vs-obj-box").count() == 2
    assert [" ".join(t.split()) for t in chips.all_inner_texts()] == ["1 Item 1", "2 Item 2"]
    assert chips.nth(0).get_attribute("aria-pressed") == "true"
    assert "item 1 of 2" in summary(page)
    assert card_ids(page)[0] == "hoodie-blue"
    # the numbered boxes sit over the two items: the first on the left half, the second on the right
    stage = page.locator("#object-chips .vs-obj-stage").bounding_box()
    left = page.locator("#object-chips .vs-obj-box").nth(0).bounding_box()
    right = page.locator("#object-chips .vs-obj-box").nth(1).bounding_box()
    assert left["x"] + left["width"] < stage["x"] + stage["width"] / 2 < right["x"]
    cutout = page.locator('#views-preview [data-view="cutout"] img')
    before = cutout.get_attribute("src")
    shot(page, artifacts_dir, "desktop-two-items.png")

    run(page, lambda: chips.nth(1).click())
    assert card_ids(page)[0] == "paint-yellow"
    assert "item 2 of 2" in summary(page)
    page.wait_for_function(
        "() => document.querySelector('#object-chips .vs-obj-chip[data-object=\"1\"]')"
        "?.getAttribute('aria-pressed') === 'true'"
    )
    assert cutout.get_attribute("src") != before  # the preview shows the second item now
    assert preview_labels(page) == ["your photo", "cut-out", "object box"]
    shot(page, artifacts_dir, "desktop-two-items-second.png")

    # a tap on the first item's box over the photo searches it again
    run(page, lambda: page.locator('#object-chips .vs-obj-box[data-object="0"]').click())
    assert card_ids(page)[0] == "hoodie-blue" and "item 1 of 2" in summary(page)


def test_more_like_this_like_dislike_and_reset(page, ui_app, artifacts_dir):
    page.locator("#query-text textarea").fill("something to drink")
    search(page)
    assert "juice-orange" in card_ids(page)

    run(page, lambda: page.locator(f'{RESULTS} .vs-card[data-pid="juice-orange"] .vs-more').click())
    assert "More like this" in summary(page) and "Orange Juice" in summary(page)
    more_ids = card_ids(page)
    assert more_ids and "juice-orange" not in more_ids

    liked = more_ids[0]
    run(page, lambda: page.locator(f'{RESULTS} .vs-card[data-pid="{liked}"] .vs-like').click())
    assert "Refined by your likes" in summary(page)
    assert page.locator(f'{RESULTS} .vs-refine .vs-x[data-action="unlike"][data-pid="{liked}"]').count() == 1
    liked_ids = card_ids(page)
    assert liked not in liked_ids and liked_ids != more_ids

    disliked = liked_ids[0]
    run(page, lambda: page.locator(f'{RESULTS} .vs-card[data-pid="{disliked}"] .vs-dislike').click())
    assert (
        page.locator(f'{RESULTS} .vs-refine .vs-x[data-action="undislike"][data-pid="{disliked}"]').count()
        == 1
    )
    refined = card_ids(page)
    assert disliked not in refined and liked not in refined
    shot(page, artifacts_dir, "desktop-like-dislike.png")

    run(page, lambda: page.locator("#reset-btn").click())
    assert card_ids(page) == more_ids
    assert page.locator(f"{RESULTS} .vs-refine").count() == 0

    actions = [(e.get("action"), e.get("product_id")) for e in log_events(ui_app) if e["event"] == "feedback"]
    assert ("click", "juice-orange") in actions
    assert ("like", liked) in actions and ("dislike", disliked) in actions


def test_dislike_only_refines_the_text_search(page, ui_app):
    page.locator("#query-text textarea").fill("something to drink")
    search(page)
    first = card_ids(page)
    assert len(first) >= 2
    disliked = first[0]
    run(page, lambda: page.locator(f'{RESULTS} .vs-card[data-pid="{disliked}"] .vs-dislike').click())
    assert "Refined by your likes" in summary(page)
    refined = card_ids(page)
    # The text query itself is the positive example, so a dislike alone still refines.
    assert refined and disliked not in refined
    second = refined[0]
    run(page, lambda: page.locator(f'{RESULTS} .vs-card[data-pid="{second}"] .vs-dislike').click())
    assert not {disliked, second} & set(card_ids(page))
    run(page, lambda: page.locator("#reset-btn").click())
    assert card_ids(page) == first


def test_crop_searches_one_region(page, ui_app, artifacts_dir):
    upload_photo(page, ui_app.image_of("juice-orange"))
    full = photo_size(page)
    page.locator("#crop-btn").click()
    stage = page.locator("#cropper .vs-crop-stage")
    stage.wait_for(state="visible")
    page.wait_for_function("() => document.querySelector('#cropper .vs-crop-stage img')?.naturalWidth > 0")
    stage.scroll_into_view_if_needed()
    area = stage.bounding_box()
    handle = page.locator("#cropper .vs-h-nw").bounding_box()
    page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    page.mouse.down()
    page.mouse.move(area["x"] + area["width"] * 0.5, area["y"] + area["height"] * 0.5, steps=8)
    page.mouse.up()
    shot(page, artifacts_dir, "desktop-crop-tool.png")
    before = page.locator("#photo img").get_attribute("src")
    page.locator("#cropper [data-crop=apply]").click()
    page.wait_for_function(
        "prev => document.querySelector('#photo img')?.getAttribute('src') !== prev", arg=before
    )
    page.wait_for_function(
        "() => { const i = document.querySelector('#photo img'); return i && i.complete && i.naturalWidth > 0; }"
    )
    cropped = photo_size(page)
    # The box went from 10%-90% to 50%-90% of each side: 40% of the photo's width and height.
    assert cropped[0] == pytest.approx(0.4 * full[0], abs=0.06 * full[0]), (full, cropped)
    assert cropped[1] == pytest.approx(0.4 * full[1], abs=0.06 * full[1]), (full, cropped)
    assert not page.locator("#crop-box").is_visible()
    search(page)
    assert summary(page).startswith("Photo search")


@pytest.fixture
def image_server(ui_app):
    """A local http server for the catalog images: the 'web' for the image-link input."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(ui_app.images))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_image_link_loads_into_the_photo_box(page, ui_app, image_server):
    link = page.locator("#image-url textarea, #image-url input").first
    link.fill("ftp://example.com/x.jpg")
    page.locator("#load-url").click()
    message = page.locator("#photo-msg .vs-error")
    message.wait_for()
    assert "must start with http" in message.inner_text()

    link.fill(image_server + "does-not-exist.jpg")
    page.locator("#load-url").click()
    page.wait_for_function("() => document.querySelector('#photo-msg')?.innerText.includes('404')")

    link.fill(image_server + "paint-yellow.jpg")
    page.locator("#load-url").click()
    page.wait_for_function(
        "() => { const i = document.querySelector('#photo img'); return i && i.complete && i.naturalWidth > 0; }"
    )
    assert not page.locator("#photo-msg").is_visible()
    search(page)
    assert summary(page).startswith("Photo search")
    assert card_ids(page)[0] == "paint-yellow"


def test_visible_errors_and_app_keeps_working(page, ui_app):
    search(page)  # nothing given
    error = page.locator(f"{RESULTS} .vs-error")
    assert error.is_visible() and "Add a photo" in error.inner_text()

    page.locator("#image-url input, #image-url textarea").first.fill("file:///etc/passwd")
    search(page)
    assert "must start with http" in page.locator(f"{RESULTS} .vs-error").inner_text()

    page.locator("#image-url input, #image-url textarea").first.fill("")
    open_filters(page)
    page.locator("#min-price input").fill("50")
    page.locator("#max-price input").fill("10")
    page.locator("#query-text textarea").fill("paint")
    search(page)
    assert "minimum price (50) is above the maximum (10)" in page.locator(f"{RESULTS} .vs-error").inner_text()

    page.locator("#min-price input").fill("")
    search(page)
    assert page.locator(f"{RESULTS} .vs-error").count() == 0
    prices = page.locator(f"{RESULTS} .vs-price").all_inner_texts()
    assert prices and all(float(p.lstrip("$")) <= 10 for p in prices)


def test_phone_viewport_example_photo_in_one_tap(browser, ui_app, artifacts_dir):
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        open_app(page, ui_app.url)
        shot(page, artifacts_dir, "phone-start.png")
        examples = page.locator("#example-photos .vs-example")
        assert examples.count() >= 1
        run(page, lambda: examples.first.click())
        assert summary(page).startswith("Photo search")
        cards = page.locator(f"{RESULTS} .vs-card")
        assert cards.count() >= 2
        a, b = cards.nth(0).bounding_box(), cards.nth(1).bounding_box()
        assert abs(a["y"] - b["y"]) < 2 and b["x"] > a["x"]  # two cards per row
        assert a["x"] >= 0 and b["x"] + b["width"] <= 391
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"page is {overflow}px wider than the phone"
        shot(page, artifacts_dir, "phone-results.png")

        run(page, lambda: cards.nth(0).locator(".vs-like").tap())
        assert "Refined by your likes" in summary(page)
    finally:
        context.close()


def test_catalog_tab_status_charts_audit_and_export(admin_page, ui_app, artifacts_dir):
    page = admin_page
    page.get_by_role("tab", name="Catalog").click()
    status = page.locator("#index-status")
    status.wait_for(state="visible")
    text = status.inner_text()
    assert "test:tiny" in text and "qdrant-edge" in text and "11" in text
    page.wait_for_selector("#catalog-charts canvas, #catalog-charts svg")
    page.locator("#dup-btn").click()
    page.wait_for_selector("#dup-out table, #dup-out .vs-notice")
    page.get_by_role("tab", name="Likely miscategorised").click()
    page.locator("#mis-btn").click()
    page.wait_for_selector("#mis-out table, #mis-out .vs-notice")
    page.get_by_role("tab", name="Nearest neighbours").click()
    page.locator("#nn-product input").fill("paint-red")
    page.locator("#nn-product input").press("Enter")
    page.locator("#nn-btn").click()
    page.wait_for_selector("#nn-out .vs-card")
    assert "paint-red" not in page.locator("#nn-out .vs-card").evaluate_all(
        "cs => cs.map(c => c.dataset.pid)"
    )
    shot(page, artifacts_dir, "desktop-catalog.png")

    page.get_by_role("tab", name="Retrieval evaluation").click()
    page.locator("#eval-btn").click()
    table = page.locator("#eval-out table").first
    table.wait_for(state="visible", timeout=120_000)
    assert "Recall@10" in table.inner_text() or "R@10" in table.inner_text()
    assert "SYNTHETIC" in page.locator("#eval-out").inner_text()

    page.get_by_role("tab", name="Pilot analytics").click()
    page.locator("#export-btn").click()
    link = page.locator("#export-file a").first
    link.wait_for(state="visible")
    assert ".csv" in (link.get_attribute("href") or "") + link.inner_text()


def test_import_catalog_with_progress_and_row_errors(admin_page, page, ui_app, tmp_path, artifacts_dir):
    """Runs last in this file: it adds two products (category 'Imported') to the shared index."""
    import csv
    import zipfile

    from PIL import Image as PILImage

    csv_path = tmp_path / "new_products.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["product_id", "image", "title", "category", "brand", "price"])
        writer.writerow(["imp-1", "pics/imp-1.jpg", "Imported Lamp", "Imported", "Lumen", "19.90"])
        writer.writerow(["imp-2", "pics/imp-2.jpg", "Imported Vase", "Imported", "Lumen", "24.50"])
        writer.writerow(["imp-3", "pics/missing.jpg", "Ghost Product", "Imported", "Lumen", "9.99"])
    zip_path = tmp_path / "pics.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        for pid, colour in (("imp-1", (250, 200, 40)), ("imp-2", (30, 140, 160))):
            img_path = tmp_path / f"{pid}.jpg"
            PILImage.new("RGB", (200, 200), colour).save(img_path)
            zf.write(img_path, f"pics/{pid}.jpg")

    admin = admin_page
    admin.locator("#import-csv input[type=file]").set_input_files(str(csv_path))
    admin.locator("#import-zip input[type=file]").set_input_files(str(zip_path))
    admin.wait_for_function("() => document.querySelectorAll('#import-csv a, #import-zip a').length >= 2")
    admin.locator("#import-btn").click()
    report = admin.locator("#import-report")
    report.locator(".vs-notice, .vs-error").first.wait_for(timeout=60_000)
    text = report.inner_text()
    assert "Imported." in text and "2 embedded" in text, text
    assert "row 4 (imp-3)" in text, text
    admin.wait_for_function("() => document.querySelector('#index-status').innerText.includes('13')")
    admin.wait_for_timeout(1000)  # let the charts redraw for the screenshot
    shot(admin, artifacts_dir, "desktop-import.png")

    open_app(page, ui_app.url)  # the shopper page picks up the new catalog when it loads
    pick_category(page, "Imported (2)")
    page.locator("#query-text textarea").fill("lamp")
    search(page)
    assert set(card_ids(page)) == {"imp-1", "imp-2"}
    # The imported images are served by product id (the image route), not from the import folder.
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results .vs-card img')].every(i => i.complete && i.naturalWidth > 0)"
    )
