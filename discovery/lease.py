"""One lease kept alive by its own timed loop; when it is lost, a new one is granted and the owner rewrites.

Renewal runs every ``ttl / 3`` on its own thread, independent of request handling, health checks or
anti-entropy, so a slow request can never let the agent's endpoints expire.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from store.api import LeaseNotFound, Store, StoreError

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Holds ``lease_id``; calls ``on_new_lease(lease_id)`` (from its thread) after replacing a lost lease."""

    def __init__(self, store: Store, ttl: float, on_new_lease: Callable[[int], None]) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl: {ttl!r} must be a positive number of seconds")
        self.store = store
        self.ttl = ttl
        self.on_new_lease = on_new_lease
        self.lease_id = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Grant the first lease now if the store answers, then renew on a thread."""
        try:
            self.lease_id = self.store.grant_lease(self.ttl).id
        except StoreError as exc:
            log.warning("granting a lease failed (%s); will retry", exc)
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._thread.start()

    def stop(self, revoke: bool = False) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if revoke and self.lease_id:
            try:
                self.store.revoke_lease(self.lease_id)
            except StoreError:
                pass

    def _run(self) -> None:
        interval = max(self.ttl / 3.0, 0.05)
        while not self._stop.wait(interval if self.lease_id else min(interval, 0.5)):
            try:
                if self.lease_id:
                    self.store.keep_alive(self.lease_id)
                    continue
            except LeaseNotFound:
                log.warning("lease %x was lost; granting a new one and rewriting", self.lease_id)
            except StoreError as exc:
                log.warning("keeping lease %x alive failed: %s", self.lease_id, exc)
                continue
            try:
                self.lease_id = self.store.grant_lease(self.ttl).id
            except StoreError as exc:
                log.warning("granting a lease failed: %s", exc)
                self.lease_id = 0
                continue
            try:
                self.on_new_lease(self.lease_id)
            except Exception:
                log.exception("rewriting under the new lease failed")
