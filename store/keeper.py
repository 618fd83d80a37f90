"""The one lease keeper: a store lease kept alive by its own timed loop, replaced when lost, owner told.

Renewal runs every ``ttl / 3`` on the keeper's thread, apart from request handling, so a slow request never
lets the lease expire. Every call carries a deadline (:func:`store.deadline.call_deadline`) of a third of the
TTL: a keep-alive that answers later than that is too late to matter, and a stalled store never holds the
thread. A failed keep-alive is retried on the one policy of :mod:`store.retry`.

When the store says the lease is gone (it expired while the store was unreachable, or was revoked), the
keeper grants a new one and calls ``on_new_lease(new_id)`` — the owner then writes again what lived under the
old lease. Until that call returns without raising, the keeper calls it again after a pause, so an owner whose
rewrite met a store error is not left with keys that nobody rewrites. An owner that sees the lease refused on a
write calls :meth:`LeaseKeeper.lost` and the keeper replaces it at once instead of at its next renewal.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from store.api import LeaseNotFound, Store, StoreError
from store.deadline import call_deadline
from store.retry import DEFAULT_RETRY, RetryPolicy

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Holds :attr:`lease_id` (0 while it has none); see the module docstring."""

    def __init__(self, store: Store, ttl: float, on_new_lease: Callable[[int], None] = lambda lease_id: None, *,
                 retry: RetryPolicy = DEFAULT_RETRY, name: str = "lease-keeper") -> None:
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
            raise ValueError(f"ttl: {ttl!r} must be a positive number of seconds")
        self.store = store
        self.ttl = float(ttl)
        self.on_new_lease = on_new_lease
        self.retry = retry
        self.name = name
        self.lease_id = 0
        self.granted = 0  # leases granted after the first (each one meant a rewrite)
        self._owner_pending = False  # a new lease whose owner has not yet rewritten successfully
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def call_timeout(self) -> float:
        return max(self.ttl / 3.0, 0.05)

    # -- life cycle --------------------------------------------------------------------------------------
    def acquire(self, reuse: int = 0) -> int:
        """Take a lease now, on this thread: ``reuse`` if the store still keeps it alive, else a new one.
        Raises :class:`store.api.StoreError` when the store cannot be reached; :meth:`start` then keeps trying."""
        with call_deadline(self.call_timeout):
            if reuse:
                try:
                    self.store.keep_alive(reuse)
                    self.lease_id = reuse
                    return reuse
                except LeaseNotFound:
                    log.info("%s: lease %x is gone; granting a new one", self.name, reuse)
            self.lease_id = self.store.grant_lease(self.ttl).id
            return self.lease_id

    def start(self) -> "LeaseKeeper":
        """Keep the lease alive on a daemon thread (granting one first if :meth:`acquire` did not)."""
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, revoke: bool = False) -> None:
        """Stop renewing. The lease is left to expire unless ``revoke`` (then its keys go at once)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if revoke and self.lease_id:
            try:
                with call_deadline(self.call_timeout):
                    self.store.revoke_lease(self.lease_id)
            except StoreError:
                pass

    def lost(self, lease_id: int) -> None:
        """The owner saw the store refuse ``lease_id`` (a write named it and it was not found): replace it now."""
        with self._lock:
            if lease_id and lease_id == self.lease_id:
                self.lease_id = 0
        self._wake.set()

    # -- the loop ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        delays = None
        pause = 0.0 if not self.lease_id else self.call_timeout
        while not self._stopping.is_set():
            self._wake.wait(pause)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._step()
                delays, pause = None, self.call_timeout
            except StoreError as exc:
                delays = delays or self.retry.delays()
                pause = min(next(delays), self.call_timeout)
                log.warning("%s: lease %x: %s; retrying in %.2f s", self.name, self.lease_id, exc, pause)
            except Exception:
                delays = delays or self.retry.delays()
                pause = min(next(delays), self.call_timeout)
                log.exception("%s: the owner's rewrite under lease %x failed; retrying", self.name, self.lease_id)

    def _step(self) -> None:
        """Renew, or replace a lost lease, then bring a pending owner rewrite through."""
        lease_id = self.lease_id
        if lease_id:
            try:
                with call_deadline(self.call_timeout):
                    self.store.keep_alive(lease_id)
            except LeaseNotFound:
                log.warning("%s: lease %x was lost; granting a new one", self.name, lease_id)
                with self._lock:
                    if self.lease_id == lease_id:
                        self.lease_id = 0
        if not self.lease_id:
            with call_deadline(self.call_timeout):
                new = self.store.grant_lease(self.ttl).id
            with self._lock:
                self.lease_id = new
                self.granted += 1
                self._owner_pending = True
            log.info("%s: new lease %x", self.name, new)
        if self._owner_pending:
            self.on_new_lease(self.lease_id)
            self._owner_pending = False
