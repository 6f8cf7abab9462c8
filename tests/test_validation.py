"""Unit tests of request validation and the error-to-status table."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from clipsearch_core.images import ImageLoadError
from clipsearch_server.api import validation as check
from clipsearch_server.api.errors import InvalidArgument, NotFound, Unavailable, status_for


@pytest.mark.parametrize("k", [0, -1, check.MAX_K + 1])
def test_k_out_of_range(k: int) -> None:
    with pytest.raises(InvalidArgument, match=f"k must be between 1 and {check.MAX_K}, got {k}"):
        check.k(k)


def test_k_in_range() -> None:
    assert check.k(1) == 1 and check.k(check.MAX_K) == check.MAX_K


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text(text: str) -> None:
    with pytest.raises(InvalidArgument, match="empty or only whitespace"):
        check.text(text)


def test_text_too_long_and_stripped() -> None:
    with pytest.raises(InvalidArgument, match="the limit is 1000"):
        check.text("a" * 1001)
    assert check.text("  a red car ") == "a red car"


def test_ids() -> None:
    assert check.image_id("photos/2024/1.jpg") == "photos/2024/1.jpg"
    for bad, msg in (("", "must not be empty"), ("x" * 257, "limit is 256"), ("a\nb", "control characters")):
        with pytest.raises(InvalidArgument, match=msg):
            check.image_id(bad)


def test_uris() -> None:
    for good in ("/data/a.jpg", "file:///data/a.jpg", "https://example.org/a.jpg", "http://h/a.png"):
        assert check.uri(good) == good
    for bad in ("relative/a.jpg", "ftp://h/a.jpg", "s3://bucket/a.jpg"):
        with pytest.raises(InvalidArgument, match="not supported"):
            check.uri(bad)
    for check_uri in (check.uri, check.label_uri):  # a PostgreSQL store cannot hold NUL in text
        with pytest.raises(InvalidArgument, match="images\\[2\\].uri contains a NUL character"):
            check_uri("/data/a\x00.jpg", "images[2].uri")
        with pytest.raises(InvalidArgument, match="the limit is"):
            check_uri("/" + "a" * check.MAX_URI_CHARS, "uri")


def test_metadata_limits() -> None:
    assert check.metadata({"a": "b"}) == {"a": "b"}
    with pytest.raises(InvalidArgument, match="entries"):
        check.metadata({str(i): "" for i in range(check.MAX_METADATA_ENTRIES + 1)})
    with pytest.raises(InvalidArgument, match="keys must be"):
        check.metadata({"": "x"})
    with pytest.raises(InvalidArgument, match="limit is 4096"):
        check.metadata({"k": "v" * 4097})


def test_vector_parsing() -> None:
    v = np.arange(1, 5, dtype="<f4")
    assert np.array_equal(check.vector(v.tobytes(), 4, "v"), v)
    with pytest.raises(InvalidArgument, match="is 12 bytes; a float32 vector of dim 4 is 16 bytes"):
        check.vector(v[:3].tobytes(), 4, "v")
    with pytest.raises(InvalidArgument, match="NaN"):
        check.vector(np.array([1, np.nan, 0, 0], dtype="<f4").tobytes(), 4, "v")
    with pytest.raises(InvalidArgument, match="all zeros"):
        check.vector(np.zeros(4, dtype="<f4").tobytes(), 4, "v")
    with pytest.raises(InvalidArgument, match="too large to normalize"):
        check.vector(np.full(4, 3e38, dtype="<f4").tobytes(), 4, "v")


def test_vectors_of_a_batch_are_parsed_together_and_errors_name_the_record() -> None:
    rng = np.random.default_rng(0)
    good = rng.standard_normal((5, 4)).astype("<f4")
    name = "records[{}].vector".format
    parsed = check.vectors([row.tobytes() for row in good], 4, name)
    assert parsed.shape == (5, 4) and parsed.dtype == np.float32 and np.array_equal(parsed, good)
    for i, bad, message in [(3, good[3, :2].tobytes(), r"records\[3\]\.vector is 8 bytes"),
                            (2, np.array([0, 0, np.inf, 0], "<f4").tobytes(), r"records\[2\]\.vector holds NaN"),
                            (4, np.zeros(4, "<f4").tobytes(), r"records\[4\]\.vector is all zeros")]:
        datas = [row.tobytes() for row in good]
        datas[i] = bad
        with pytest.raises(InvalidArgument, match=message):
            check.vectors(datas, 4, name)
    datas = [row.tobytes() for row in good]  # several bad: the first is named, whatever its fault
    datas[1], datas[3] = np.zeros(4, "<f4").tobytes(), np.array([np.nan, 0, 0, 0], "<f4").tobytes()
    with pytest.raises(InvalidArgument, match=r"records\[1\]\.vector is all zeros"):
        check.vectors(datas, 4, name)


def test_counts() -> None:
    with pytest.raises(InvalidArgument, match="holds no images"):
        check.count(0, 10, "images")
    with pytest.raises(InvalidArgument, match="holds 11 images, the limit is 10"):
        check.count(11, 10, "images")


def test_status_table() -> None:
    assert status_for(InvalidArgument("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_for(ImageLoadError("x")) == grpc.StatusCode.INVALID_ARGUMENT
    assert status_for(NotFound("x")) == grpc.StatusCode.NOT_FOUND
    assert status_for(Unavailable("x")) == grpc.StatusCode.UNAVAILABLE
    assert status_for(RuntimeError("x")) is None


class _Context:
    """Just enough of grpc.aio.ServicerContext for the error boundary."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailing: tuple = ()

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise grpc.aio.AbortError()

    def set_trailing_metadata(self, metadata: tuple) -> None:
        self.trailing = metadata


def _boundary(exc: Exception, caplog: pytest.LogCaptureFixture) -> _Context:
    import asyncio

    from clipsearch_server.api.servicers import _rpc

    class Servicer:
        @_rpc
        async def Broken(self, request: object, context: object) -> None:  # noqa: N802
            raise exc

    context = _Context()
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(Servicer().Broken(None, context))
    return context


def test_unexpected_error_becomes_internal_with_a_logged_request_id(caplog: pytest.LogCaptureFixture) -> None:
    context = _boundary(RuntimeError("secret internals at /srv/db"), caplog)
    assert context.code == grpc.StatusCode.INTERNAL
    assert "secret" not in context.details
    request_id = context.details.split("request id ")[1].rstrip(")")
    assert any(request_id in r.getMessage() and r.exc_info for r in caplog.records)


def test_resource_exhausted_carries_a_retry_hint(caplog: pytest.LogCaptureFixture) -> None:
    from clipsearch_server.api.errors import ResourceExhausted

    context = _boundary(ResourceExhausted("queue is full", retry_after_s=2.5), caplog)
    assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED and context.details == "queue is full"
    assert context.trailing == (("retry-after-ms", "2500"),)
