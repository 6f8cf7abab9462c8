"""API contract tests: buf lint and breaking-change checks of protos/ (with the real buf binary from
npm), and a Node.js client that loads protos/ at run time and talks to a real server and worker."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from clipsearch_devkit.procs import REPO, Proc, Stack

pytestmark = pytest.mark.timeout(240)

PROTOS = REPO / "protos"
BASELINE = PROTOS / "baseline" / "clipsearch-v1.binpb"
BUF = REPO / "node_modules" / "@bufbuild" / "buf" / "bin" / "buf"
NODE_CLIENT = REPO / "tests" / "node" / "client.mjs"


def run(cmd: list[str | Path], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def shown(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


@pytest.fixture(scope="module", autouse=True)
def node_modules() -> None:
    """Installs buf and the Node gRPC packages from package-lock.json (a no-op when up to date)."""
    setup = run(["bash", REPO / "scripts" / "npm-setup.sh"], timeout=300)
    assert setup.returncode == 0, shown(setup)
    assert BUF.exists()


def test_buf_lint() -> None:
    lint = run([BUF, "lint", "protos"])
    assert lint.returncode == 0, shown(lint)


def test_buf_breaking_passes_against_baseline() -> None:
    assert BASELINE.exists(), "protos/baseline/clipsearch-v1.binpb is missing (see protos/README.md)"
    breaking = run([BUF, "breaking", "protos", "--against", BASELINE])
    assert breaking.returncode == 0, shown(breaking)


def test_buf_check_script() -> None:
    check = run(["bash", REPO / "scripts" / "buf-check.sh"])
    assert check.returncode == 0, shown(check)
    assert "buf-check: ok" in check.stdout


def changed_copy(tmp_path: Path, file: str, old: str, new: str) -> Path:
    """A copy of protos/ (with its buf.yaml) where `old` is replaced by `new` once in `file`."""
    copy = tmp_path / "protos"
    shutil.copytree(PROTOS, copy, ignore=shutil.ignore_patterns("baseline", "*.py", "__pycache__"))
    path = copy / "clipsearch" / "v1" / file
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {file}"
    path.write_text(text.replace(old, new))
    return copy


def test_buf_breaking_catches_a_wire_incompatible_change(tmp_path: Path) -> None:
    copy = changed_copy(tmp_path, "search_service.proto", "int32 k = 2;", "int32 k = 9;")
    breaking = run([BUF, "breaking", copy, "--against", BASELINE])
    assert breaking.returncode != 0, "buf breaking accepted a renumbered field:\n" + shown(breaking)
    assert 'field "2" with name "k" on message "TextSearchRequest"' in breaking.stdout, shown(breaking)


def test_buf_breaking_catches_a_changed_field_type(tmp_path: Path) -> None:
    copy = changed_copy(tmp_path, "types.proto", "float score = 2;", "double score = 2;")
    breaking = run([BUF, "breaking", copy, "--against", BASELINE])
    assert breaking.returncode != 0, "buf breaking accepted float -> double:\n" + shown(breaking)
    assert '"score"' in breaking.stdout and "SearchResult" in breaking.stdout, shown(breaking)


def test_buf_breaking_catches_a_deleted_rpc(tmp_path: Path) -> None:
    copy = changed_copy(
        tmp_path, "search_service.proto",
        "  rpc ImageSearch(ImageSearchRequest) returns (ImageSearchResponse);\n", "")
    breaking = run([BUF, "breaking", copy, "--against", BASELINE])
    assert breaking.returncode != 0, "buf breaking accepted a deleted RPC:\n" + shown(breaking)
    assert 'RPC "ImageSearch"' in breaking.stdout, shown(breaking)


def test_buf_breaking_accepts_an_additive_change(tmp_path: Path) -> None:
    copy = changed_copy(tmp_path, "search_service.proto", "  int32 k = 2;\n",
                        "  int32 k = 2;\n  // Results to skip.\n  int32 offset = 99;\n")
    breaking = run([BUF, "breaking", copy, "--against", BASELINE])
    assert breaking.returncode == 0, shown(breaking)


def png_base64(draw: str, color: str) -> str:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), "white")
    pen = ImageDraw.Draw(image)
    if draw == "circle":
        pen.ellipse((12, 12, 52, 52), fill=color)
    else:
        pen.rectangle((12, 12, 52, 52), fill=color)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_node_client_against_real_stack(stack: Stack, procs: list[Proc], tmp_path: Path) -> None:
    server, address = stack.start_server(tmp_path / "data")
    procs.append(server)
    procs.append(stack.start_worker(address))

    red_circle = png_base64("circle", "red")
    blue_square = png_base64("square", "blue")
    # The second image has no id: the server derives it from the SHA-256 of the bytes.
    derived_id = hashlib.sha256(base64.b64decode(blue_square)).hexdigest()[:32]
    spec = {"images": [
        {"id": "red-circle", "png_base64": red_circle, "metadata": {"color": "red", "shape": "circle"}},
        {"png_base64": blue_square, "metadata": {"color": "blue", "shape": "square"}},
    ]}
    images_json = tmp_path / "images.json"
    images_json.write_text(json.dumps(spec))

    node = shutil.which("node")
    assert node, "node is not on PATH"

    def logs() -> str:
        return "\n".join(f"--- {p.name} log\n{p.output()[-3000:]}" for p in procs)

    try:
        # The client bounds itself (about 110 s with these arguments); this timeout is a backstop.
        client = run([node, NODE_CLIENT, "--address", address, "--images", images_json,
                      "--text", "a red circle", "--ingest-timeout", "60"], timeout=120)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"node client hung:\n{exc.stdout}\n{exc.stderr}\n{logs()}") from None
    assert client.returncode == 0, shown(client) + "\n" + logs()
    out = json.loads(client.stdout)

    ids = out["submit"]["ids"]
    assert ids == ["red-circle", derived_id]
    assert out["submit"]["batch_id"]
    assert out["progress"]["submitted"] == 2
    assert out["progress"]["indexed"] == 2, out["progress"]
    assert out["progress"]["pending"] == 0 and out["progress"]["failed"] == 0

    text_hits = out["text_search"]["results"]
    assert len(text_hits) == 2, out
    assert sorted(h["id"] for h in text_hits) == sorted(ids)
    # float scores (JSON numbers: 1.0 would come back as an int), cosine similarities
    assert all(type(h["score"]) in (float, int) and -1.01 <= h["score"] <= 1.01 for h in text_hits), text_hits
    assert text_hits[0]["score"] >= text_hits[1]["score"]  # best first
    expected_metadata = {"red-circle": {"color": "red", "shape": "circle"},
                         derived_id: {"color": "blue", "shape": "square"}}
    assert all(h["metadata"] == expected_metadata[h["id"]] for h in text_hits), text_hits

    image_hits = out["image_search"]["results"]
    assert out["image_search"]["id"] == "red-circle"
    assert [h["id"] for h in image_hits] == [derived_id]  # the query image itself is left out

    assert [(t["id"], t["mime_type"], t["magic"]) for t in out["thumbnails"]] == [("red-circle", "image/webp", "RIFF")]
    assert 0 < out["thumbnails"][0]["bytes"] < 20_000, out["thumbnails"]

    bad = out["bad_request"]
    assert bad["code"] == 3 and bad["code_name"] == "INVALID_ARGUMENT", bad
    assert re.search(r"\bk\b", bad["details"]), bad

    pages = out["filtered_pages"]  # k = 1 over the 2 images matching the filter: 2 pages, then no token
    assert [len(p["results"]) for p in pages] == [1, 1], pages
    assert [p["results"][0]["id"] for p in pages] == [h["id"] for h in text_hits]  # same order as one k = 2 search
    assert pages[0]["next_page_token"] and pages[1]["next_page_token"] == "", pages

    assert out["counts"] == {"all": "2", "circles": "1"}, out["counts"]  # int64 as decimal strings (longs: String)
    got = out["records"]
    assert got["missing_ids"] == ["no-such-image"], got
    assert [r["id"] for r in got["records"]] == ids, got  # in the order asked
    for r in got["records"]:
        assert r["metadata"] == expected_metadata[r["id"]], r
        assert r["model"] and r["vector_bytes"] == 4 * r["dim"] > 0, r
        assert abs(r["norm"] - 1.0) < 1e-4, r  # the stored unit vector
        assert int(r["updated_at_ms"]) > 1_600_000_000_000, r
        # the worker passes on when the image was submitted: before it was indexed
        assert 1_600_000_000_000 < int(r["submitted_at_ms"]) <= int(r["updated_at_ms"]), r

    text_score = {h["id"]: h["score"] for h in text_hits}["red-circle"]
    embed = out["embed"]
    assert embed["model"] == got["records"][0]["model"] and embed["vector_bytes"] == [4 * embed["dim"]] * 2, embed
    assert all(abs(n - 1.0) < 1e-4 for n in embed["norms"]), embed
    assert abs(embed["text_dot_first"] - text_score) < 1e-4, (embed, text_score)  # the vector searches use
    assert embed["image_dot_first"] > 0.999, embed  # the worker's vector of the same image
    assert out["scroll"] == sorted(ids), out["scroll"]  # one a page, in id order, then no cursor
    assert out["update"] == {"updated": "1", "not_found": [], "out_of_stock": "1",
                             "metadata": {"color": "red", "shape": "circle", "album": "node"}}, out["update"]
    assert out["delete_guard"]["code_name"] == "FAILED_PRECONDITION", out["delete_guard"]
    assert "matches every image (2)" in out["delete_guard"]["details"], out["delete_guard"]
    assert out["delete"] == {"deleted": "1", "left": "1"}, out["delete"]
