"""The one place that downloads from a URL, guarded against server-side request forgery.

Every image link the server opens (the link box, the API, a catalog imported from the app) goes
through :func:`fetch`. A pilot exposes the app to strangers, so a link must not become a probe of
the server's own network:

- http(s) only; the host is resolved **once** and the connection goes to that pinned address (no
  second lookup for DNS rebinding to exploit); https still checks the certificate for the name;
- every resolved address must be public (no loopback, private, link-local, multicast, reserved or
  unspecified address, IPv4, IPv6 or IPv4-mapped; odd spellings like ``2130706433`` are
  normalised first) unless the policy allows private hosts (``--allow-private-image-links``);
- redirects are followed by hand, each target checked the same way, at most ``max_redirects``;
- one deadline covers the whole download and is enforced while reading (a watchdog closes the
  socket), a byte cap applies to the header and to what arrives, and the body must be an image;
- downloads run on their own small thread pool; when it is full a new link is refused at once
  instead of queueing behind slow links.

It imports neither gradio nor torch: the engine, the CLI and the UI all use it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from visual_search.core.errors import ImageError
from visual_search.images.messages import cap, mb, short

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FetchError",
    "FetchPolicy",
    "FetchedImage",
    "PinnedTarget",
    "check_url",
    "configure_pool",
    "default_policy",
    "fetch",
    "is_public_address",
    "set_default_policy",
]

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
_LOOKUP_GRACE_S = 5.0
_READ_SIZE = 16 * 1024  # small reads: the deadline is checked between them as well
_USER_AGENT = "visual-search/0.1"
_IMAGE_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF
    b"MM\x00*",
)
_DOWNLOADABLE_TYPES = {"application/octet-stream", "binary/octet-stream"}
_URL_SAFE = "/%:@!$&'()*+,;=-._~"
_NUMERIC_HOST = re.compile(r"^[0-9a-fA-FxX.]+$")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]


class FetchError(ImageError):
    """A link was refused or could not be downloaded; the message is for the person who gave it."""


@dataclass(frozen=True)
class FetchPolicy:
    """What a download may do. The default is what a stranger's link gets: public hosts only."""

    allow_private: bool = False
    timeout_s: float = 10.0  # one deadline for resolving, connecting, redirects and reading
    max_bytes: int = DEFAULT_MAX_BYTES
    max_redirects: int = 3
    # Overrides the address rule (tests treat 127.0.0.1 as "public"; a LAN could allow one subnet).
    is_allowed: Callable[[Address], bool] | None = None
    # Overrides socket.getaddrinfo (tests); returns the host's addresses as strings.
    resolver: Resolver | None = None

    def allows(self, ip: Address) -> bool:
        if self.is_allowed is not None:
            return self.is_allowed(ip)
        if self.allow_private:
            return not (ip.is_unspecified or ip.is_multicast)
        return is_public_address(ip)


@dataclass(frozen=True)
class FetchedImage:
    """A finished download: the bytes, the content type the server gave and where they came from."""

    url: str  # the final URL, after redirects
    data: bytes
    content_type: str | None


@dataclass(frozen=True)
class PinnedTarget:
    """A checked URL: connect to ``ip`` and speak to ``host`` (Host header, SNI, certificate)."""

    url: str
    scheme: str
    host: str
    port: int
    path: str
    ip: str


# ---------------------------------------------------------------------------- default policy and pool

_default_policy = FetchPolicy()
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_slots = threading.BoundedSemaphore(8)
_pool_workers = 4
_pool_queue = 4


def set_default_policy(policy: FetchPolicy) -> None:
    """Set the policy used when a caller passes none (the app: public only; the CLI: private too)."""
    global _default_policy
    _default_policy = policy


def default_policy() -> FetchPolicy:
    return _default_policy


def configure_pool(workers: int = 4, queued: int = 4) -> None:
    """Size the download pool: ``workers`` run at once, ``queued`` more may wait, the rest are
    refused at once. Call before the first download (or in tests); running downloads finish."""
    global _pool, _slots, _pool_workers, _pool_queue
    if workers < 1 or queued < 0:
        raise ValueError("workers must be >= 1 and queued >= 0")
    with _pool_lock:
        old, _pool = _pool, None
        _pool_workers, _pool_queue = workers, queued
        _slots = threading.BoundedSemaphore(workers + queued)
    if old is not None:
        old.shutdown(wait=False)


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_pool_workers, thread_name_prefix="vs-fetch")
        return _pool


# ---------------------------------------------------------------------------- address checks


def is_public_address(ip: Address) -> bool:
    """True only for globally routable unicast addresses (IPv4-mapped and embedded IPv4 checked too)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in ipaddress.IPv6Network("64:ff9b::/96"):  # NAT64
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not is_public_address(embedded):
            return False
    return not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def _literal_address(host: str) -> Address | None:
    """The address a host written as a number stands for (``127.1``, ``0x7f000001``, ``[::1]``)."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if _NUMERIC_HOST.match(host):
        try:  # inet_aton reads what browsers and libc read: 127.1, 2130706433, 0177.0.0.1, 0x7f.1
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def check_url(url: str, policy: FetchPolicy | None = None, resolver: Resolver | None = None) -> PinnedTarget:
    """Check a link and resolve its host once; return where to connect, or raise FetchError.

    Refuses non-http(s) links, user:password links and hosts with any address the policy does not
    allow (a name that resolves to one public and one private address is refused).
    """
    policy = policy or _default_policy
    resolver = resolver or policy.resolver or _system_resolver
    label = short(url)
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise FetchError(f"{label} is not a valid web address.") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise FetchError(f"{label} is not an http(s) address; give a web link or a file instead.")
    host = parts.hostname
    if not host:
        raise FetchError(f"{label} has no host name.")
    if parts.username is not None or parts.password is not None:
        raise FetchError(f"{label} contains a user name or password; use a plain link to the picture.")
    port = port or (443 if scheme == "https" else 80)
    literal = _literal_address(host)
    if literal is not None:
        addresses: list[Address] = [literal]
    else:
        try:
            raw = list(resolver(host, port))
        except (OSError, UnicodeError):
            raise FetchError(f"Cannot find the host {host!r} of that image link.") from None
        try:
            addresses = [ipaddress.ip_address(str(a).split("%", 1)[0]) for a in raw]
        except ValueError:
            raise FetchError(f"Cannot find the host {host!r} of that image link.") from None
        if not addresses:
            raise FetchError(f"Cannot find the host {host!r} of that image link.")
    for ip in addresses:
        if not policy.allows(ip):
            raise FetchError(
                f"The image link points at a local or private address ({host}); only public links are "
                "fetched. Download the picture and upload it instead."
            )
    # Spaces and non-ASCII characters are percent-encoded; what is already encoded stays as is.
    path = urllib.parse.quote(parts.path or "/", safe=_URL_SAFE)
    if parts.query:
        path += "?" + urllib.parse.quote(parts.query, safe=_URL_SAFE + "?")
    return PinnedTarget(url=url.strip(), scheme=scheme, host=host, port=port, path=path, ip=str(addresses[0]))


# ---------------------------------------------------------------------------- connections


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to a fixed address while the Host header keeps the name."""

    def __init__(self, target: PinnedTarget, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._ip = target.ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed address; SNI and the certificate check use the host name."""

    def __init__(self, target: PinnedTarget, timeout: float, context: ssl.SSLContext | None) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=context)
        self._ip = target.ip

    def connect(self) -> None:
        raw = socket.create_connection((self._ip, self.port), self.timeout)
        try:
            self.sock = self._context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise


_ssl_context: ssl.SSLContext | None = None


def _set_ssl_context(context: ssl.SSLContext | None) -> None:
    """Tests: trust a self-signed certificate. None restores the system's trust store."""
    global _ssl_context
    _ssl_context = context


class _Watchdog:
    """Closes the connection when the deadline passes, whatever the socket is waiting for."""

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.fired:
                _shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            if self._sock is not None:
                _shutdown(self._sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


# ---------------------------------------------------------------------------- fetching


def fetch(url: str, policy: FetchPolicy | None = None) -> FetchedImage:
    """Download an image link under ``policy`` (default: :func:`set_default_policy`'s).

    Runs on the download pool; raises FetchError at once when the pool is full, and FetchError
    with a human message for every refusal or failure.
    """
    policy = policy or _default_policy
    slots = _slots
    if not slots.acquire(blocking=False):
        raise FetchError("Too many image links are being downloaded right now; try again in a moment.")
    try:
        # The deadline starts now: time spent queued behind other links counts against it.
        deadline = time.monotonic() + policy.timeout_s
        future = _executor().submit(_fetch_now, url, policy, deadline)
        try:
            # The worker enforces the deadline itself; this only guards against a stuck name lookup.
            return future.result(timeout=policy.timeout_s + _LOOKUP_GRACE_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise _too_slow(short(url.strip()), policy) from None
    finally:
        slots.release()


def _fetch_now(url: str, policy: FetchPolicy, deadline: float) -> FetchedImage:
    label = short(url.strip())
    watchdog = _Watchdog(deadline - time.monotonic())
    try:
        current = url.strip()
        for hop in range(policy.max_redirects + 1):
            if time.monotonic() >= deadline:
                raise _too_slow(label, policy)
            target = check_url(current, policy)
            response, conn, sock = _request(target, deadline, watchdog, label, policy)
            try:
                if response.status in (301, 302, 303, 307, 308):
                    location = response.getheader("Location")
                    if not location:
                        raise FetchError(f"Could not download {label}: the server redirected nowhere.")
                    if hop == policy.max_redirects:
                        raise FetchError(
                            f"Could not download {label}: more than {policy.max_redirects} redirects."
                        )
                    current = urllib.parse.urljoin(current, location.strip())
                    continue
                if response.status != 200:
                    raise FetchError(
                        f"Could not download {label}: the server answered {response.status} {response.reason}."
                    )
                return _read_body(response, sock, current, deadline, watchdog, label, policy)
            finally:
                response.close()
                conn.close()
        raise FetchError(f"Could not download {label}: more than {policy.max_redirects} redirects.")
    finally:
        watchdog.cancel()


def _request(
    target: PinnedTarget, deadline: float, watchdog: _Watchdog, label: str, policy: FetchPolicy
) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection, socket.socket]:
    remaining = deadline - time.monotonic()
    if remaining <= 0 or watchdog.fired:
        raise _too_slow(label, policy)
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        context = _ssl_context or ssl.create_default_context()
        conn = _PinnedHTTPSConnection(target, remaining, context)
    else:
        conn = _PinnedHTTPConnection(target, remaining)
    try:
        conn.connect()
        sock = conn.sock
        assert sock is not None
        watchdog.watch(sock)
        conn.putrequest("GET", target.path, skip_accept_encoding=True)
        conn.putheader("User-Agent", _USER_AGENT)
        conn.putheader("Accept", "image/*")
        conn.putheader("Connection", "close")
        conn.endheaders()
        _set_timeout(sock, deadline)
        return conn.getresponse(), conn, sock
    except FetchError:
        conn.close()
        raise
    except ssl.SSLCertVerificationError:
        conn.close()
        raise FetchError(
            f"Could not download {label}: the site's security certificate is not valid for {target.host}."
        ) from None
    except TimeoutError:
        conn.close()
        raise _too_slow(label, policy) from None
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        if watchdog.fired or time.monotonic() >= deadline:
            raise _too_slow(label, policy) from None
        if isinstance(e, ConnectionRefusedError):
            raise FetchError(
                f"Could not reach {target.host} to download {label} (connection refused)."
            ) from None
        raise FetchError(
            f"Could not reach {target.host} to download {label}. Check the address and the network."
        ) from None


def _read_body(
    response: http.client.HTTPResponse,
    sock: socket.socket,
    url: str,
    deadline: float,
    watchdog: _Watchdog,
    label: str,
    policy: FetchPolicy,
) -> FetchedImage:
    ctype_header = response.getheader("Content-Type")
    kind = ctype_header.split(";", 1)[0].strip().lower() if ctype_header else None
    if kind and not kind.startswith("image/") and kind not in _DOWNLOADABLE_TYPES:
        raise FetchError(
            f"{cap(label)} is not an image: the server sent {kind}. "
            "Use the direct link to the picture (right-click it, 'Copy image address')."
        )
    length = response.getheader("Content-Length")
    if length and length.strip().isdigit() and int(length) > policy.max_bytes:
        raise FetchError(f"{cap(label)} is {mb(int(length))}; the limit is {mb(policy.max_bytes)}.")
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            _set_timeout(sock, deadline)
            chunk = response.read1(_READ_SIZE)
            if not chunk:
                break
            if watchdog.fired or time.monotonic() >= deadline:
                raise _too_slow(label, policy)
            chunks.append(chunk)
            total += len(chunk)
            if total > policy.max_bytes:
                raise FetchError(f"{cap(label)} is larger than the limit of {mb(policy.max_bytes)}.")
    except FetchError:
        raise
    except TimeoutError:
        raise _too_slow(label, policy) from None
    except (OSError, http.client.HTTPException, ValueError):
        if watchdog.fired or time.monotonic() >= deadline:
            raise _too_slow(label, policy) from None
        raise FetchError(f"Could not download {label}: the connection broke off.") from None
    if watchdog.fired:
        raise _too_slow(label, policy)
    data = b"".join(chunks)
    if not data:
        raise FetchError(f"{cap(label)} is empty (0 bytes), so there is no picture to read.")
    if (not kind or kind in _DOWNLOADABLE_TYPES) and not (data.startswith(_IMAGE_MAGIC) or _sniff_more(data)):
        raise FetchError(
            f"{cap(label)} is not an image: the server did not say what it is and it does not look like one."
        )
    return FetchedImage(url=url, data=data, content_type=kind)


def _sniff_more(head: bytes) -> bool:
    """Image formats whose signature is not at offset 0 or is a container (WebP, AVIF/HEIC)."""
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP" or head[4:8] == b"ftyp"


def _set_timeout(sock: socket.socket, deadline: float) -> None:
    """Every socket wait is bounded by what is left of the deadline."""
    with contextlib.suppress(OSError):
        sock.settimeout(max(0.001, deadline - time.monotonic()))


def _too_slow(label: str, policy: FetchPolicy) -> FetchError:
    return FetchError(f"Could not download {label}: it took longer than {policy.timeout_s:g} seconds.")


def with_limits(
    policy: FetchPolicy | None, *, timeout_s: float | None = None, max_bytes: int | None = None
) -> FetchPolicy:
    """``policy`` (or the default) with a caller's own deadline and byte cap."""
    policy = policy or _default_policy
    changes: dict[str, object] = {}
    if timeout_s is not None:
        changes["timeout_s"] = timeout_s
    if max_bytes is not None:
        changes["max_bytes"] = max_bytes
    return replace(policy, **changes) if changes else policy
