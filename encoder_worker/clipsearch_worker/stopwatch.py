"""The stop watcher: once the worker is told to stop (or its loop ended on an error), it ends the feeder's
blocking read at once (CLIENT UNBLOCK of the reader's connection), and again until the feeder is gone, so
that a stop does not wait out `block_ms`. Where Redis denies CLIENT UNBLOCK (an ACL), the read runs out."""

from __future__ import annotations

import logging
import threading

import redis

from clipsearch_core import jobqueue

from .feeder import Feeder

__all__ = ["watch_stop"]

log = logging.getLogger(__name__)


def watch_stop(r: redis.Redis, feeder: Feeder, thread: threading.Thread, stop: threading.Event,
               halt: threading.Event) -> None:
    """The stop watcher's thread: once `stop` is set (or `halt`), interrupts the read of `feeder`, whose
    thread is `thread`, on client `r` (another connection than the reader's), until that thread ends
    (a read that began just after an interrupt is interrupted too)."""
    while not stop.wait(0.2) and not halt.is_set():
        pass
    while thread.is_alive():
        reader = feeder.reader_id
        if feeder.interruptible and reader is not None:
            try:
                jobqueue.interrupt_read(r, reader)
            except redis.ResponseError as exc:  # CLIENT UNBLOCK denied (an ACL): the read runs out instead
                log.info("the queue's blocking reads cannot be interrupted on stop (%s)", exc)
                feeder.interruptible = False
            except redis.RedisError:
                pass  # Redis is gone: the read fails on its own
        thread.join(0.05)
