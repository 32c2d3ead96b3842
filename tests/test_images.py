"""Image loading/sanitizing and background removal (real u2netp model, CPU, no network)."""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from visual_search.core.errors import ImageError
from visual_search.images.background import BackgroundRemoval, BackgroundRemovalUnavailable, BackgroundRemover
from visual_search.images.fetch import FetchPolicy, default_policy, set_default_policy
from visual_search.images.load import (
    EMBED_MAX_SIDE,
    LARGE_DECODE_PIXELS,
    MAX_DECODE_PIXELS,
    MAX_PIXELS,
    bytes_sha256,
    file_sha256,
    load_image,
    source_sha256,
)

# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _px(img: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    value = img.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def _close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 3) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds almost no data: decoding it would fail,
    so a refusal that mentions megapixels proves the size was checked from the header alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


# ----------------------------------------------------------------------------------------------
# colour modes
# ----------------------------------------------------------------------------------------------


def test_rgb_passthrough_and_caller_image_untouched() -> None:
    src = Image.new("RGBA", (40, 20), (10, 20, 30, 255))
    out = load_image(src)
    assert out.mode == "RGB" and out.size == (40, 20)
    assert out is not src and src.mode == "RGBA"
    assert _px(out, (5, 5)) == (10, 20, 30)


def test_palette_with_transparency_flattens_on_white() -> None:
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    img.paste(1, (5, 0, 10, 10))
    out = load_image(_encode(img, "PNG", transparency=0))
    assert out.mode == "RGB"
    assert _px(out, (1, 5)) == (255, 255, 255)  # transparent black -> white, not black
    assert _px(out, (8, 5)) == (255, 0, 0)


def test_la_flattens_on_white() -> None:
    img = Image.new("LA", (10, 10), (0, 0))
    img.paste((50, 255), (5, 0, 10, 10))
    out = load_image(_encode(img, "PNG"))
    assert _px(out, (1, 5)) == (255, 255, 255)
    assert _px(out, (8, 5)) == (50, 50, 50)


def test_rgba_transparent_white_and_half_alpha_blended() -> None:
    img = Image.new("RGBA", (30, 10), (255, 0, 0, 0))
    img.paste((0, 0, 255, 128), (10, 0, 20, 10))
    img.paste((0, 255, 0, 255), (20, 0, 30, 10))
    out = load_image(_encode(img, "PNG"))
    assert _px(out, (5, 5)) == (255, 255, 255)
    assert _close(_px(out, (15, 5)), (127, 127, 255), tol=2)
    assert _px(out, (25, 5)) == (0, 255, 0)


def test_webp_with_alpha_flattens_on_white() -> None:
    img = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    img.paste((0, 0, 200, 255), (8, 0, 16, 16))
    out = load_image(_encode(img, "WEBP", lossless=True))
    assert _px(out, (2, 8)) == (255, 255, 255)
    assert _close(_px(out, (12, 8)), (0, 0, 200))


def test_greyscale_png_with_trns_transparency() -> None:
    img = Image.new("L", (10, 10), 0)
    img.paste(90, (5, 0, 10, 10))
    out = load_image(_encode(img, "PNG", transparency=0))
    assert _px(out, (1, 5)) == (255, 255, 255)
    assert _px(out, (8, 5)) == (90, 90, 90)


def test_cmyk_jpeg_becomes_rgb() -> None:
    img = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # no cyan, full magenta + yellow = red
    out = load_image(_encode(img, "JPEG", quality=95))
    assert out.mode == "RGB"
    assert _close(_px(out, (16, 16)), (255, 0, 0), tol=40)


def test_16bit_png_gradient_is_scaled_not_clipped() -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (8, 1))
    img = Image.fromarray(ramp)
    assert img.mode == "I;16"
    out = load_image(_encode(img, "PNG"))
    row = np.asarray(out)[4, :, 0].astype(int)
    assert out.mode == "RGB"
    assert row[0] <= 2 and row[-1] >= 253
    assert abs(int(row[128]) - 128) <= 3
    assert np.all(np.diff(row) >= 0), "the gradient must survive, in order"
    assert 100 < row.mean() < 155, "clipping to 255 would make the image nearly white"


def test_32bit_int_with_16bit_values_is_scaled() -> None:
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.int32), (4, 1))
    out = load_image(Image.fromarray(ramp, mode="I"))
    row = np.asarray(out)[0, :, 0].astype(int)
    assert row[0] <= 2 and row[-1] >= 253 and np.all(np.diff(row) >= 0)


def test_float_image_in_0_1_is_scaled() -> None:
    ramp = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (4, 1))
    img = Image.fromarray(ramp, mode="F")
    out = load_image(img)
    row = np.asarray(out)[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and np.all(np.diff(row) >= 0)


def test_bilevel_image() -> None:
    img = Image.new("1", (10, 10), 0)
    img.paste(1, (5, 0, 10, 10))
    out = load_image(_encode(img, "PNG"))
    assert out.mode == "RGB"
    assert _px(out, (1, 1)) == (0, 0, 0) and _px(out, (8, 1)) == (255, 255, 255)


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in ((220, 0, 0), (0, 0, 220))]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = load_image(data)
    r, g, b = _px(out, (10, 10))
    assert r > 180 and b < 60


# ----------------------------------------------------------------------------------------------
# orientation and size
# ----------------------------------------------------------------------------------------------


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (200, 100), (230, 0, 0))
    img.paste((0, 0, 230), (100, 0, 200, 100))  # left red, right blue
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = load_image(_encode(img, "JPEG", exif=exif, quality=95))
    assert out.size == (100, 200)
    top, bottom = _px(out, (50, 20)), _px(out, (50, 180))
    assert top[0] > 180 and top[2] < 60, "the left (red) half ends up on top"
    assert bottom[2] > 180 and bottom[0] < 60


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(orientation: int) -> None:
    img = Image.fromarray(np.random.default_rng(orientation).integers(0, 255, (30, 50, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = orientation
    data = _encode(img, "PNG", exif=exif)  # lossless, so pixels can be compared exactly
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    out = load_image(data)
    assert out.size == expected.size and out.tobytes() == expected.tobytes()
    assert out.getexif().get(0x0112) is None, "a stale tag would make the next viewer rotate again"


def test_exif_orientation_with_downscale() -> None:
    img = Image.new("RGB", (2000, 1000), (230, 0, 0))
    img.paste((0, 0, 230), (1000, 0, 2000, 1000))
    exif = img.getexif()
    exif[0x0112] = 8  # rotate 90 CCW to display: the left (red) half ends up at the bottom
    out = load_image(_encode(img, "JPEG", exif=exif), max_side=500)
    assert out.size == (250, 500)
    assert _px(out, (125, 450))[0] > 180 and _px(out, (125, 50))[2] > 180


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    ("width", "height", "megapixels", "limit"),
    # PNG cannot be reduced while decoding, so it is refused above the decode cap (40 MP) from its
    # header; 400 MP also trips Pillow's own guard (twice MAX_PIXELS).
    [(12_000, 10_000, "120", 40), (7_000, 6_000, "42", 40), (20_000, 20_001, "400", 200)],
)
def test_huge_image_refused_from_header(width: int, height: int, megapixels: str, limit: int) -> None:
    data = _png_header_only(width, height)
    assert len(data) < 200
    with pytest.raises(ImageError, match="megapixels") as info:
        load_image(data)
    message = str(info.value)
    assert f"{megapixels} megapixels" in message and f"limit is {limit} megapixels" in message


def test_huge_image_refused_even_when_warnings_are_errors() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match="120 megapixels"):
            load_image(_png_header_only(12_000, 10_000))
        with pytest.raises(ImageError, match="limit is 200 megapixels"):
            load_image(_jpeg_header_only(20_000, 10_001))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_limits_are_exact() -> None:
    assert MAX_PIXELS == 200_000_000 and MAX_DECODE_PIXELS == 40_000_000
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS
    with pytest.raises(ImageError, match="megapixels"):
        load_image(_png_header_only(8_001, 5_000))  # 40.005 MP PNG
    with pytest.raises(ImageError, match="limit is 200 megapixels"):
        load_image(_jpeg_header_only(20_000, 10_001))  # 200.02 MP JPEG: refused before draft
    # A PNG at exactly the cap passes the size check and only then fails on its missing data.
    with pytest.raises(ImageError, match="damaged or incomplete"):
        load_image(_png_header_only(8_000, 5_000))


def _flat_png(width: int, height: int, grey: int = 90) -> bytes:
    """A flat greyscale PNG of any size that is tiny on disk, built without allocating the pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\x00" + bytes([grey]) * width
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _jpeg_header_only(width: int, height: int) -> bytes:
    """A JPEG whose SOF header claims width x height (height < 65536) and holds no scan data."""
    small = _encode(Image.new("L", (8, 8), 128), "JPEG")
    marker = small.index(b"\xff\xc0")
    return small[: marker + 5] + struct.pack(">HH", height, width) + small[marker + 9 :]


def test_99_megapixel_png_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _flat_png(11_000, 9_000)
    assert len(data) < 1_000_000  # small on disk, 99 MB of pixels once decoded
    loads: list[tuple[int, int]] = []
    original = Image.Image.load

    def spy(self: Image.Image):
        loads.append(self.size)
        return original(self)

    monkeypatch.setattr(Image.Image, "load", spy)
    with pytest.raises(ImageError, match=r"99 megapixels \(11000x9000\); the limit is 40 megapixels"):
        load_image(data)
    assert not any(w * h > MAX_DECODE_PIXELS for w, h in loads)


def test_png_just_under_the_decode_cap_loads_reduced() -> None:
    out = load_image(_flat_png(6_000, 5_000, grey=77))
    assert out.size == (EMBED_MAX_SIDE, 853) and out.getpixel((10, 10)) == (77, 77, 77)


def test_big_jpeg_uses_draft_to_stay_under_the_decode_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    # 48 MP: above the decode cap, so it only loads if libjpeg decodes it reduced (draft).
    data = _encode(Image.new("L", (8_000, 6_000), 200), "JPEG", quality=70)
    from PIL import JpegImagePlugin

    drafts: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self: Image.Image, mode, size):
        drafts.append(size)
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    assert load_image(data).size == (EMBED_MAX_SIDE, 768)
    assert drafts == [(EMBED_MAX_SIDE, 768)]
    full = load_image(data, max_side=None)  # full resolution asked: still reduced to fit the cap
    assert full.size == (4_000, 3_000) and full.getpixel((5, 5))[0] == pytest.approx(200, abs=2)


def test_concurrent_large_decodes_run_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import visual_search.images.load as images_module

    data = _flat_png(3_000, 3_000)  # 9 MP: above LARGE_DECODE_PIXELS
    active, peak, lock = [0], [0], threading.Lock()
    original = images_module._sanitize

    def slow_sanitize(img, label, max_side):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return original(img, label, max_side)

    trims: list[bool] = []
    monkeypatch.setattr(images_module, "_sanitize", slow_sanitize)
    monkeypatch.setattr(images_module, "release_memory", lambda: trims.append(True))
    threads = [threading.Thread(target=load_image, args=(data,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 1 and LARGE_DECODE_PIXELS < 9_000_000
    assert 1 <= len(trims) <= 4  # memory handed back at least once, after the wave


def test_big_jpeg_is_decoded_at_reduced_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 24 MP JPEG is never decoded at full size: libjpeg's draft mode decodes it at 1/4 scale
    (speed is measured in bench/, not here)."""
    img = Image.linear_gradient("L").resize((6000, 4000)).convert("RGB")
    data = _encode(img, "JPEG", quality=85)
    decoded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def spy_load(self):
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy_load)
    out = load_image(data)
    assert out.size == (EMBED_MAX_SIDE, 683)
    assert out.mode == "RGB"
    assert decoded and decoded[0] == (1500, 1000)


def test_long_png_downscaled_and_small_images_not_upscaled() -> None:
    data = _encode(Image.new("RGB", (3000, 200), (1, 2, 3)), "PNG")
    assert load_image(data).size == (1024, 68)
    assert load_image(data, max_side=300).size == (300, 20)
    assert load_image(data, max_side=None).size == (3000, 200)
    assert load_image(Image.new("RGB", (50, 40))).size == (50, 40)


# ----------------------------------------------------------------------------------------------
# broken input
# ----------------------------------------------------------------------------------------------


def test_random_bytes_are_not_an_image() -> None:
    with pytest.raises(ImageError, match="not an image"):
        load_image(bytes(range(256)) * 4)


def test_empty_bytes() -> None:
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


def test_truncated_jpeg_names_the_file(tmp_path: Path) -> None:
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8))
    data = _encode(noisy, "JPEG")
    path = tmp_path / "broken_photo.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert "broken_photo.jpg" in message
    assert "damaged or incomplete" in message
    assert str(tmp_path) not in message  # the file name, not a path dump


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"'empty\.png' is empty"):
        load_image(path)


def test_text_file_with_image_extension(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("shopping list: milk, eggs\n" * 20)
    with pytest.raises(ImageError, match=r"'notes\.jpg' is not an image"):
        load_image(str(path))


def test_html_bytes_called_a_web_page() -> None:
    with pytest.raises(ImageError, match="web page"):
        load_image(b"<!doctype html><html><body>hello</body></html>")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"'nope\.jpg' was not found"):
        load_image(tmp_path / "nope.jpg")


def test_folder_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


def test_byte_caps_for_files_and_bytes(tmp_path: Path) -> None:
    data = _encode(Image.new("RGB", (64, 64)), "BMP")
    path = tmp_path / "big.bmp"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=r"'big\.bmp' is .* MB; the limit is"):
        load_image(path, max_bytes=1000)
    with pytest.raises(ImageError, match="the limit is"):
        load_image(data, max_bytes=1000)
    assert load_image(path).size == (64, 64)


def test_unsupported_url_scheme() -> None:
    with pytest.raises(ImageError, match="not an http"):
        load_image("ftp://example.com/a.jpg")


def test_hashes(tmp_path: Path) -> None:
    data = b"some image bytes" * 100_000
    path = tmp_path / "x.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert file_sha256(path) == expected == bytes_sha256(data)
    assert file_sha256(str(path)) == expected


def test_source_sha256_paths_and_bytes(tmp_path: Path) -> None:
    data = _encode(Image.new("RGB", (8, 8)), "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    assert source_sha256(path) == source_sha256(str(path)) == source_sha256(data) == bytes_sha256(data)
    with pytest.raises(ImageError, match=r"'gone\.png' was not found"):
        source_sha256(tmp_path / "gone.png")
    with pytest.raises(ImageError, match="the limit is"):
        source_sha256(path, max_bytes=10)


# ----------------------------------------------------------------------------------------------
# URLs, against a loopback server
# ----------------------------------------------------------------------------------------------

_PNG = _encode(Image.new("RGB", (30, 20), (0, 128, 255)), "PNG")
_JPEG = _encode(Image.new("RGB", (40, 30), (250, 250, 0)), "JPEG")


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {
        "/photo.png": (200, {"Content-Type": "image/png"}, _PNG),
        "/download": (200, {"Content-Type": "application/octet-stream"}, _JPEG),
        "/page.html": (200, {"Content-Type": "text/html; charset=utf-8"}, b"<html>a shop page</html>"),
        "/big.png": (200, {"Content-Type": "image/png"}, b"\x89PNG" + b"\x00" * 4000),
        "/fake.png": (200, {"Content-Type": "image/png"}, b"this is not a png at all"),
    }

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/slow.png":
            time.sleep(3)
        if self.path == "/stream.png":  # no Content-Length: only the read loop can enforce the cap
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"\x00" * 1000)
            return
        status, headers, body = self.routes.get(self.path, (404, {"Content-Type": "text/plain"}, b"nope"))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet test output
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The loopback test server; the default fetch policy lets loopback through meanwhile (the
    guard itself is tested in test_security_fetch.py)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    before = default_policy()
    set_default_policy(FetchPolicy(allow_private=True))
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    set_default_policy(before)
    httpd.shutdown()
    httpd.server_close()


def test_url_to_loopback_refused_by_the_default_policy(server: str) -> None:
    with pytest.raises(ImageError, match="local or private address"):
        load_image(f"{server}/photo.png", policy=FetchPolicy())
    with pytest.raises(ImageError, match="local or private address"):
        source_sha256(f"{server}/photo.png", policy=FetchPolicy())


def test_url_image(server: str) -> None:
    out = load_image(f"{server}/photo.png")
    assert out.size == (30, 20) and _px(out, (3, 3)) == (0, 128, 255)


def test_url_octet_stream_is_sniffed(server: str) -> None:
    assert load_image(f"{server}/download").size == (40, 30)


def test_url_404(server: str) -> None:
    with pytest.raises(ImageError, match="404"):
        load_image(f"{server}/missing.jpg")


def test_url_web_page_is_not_an_image(server: str) -> None:
    with pytest.raises(ImageError, match="not an image: the server sent text/html"):
        load_image(f"{server}/page.html")


def test_url_lying_content_type(server: str) -> None:
    with pytest.raises(ImageError, match="not an image this app can read") as info:
        load_image(f"{server}/fake.png")
    assert "/fake.png" in str(info.value)


def test_url_byte_cap_with_and_without_content_length(server: str) -> None:
    with pytest.raises(ImageError, match="limit"):
        load_image(f"{server}/big.png", max_bytes=1000)
    with pytest.raises(ImageError, match="limit"):
        load_image(f"{server}/stream.png", max_bytes=1000)


def test_url_timeout(server: str) -> None:
    with pytest.raises(ImageError, match="took longer than 0.5 seconds"):
        load_image(f"{server}/slow.png", timeout=0.5)


def test_source_sha256_of_url_hashes_the_content(server: str) -> None:
    assert source_sha256(f"{server}/photo.png") == bytes_sha256(_PNG)
    with pytest.raises(ImageError, match="404"):
        source_sha256(f"{server}/missing.png")


def test_url_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ImageError, match="Could not reach 127.0.0.1"):
        load_image(f"http://127.0.0.1:{port}/a.jpg", timeout=3, policy=FetchPolicy(allow_private=True))


# ----------------------------------------------------------------------------------------------
# background removal with the real u2netp model
# ----------------------------------------------------------------------------------------------

MUG_BOX = (220, 80, 340, 240)


def _mug_photo(scale: int = 1, gradient: bool = False) -> Image.Image:
    """400x300 (times scale) photo of a shaded red 'mug' (ellipse) filling MUG_BOX exactly."""
    width, height = 400 * scale, 300 * scale
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) / scale
    if gradient:
        base = 200 + 45 * yy / 300 + 15 * xx / 400
        arr = np.stack([base, base, base - 10], axis=-1)
    else:
        arr = np.broadcast_to(np.array([235, 232, 225], np.float32), (height, width, 3)).copy()
    cx, cy, rx, ry = 280, 160, 60, 80
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
    shade = np.clip(1 - 0.5 * ((xx - cx + 20) / rx) ** 2, 0.3, 1)
    for channel, value in enumerate((200, 30, 30)):
        arr[..., channel] = np.where(inside, value * shade, arr[..., channel])
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _red_share(img: Image.Image) -> float:
    a = np.asarray(img).astype(int)
    return float(((a[..., 0] > 50) & (a[..., 0] > 2 * a[..., 1]) & (a[..., 0] > 2 * a[..., 2])).mean())


@pytest.fixture(scope="module")
def remover(u2net_home: Path) -> BackgroundRemover:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("U2NET_HOME", str(u2net_home))
        result = BackgroundRemover("u2netp")
        assert result.available
        result.session()  # loaded while U2NET_HOME points at the real model
    return result


def test_remove_finds_the_object(remover: BackgroundRemover) -> None:
    photo = _mug_photo()
    result = remover.remove(photo)
    assert isinstance(result, BackgroundRemoval)
    assert result.note == ""
    assert result.bbox is not None
    assert _iou(result.bbox, MUG_BOX) > 0.7, result.bbox
    assert result.mask.mode == "L" and result.mask.size == photo.size
    assert 0.75 < result.removed_fraction < 0.95  # the mug is ~13% of the photo
    cleaned = result.cleaned
    assert cleaned.mode == "RGB" and cleaned.width == cleaned.height  # square: CLIP centre-crops
    assert _red_share(cleaned) > 0.35, "the searched image is mostly the mug"
    background = np.all(np.abs(np.asarray(cleaned).astype(int) - (235, 232, 225)) < 8, axis=-1)
    assert background.mean() < 0.05, "the grey backdrop is gone"
    for corner in ((0, 0), (cleaned.width - 1, cleaned.height - 1)):
        assert _px(cleaned, corner) == (255, 255, 255)
    assert result.original.tobytes() == photo.tobytes()


def test_remove_preview_shows_before_and_after(remover: BackgroundRemover) -> None:
    photo = _mug_photo()
    result = remover.remove(photo)
    preview = result.preview()
    assert preview.mode == "RGB"
    assert preview.size == (2 * 400 + 8, 300)
    left, right = preview.crop((0, 0, 400, 300)), preview.crop((408, 0, 808, 300))
    assert _close(_px(left, (280, 160)), _px(photo, (280, 160))), "the object is shown as it was"
    assert _px(left, (50, 50)) != _px(photo, (50, 50)), "the removed background is marked"
    assert _red_share(right) > 0.2 and _red_share(left) < _red_share(right)


def test_remove_on_large_gradient_photo_maps_mask_back(remover: BackgroundRemover) -> None:
    photo = _mug_photo(scale=4, gradient=True)  # 1600x1200; the model runs on a 640 px copy
    result = remover.remove(photo)
    assert result.mask.size == (1600, 1200)
    assert result.bbox is not None
    assert _iou(result.bbox, tuple(4 * v for v in MUG_BOX)) > 0.7, result.bbox


def test_remove_plain_photo_falls_back_to_whole_photo(remover: BackgroundRemover) -> None:
    photo = Image.new("RGB", (400, 300), (128, 128, 128))
    result = remover.remove(photo)
    assert result.bbox is None
    assert result.removed_fraction == 0.0
    assert "searched the whole photo" in result.note
    assert result.cleaned.tobytes() == photo.tobytes()
    assert result.preview().size == (808, 300)


def test_remove_accepts_rgba_and_leaves_it_alone(remover: BackgroundRemover) -> None:
    photo = _mug_photo().convert("RGBA")
    result = remover.remove(photo)
    assert photo.mode == "RGBA"
    assert result.original.mode == "RGB" and result.bbox is not None


@pytest.mark.parametrize("model", ["u2netp", "no-such-model"])
def test_unavailable_model_fails_fast_with_instructions(
    model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rembg

    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    sessions: list[str] = []
    monkeypatch.setattr(rembg, "new_session", lambda name, *a, **k: sessions.append(name))
    remover = BackgroundRemover(model)
    assert remover.available is False
    with pytest.raises(BackgroundRemovalUnavailable) as info:
        remover.remove(_mug_photo())
    assert sessions == []  # refused from the missing file alone: no session, so no download attempt
    message = str(info.value)
    assert f"'{model}'" in message and f"{model}.onnx" in message
    assert str(tmp_path) in message and "U2NET_HOME" in message
    assert "without background removal" in message
    assert isinstance(info.value, ImageError)


def test_corrupt_model_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "u2netp.onnx").write_bytes(b"not an onnx model")
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    remover = BackgroundRemover("u2netp")
    assert remover.available  # cheap check: the file is there
    with pytest.raises(BackgroundRemovalUnavailable, match="could not be loaded"):
        remover.session()


def test_unknown_model_name_with_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my-model.onnx").write_bytes(b"whatever")
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    with pytest.raises(BackgroundRemovalUnavailable, match="no model called 'my-model'"):
        BackgroundRemover("my-model").session()


def test_session_created_once_across_threads(u2net_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rembg

    monkeypatch.setenv("U2NET_HOME", str(u2net_home))
    calls: list[str] = []
    real = rembg.new_session

    def slow_new_session(name: str, *args, **kwargs):
        calls.append(name)
        time.sleep(0.2)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(rembg, "new_session", slow_new_session)
    remover = BackgroundRemover("u2netp")
    sessions: list[object] = []
    threads = [threading.Thread(target=lambda: sessions.append(remover.session())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["u2netp"]
    assert len(sessions) == 4 and all(s is sessions[0] for s in sessions)


def test_svg_gets_its_own_message() -> None:
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
    with pytest.raises(ImageError, match="SVG"):
        load_image(svg)
