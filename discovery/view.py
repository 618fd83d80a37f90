"""The discovery view every reader shares (``dnsd``, the Consul catalog API, tests, benchmarks).

Usage::

    from discovery.view import DiscoveryView
    view = DiscoveryView(store)              # prefix defaults to discovery.model.ENDPOINTS_PREFIX
    unsubscribe = view.subscribe(on_change)  # on_change(ViewChange) runs on the view's thread after each step
    view.start()                             # lists synchronously (records() is complete on return), then watches
    view.records()                           # read-only {key: EndpointRecord} at view.revision
    view.wait_until(lambda recs: ..., timeout=2.0)
    view.stop()

Snapshot, then deltas: ``get_prefix`` and ``watch_prefix(revision + 1)``. When the watch fails (backend down, a
reconnect), the view re-lists and applies the difference, so it never misses a removal. Callbacks run on the
view's thread in revision order; keep them short (invalidate a cache, set an event) and never block in them.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Mapping

from discovery.model import ENDPOINTS_PREFIX, EndpointRecord
from discovery.viewstate import ViewChange, ViewState
from store.api import Store, StoreError

log = logging.getLogger(__name__)

Callback = Callable[[ViewChange], None]
RETRY_DELAY = 0.5


class DiscoveryView:
    """An in-memory, always-current copy of the endpoint records under ``prefix``."""

    def __init__(self, store: Store, prefix: str = ENDPOINTS_PREFIX) -> None:
        self.store = store
        self.prefix = prefix
        self._state = ViewState()
        self._callbacks: list[Callback] = []
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._watch = None
        self._thread: threading.Thread | None = None

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
        self._relist()
        self._thread = threading.Thread(target=self._run, name="discovery-view", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        watch = self._watch
        if watch is not None:
            try:
                watch.close()
            except Exception:  # closing a broken watch must not stop shutdown
                log.debug("closing watch failed", exc_info=True)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "DiscoveryView":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._watch = self.store.watch_prefix(self.prefix, self._state.revision + 1)
                if self._stopping.is_set():
                    break
                for batch in self._watch:
                    if self._stopping.is_set():
                        break
                    events = [(e.kind, e.key, e.value) for e in batch.events]
                    self._step(lambda: self._state.apply(batch.revision, events))
                else:
                    if self._stopping.is_set():
                        break
                    raise StoreError("watch ended")
            except Exception as exc:
                if self._stopping.is_set():
                    break
                log.warning("discovery view watch on %s failed (%s); re-listing", self.prefix, exc)
                self._close_watch()
                if self._stopping.wait(RETRY_DELAY):
                    break
                try:
                    self._relist()
                except Exception as exc2:
                    log.warning("re-listing %s failed: %s", self.prefix, exc2)
        self._close_watch()

    def _close_watch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            try:
                watch.close()
            except Exception:
                log.debug("closing watch failed", exc_info=True)

    def _relist(self) -> None:
        items, revision = self.store.get_prefix(self.prefix)
        self._step(lambda: self._state.reset(((kv.key, kv.value) for kv in items), revision))

    def _step(self, apply: Callable[[], ViewChange]) -> None:
        with self._cond:
            change = apply()
            self._cond.notify_all()
            callbacks = list(self._callbacks)
        if not change:
            return
        for callback in callbacks:
            try:
                callback(change)
            except Exception:
                log.exception("discovery view subscriber failed")
