"""The discovery view every reader shares (``dnsd``, the Consul catalog API, tests, benchmarks).

Usage::

    from discovery.view import DiscoveryView
    view = DiscoveryView(store)              # prefix defaults to discovery.model.ENDPOINTS_PREFIX
    unsubscribe = view.subscribe(on_change)  # on_change(ViewChange) runs on the view's thread after each step
    view.start()                             # lists synchronously (records() is complete on return), then watches
    view.records()                           # read-only {key: EndpointRecord} at view.revision
    view.wait_until(lambda recs: ..., timeout=2.0)
    view.stop()

The view is a :class:`store.follower.Follower` of the prefix feeding the pure :class:`ViewState`: snapshot, then
deltas, resumed when a watch ends and re-listed after compaction or a store error, so it never misses a removal.
Callbacks run on the follower's thread in revision order; keep them short (invalidate a cache, set an event) and
never block in them.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Mapping, Sequence

from discovery.model import ENDPOINTS_PREFIX, EndpointRecord
from discovery.viewstate import ViewChange, ViewState
from store.api import KeyValue, Store, WatchBatch
from store.follower import Follower

log = logging.getLogger(__name__)

Callback = Callable[[ViewChange], None]


class _RecordsReducer:
    """The follower's reducer: listings and batches from the store into :class:`ViewState`."""

    def __init__(self, state: ViewState) -> None:
        self.state = state

    def reset(self, items: Sequence[KeyValue], revision: int) -> ViewChange:
        return self.state.reset(((kv.key, kv.value) for kv in items), revision)

    def apply(self, batch: WatchBatch) -> ViewChange:
        return self.state.apply(batch.revision, [(e.kind, e.key, e.value) for e in batch.events])


class DiscoveryView:
    """An in-memory, always-current copy of the endpoint records under ``prefix``."""

    def __init__(self, store: Store, prefix: str = ENDPOINTS_PREFIX) -> None:
        self.store = store
        self.prefix = prefix
        self._state = ViewState()
        self._callbacks: list[Callback] = []
        self._cond = threading.Condition()
        self.follower = Follower(store, prefix, _RecordsReducer(self._state), self._changed,
                                 name="discovery-view")

    # -- reading -----------------------------------------------------------------------------------------
    def records(self) -> Mapping[str, EndpointRecord]:
        """The records at :attr:`revision`: a read-only mapping that later changes never alter."""
        return self._state.records

    @property
    def revision(self) -> int:
        return self._state.revision

    def snapshot(self) -> tuple[int, Mapping[str, EndpointRecord]]:
        """``(revision, records)`` taken together: an answer computed from them names one state (the Consul
        API's X-Consul-Index relies on it)."""
        with self._cond:
            return self._state.revision, self._state.records

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Call ``callback(change)`` after every change; returns a function that unsubscribes."""
        with self._cond:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._cond:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)
        return unsubscribe

    def wait_until(self, predicate: Callable[[Mapping[str, EndpointRecord]], bool], timeout: float) -> bool:
        """Block until ``predicate(records())`` holds (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self._state.records):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    # -- running -----------------------------------------------------------------------------------------
    def start(self) -> "DiscoveryView":
        """List the prefix now (raises :class:`store.api.StoreError` if the store cannot be read), then follow
        changes on a daemon thread."""
        self.follower.start()
        return self

    def stop(self) -> None:
        self.follower.stop()

    def __enter__(self) -> "DiscoveryView":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _changed(self, change: ViewChange) -> None:
        """After each step of the follower (its thread): wake the waiters, then tell the subscribers."""
        with self._cond:
            self._cond.notify_all()
            callbacks = list(self._callbacks)
        if not change:
            return
        for callback in callbacks:
            try:
                callback(change)
            except Exception:
                log.exception("discovery view subscriber failed")
