"""Watching the embedded store: check the revision counter whenever the file changes, read the log when it moved.

A check is one indexed read of one row. The file's change signal (inotify) wakes the watch when any process
writes; without it the watch polls every few milliseconds, and even with it checks every 50 ms in case a
wake-up was missed. The watcher also runs the lease-expiry sweep, because an
embedded store has no server to do it: a store only read and watched must still see its leases expire.
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from store.api import Compacted, WatchBatch, WatchEvent
from store.common import BatchIteration, PrefixView
from store.sqlite_txn import key_range_sql, sqlite_errors

if TYPE_CHECKING:
    from store.sqlite import SqliteStore

POLL_INTERVAL = 0.002         # seconds between revision checks when the file cannot signal changes
SIGNALLED_CHECK_INTERVAL = 0.05  # seconds between checks when it can (a safety net for a missed wake-up)
EXPIRY_CHECK_INTERVAL = 0.05  # seconds between lease-expiry checks


class SqliteWatch(BatchIteration):
    """Changes under a prefix, in revision order, as :class:`WatchBatch` es.

    The starting point is fixed when the watch is made: the state just before ``start_revision`` is
    reconstructed from the log at once, so a compaction that later overtakes the watch is answered by
    re-listing and emitting the difference (``resynced=True``)."""

    def __init__(self, store: "SqliteStore", prefix: str, start_revision: int | None) -> None:
        self.store = store
        self.prefix = prefix
        self._where, self._args = key_range_sql(prefix)
        self._closed = threading.Event()
        self._busy = threading.Lock()
        self._next_expiry_check = 0.0
        self._signal = store.change_signal()
        self._conn = store.new_connection()
        try:
            with store.read_txn(self._conn, "start watch") as conn:
                if start_revision is None:
                    current, revision = store.list_prefix(conn, prefix)
                    self.view = PrefixView(prefix, {kv.key: kv.mod_revision for kv in current})
                    self.seen_revision = revision
                else:
                    self.view = PrefixView(prefix, self._state_before(conn, start_revision))
                    self.seen_revision = start_revision - 1
        except BaseException:
            store.forget_connection(self._conn)
            raise

    def _state_before(self, conn, start_revision: int) -> dict[str, int]:
        """key → mod_revision as it stood at ``start_revision - 1``, rebuilt from the log's prev_mod_revision."""
        compacted = conn.execute("SELECT value FROM meta WHERE name = 'compact_revision'").fetchone()[0]
        if start_revision - 1 < compacted:
            raise Compacted(f"watch from revision {start_revision}: history is compacted up to {compacted}; "
                            f"re-list with get_prefix and watch from its revision + 1")
        state = {bytes(key).decode(): mod for key, mod in
                 conn.execute(f"SELECT key, mod_revision FROM kv WHERE {self._where}", self._args)}
        first_change: dict[str, int] = {}
        for key, prev_mod_revision in conn.execute(
                f"SELECT key, prev_mod_revision FROM log WHERE revision >= ? AND {self._where} ORDER BY id",
                (start_revision, *self._args)):
            first_change.setdefault(bytes(key).decode(), prev_mod_revision)
        for key, prev_mod_revision in first_change.items():
            if prev_mod_revision:
                state[key] = prev_mod_revision
            else:
                state.pop(key, None)
        return state

    # -- reading -----------------------------------------------------------------------------------------

    def next_batch(self, timeout: float | None = None) -> WatchBatch | None:
        """The next batch of changes; None when ``timeout`` seconds pass first or the watch is closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed.is_set():
            seen = self._signal.generation
            with self._busy:
                if self._closed.is_set():
                    break
                self._maybe_expire_leases()
                batch = self._poll()
            if batch is not None:
                return batch
            pause = SIGNALLED_CHECK_INTERVAL if self._signal.live else POLL_INTERVAL
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                pause = min(pause, remaining)
            self._signal.wait(seen, pause)
        return None

    def _maybe_expire_leases(self) -> None:
        now = time.monotonic()
        if now >= self._next_expiry_check:
            self._next_expiry_check = now + EXPIRY_CHECK_INTERVAL
            self.store.expire_due_leases(self._conn)

    def _poll(self) -> WatchBatch | None:
        with sqlite_errors("watch"):
            revision = self._conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
        if revision == self.seen_revision:
            return None
        with self.store.read_txn(self._conn, "watch") as conn:
            compacted = conn.execute("SELECT value FROM meta WHERE name = 'compact_revision'").fetchone()[0]
            if self.seen_revision < compacted:
                current, revision = self.store.list_prefix(conn, self.prefix)
                events, resynced = self.view.difference(current, revision), True
            else:
                revision = conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
                rows = conn.execute(
                    f"SELECT revision, kind, key, value FROM log WHERE revision > ? AND {self._where} ORDER BY id",
                    (self.seen_revision, *self._args)).fetchall()
                events = [WatchEvent(kind, bytes(key).decode(), bytes(value), rev) for rev, kind, key, value in rows]
                self.view.apply(events)
                resynced = False
        self.seen_revision = revision
        if not events:
            return None
        return WatchBatch(revision, tuple(events), resynced)

    def close(self) -> None:
        self._closed.set()
        self._signal.notify()
        with self._busy:
            if self._conn is not None:
                self.store.forget_connection(self._conn)
                self._conn = None

    def __enter__(self) -> "SqliteWatch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
