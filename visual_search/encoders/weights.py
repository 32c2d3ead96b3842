"""Where weights come from: local files (verified by content hash in the model id), and remote
sources (Hugging Face Hub, URLs) that are used from the cache without network, or probed for 3 s
before a download instead of letting huggingface_hub retry for ~50 s. Errors say how to point at a
local checkpoint."""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import os
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from visual_search.core.errors import ModelUnavailableError

T = TypeVar("T")

PROBE_TIMEOUT_S = 3.0
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz")


def split_weights(rest: str) -> tuple[str, str | None]:
    name, sep, weights = rest.partition("@")
    return name.strip(), (weights.strip() or None) if sep else None


def looks_like_path(weights: str) -> bool:
    return (
        "/" in weights
        or os.sep in weights
        or weights.startswith("~")
        or weights.lower().endswith(WEIGHT_SUFFIXES)
    )


def existing_file(spec: str, weights: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        arch = spec.partition("@")[0]
        raise ModelUnavailableError(
            f"Weights file not found: {path} (from --model {spec}). Check the path; the form is "
            f"--model {arch}@/path/to/weights.safetensors"
        )
    return path


def load_local(spec: str, path: Path, load: Callable[[], T]) -> T:
    try:
        return load()
    except ModelUnavailableError:
        raise
    except Exception as exc:  # corrupt file, wrong architecture, unpicklable, ...
        raise ModelUnavailableError(
            f"Could not load weights from {path} for --model {spec}: {short_error(exc)}. Is the file complete, "
            "and a checkpoint of that architecture?"
        ) from exc


@functools.lru_cache(maxsize=32)
def _sha256_prefix(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def file_id(path: Path) -> str:
    """``file:<name>#sha256:<12 hex>``: a retrained checkpoint gets a new id, a moved one keeps it."""
    stat = path.stat()
    return f"file:{path.name}#sha256:{_sha256_prefix(str(path.resolve()), stat.st_size, stat.st_mtime_ns)}"


# A remote source: (URL whose host must be reachable, whether the files are already in the cache, is_hf)
Source = tuple[str, bool, bool]


def _hf_cached(repo: str, alternatives: Sequence[str], cache_dir: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(
        isinstance(try_to_load_from_cache(repo, name, cache_dir=cache_dir), str) for name in alternatives
    )


def hf_source(repo: str, files: Sequence[Sequence[str]], cache_dir: str | None) -> Source:
    from huggingface_hub import constants

    cached = all(_hf_cached(repo, alternatives, cache_dir) for alternatives in files)
    return constants.ENDPOINT, cached, True


@contextlib.contextmanager
def remote_weights(spec: str, what: str, source: Source, hint: str) -> Iterator[None]:
    """Run a download-or-cache load; fail fast with a human message when the download is impossible.

    Cached: no network at all (Hugging Face offline mode for the duration). Not cached: probe the host
    first (3 s) instead of letting huggingface_hub retry for ~50 s.
    """
    from huggingface_hub import constants

    url, cached, is_hf = source
    host = urllib.parse.urlparse(url).hostname or url
    offline_env = is_hf and constants.HF_HUB_OFFLINE
    if not cached:
        if offline_env:
            raise ModelUnavailableError(
                f"Could not download weights for {what}: HF_HUB_OFFLINE is set and they are not in the cache. {hint}"
            )
        if url and not can_reach(url):
            raise ModelUnavailableError(
                f"Could not download weights for {what}: no network access to {host}. {hint}"
            )
    try:
        with _hf_offline(cached and is_hf):
            yield
    except ModelUnavailableError:
        raise
    except Exception as exc:
        reason = "the cached copy could not be loaded" if cached else f"download from {host} failed"
        raise ModelUnavailableError(
            f"Could not load weights for {what} ({reason}: {short_error(exc)}). {hint}"
        ) from exc


@contextlib.contextmanager
def _hf_offline(enabled: bool) -> Iterator[None]:
    """Serve from the Hugging Face cache without the HEAD request that checks for a newer revision."""
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def can_reach(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """TCP connect to the URL's host (or the configured proxy) within ``timeout`` seconds."""
    parsed = urllib.parse.urlparse(url)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    if not host:
        return True
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urllib.parse.urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxied.hostname or host, proxied.port or 3128
    result: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    # A thread bounds the DNS lookup too, which socket timeouts do not cover.
    thread = threading.Thread(target=attempt, name="weights-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def unknown_name_message(spec: str, name: str, known: Sequence[str], library: str) -> str:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    examples = close or [m for m in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "MobileCLIP-S1") if m in known]
    if library == "timm":
        examples = close or ["efficientnet_lite0", "vit_small_patch14_dinov2"]
        return f"Unknown timm model {name!r} in --model {spec}; did you mean: {', '.join(examples)}?"
    return (
        f"Unknown model {name!r} in --model {spec}. {'Did you mean' if close else 'Try'}: "
        f"{', '.join(examples)} (open_clip.list_models() lists all; also hf-hub:org/repo, "
        "local-dir:/path, timm:NAME@/path/weights, test:tiny)."
    )


def short_error(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
