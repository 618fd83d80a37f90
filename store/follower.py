"""The one follower of a prefix: list, watch from revision + 1, resume, re-list; a pure reducer keeps the state.

Every reader of the store (the discovery view, the overlay's peers) follows the same way:

* list the prefix and hand the listing to ``reducer.reset``;
* watch from the listing's revision + 1 and hand each batch to ``reducer.apply``;
* when a watch ends (its member went away), watch again from the last revision applied + 1: nothing is missed
  or seen twice;
* when the store answers that revision is compacted, re-list at once; after any other failure (the store is
  down, the owner's callback raised) re-list after a pause from :mod:`store.retry`, so a removal that
  happened meanwhile is never missed.

After each step ``on_change(change)`` runs on the follower's thread with what the reducer returned. The
reducer holds the state and decides what a change is; the follower only moves data, so both are tested
apart: the reducer without a store, the follower in the store contract suite on every backend.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Generic, Protocol, Sequence, TypeVar

from store.api import Compacted, KeyValue, Store, WatchBatch
from store.retry import DEFAULT_RETRY, RetryPolicy

log = logging.getLogger(__name__)

C = TypeVar("C")


class Reducer(Protocol[C]):
    """Pure: state in memory, no store and no threads. Returns what changed (``C``, the owner's type)."""

    def reset(self, items: Sequence[KeyValue], revision: int) -> C: ...
    def apply(self, batch: WatchBatch) -> C: ...


class Follower(Generic[C]):
    """Keeps ``reducer`` equal to the store's keys under ``prefix``; see the module docstring."""

    def __init__(self, store: Store, prefix: str, reducer: Reducer[C],
                 on_change: Callable[[C], None] = lambda change: None, *,
                 retry: RetryPolicy = DEFAULT_RETRY, name: str = "") -> None:
        self.store = store
        self.prefix = prefix
        self.reducer = reducer
        self.on_change = on_change
        self.retry = retry
        self.name = name or f"follow {prefix}"
        self.revision = 0  # the store revision the reducer's state reflects (0: never listed)
        self.relists = 0   # how many listings after the first (a gauge of trouble, and for tests)
        self.following = threading.Event()  # set once a watch is open after a listing
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watch = None
        self._thread: threading.Thread | None = None

    # -- running -----------------------------------------------------------------------------------------
    def list_now(self) -> C:
        """List the prefix and reset the reducer, on the calling thread (raises the store's error)."""
        items, revision = self.store.get_prefix(self.prefix)
        return self._step(self.reducer.reset(items, revision), revision)

    def start(self, revision: int | None = None) -> "Follower[C]":
        """Follow on a daemon thread. ``revision``: the reducer already reflects the store at that revision
        (the owner listed and reset it itself); otherwise list now, on this thread, raising if that fails."""
        if revision is not None:
            self.revision = revision
        elif not self.revision:
            self.list_now()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._close_watch()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    # -- the loop ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        delays = None
        need_list = False
        while not self._stopping.is_set():
            try:
                if need_list:
                    self.relists += 1
                    self.list_now()
                    need_list = False
                if self._follow_once():
                    delays = None  # the watch ended after delivering: resume from the last revision at once
                elif not self._stopping.is_set():
                    delays = delays or self.retry.delays()  # it ended at once: do not spin on a store that
                    if self._stopping.wait(next(delays)):   # keeps ending watches
                        break
            except Compacted:
                log.info("%s: history compacted past revision %d; re-listing", self.name, self.revision)
                need_list = True
            except Exception as exc:
                if self._stopping.is_set():
                    break
                need_list = True
                delays = delays or self.retry.delays()
                pause = next(delays)
                log.warning("%s failed (%s); re-listing in %.1f s", self.name, exc, pause)
                if self._stopping.wait(pause):
                    break
            finally:
                self._close_watch()

    def _follow_once(self) -> int:
        """One watch from revision + 1 until it ends; every batch goes through the reducer. Returns how many
        batches it applied."""
        watch = self.store.watch_prefix(self.prefix, self.revision + 1)
        with self._lock:
            self._watch = watch
        applied = 0
        if self._stopping.is_set():
            return applied
        self.following.set()
        for batch in watch:
            if self._stopping.is_set():
                break
            if batch.revision <= self.revision and not batch.resynced:
                continue  # already reflected (a backend may repeat the tail of an ended watch)
            self._step(self.reducer.apply(batch), batch.revision)
            applied += 1
        return applied

    def _step(self, change: C, revision: int) -> C:
        self.revision = revision
        self.on_change(change)
        return change

    def _close_watch(self) -> None:
        with self._lock:
            watch, self._watch = self._watch, None
        if watch is not None:
            try:
                watch.close()
            except Exception:  # closing a broken watch must not hide why it broke
                log.debug("%s: closing the watch failed", self.name, exc_info=True)
