"""Fixtures for the app tests: a small catalog and the real ``app.py`` running on the tiny model.

``ui_app`` starts ``python app.py --model test:tiny`` once per test session in a subprocess on a
free 127.0.0.1 port (its own data dir, its own Gradio cache, its cwd in a tmp dir so nothing depends
on the repo as cwd, the admin surface behind ADMIN_PASSWORD) and stops it by its process handle
afterwards. Background removal uses the real u2netp model from
the ``u2net_home`` fixture.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = ROOT / "sample_catalog" / "images"
ARTIFACTS = ROOT / "test-artifacts"

ADMIN_PASSWORD = "pilot-admin-test-password"
XSS_TITLE = 'Green <img src=x onerror="window.__xss=1"> Juice & "Co"'

# product_id, sample image (synthetic stand-in when missing), title, category, brand, price, colour
UI_PRODUCTS = [
    ("hoodie-blue", "saleor-blue-hoodie.jpg", "Blue Hoodie", "Apparel", "Northwind", 30.0, (40, 80, 200)),
    ("hoodie-black", "saleor-black-hoodie.jpg", "Black Hoodie", "Apparel", "Northwind", 32.0, (20, 20, 20)),
    ("hoodie-white", "saleor-white-hoodie.jpg", "White Hoodie", "Apparel", "Acme", 28.0, (235, 235, 235)),
    ("shirt-polo", "saleor-polo-shirt.jpg", "Polo Shirt", "Apparel", "Acme", 25.0, (200, 40, 40)),
    ("juice-orange", "saleor-orange-juice.jpg", "Orange Juice", "Juices", "Fresh", 4.5, (250, 150, 20)),
    ("juice-banana", "saleor-banana-juice.jpg", "Banana Juice", "Juices", "Fresh", 4.0, (240, 220, 60)),
    ("juice-carrot", "saleor-carrot-juice.jpg", "Carrot Juice", "Juices", "Fresh", 3.5, (230, 110, 30)),
    ("juice-green", "saleor-green-juice.jpg", XSS_TITLE, "Juices", "Fresh", 5.0, (60, 170, 60)),
    ("paint-red", "saleor-red-dwarf-red-paint.jpg", "Red Paint", "Paints", "Colorex", 12.0, (190, 20, 30)),
    (
        "paint-yellow",
        "saleor-light-speed-yellow-paint.jpg",
        "Yellow Paint",
        "Paints",
        "Colorex",
        12.0,
        (250, 210, 0),
    ),
    ("paint-navy", "saleor-space-dust-navy-paint.jpg", "Navy Paint", "Paints", "Colorex", 14.0, (20, 30, 90)),
]


@dataclass
class RunningApp:
    url: str
    root: Path  # tmp folder: catalog.csv, images/, data/
    catalog: Path
    images: Path
    data_dir: Path
    log_file: Path  # the app's stdout/stderr
    process: subprocess.Popen
    has_background_removal: bool
    gradio_cache: Path  # the app's GRADIO_TEMP_DIR (uploads land here)

    @property
    def admin_url(self) -> str:
        return self.url + "admin/"

    def image_of(self, product_id: str) -> Path:
        return self.images / f"{product_id}.jpg"

    def output(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")


def _product_image(source: str, colour: tuple[int, int, int], out: Path) -> None:
    """Copy a sample photo (shrunk) or draw a product-like stand-in: an object on a light backdrop."""
    path = SAMPLE_IMAGES / source
    if path.is_file():
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((384, 384))
            img.save(out, quality=88)
        return
    img = Image.new("RGB", (320, 320), (245, 243, 238))
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((90, 60, 230, 270), radius=28, fill=colour, outline=(60, 60, 60), width=3)
    img.save(out, quality=90)


def two_item_photo(images: Path, left: str, right: str, out: Path) -> Path:
    """A shopper's photo of two catalog products side by side on white, well apart (two objects
    for background removal). With the tiny model each one's own search ranks it first."""
    canvas = Image.new("RGB", (900, 420), (255, 255, 255))
    for i, product_id in enumerate((left, right)):
        with Image.open(images / f"{product_id}.jpg") as img:
            item = img.convert("RGB")
        item.thumbnail((300, 300))
        x = 40 if i == 0 else canvas.width - 40 - item.width
        canvas.paste(item, (x, (canvas.height - item.height) // 2))
    canvas.save(out, quality=92)
    return out


def build_ui_catalog(folder: Path) -> Path:
    """11 products in 3 categories (one title full of HTML), images next to the CSV."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for pid, source, title, category, brand, price, colour in UI_PRODUCTS:
        _product_image(source, colour, images / f"{pid}.jpg")
        rows.append(
            {
                "product_id": pid,
                "image": f"images/{pid}.jpg",
                "title": title,
                "category": category,
                "brand": brand,
                "price": f"{price:.2f}",
                "description": f"{title} for the UI tests",
            }
        )
    catalog = folder / "catalog.csv"
    with catalog.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return catalog


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log_file: Path, timeout: float = 150.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}:\n{log_file.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"app.py did not answer within {timeout:.0f} s:\n{log_file.read_text()[-4000:]}")


def app_env(u2net: Path | None, gradio_cache: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VS_ADMIN_PASSWORD", None)
    if gradio_cache is not None:
        env["GRADIO_TEMP_DIR"] = str(gradio_cache)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "2")
    if u2net is not None:
        env["U2NET_HOME"] = str(u2net)
    else:  # make sure a stray model on this machine does not count
        env["U2NET_HOME"] = str(Path(os.devnull))
    return env


@pytest.fixture(scope="session")
def ui_app(u2net_home: Path, tmp_path_factory: pytest.TempPathFactory):
    """The app under test, shared by the API and browser tests (real u2netp background removal)."""
    u2net = u2net_home
    root = tmp_path_factory.mktemp("ui_app")
    catalog = build_ui_catalog(root)
    data_dir = root / "data"
    port = free_port()
    log_file = root / "app.log"
    gradio_cache = root / "gradio-cache"
    env = {**app_env(u2net, gradio_cache), "VS_ADMIN_PASSWORD": ADMIN_PASSWORD}
    with log_file.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "app.py"),
                "--model",
                "test:tiny",
                "--device",
                "cpu",
                "--data-dir",
                str(data_dir),
                "--catalog",
                str(catalog),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--concurrency",
                "2",
                "--max-upload-mb",
                "5",
                "--allow-private-image-links",  # the link test serves its picture on loopback
            ],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, process, log_file)
        yield RunningApp(
            url, root, catalog, root / "images", data_dir, log_file, process, u2net is not None, gradio_cache
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
