"""The search page (`clipsearch ui`) against a real stack with the tiny model: its JSON API, thumbnails,
escaping of hostile queries and metadata, service errors shown on the page, and a real headless
Chromium (Debian's, driven by playwright) that loads /?q=..., checks the thumbnails loaded, clicks one
for "more like this", follows "More", searches with an uploaded file and takes a screenshot."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from clipsearch import Client, ImageInput
from tests.data import png_bytes, submit_all, synthetic_inputs, wait_until
from tests.procs import Proc, Stack, free_port, spawn, wait_for, server_and_worker
from tests.tinyclip.synthetic import make_image

pytestmark = pytest.mark.timeout(300)

HOSTILE = "<script>window.pwned=1</script>"
TOKEN = "ui-test-token-5e4d3c2b1a"  # the server requires it; the page passes it on (CLIPSEARCH_AUTH_TOKEN)
CHROMIUM = os.environ.get("CLIPSEARCH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


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


def _start_ui(server: str, log_dir: Path, timeout: str = "30", token: str = TOKEN) -> tuple[Proc, str]:
    port = free_port()
    proc = spawn("ui", [sys.executable, "-m", "clipsearch", "ui", "--server", server, "--port", str(port),
                        "--timeout", timeout], log_dir, {"CLIPSEARCH_AUTH_TOKEN": token})
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(url + "/", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    try:
        wait_for(up, 30, "ui", proc.popen)
    except Exception:
        proc.kill()
        raise RuntimeError(f"ui did not start:\n{proc.output()[-3000:]}")
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
        ui, url = _start_ui(address, tmp / "logs")
        started.append(ui)
        dead, dead_url = _start_ui(f"127.0.0.1:{free_port()}", tmp / "logs", timeout="3")
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
    tab.goto(page.url + "/?" + urllib.parse.urlencode({"q": "a red circle"}))
    tab.wait_for_function(ALL_LOADED, timeout=30_000)
    _, expected = page.api(q="a red circle", k=20)
    assert _card_ids(tab) == [r["id"] for r in expected["results"]]
    assert tab.text_content("#status") == "20 results for “a red circle”"
    assert "color: red" in tab.text_content(".card")
    tab.screenshot(path=str(tmp_path / "search-page.png"))

    clicked = _card_ids(tab)[0]
    tab.click(f".card[data-id='{clicked}']")
    # the final status, set after the cards were replaced ("Searching images like …" comes before them)
    tab.wait_for_function(f"() => document.getElementById('status').textContent === '20 results for images like {clicked}'",
                          timeout=30_000)
    tab.wait_for_function(ALL_LOADED, timeout=30_000)
    similar = _card_ids(tab)
    assert clicked not in similar and len(similar) == 20
    assert similar == [r["id"] for r in page.api(id=clicked, k=20)[1]["results"]]

    tab.click("#more")  # 24 others than the clicked one: the second page brings the last 4
    tab.wait_for_function("() => document.querySelectorAll('.card').length === 24", timeout=30_000)
    assert tab.is_hidden("#more")
    assert (tmp_path / "search-page.png").stat().st_size > 10_000
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
