"""Image URLs are fetched safely: loopback, link-local and private addresses are refused (after DNS,
on every redirect, before any connection) unless --allow-network names them; a refusal is a clear,
permanent error, a 5xx is a transient one. Checked in read_uri and through a real server and worker."""

from __future__ import annotations

import http.server
import io
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from PIL import Image

from clipsearch import Client, ImageInput
from clipsearch.v1 import search_service_pb2, search_service_pb2_grpc
from clipsearch_core.images import ImageLoadError, LoadLimits, NetworkPolicy, read_uri
from clipsearch_devkit.data import wait_until
from clipsearch_devkit.procs import Proc, Stack, wait_for

pytestmark = pytest.mark.timeout(180)


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (220, 20, 20)).save(buf, format="PNG")
    return buf.getvalue()


PNG = png()


class Images(http.server.ThreadingHTTPServer):
    """A local image host: /x.png (a PNG), /busy.png (503), /redirect?to=URL (302), /loop (302 to itself),
    /trickle.png (a byte every 0.2 s).
    `requests` records every request line and Host header it received."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str]] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Images

    def do_GET(self) -> None:  # noqa: N802
        self.server.requests.append((self.path, self.headers.get("Host", "")))
        if self.path == "/x.png":
            self._reply(200, PNG, {"Content-Type": "image/png"})
        elif self.path == "/busy.png":
            self._reply(503, b"busy")
        elif self.path.startswith("/redirect?to="):
            self._reply(302, b"", {"Location": self.path.split("=", 1)[1]})
        elif self.path == "/loop":
            self._reply(302, b"", {"Location": "/loop"})
        elif self.path == "/trickle.png":  # a byte every 0.2 s, for 10 s: each read is quick, the whole is not
            self.send_response(200)
            self.send_header("Content-Length", "50")
            self.end_headers()
            try:
                for byte in PNG[:50]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)
            except ConnectionError:  # the client gave up (its timeout): expected, nothing to report
                return
        else:
            self._reply(404, b"no such image")

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def images() -> Iterator[Images]:
    httpd = Images()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def limits(*allowed: str) -> LoadLimits:
    return LoadLimits(http_timeout_s=5, network=NetworkPolicy.parse(list(allowed)))


# --- read_uri ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url,kind,allow", [
    ("http://127.0.0.1:{port}/x.png", "127.0.0.1 is a loopback address", "--allow-network 127.0.0.1/32"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address",
     "--allow-network 169.254.169.254/32"),
    ("http://10.1.2.3/x.png", "10.1.2.3 is a private address", "--allow-network 10.1.2.3/32"),
    ("http://192.168.1.1/x.png", "192.168.1.1 is a private address", "--allow-network 192.168.1.1/32"),
    ("http://172.16.0.1/x.png", "172.16.0.1 is a private address", "--allow-network 172.16.0.1/32"),
    ("http://0.0.0.0:{port}/x.png", "0.0.0.0 is an unspecified address", "--allow-network 0.0.0.0/32"),
    ("http://[::1]:{port}/x.png", "::1 is a loopback address", "--allow-network ::1/128"),
    ("http://[fe80::1]/x.png", "fe80::1 is a link-local address", "--allow-network fe80::1/128"),
    ("http://[fd00::1]/x.png", "fd00::1 is a private address", "--allow-network fd00::1/128"),
    ("http://[::ffff:127.0.0.1]:{port}/x.png", "127.0.0.1 is a loopback address", "--allow-network 127.0.0.1/32"),
    ("http://224.0.0.1/x.png", "224.0.0.1 is a multicast address", "--allow-network 224.0.0.1/32"),
    ("http://240.0.0.1/x.png", "240.0.0.1 is a reserved address", "--allow-network 240.0.0.1/32"),
])
def test_refused_addresses_name_the_option(images: Images, url: str, kind: str, allow: str) -> None:
    url = url.format(port=images.server_port)
    started = time.monotonic()
    with pytest.raises(ImageLoadError) as info:
        read_uri(url, limits())
    assert str(info.value) == f"refused to fetch {url}: {kind} (allow it with {allow})"
    assert info.value.transient is False
    assert time.monotonic() - started < 1  # refused at once: no connection attempt, no timeout
    assert images.requests == []


def test_allowed_network_is_fetched(images: Images) -> None:
    assert read_uri(f"{images.base}/x.png", limits("127.0.0.0/8")) == PNG
    assert images.requests == [("/x.png", f"127.0.0.1:{images.server_port}")]
    # Allowing another network does not open this one.
    with pytest.raises(ImageLoadError, match="refused to fetch"):
        read_uri(f"{images.base}/x.png", limits("10.0.0.0/8", "127.0.0.2/32"))
    assert len(images.requests) == 1


def test_host_name_resolving_to_loopback_is_refused(images: Images) -> None:
    url = f"http://localhost:{images.server_port}/x.png"
    with pytest.raises(ImageLoadError) as info:
        read_uri(url, limits())
    assert str(info.value).startswith(f"refused to fetch {url}: localhost resolves to ")
    assert "loopback address (allow it with --allow-network " in str(info.value)
    assert str(info.value).endswith(" or --allow-network localhost)")
    assert images.requests == []
    # Allowed by host name.
    assert read_uri(url, limits("localhost")) == PNG
    assert images.requests == [("/x.png", f"localhost:{images.server_port}")]


def test_redirect_to_a_refused_address_is_refused(images: Images) -> None:
    allowed = limits("127.0.0.1/32")
    target = "http://169.254.169.254/latest/meta-data/"
    url = f"{images.base}/redirect?to={target}"
    with pytest.raises(ImageLoadError) as info:
        read_uri(url, allowed)
    assert str(info.value) == (f"refused to fetch {url} (redirected to {target}): 169.254.169.254 is a "
                               "link-local address (allow it with --allow-network 169.254.169.254/32)")
    assert info.value.transient is False
    # Another loopback address than the allowed one: refused as well, and never contacted.
    with pytest.raises(ImageLoadError, match="127.0.0.2 is a loopback address"):
        read_uri(f"{images.base}/redirect?to=http://127.0.0.2:{images.server_port}/x.png", allowed)
    assert [path for path, _ in images.requests] == ["/redirect?to=" + target,
                                                     f"/redirect?to=http://127.0.0.2:{images.server_port}/x.png"]
    # Redirects within the allowed network are followed, at most 5.
    assert read_uri(f"{images.base}/redirect?to=/x.png", allowed) == PNG
    images.requests.clear()
    with pytest.raises(ImageLoadError, match="more than 5 redirects"):
        read_uri(f"{images.base}/loop", allowed)
    assert len(images.requests) == 6


def test_resolved_once_and_connected_to_the_checked_address(images: Images, monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: the name is resolved once; the connection goes to that address, with the URL's Host."""
    answers = [[(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", images.server_port))],
               [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", images.server_port))]]
    calls: list[str] = []

    def rebinding_dns(host: str, *args: object, **kwargs: object) -> list:
        calls.append(host)
        return answers[min(len(calls) - 1, 1)]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_dns)
    url = f"http://images.example:{images.server_port}/x.png"
    assert read_uri(url, limits("127.0.0.0/8")) == PNG
    assert calls == ["images.example"]
    assert images.requests == [("/x.png", f"images.example:{images.server_port}")]
    with pytest.raises(ImageLoadError, match="images.example resolves to 169.254.169.254, a link-local address"):
        read_uri(url, limits("127.0.0.0/8"))
    assert len(images.requests) == 1


def test_http_errors_transient_or_permanent(images: Images) -> None:
    allowed = limits("127.0.0.0/8")
    with pytest.raises(ImageLoadError, match="HTTP 503") as info:
        read_uri(f"{images.base}/busy.png", allowed)
    assert info.value.transient is True
    with pytest.raises(ImageLoadError, match="HTTP 404") as info:
        read_uri(f"{images.base}/missing.png", allowed)
    assert info.value.transient is False
    with pytest.raises(ImageLoadError, match="cannot fetch http://127.0.0.1:9/none.jpg") as info:
        read_uri("http://127.0.0.1:9/none.jpg", allowed)  # nothing listens: connection refused
    assert info.value.transient is True
    with pytest.raises(ImageLoadError, match="over the limit of 10 bytes"):
        read_uri(f"{images.base}/x.png", LoadLimits(max_bytes=10, network=allowed.network))


# --- through a real server and worker ---------------------------------------------------------


def test_server_and_worker_refuse_and_report_clearly(stack: Stack, procs: list[Proc], images: Images,
                                                    tmp_path: Path) -> None:
    # The server allows the host name "localhost" only: 127.0.0.1 by address stays refused.
    server, address = stack.start_server(tmp_path / "data", extra=["--allow-network", "localhost"])
    procs.append(server)
    refused = f"{images.base}/x.png"
    with grpc.insecure_channel(address) as channel:
        stub = search_service_pb2_grpc.SearchServiceStub(channel)

        def image_search(**kw: object) -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as info:
                stub.ImageSearch(search_service_pb2.ImageSearchRequest(k=1, **kw), timeout=30)
            return info.value

        error = image_search(uri=refused)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == (f"refused to fetch {refused}: 127.0.0.1 is a loopback address "
                                   "(allow it with --allow-network 127.0.0.1/32)")
        assert images.requests == []

        busy = f"http://localhost:{images.server_port}/busy.png"
        error = image_search(uri=busy)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert f"cannot fetch {busy}: HTTP 503" in error.details()
        assert images.requests and all(path == "/busy.png" for path, _ in images.requests)

        stub.ImageSearch(search_service_pb2.ImageSearchRequest(
            uri=f"http://localhost:{images.server_port}/x.png", k=1), timeout=30)  # allowed: OK

        error = image_search(image=b"hello, I am a text file\n")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "cannot decode image: not a recognised image format (it looks like text)"
    assert server.popen.poll() is None

    # The worker allows nothing: a job with a loopback URL fails at once, never retried.
    images.requests.clear()
    worker = stack.start_worker(address, ["--visibility-timeout", "1", "--max-deliveries", "3"])
    procs.append(worker)
    client = Client(address)
    batch = client.submit([ImageInput(uri=refused, id="loopback"),
                           ImageInput(image=b"hello, I am a text file\n", id="text")]).batch_id
    progress = wait_until(client, batch, 60)
    assert (progress.failed, progress.indexed) == (2, 0)
    reasons = {f.id: f for f in client.failures(batch)}
    assert reasons["loopback"].reason == (f"refused to fetch {refused}: 127.0.0.1 is a loopback address "
                                          "(allow it with --allow-network 127.0.0.1/32)")
    assert reasons["loopback"].attempts == 1
    text = reasons["text"].reason
    assert text.startswith("cannot decode image: not a recognised image format")
    assert "<_io." not in text and "0x" not in text
    assert client.stats().count == 0
    assert images.requests == []
    assert worker.popen.poll() is None and server.popen.poll() is None
    client.close()


def test_redirect_to_a_malformed_url_is_an_image_error(images: Images) -> None:
    with pytest.raises(ImageLoadError, match="redirect to an invalid URL"):  # was a bare ValueError: INTERNAL
        read_uri(f"{images.base}/redirect?to=http://[::1/x.png", limits("127.0.0.1/32"))


def test_a_host_that_trickles_its_bytes_is_cut_off_at_the_timeout(images: Images) -> None:
    """--http-timeout bounds the whole fetch, not each read: a host sending a byte every 0.2 s would
    otherwise hold the thread (a server's fetch thread, a worker's decode thread) for 10 s here, and for
    ever with a slower trickle."""
    started = time.monotonic()
    with pytest.raises(ImageLoadError, match="timed out") as err:
        read_uri(f"{images.base}/trickle.png",
                 LoadLimits(http_timeout_s=1, network=NetworkPolicy.parse(["127.0.0.1/32"])))
    assert time.monotonic() - started < 5
    assert err.value.transient


def test_slow_image_hosts_do_not_hold_up_other_searches(stack: Stack, procs: list[Proc], images: Images,
                                                        tmp_path: Path) -> None:
    """The server reads image URLs in threads of their own: while more URL fetches than the search pool
    has threads trickle in (--http-timeout 6), a text search still answers at once. It used to wait for
    a free thread, up to the fetches' whole time."""
    server, address = stack.start_server(tmp_path / "data", extra=["--allow-network", "127.0.0.1/32",
                                                                    "--http-timeout", "6"])
    procs.append(server)
    trickle = f"{images.base}/trickle.png"
    with grpc.insecure_channel(address) as channel:
        stub = search_service_pb2_grpc.SearchServiceStub(channel)
        stub.TextSearch(search_service_pb2.TextSearchRequest(text="warm", k=1), timeout=30)
        slow = [stub.ImageSearch.future(search_service_pb2.ImageSearchRequest(uri=trickle, k=1), timeout=30)
                for _ in range(8)]
        wait_for(lambda: sum(path == "/trickle.png" for path, _ in images.requests) == 8, 10, "the 8 fetches")
        started = time.monotonic()
        stub.TextSearch(search_service_pb2.TextSearchRequest(text="a red circle", k=1), timeout=30)
        took = time.monotonic() - started
        codes = [call.exception().code() if call.exception() else grpc.StatusCode.OK for call in slow]
    assert took < 3, f"the text search waited {took:.1f} s behind the image fetches"
    assert codes == [grpc.StatusCode.UNAVAILABLE] * 8, codes  # each cut off after 6 s: timed out
