"""The guarded fetch (issue 7, findings 1 and 5): every refusal happens before a connection.

Traffic goes to loopback only. Refusals of other ranges are checked with a stub resolver and a
socket.create_connection that records instead of connecting; redirects run between two loopback
servers, 127.0.0.1 (treated as public by the policy's hook) and 127.0.0.2 (refused), and the second
must never see a request.
"""

from __future__ import annotations

import datetime
import http.server
import io
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

import visual_search.images.fetch as fetch_module
from visual_search.core.errors import ImageError
from visual_search.images.fetch import FetchError, FetchPolicy, check_url, configure_pool, fetch
from visual_search.images.load import load_image


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 8), (0, 128, 255)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()
FIRST = ipaddress.ip_address("127.0.0.1")


def only_first_loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """The guard's view in these tests: 127.0.0.1 is 'the public internet', nothing else is."""
    return ip == FIRST


# ---------------------------------------------------------------------------- loopback servers


Route = Callable[[http.server.BaseHTTPRequestHandler], None]


@dataclass
class Server:
    base: str
    port: int
    hits: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)
    closed: threading.Event = field(default_factory=threading.Event)
    httpd: http.server.ThreadingHTTPServer | None = None


def _serve(host: str, routes: dict[str, Route], wrap: ssl.SSLContext | None = None) -> Server:
    server = Server(base="", port=0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            server.hits.append((self.path, self.headers.get("Host", "")))
            route = routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            route(self)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
    httpd.daemon_threads = True
    if wrap is not None:
        httpd.socket = wrap.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    server.port = httpd.server_address[1]
    server.base = f"{'https' if wrap else 'http'}://{host}:{server.port}"
    server.httpd = httpd
    return server


def _stop(server: Server) -> None:
    assert server.httpd is not None
    server.httpd.shutdown()
    server.httpd.server_close()


def image(handler: http.server.BaseHTTPRequestHandler, body: bytes = PNG, ctype: str = "image/png") -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def redirect(to: str) -> Route:
    def route(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", to)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def drip_body(server_ref: list[Server]) -> Route:
    """Headers at once, then one byte every 0.2 s, until the client hangs up."""

    def route(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.end_headers()
        _drip(handler, PNG * 1000, server_ref[0])

    return route


def drip_status(server_ref: list[Server]) -> Route:
    """Even the status line arrives one byte every 0.2 s."""

    def route(handler: http.server.BaseHTTPRequestHandler) -> None:
        _drip(handler, b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n\r\n" + PNG, server_ref[0])

    return route


def _drip(handler: http.server.BaseHTTPRequestHandler, data: bytes, server: Server) -> None:
    handler.close_connection = True
    try:
        for i in range(len(data)):
            handler.wfile.write(data[i : i + 1])
            handler.wfile.flush()
            time.sleep(0.2)
    except OSError:
        server.closed.set()  # the client closed the connection
        return


@pytest.fixture
def servers() -> Iterator[dict[str, Server]]:
    """A: 127.0.0.1 ('public'), B: 127.0.0.2 (private; must never be asked)."""
    b = _serve("127.0.0.2", {"/img.png": image})
    a_ref: list[Server] = []
    routes: dict[str, Route] = {
        "/img.png": image,
        "/page": lambda h: image(h, b"<html>hello</html>", "text/html; charset=utf-8"),
        "/to-b": redirect(f"{b.base}/img.png"),
        "/to-b-by-name": redirect(f"http://private.test:{b.port}/img.png"),
        "/big": lambda h: image(h, b"\x89PNG\r\n\x1a\n" + b"\0" * 5000),
        "/drip": drip_body(a_ref),
        "/drip-status": drip_status(a_ref),
        "/r1": redirect("/img.png"),
        "/r2": redirect("/r1"),
        "/r3": redirect("/r2"),
        "/r4": redirect("/r3"),
    }
    a = _serve("127.0.0.1", routes)
    a_ref.append(a)
    yield {"a": a, "b": b}
    _stop(a)
    _stop(b)


def loopback_policy(**kwargs: object) -> FetchPolicy:
    def resolver(host: str, port: int) -> list[str]:
        return {"public.test": ["127.0.0.1"], "private.test": ["127.0.0.2"]}[host]

    return FetchPolicy(is_allowed=only_first_loopback, resolver=resolver, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- refusals before connecting


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Record (and refuse) every connection attempt the fetch module makes."""
    attempts: list[tuple] = []

    def record(address: tuple, *args: object, **kwargs: object) -> socket.socket:
        attempts.append(address)
        raise AssertionError(f"connected to {address}")

    monkeypatch.setattr(fetch_module.socket, "create_connection", record)
    return attempts


PRIVATE_ADDRESSES = [
    "127.0.0.1",
    "127.255.255.254",
    "10.1.2.3",
    "172.16.5.4",
    "192.168.0.10",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",  # documentation
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "2002:7f00:1::1",  # 6to4 wrapping 127.0.0.1
    "64:ff9b::a00:1",  # NAT64 wrapping 10.0.0.1
    "fe80::1%eth0",
]


@pytest.mark.parametrize("address", PRIVATE_ADDRESSES)
def test_every_private_range_is_refused_before_connecting(address: str, no_connections: list) -> None:
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return [address]

    with pytest.raises(FetchError, match="local or private address"):
        fetch("http://shop.test/x.jpg", FetchPolicy(resolver=resolver))
    assert calls == ["shop.test"] and no_connections == []


def test_one_private_address_among_public_ones_is_enough_to_refuse(no_connections: list) -> None:
    policy = FetchPolicy(resolver=lambda host, port: ["93.184.215.14", "2606:2800:21f::1", "10.0.0.5"])
    with pytest.raises(FetchError, match="local or private address"):
        fetch("https://shop.test/x.jpg", policy)
    assert no_connections == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/x.jpg",
        "http://2130706433/x.jpg",
        "http://0x7f000001/x.jpg",
        "http://0x7F.1/x.jpg",
        "http://127.1/x.jpg",
        "http://0177.0.0.1/x.jpg",
        "http://0/x.jpg",
        "http://[::1]/x.jpg",
        "http://[::ffff:127.0.0.1]/x.jpg",
        "http://[::ffff:7f00:1]/x.jpg",
        "http://169.254.169.254/latest/meta-data",
        "https://10.0.0.1/x.jpg",
    ],
)
def test_odd_spellings_of_private_addresses_are_refused_without_lookup(
    url: str, no_connections: list
) -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise AssertionError(f"{host} is an address, it must not be looked up")

    with pytest.raises(FetchError, match="local or private address"):
        fetch(url, FetchPolicy(resolver=resolver))
    with pytest.raises(ImageError, match="local or private address"):
        load_image(url, policy=FetchPolicy(resolver=resolver))
    assert no_connections == []


def test_load_image_without_a_policy_is_guarded_by_the_default(no_connections: list) -> None:
    """What the UI's link box and API call: load_image(url) with no policy at all."""
    assert fetch_module.default_policy() == FetchPolicy()  # nobody loosened it for this process
    for url in (
        "http://127.0.0.1:9/x.jpg",
        "http://[::ffff:169.254.169.254]/latest",
        "http://0x0a000001/x.jpg",
    ):
        with pytest.raises(ImageError, match="local or private address"):
            load_image(url)
    assert no_connections == []


def test_localhost_by_name_is_refused(no_connections: list) -> None:
    with pytest.raises(FetchError, match="local or private address"):
        fetch("http://localhost:9/x.jpg", FetchPolicy())
    assert no_connections == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "not an http"),
        ("ftp://example.com/a.jpg", "not an http"),
        ("gopher://127.0.0.1:70/", "not an http"),
        ("http:///x.jpg", "not an http|no host"),
        ("http://user:pw@shop.test/x.jpg", "user name or password"),
        ("http://shop.test:99999/x.jpg", "not a valid web address"),
    ],
)
def test_other_schemes_and_odd_urls_are_refused(url: str, message: str, no_connections: list) -> None:
    with pytest.raises(FetchError, match=message):
        fetch(url, FetchPolicy(resolver=lambda host, port: ["93.184.215.14"]))
    assert no_connections == []


def test_public_address_passes_the_check_and_is_pinned() -> None:
    target = check_url(
        "http://shop.test:8080/a/b.jpg?x=1", FetchPolicy(resolver=lambda h, p: ["93.184.215.14"])
    )
    assert (target.host, target.port, target.path, target.ip) == (
        "shop.test",
        8080,
        "/a/b.jpg?x=1",
        "93.184.215.14",
    )
    assert check_url("http://93.184.215.14/x.jpg").ip == "93.184.215.14"  # a literal: no DNS needed
    odd = check_url("http://93.184.215.14/a b/é.jpg?q=a b&r=%20", FetchPolicy())
    assert odd.path == "/a%20b/%C3%A9.jpg?q=a%20b&r=%20"


def test_allow_private_lets_lan_hosts_through_but_not_unspecified_or_multicast() -> None:
    lan = FetchPolicy(allow_private=True)
    assert check_url("http://192.168.1.20/x.jpg", lan).ip == "192.168.1.20"
    assert check_url("http://127.0.0.1/x.jpg", lan).ip == "127.0.0.1"
    for url in ("http://0.0.0.0/x.jpg", "http://224.0.0.1/x.jpg"):
        with pytest.raises(FetchError, match="local or private"):
            check_url(url, lan)


def test_unknown_host_is_a_clear_error() -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise socket.gaierror(-2, "Name or service not known")

    with pytest.raises(FetchError, match="Cannot find the host 'nowhere.test'"):
        fetch("http://nowhere.test/x.jpg", FetchPolicy(resolver=resolver))


# ---------------------------------------------------------------------------- redirects


def test_fetch_from_an_allowed_host_works_and_keeps_the_host_name(servers: dict[str, Server]) -> None:
    a = servers["a"]
    got = fetch(f"http://public.test:{a.port}/img.png", loopback_policy())
    assert got.data == PNG and got.content_type == "image/png"
    assert a.hits == [("/img.png", f"public.test:{a.port}")]


@pytest.mark.parametrize("path", ["/to-b", "/to-b-by-name"])
def test_redirect_to_a_private_host_is_refused_and_never_requested(
    servers: dict[str, Server], path: str
) -> None:
    a, b = servers["a"], servers["b"]
    with pytest.raises(FetchError, match="local or private address"):
        fetch(f"http://public.test:{a.port}{path}", loopback_policy())
    assert [hit[0] for hit in a.hits] == [path]
    assert b.hits == []  # the private server got no request at all
    # Sanity: B does answer when asked directly, so the empty list above means something.
    assert fetch(f"{b.base}/img.png", FetchPolicy(allow_private=True)).data == PNG


def test_three_redirects_are_followed_four_are_refused(servers: dict[str, Server]) -> None:
    a = servers["a"]
    assert fetch(f"{a.base}/r3", loopback_policy()).data == PNG
    assert [h[0] for h in a.hits] == ["/r3", "/r2", "/r1", "/img.png"]
    a.hits.clear()
    with pytest.raises(FetchError, match="more than 3 redirects"):
        fetch(f"{a.base}/r4", loopback_policy())
    assert [h[0] for h in a.hits] == ["/r4", "/r3", "/r2", "/r1"]  # /img.png never fetched


def test_dns_rebinding_connects_to_the_first_resolved_address(
    servers: dict[str, Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = servers["a"], servers["b"]
    answers = [["127.0.0.1"], ["127.0.0.2"]]  # first lookup 'public', any later one private
    lookups: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        lookups.append(host)
        return answers[min(len(lookups) - 1, 1)]

    connects: list[tuple] = []
    real = socket.create_connection

    def spy(address: tuple, *args: object, **kwargs: object) -> socket.socket:
        connects.append(address)
        return real(address, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fetch_module.socket, "create_connection", spy)
    got = fetch(
        f"http://rebind.test:{a.port}/img.png",
        FetchPolicy(is_allowed=only_first_loopback, resolver=rebinding),
    )
    assert got.data == PNG
    assert lookups == ["rebind.test"]  # resolved once
    assert connects == [("127.0.0.1", a.port)]  # to the pinned address
    assert b.hits == [] and a.hits == [("/img.png", f"rebind.test:{a.port}")]


# ---------------------------------------------------------------------------- body checks


def test_byte_cap_with_content_length_and_while_reading(servers: dict[str, Server]) -> None:
    a = servers["a"]
    with pytest.raises(FetchError, match="the limit is 0.0 MB"):
        fetch(f"{a.base}/big", loopback_policy(max_bytes=1000))
    with pytest.raises(FetchError, match="larger than the limit"):
        fetch(f"{a.base}/drip", loopback_policy(max_bytes=3, timeout_s=30))  # no Content-Length


def test_wrong_content_type_is_refused(servers: dict[str, Server]) -> None:
    with pytest.raises(FetchError, match="not an image: the server sent text/html"):
        fetch(f"{servers['a'].base}/page", loopback_policy())


@pytest.mark.parametrize("path", ["/drip", "/drip-status"])
def test_slow_link_is_cut_off_at_the_deadline(servers: dict[str, Server], path: str) -> None:
    a = servers["a"]
    with pytest.raises(FetchError, match="took longer than 1 seconds"):
        fetch(f"{a.base}{path}", loopback_policy(timeout_s=1.0))
    assert a.closed.wait(10), "the server never noticed the connection closing"


def test_full_download_pool_refuses_at_once(servers: dict[str, Server]) -> None:
    a = servers["a"]
    configure_pool(workers=1, queued=0)
    try:
        errors: list[Exception] = []

        def slow() -> None:
            try:
                fetch(f"{a.base}/drip", loopback_policy(timeout_s=2.0))
            except FetchError as exc:
                errors.append(exc)

        worker = threading.Thread(target=slow)
        worker.start()
        for _ in range(200):
            if a.hits:
                break
            time.sleep(0.01)
        assert a.hits, "the slow download never started"
        with pytest.raises(FetchError, match="Too many image links"):
            fetch(f"{a.base}/img.png", loopback_policy())
        assert [h[0] for h in a.hits] == ["/drip"]  # the refused link was not queued
        worker.join()
        assert errors and "took longer" in str(errors[0])
        assert fetch(f"{a.base}/img.png", loopback_policy()).data == PNG  # free again afterwards
    finally:
        configure_pool()


def test_time_spent_queued_counts_against_the_deadline(servers: dict[str, Server]) -> None:
    a = servers["a"]
    configure_pool(workers=1, queued=1)
    try:
        holder = threading.Thread(
            target=lambda: pytest.raises(FetchError, fetch, f"{a.base}/drip", loopback_policy(timeout_s=1.0))
        )
        holder.start()
        for _ in range(200):
            if a.hits:
                break
            time.sleep(0.01)
        with pytest.raises(FetchError, match="took longer than 0.5 seconds"):
            fetch(f"{a.base}/img.png", loopback_policy(timeout_s=0.5))  # waits behind the drip
        holder.join()
        assert [h[0] for h in a.hits] == ["/drip"]  # its deadline passed in the queue: never sent
    finally:
        configure_pool()


def test_messages_name_no_internals(servers: dict[str, Server]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchError) as info:
        fetch(f"http://127.0.0.1:{port}/a.jpg", FetchPolicy(allow_private=True))
    text = str(info.value)
    assert "Could not reach 127.0.0.1" in text and "Errno" not in text and "Traceback" not in text


# ---------------------------------------------------------------------------- https to a pinned address


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_https_to_the_pinned_address_checks_the_certificate_for_the_host_name(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path, "shop.test")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    https = _serve("127.0.0.1", {"/img.png": image}, wrap=server_ctx)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    fetch_module._set_ssl_context(client_ctx)
    try:
        policy = FetchPolicy(
            is_allowed=only_first_loopback,
            resolver=lambda host, port: {"shop.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}[host],
        )
        got = fetch(f"https://shop.test:{https.port}/img.png", policy)
        assert got.data == PNG and https.hits == [("/img.png", f"shop.test:{https.port}")]
        # Same pinned address, a name the certificate does not cover: refused, nothing requested.
        with pytest.raises(FetchError, match="certificate is not valid for other.test"):
            fetch(f"https://other.test:{https.port}/img.png", policy)
        assert len(https.hits) == 1
    finally:
        fetch_module._set_ssl_context(None)
        _stop(https)
