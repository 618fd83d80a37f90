"""A deadline for the store calls a block of code makes: ``with call_deadline(2.0): store.put(...)``.

Backends take their own bound on every call (etcd: the failover budget; SQLite: the busy timeout); a caller
whose answer is useless after some moment (a keep-alive after its lease ran out) shortens it for its own
calls, on its own thread, without a second store object.
"""
from __future__ import annotations

import contextlib
import contextvars
import time
from typing import Iterator

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("berth_store_deadline", default=None)


@contextlib.contextmanager
def call_deadline(seconds: float) -> Iterator[None]:
    """Store calls made inside give up within ``seconds`` from now (or sooner, by the backend's own bound)."""
    if not seconds > 0:
        raise ValueError(f"deadline: {seconds!r} must be a positive number of seconds")
    now = time.monotonic()
    outer = _deadline.get()
    token = _deadline.set(now + seconds if outer is None else min(outer, now + seconds))
    try:
        yield
    finally:
        _deadline.reset(token)


def time_left(default: float) -> float:
    """Seconds a call starting now may take: ``default``, or less when a :func:`call_deadline` is nearer."""
    deadline = _deadline.get()
    if deadline is None:
        return default
    return max(0.0, min(default, deadline - time.monotonic()))
