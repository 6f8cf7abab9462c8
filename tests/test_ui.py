"""The search page (`clipsearch ui`) against a real stack with the tiny model: its JSON API, thumbnails,
escaping of hostile queries and metadata, service errors shown on the page, the Host check (DNS
rebinding) and security headers on every route, and a real headless Chromium (Debian's, driven by
playwright) that loads /?q=... under the page's Content-Security-Policy, checks the thumbnails loaded,
clicks one for "more like this", follows "More", searches with an uploaded file and takes a screenshot."""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from clipsearch import Client, ImageInput
from clipsearch.ui.app import allowed_hosts, host_name
from clipsearch_devkit.data import png_bytes, submit_all, synthetic_inputs, wait_until
from clipsearch_devkit.procs import Proc, Stack, free_port, server_and_worker, spawn, wait_for
from clipsearch_devkit.tinyclip.synthetic import make_image

pytestmark = pytest.mark.timeout(300)

HOSTILE = "<script>window.pwned=1</script>"
TOKEN = "ui-test-token-5e4d3c2b1a"  # the server requires it; the page passes it on (CLIPSEARCH_AUTH_TOKEN)
CHROMIUM = os.environ.get("CLIPSEARCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ALLOWED = ["--allowed-host", "search.example.com", "--allowed-host", "Proxy.Example:8443, other.example"]
ENV_ALLOWED = "env.example,second.example"  # CLIPSEARCH_ALLOWED_HOST of the page in front of no server
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CSP_PARTS = ["default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self'", "frame-ancestors 'none'"]


class Page:
    def __init__(self, url: str, dead_url: str = "", tokenless_url: str = "") -> None:
        self.url, self.dead_url, self.tokenless_url = url, dead_url, tokenless_url

    def get(self, path: str, **params: Any) -> tuple[int, str, bytes]:
        """(HTTP status, content type, body) of GET path?params."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=30) as reply:
                return reply.status, reply.headers.get_content_type(), reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get_content_type(), exc.read()

    def api(self, **params: Any) -> tuple[int, dict]:
        status, _, body = self.get("/api/search", **params)
        return status, json.loads(body)


def _raw(url: str, path: str, host: str | None, method: str = "GET", body: bytes | None = None,
         content_type: str = "") -> tuple[int, http.client.HTTPMessage, bytes]:
    """(status, headers, body) of a request whose Host header is `host` (None: no Host header at all)."""
    where = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname or "", where.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            connection.putheader("Host", host)
        if content_type:
            connection.putheader("Content-Type", content_type)
        connection.putheader("Content-Length", str(len(body or b"")))
        connection.endheaders(body)
        reply = connection.getresponse()
        return reply.status, reply.headers, reply.read()
    finally:
        connection.close()


def _multipart(image: bytes) -> tuple[bytes, str]:
    """The body and content type of the page's image-search form."""
    boundary = "clipsearch-test-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _assert_security_headers(headers: http.client.HTTPMessage, what: str) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, (what, name, dict(headers))
    csp = headers.get("Content-Security-Policy") or ""
    assert all(part in csp for part in CSP_PARTS) and "unsafe" not in csp, (what, csp)


def _start_ui(server: str, log_dir: Path, timeout: str = "30", token: str = TOKEN, args: tuple[str, ...] = (),
              env: dict[str, str] | None = None) -> tuple[Proc, str]:
    port = free_port()
    proc = spawn("ui", [sys.executable, "-m", "clipsearch", "ui", "--server", server, "--port", str(port),
                        "--timeout", timeout, *args], log_dir, {"CLIPSEARCH_AUTH_TOKEN": token, **(env or {})})
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(url + "/", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    try:
        wait_for(up, 30, "ui", proc.popen)
    except Exception as exc:
        proc.kill()
        raise RuntimeError(f"ui did not start:\n{proc.output()[-3000:]}") from exc
    return proc, url


@pytest.fixture(scope="module")
def page(tiny_model: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    tmp = tmp_path_factory.mktemp("ui")
    stack = Stack(model=tiny_model, redis_url=redis_url, log_dir=tmp / "logs", prefix="ui",
                  extra_env={"CLIPSEARCH_AUTH_TOKEN": TOKEN})
    with server_and_worker(stack, tmp / "data") as (address, started):
        hostile = ImageInput(image=png_bytes(make_image("green", "star", random.Random(3))), id="hostile",
                             uri="/x/<img src=x onerror=window.pwned=2>.png", metadata={"kind": "xss", "note": HOSTILE})
        inputs = synthetic_inputs(1, seed=9) + [hostile]
        with Client(address, timeout=30, token=TOKEN) as client:
            wait_until(client, submit_all(client, inputs), 120)
        ui, url = _start_ui(address, tmp / "logs", args=tuple(ALLOWED))
        started.append(ui)
        dead, dead_url = _start_ui(f"127.0.0.1:{free_port()}", tmp / "logs", timeout="3",
                                   env={"CLIPSEARCH_ALLOWED_HOST": ENV_ALLOWED})
        started.append(dead)
        tokenless, tokenless_url = _start_ui(address, tmp / "logs", token="")
        started.append(tokenless)
        yield Page(url, dead_url, tokenless_url)


def test_page_escapes_a_hostile_query(page: Page) -> None:
    status, kind, body = page.get("/", q=HOSTILE, where='a"><b>')
    html = body.decode()
    assert status == 200 and kind == "text/html"
    assert HOSTILE not in html and "<b>" not in html
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in html
    assert 'value="a&#34;&gt;&lt;b&gt;"' in html


def test_api_search_returns_results_and_thumbnails(page: Page) -> None:
    status, data = page.api(q="a red circle", k=5)
    assert status == 200, data
    assert len(data["results"]) == 5
    assert data["results"][0]["metadata"] == {"color": "red", "shape": "circle"}
    status, kind, body = page.get("/thumb", id=data["results"][0]["id"])
    assert (status, kind) == (200, "image/webp") and body[:4] == b"RIFF"
    assert page.get("/thumb", id="no-such-image")[0] == 404


@pytest.mark.parametrize("params, status, code, words", [
    ({"q": "x" * 1001}, 400, "INVALID_ARGUMENT", "1000"),
    ({"q": "a red circle", "k": "0"}, 400, "INVALID_ARGUMENT", "k must be"),
    ({"q": "a red circle", "k": "abc"}, 400, "INVALID_ARGUMENT", "k must be a whole number between 1 and"),
    ({"q": "a red circle", "where": "color>>"}, 400, "INVALID_ARGUMENT", "color"),
    ({"id": "no-such-image"}, 404, "NOT_FOUND", "no-such-image"),
    ({}, 400, "INVALID_ARGUMENT", "type what to look for"),
])
def test_api_errors_are_readable(page: Page, params: dict, status: int, code: str, words: str) -> None:
    got, data = page.api(**params)
    assert (got, data["code"]) == (status, code), data
    assert words in data["error"], data


def test_api_reports_an_unreachable_service(page: Page) -> None:
    got, data = Page(page.dead_url).api(q="a red circle")
    assert (got, data["code"]) == (503, "UNAVAILABLE"), data
    assert data["error"]


def test_page_without_the_token_reports_unauthenticated(page: Page) -> None:
    got, data = Page(page.tokenless_url).api(q="a red circle")
    assert (got, data["code"]) == (502, "UNAUTHENTICATED"), data


# --- the Host check (DNS rebinding) and security headers ----------------------------------------------


def _routes(page: Page) -> list[tuple[str, str, bytes | None, str]]:
    """(method, path, body, content type) of every kind of route, each of which would give results."""
    first = page.api(q="a red circle", k=1)[1]["results"][0]["id"]
    form, form_type = _multipart(png_bytes(make_image("red", "circle", random.Random(5))))
    return [("GET", "/api/search?q=a+red+circle", None, ""), ("POST", "/api/search", form, form_type),
            ("GET", f"/thumb?id={first}", None, ""), ("GET", "/?q=a+red+circle", None, ""),
            ("GET", "/static/app.js", None, ""), ("GET", "/no-such-path", None, "")]


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:{port}", "ATTACKER.example:80",
                                  "127.0.0.1.attacker.example:{port}", "localhost.attacker.example", "::1",
                                  "[::2]:{port}", "localhost:{port}:1", ""])
def test_a_foreign_host_gets_no_results(page: Page, host: str) -> None:
    """A rebound DNS name (or a malformed Host) gets 421 on every route, with no results."""
    port = str(urllib.parse.urlsplit(page.url).port)
    for method, path, body, content_type in _routes(page):
        status, headers, answer = _raw(page.url, path, host.replace("{port}", port), method, body, content_type)
        assert status == 421, (host, path, status, answer[:200])
        data = json.loads(answer)
        assert "Host header" in data["error"] and set(data) == {"error", "code"}, (path, data)
        assert b"img-" not in answer and b"RIFF" not in answer and b"<html" not in answer
        _assert_security_headers(headers, f"421 {path}")


def test_a_missing_host_gets_no_results(page: Page) -> None:
    """HTTP/1.1 without Host: aiohttp's parser answers 400 before the app (so without the app's headers);
    HTTP/1.0, where Host is optional, meets the page's check."""
    for method, path, body, content_type in _routes(page):
        status, _, answer = _raw(page.url, path, None, method, body, content_type)
        assert status in (400, 421) and b"Host" in answer and b"img-" not in answer, (path, status, answer[:200])
    where = urllib.parse.urlsplit(page.url)
    with socket.create_connection((where.hostname or "", where.port or 80), timeout=30) as sock:
        sock.sendall(b"GET /api/search?q=a+red+circle HTTP/1.0\r\n\r\n")
        head, _, answer = b"".join(iter(lambda: sock.recv(65536), b"")).partition(b"\r\n\r\n")
    assert head.startswith((b"HTTP/1.0 421 ", b"HTTP/1.1 421 ")) and b"nosniff" in head, head
    data = json.loads(answer)
    assert data["error"].startswith("the request has no Host header") and "results" not in data, data


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "127.0.0.1", "localhost:{port}", "LocalHost", "localhost.",
                                  "[::1]:{port}", "search.example.com", "SEARCH.example.com:443", "proxy.example:8443",
                                  "other.example"])
def test_own_and_allowed_hosts_are_served(page: Page, host: str) -> None:
    port = str(urllib.parse.urlsplit(page.url).port)
    for method, path, body, content_type in _routes(page):
        status, headers, answer = _raw(page.url, path, host.replace("{port}", port), method, body, content_type)
        assert status == (404 if path == "/no-such-path" else 200), (host, path, status, answer[:200])
        if path.startswith("/api/search"):
            assert len(json.loads(answer)["results"]) >= 1
        _assert_security_headers(headers, f"{host} {path}")


def test_allowed_host_from_the_environment(page: Page) -> None:
    """CLIPSEARCH_ALLOWED_HOST (comma-separated) lets those names through: the page in front of no server
    answers UNAVAILABLE to them, and still 421 to others."""
    for host in ("env.example", "second.example:8080"):
        status, _, answer = _raw(page.dead_url, "/api/search?q=red", host)
        assert (status, json.loads(answer)["code"]) == (503, "UNAVAILABLE"), (host, answer)
    assert _raw(page.dead_url, "/api/search?q=red", "search.example.com")[0] == 421


def test_security_headers_on_every_answer(page: Page) -> None:
    host = urllib.parse.urlsplit(page.url).netloc
    for path, method, status in [("/", "GET", 200), ("/static/app.js", "GET", 200),
                                 ("/static/style.css", "GET", 200), ("/api/search?q=a+red+circle&k=0", "GET", 400),
                                 ("/thumb?id=no-such-image", "GET", 404), ("/static/no-such-file.js", "GET", 404),
                                 ("/thumb", "POST", 405)]:
        got, headers, _ = _raw(page.url, path, host, method)
        assert got == status, (path, got)
        _assert_security_headers(headers, path)
    got, headers, _ = _raw(page.dead_url, "/api/search?q=red", urllib.parse.urlsplit(page.dead_url).netloc)
    assert got == 503
    _assert_security_headers(headers, "503")


@pytest.mark.parametrize("listen, extra, expected", [
    ("127.0.0.1", [], {"127.0.0.1", "localhost", "::1"}),
    ("localhost", ["a.example,B.example:8443", "[fd00::1]:80"], {"127.0.0.1", "localhost", "::1", "a.example",
                                                                  "b.example", "fd00::1"}),
    ("::1", [], {"127.0.0.1", "localhost", "::1"}),
    ("0.0.0.0", [], {"127.0.0.1", "localhost", "::1"}),
    ("::", ["search.example.com"], {"127.0.0.1", "localhost", "::1", "search.example.com"}),
    ("192.168.1.5", [], {"192.168.1.5"}),
    ("192.168.1.5", ["*"], None),
])
def test_allowed_hosts(listen: str, extra: list[str], expected: set[str] | None) -> None:
    assert allowed_hosts(listen, extra) == (None if expected is None else frozenset(expected))


@pytest.mark.parametrize("value, name", [
    ("LocalHost:8080", "localhost"), ("[::1]:8080", "::1"), ("[0:0::1]", "::1"), ("example.com.", "example.com"),
    ("host:", "host"), ("::1", None), ("[::1", None), ("[1.2.3.4]", None), ("a b", None), ("x:80a", None),
    ("http://x", None), ("", None),
])
def test_host_name(value: str, name: str | None) -> None:
    assert host_name(value) == name


def test_ui_refuses_a_bad_allowed_host() -> None:
    done = subprocess.run([sys.executable, "-m", "clipsearch", "ui", "--allowed-host", "http://x"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "--allowed-host 'http://x' is not a host name" in done.stderr, done.stderr


# --- in a real browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian package `chromium`; .ci/run and scripts/setup.sh install it)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package (dev extra)")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


ALL_LOADED = "() => { const imgs = [...document.querySelectorAll('.card img')];" \
             " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }"


def _card_ids(tab: Any) -> list[str]:
    return tab.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.id)")


def test_browser_shows_results_then_more_like_this(page: Page, browser: Any, tmp_path: Path) -> None:
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    console: list[str] = []
    tab.on("console", lambda message: console.append(message.text))
    loaded = tab.goto(page.url + "/?" + urllib.parse.urlencode({"q": "a red circle"}))
    assert loaded is not None and "script-src 'self'" in loaded.headers["content-security-policy"]
    tab.wait_for_function(ALL_LOADED, timeout=30_000)
    _, expected = page.api(q="a red circle", k=20)
    assert _card_ids(tab) == [r["id"] for r in expected["results"]]
    assert tab.text_content("#status") == "20 results for “a red circle”"
    assert "color: red" in tab.text_content(".card")
    tab.screenshot(path=str(tmp_path / "search-page.png"))

    clicked = _card_ids(tab)[0]
    tab.click(f".card[data-id='{clicked}']")
    # the final status, set after the cards were replaced ("Searching images like …" comes before them)
    tab.wait_for_function("() => document.getElementById('status').textContent === "
                          f"'20 results for images like {clicked}'",
                          timeout=30_000)
    tab.wait_for_function(ALL_LOADED, timeout=30_000)
    similar = _card_ids(tab)
    assert clicked not in similar and len(similar) == 20
    assert similar == [r["id"] for r in page.api(id=clicked, k=20)[1]["results"]]

    tab.click("#more")  # 24 others than the clicked one: the second page brings the last 4
    tab.wait_for_function("() => document.querySelectorAll('.card').length === 24", timeout=30_000)
    assert tab.is_hidden("#more")
    assert (tmp_path / "search-page.png").stat().st_size > 10_000
    assert not [text for text in console if "Content Security Policy" in text], console  # the CSP broke nothing
    tab.close()


def test_browser_shows_hostile_metadata_as_text(page: Page, browser: Any) -> None:
    tab = browser.new_page()
    tab.goto(page.url + "/?" + urllib.parse.urlencode({"q": HOSTILE, "where": "kind=xss"}))
    tab.wait_for_function(ALL_LOADED, timeout=30_000)
    assert _card_ids(tab) == ["hostile"]
    assert f"note: {HOSTILE}" in tab.text_content(".card")
    assert tab.input_value("#q") == HOSTILE
    assert tab.evaluate("() => window.pwned") is None
    tab.close()


def test_browser_shows_service_errors(page: Page, browser: Any) -> None:
    tab = browser.new_page()
    tab.goto(page.dead_url + "/?q=a+red+circle")
    tab.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert tab.text_content("#error").startswith("UNAVAILABLE: ")
    tab.goto(page.url + "/?" + urllib.parse.urlencode({"q": "x" * 1001}))
    tab.wait_for_selector("#error:not([hidden])", timeout=30_000)
    assert "INVALID_ARGUMENT" in tab.text_content("#error") and "1000" in tab.text_content("#error")
    assert tab.eval_on_selector_all(".card", "cards => cards.length") == 0
    tab.close()


def test_browser_searches_with_an_image_file(page: Page, browser: Any, tmp_path: Path) -> None:
    query = tmp_path / "blue-square.png"
    make_image("blue", "square", random.Random(11)).save(query)
    tab = browser.new_page()
    tab.goto(page.url + "/")
    tab.set_input_files("#image", str(query))
    tab.wait_for_function(ALL_LOADED, timeout=30_000)
    assert tab.text_content("#status") == "20 results for images like blue-square.png"
    first = tab.eval_on_selector(".card", "c => c.textContent")
    assert "color: blue" in first and "shape: square" in first
    tab.close()


def test_browser_searches_with_a_dropped_image(page: Page, browser: Any) -> None:
    data = png_bytes(make_image("yellow", "triangle", random.Random(12)))
    tab = browser.new_page()
    tab.goto(page.url + "/")
    dropped = tab.evaluate_handle("""bytes => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"}));
        return transfer;
    }""", list(data))
    tab.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
    tab.wait_for_function(ALL_LOADED, timeout=30_000)
    assert tab.text_content("#status") == "20 results for images like dropped.png"
    first = tab.eval_on_selector(".card", "c => c.textContent")
    assert "color: yellow" in first and "shape: triangle" in first
    tab.close()
