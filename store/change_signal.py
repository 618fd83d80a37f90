"""Wake a store's watchers when its SQLite file changes, instead of every watcher polling every millisecond.

Linux's inotify reports each write another process makes to the database or its WAL (network namespaces
share the file system, so it works across them too). One inotify instance and one reader thread serve all
watches of a store object; writes made through that same object wake its watches directly. When inotify is
unavailable (another OS, or the per-user instance limit reached), watches fall back to polling.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import threading
from pathlib import Path

IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x8, 0x80, 0x100
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
EVENT_HEADER = struct.Struct("iIII")


def _inotify_on(directory: Path) -> int | None:
    """An inotify descriptor watching ``directory`` for writes, or None when the kernel will not give one."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            return None
        mask = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
        if libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
            os.close(fd)
            return None
        return fd
    except (OSError, AttributeError):
        return None


class ChangeSignal:
    """A generation counter that moves whenever the database file (or its WAL) is written."""

    def __init__(self, database: Path) -> None:
        self._names = {os.fsencode(database.name + suffix) for suffix in ("", "-wal", "-journal")}
        self._condition = threading.Condition()
        self._generation = 0
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        self._fd = _inotify_on(database.parent)
        if self._fd is not None:
            threading.Thread(target=self._read_events, name="berth-sqlite-signal", daemon=True).start()

    @property
    def live(self) -> bool:
        """True when other processes' writes wake watchers; otherwise they must poll."""
        return self._fd is not None

    @property
    def generation(self) -> int:
        return self._generation

    def notify(self) -> None:
        with self._condition:
            self._generation += 1
            self._condition.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        """Until the generation moves past ``seen`` (or ``timeout`` seconds pass)."""
        with self._condition:
            self._condition.wait_for(lambda: self._generation != seen or self._closed, timeout)

    def _read_events(self) -> None:
        try:
            while not self._closed:
                readable, _, _ = select.select([self._fd, self._wake_r], [], [])
                if self._fd not in readable:
                    continue
                try:
                    data = os.read(self._fd, 65536)
                except BlockingIOError:
                    continue
                if self._concerns_database(data):
                    self.notify()
        finally:
            os.close(self._fd)
            os.close(self._wake_r)

    def _concerns_database(self, data: bytes) -> bool:
        offset = 0
        while offset + EVENT_HEADER.size <= len(data):
            _, _, _, length = EVENT_HEADER.unpack_from(data, offset)
            start = offset + EVENT_HEADER.size
            if data[start:start + length].rstrip(b"\0") in self._names:
                return True
            offset = start + length
        return False

    def close(self) -> None:
        with self._condition:
            if self._closed:
                return
            self._closed = True
            self._condition.notify_all()
        os.write(self._wake_w, b"x")
        os.close(self._wake_w)
        if self._fd is None:
            os.close(self._wake_r)
