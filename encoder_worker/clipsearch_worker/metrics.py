"""The worker's Prometheus metrics (images, failures by kind of reason, batch and stage times) and
`reason_kind`, the small fixed label a failure reason is counted under."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["BATCH_SECONDS", "ENCODE_SECONDS", "FAILURES", "IMAGES", "STAGE_SECONDS", "reason_kind"]

IMAGES = Counter("clipsearch_worker_images_total", "Images brought to an end by this worker", ["outcome"])
FAILURES = Counter("clipsearch_worker_failures_total", "Images failed, by kind of reason", ["reason"])
BATCH_SECONDS = Histogram("clipsearch_worker_batch_seconds", "Time to decode, encode and push one batch",
                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
ENCODE_SECONDS = Histogram("clipsearch_worker_encode_seconds", "Model forward time of one batch",
                           buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
# Where a batch's time goes, one stage after another: waiting for the decode pool's results (collect),
# decoding on the device (device_decode), the model (encode, also ENCODE_SECONDS), UpsertVectors until the
# server answers (push), and the acknowledgement script (finish). The first three run on the main thread;
# push and finish on the pusher thread when decode_overlap is on (beside the next batch's stages), and with
# --device-decode collect and device_decode on the device-decode thread (beside the model's pass).
STAGE_SECONDS = Histogram("clipsearch_worker_stage_seconds", "Time of one batch, by stage", ["stage"],
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))

_REASON_KINDS = (
    ("gave up", "gave_up"),
    ("outside the allowed roots", "forbidden_path"),
    ("refused to fetch", "forbidden_address"),
    ("cannot fetch", "fetch"),
    ("cannot read", "read"),
    ("over the limit", "too_large"),
    ("decompression bomb", "too_large"),
    ("empty", "empty"),
    ("cannot decode", "decode"),
    ("server refused", "refused"),
    ("the model gave this image a vector", "bad_vector"),
)


def reason_kind(reason: str) -> str:
    """A small fixed label for a failure reason (metrics must not have one label per message)."""
    return next((kind for text, kind in _REASON_KINDS if text in reason), "other")
