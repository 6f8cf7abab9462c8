"""The `clipsearch` command against a real `clipsearch up` stack (its own Redis, server and worker)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clipsearch_devkit.procs import free_port, health_serving, spawn, wait_for
from clipsearch_devkit.tinyclip.synthetic import iter_balanced

pytestmark = pytest.mark.timeout(300)


def cli(*args: str, server: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLIPSEARCH_SERVER": server}
    return subprocess.run([sys.executable, "-m", "clipsearch", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_up_index_search_stats(tiny_model: str, tmp_path: Path) -> None:
    images = tmp_path / "pictures"
    (images / "nested").mkdir(parents=True)
    expected: dict[str, tuple[str, str]] = {}
    for n, (image, color, shape) in enumerate(iter_balanced(3, seed=99)):
        path = images / ("nested" if n % 2 else "") / f"{color}-{shape}-{n}.png"
        image.save(path)
        expected[str(path.resolve())] = (color, shape)
    (images / "README.txt").write_text("not an image, not picked up by suffix")

    port = free_port()
    up = spawn("up", [sys.executable, "-m", "clipsearch", "up", "--model", tiny_model, "--pretrained", "none",
                      "--data-dir", str(tmp_path / "stack"), "--port", str(port), "--threads", "1"], tmp_path / "logs")
    address = f"localhost:{port}"
    try:
        wait_for(lambda: health_serving(address), 120, "clipsearch up", up.popen)

        indexed = cli("index", str(images), server=address)
        assert indexed.returncode == 0, indexed.stderr
        assert f"indexed {len(expected)}, failed 0" in indexed.stdout

        out = cli("search", "a green square", "-k", "5", "--json", server=address)
        assert out.returncode == 0, out.stderr
        results = json.loads(out.stdout)["results"]
        assert len(results) == 5 and set(results[0]) == {"id", "uri", "score", "metadata", "fields", "collapsed_ids"}
        assert all(r["uri"] in expected for r in results)  # uri is the path the file was indexed from
        assert sum(expected[r["uri"]] == ("green", "square") for r in results) >= 3

        text = cli("search", "a green square", "-k", "3", server=address)
        assert "Match 1:" in text.stdout and "score:" in text.stdout

        query_file = next(p for p, cls in expected.items() if cls == ("blue", "circle"))
        by_image = json.loads(cli("search", "--image", query_file, "-k", "3", "--json", server=address).stdout)
        assert by_image["results"][0]["uri"] == query_file and by_image["results"][0]["score"] > 0.99
        by_id = json.loads(cli("search", "--id", by_image["results"][0]["id"], "-k", "3", "--json",
                               server=address).stdout)
        assert len(by_id["results"]) == 3 and query_file not in {r["uri"] for r in by_id["results"]}

        stats = json.loads(cli("stats", "--json", server=address).stdout)
        assert stats["count"] == len(expected) and stats["dim"] > 0 and stats["model"].startswith("local-dir:")
        assert (stats["pending"], stats["indexed"], stats["failed"]) == (0, len(expected), 0)
        assert (stats["index_kind"], stats["training"], stats["store"], stats["shard"]) == (
            "hnsw", "not-needed", "sqlite", "0/1")
        assert stats["memory_bytes"] > 0 and stats["bytes_per_vector"] > 0 and stats["index_spec"].startswith("HNSW")

        # Re-indexing the same files is an upsert: the count does not grow.
        again = cli("index", str(images), server=address)
        assert again.returncode == 0
        assert json.loads(cli("stats", "--json", server=address).stdout)["count"] == len(expected)

        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "fake.jpg").write_text("I am text")
        bad = cli("index", str(broken), server=address)
        assert bad.returncode == 1
        assert "cannot decode image" in bad.stderr

        def status() -> dict:
            return json.loads(cli("status", "--json", server=address).stdout)

        assert status()["server"]["health"] == "SERVING" and status()["queue"]["jobs"] == 0
        assert len(status()["workers"]) == 1 and status()["workers"][0]["alive"]
        # workers report every few seconds
        wait_for(lambda: status()["workers"][0]["processed"] >= len(expected), 20, "worker report")
        assert cli("status", server=address).returncode == 0

        bad_k = cli("search", "x", "-k", "0", server=address)
        assert bad_k.returncode == 1 and "INVALID_ARGUMENT" in bad_k.stderr
    finally:
        up.popen.send_signal(signal.SIGTERM)
        code = up.popen.wait(timeout=60)
    assert code == 0, up.output()[-3000:]
    assert not health_serving(address)
    down = cli("status", server=address, timeout=60)
    assert down.returncode == 1 and "UNREACHABLE" in down.stdout
