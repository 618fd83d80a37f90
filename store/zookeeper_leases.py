"""Leases of the ZooKeeper store: application-level, kept by the store's clients, timed by the server's clock.

A lease is ``leases/<id>``: its data is the TTL, its ``mtime`` the leader's clock at the last keep-alive, its
children the keys it holds. Ending one (revoke, or expiry found by any client's sweep) is one write through
the change log, so watchers see its keys go. Why not ZooKeeper's own sessions: see ``store.zookeeper``.
"""
from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from typing import TYPE_CHECKING

from kazoo.exceptions import NodeExistsError, NoNodeError

from store.api import Lease, LeaseNotFound, StoreError
from store.zookeeper_codec import lease_id_of, name_to_key
from store.zookeeper_txn import Op, WritePlan

if TYPE_CHECKING:
    from store.zookeeper import ZkStore

SWEEP_INTERVAL = 0.5      # seconds between one client's lease-expiry sweeps
CLOCK_REMEASURE = 10.0    # seconds a client trusts its estimate of the server's clock
CLOCK_MARGIN_MS = 100.0   # a lease this close to its end is checked against the server's clock itself
PIPELINE = 256            # lease nodes read together at most
log = logging.getLogger(__name__)


def ttl_of(data: bytes) -> float | None:
    try:
        ttl = float(data)
    except ValueError:
        return None
    return ttl if math.isfinite(ttl) and ttl > 0 else None


class ZkLeases:
    def __init__(self, store: "ZkStore") -> None:
        self.store = store
        self._sweep_lock = threading.Lock()
        self._next_sweep = 0.0
        self._clock_offset: tuple[float, float] | None = None   # (server ms - local monotonic ms, measured at)

    @property
    def calls(self):
        return self.store.calls

    @property
    def paths(self):
        return self.store.paths

    def grant(self, ttl: float) -> Lease:
        while True:
            lease_id = secrets.randbits(62) or 1
            try:
                # a retry after a lost answer finds its own node and picks another id; the orphan expires
                path = self.paths.lease(lease_id)
                self.calls.retrying("grant lease", lambda: self.calls.create(path, repr(ttl).encode()))
                return Lease(lease_id, ttl)
            except NodeExistsError:
                continue

    def keep_alive(self, lease_id: int) -> float:
        """Refresh the lease's ``mtime``; a lease found already past its TTL is expired here, not revived."""
        path = self.paths.lease(lease_id)
        try:
            data, before = self.calls.retrying("keep lease alive", lambda: self.calls.get(path))
            after = self.calls.retrying("keep lease alive", lambda: self.calls.set(path, data))
        except NoNodeError:
            raise LeaseNotFound(f"lease {lease_id:x} not found (expired or revoked)") from None
        ttl = ttl_of(data)
        if ttl is None:
            raise LeaseNotFound(f"lease {lease_id:x}: its node holds no TTL (not one of Berth's leases)")
        if after.mtime - before.mtime > ttl * 1000:
            self._end_lease(lease_id, after.version, "expire lease")
            raise LeaseNotFound(f"lease {lease_id:x} had expired before this keep-alive")
        return ttl

    def time_left(self, lease_id: int) -> float | None:
        """The lease's ``mtime`` + TTL against the leader's clock (estimated, one round trip behind at most)."""
        try:
            data, stat = self.calls.retrying("read lease", lambda: self.calls.get(self.paths.lease(lease_id)))
        except NoNodeError:
            return None
        ttl = ttl_of(data)
        if ttl is None:
            return None
        now = self._estimated_server_clock()
        if now == math.inf:
            now = self._read_server_clock()
        left = (stat.mtime + ttl * 1000 - now) / 1000
        return left if left > 0 else None

    def revoke(self, lease_id: int) -> None:
        if not self._end_lease(lease_id, -1, "revoke lease"):
            raise LeaseNotFound(f"lease {lease_id:x} not found (expired or revoked)")

    def _end_lease(self, lease_id: int, version: int, what: str) -> bool:
        """Delete the lease's keys (logged, so watchers see them go) and the lease, in one multi; False
        when the lease is gone already, or (``version`` given) was kept alive meanwhile."""
        path = self.paths.lease(lease_id)

        def body(plan: WritePlan) -> bool:
            try:
                names = self.calls.retrying(what, lambda: self.calls.children(path))
            except NoNodeError:
                return False
            keys = [key for key in map(name_to_key, names) if key is not None]
            plan.delete_keys(keys, keep=lambda kv: kv.lease != lease_id)
            orphans = [key for key in keys if plan.after.get(key, "kept") is not None]
            plan.extra += [Op("delete", self.paths.lease_key(lease_id, key)) for key in orphans]
            plan.extra.append(Op("delete", path, version=version, meaning="lease"))
            return True

        try:
            ended, _ = self.store.write(what, body, sweep=False)
        except LeaseNotFound:
            return False
        return ended

    def sweep(self) -> None:
        """Expire every lease past its TTL, by the server's clock; at most every SWEEP_INTERVAL per client.

        Reading the server's clock costs a write, so a sweep first judges by its estimate of that clock
        (measured at the last write, kept for CLOCK_REMEASURE seconds) and writes only when a lease is due
        or nearly: a store full of live leases is swept by reads alone."""
        now = time.monotonic()
        if now < self._next_sweep or not self._sweep_lock.acquire(blocking=False):
            return
        try:
            self._next_sweep = now + SWEEP_INTERVAL
            names = self.calls.retrying("list leases", lambda: self.calls.children(self.paths.leases))
            leases: list[tuple[int, int, float]] = []   # id, version, when it expires (server ms)
            for start in range(0, len(names), PIPELINE):
                chunk = names[start:start + PIPELINE]
                found = self.calls.retrying("read leases", lambda: self.calls.get_many(
                    [f"{self.paths.leases}/{name}" for name in chunk]))
                for name, hit in zip(chunk, found):
                    lease_id, ttl = lease_id_of(name), ttl_of(hit[0]) if hit else None
                    if lease_id and ttl:
                        leases.append((lease_id, hit[1].version, hit[1].mtime + ttl * 1000))
            if not leases or min(due for _, _, due in leases) > self._estimated_server_clock() + CLOCK_MARGIN_MS:
                return
            server_now = self._read_server_clock()
            for lease_id, version, due in leases:
                if due <= server_now:
                    self._end_lease(lease_id, version, "expire lease")
        except StoreError as exc:
            log.warning("zookeeper %s: lease sweep failed: %s", self.store.hosts, exc)
        finally:
            self._sweep_lock.release()

    def _read_server_clock(self) -> float:
        """The leader's clock in ms, as the ``mtime`` a write to ``clock`` gets; also re-measures the offset."""
        sent = time.monotonic()
        server_now = self.calls.retrying("read server clock", lambda: self.calls.set(self.paths.clock, b"")).mtime
        self._clock_offset = (server_now - sent * 1000, sent)
        return server_now

    def _estimated_server_clock(self) -> float:
        """At most one round trip behind the server's clock; +inf (measure now) when unknown or stale."""
        if self._clock_offset is None or time.monotonic() - self._clock_offset[1] > CLOCK_REMEASURE:
            return math.inf
        return time.monotonic() * 1000 + self._clock_offset[0]
