"""Watching the ZooKeeper store: follow its change log from a revision, woken by a watch on the counter.

ZooKeeper's watches fire once and say only "this node changed", so the watch re-arms a data watch on the
counter each time it reads it, and reads the log entries between the last revision it delivered and the
counter. A watch lost with a session costs at most a re-check interval: the watch also re-reads the counter
every half second, which is when it runs the lease-expiry sweep too (a store that is only watched must still
see its leases expire). When the entries it needs were compacted, it re-lists and emits the difference.
"""
from __future__ import annotations

import math
import threading
import time
from typing import TYPE_CHECKING

from store.api import Compacted, StoreUnavailable, WatchBatch
from store.common import BatchIteration, PrefixView

if TYPE_CHECKING:
    from store.zookeeper import ZkStore

RECHECK_INTERVAL = 0.5   # seconds between counter reads when no watch fired
MAX_ENTRIES = 256        # log entries read in one round, so one batch stays bounded


class ZkWatch(BatchIteration):
    """Changes under a prefix, in revision order, as :class:`WatchBatch` es; the state before
    ``start_revision`` is rebuilt from the log at once (so a later compaction can be answered exactly)."""

    def __init__(self, store: "ZkStore", prefix: str, start_revision: int | None) -> None:
        self.store = store
        self.prefix = prefix
        self._closed = threading.Event()
        self._changed = threading.Event()
        self._busy = threading.Lock()
        current, revision = store.snapshot(prefix)
        known = {kv.key: kv.mod_revision for kv in current}
        if start_revision is None:
            self.next_revision = revision + 1
        else:
            self._roll_back(known, start_revision, revision)
            self.next_revision = start_revision
        self.view = PrefixView(prefix, known)

    def _roll_back(self, known: dict[str, int], start_revision: int, revision: int) -> None:
        """Turn ``known`` (the state at ``revision``) into the state at ``start_revision - 1``."""
        compacted = self.store.compacted_revision()
        if start_revision - 1 < compacted:
            raise Compacted(f"watch from revision {start_revision}: history is compacted up to {compacted}; "
                            f"re-list with get_prefix and watch from its revision + 1")
        if start_revision > revision:
            return
        entries = self.store.read_entries(start_revision, revision)
        if entries is None:
            raise Compacted(f"watch from revision {start_revision}: history was compacted meanwhile; "
                            f"re-list with get_prefix and watch from its revision + 1")
        first_change: dict[str, int] = {}
        for entry in entries:
            for event in entry.events:
                if event.key.startswith(self.prefix):
                    first_change.setdefault(event.key, event.prev_mod_revision)
        for key, prev_mod_revision in first_change.items():
            if prev_mod_revision:
                known[key] = prev_mod_revision
            else:
                known.pop(key, None)

    def _on_change(self, _event) -> None:
        """kazoo's event thread: only wake the reader (no ZooKeeper call may be made from here)."""
        self._changed.set()

    # -- reading -----------------------------------------------------------------------------------------

    def next_batch(self, timeout: float | None = None) -> WatchBatch | None:
        """The next batch of changes; None when ``timeout`` seconds pass first or the watch is closed.

        While ZooKeeper is unreachable the watch keeps trying, within ``timeout`` (or the store's budget per
        try when there is none): one request already sent may still take up to its call timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed.is_set():
            with self._busy:
                if self._closed.is_set():
                    break
                try:
                    with self.store.calls.within(math.inf if deadline is None else deadline - time.monotonic()):
                        batch = self._poll()
                except StoreUnavailable:
                    batch = None
            if batch is not None:
                return batch
            pause = RECHECK_INTERVAL
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                pause = min(pause, remaining)
            self._changed.wait(pause)
        return None

    def _poll(self) -> WatchBatch | None:
        self.store.sweep_leases()
        self._changed.clear()
        current, entries = self.store.revision_and_entry(self.next_revision, watch=self._on_change)
        if current < self.next_revision:
            return None
        last = min(current, self.next_revision + MAX_ENTRIES - 1)
        if entries is not None and last > self.next_revision:
            more = self.store.read_entries(self.next_revision + 1, last)
            entries = None if more is None else entries + more
        if entries is None:
            return self._resync()
        events = tuple(event.watch_event() for entry in entries for event in entry.events
                       if event.key.startswith(self.prefix))
        self.view.apply(events)
        self.next_revision = last + 1
        if last < current:
            self._changed.set()  # more to read: the next call goes on at once
        return WatchBatch(last, events) if events else None

    def _resync(self) -> WatchBatch | None:
        current, revision = self.store.snapshot(self.prefix)
        events = self.view.difference(current, revision)
        self.next_revision = revision + 1
        return WatchBatch(revision, tuple(events), resynced=True) if events else None

    def close(self) -> None:
        self._closed.set()
        self._changed.set()

    def __enter__(self) -> "ZkWatch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
