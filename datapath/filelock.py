"""A lock shared by every process and thread on the host: an exclusive flock on a file under /run/berth.

flock belongs to an open file description, so opening the file per acquisition makes threads of one daemon exclude
each other exactly as separate plugin processes do."""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def held(path: str) -> Iterator[None]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
