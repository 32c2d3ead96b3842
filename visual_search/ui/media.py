"""Images served by product id, not by path: ``/img/<product id>/<index>[?size=thumb]`` and the
example photos ``/examples/<n>``.

The route looks the product up in the index and streams that file, so the page never names a
server path and Gradio's ``allowed_paths`` never has to grow from indexed data. Anything unknown
is a bare 404. Thumbnails are a fixed size and cached in memory.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from PIL import Image

from ..catalog import MAX_IMAGES_PER_PRODUCT
from ..engine import product_image
from .common import UIContext

THUMB_SIDE = 384
THUMB_CACHE_ENTRIES = 1024
CACHE_HEADERS = {"Cache-Control": "public, max-age=300"}
NOT_FOUND = Response(status_code=404)


class ThumbnailCache:
    """JPEG thumbnails keyed by file, size and modification time (a re-import gets a fresh one)."""

    def __init__(self, entries: int = THUMB_CACHE_ENTRIES) -> None:
        self.entries = entries
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()

    def get(self, path: Path) -> bytes | None:
        try:
            key = (str(path), path.stat().st_mtime_ns, THUMB_SIDE)
        except OSError:
            return None
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        try:
            with Image.open(path) as img:
                img.draft("RGB", (THUMB_SIDE, THUMB_SIDE))  # JPEG: decode at reduced size
                thumb = img.convert("RGB")
                thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
                buffer = io.BytesIO()
                thumb.save(buffer, format="JPEG", quality=85)
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
        data = buffer.getvalue()
        with self._lock:
            self._items[key] = data
            while len(self._items) > self.entries:
                self._items.popitem(last=False)
        return data


def add_media_routes(app: FastAPI, ctx: UIContext, prefixes: tuple[str, ...] = ("",)) -> None:
    """Register the image routes on the outer app (before the Gradio mounts, so they win)."""
    thumbs = ThumbnailCache()

    def catalog_image(product_id: str, index: str, size: str | None = None) -> Response:
        if not index.isdigit() or int(index) >= MAX_IMAGES_PER_PRODUCT or len(product_id) > 512:
            return NOT_FOUND
        try:
            path = product_image(ctx.engine, product_id, int(index))
        except Exception:  # noqa: BLE001 - a store hiccup is a missing image to the browser
            path = None
        if path is None:
            return NOT_FOUND
        if size == "thumb":
            data = thumbs.get(path)
            if data is None:
                return NOT_FOUND
            return Response(data, media_type="image/jpeg", headers=CACHE_HEADERS)
        return FileResponse(path, headers=CACHE_HEADERS)

    def example_image(index: str) -> Response:
        if not index.isdigit() or int(index) >= len(ctx.examples):
            return NOT_FOUND
        return FileResponse(ctx.examples[int(index)], headers=CACHE_HEADERS)

    for prefix in prefixes:
        app.add_api_route(
            f"{prefix}/img/{{product_id:path}}/{{index}}",
            catalog_image,
            methods=["GET"],
            include_in_schema=False,
        )
        app.add_api_route(
            f"{prefix}/examples/{{index}}", example_image, methods=["GET"], include_in_schema=False
        )
