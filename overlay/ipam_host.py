"""Cluster IPAM's liveness key of this host, kept alive by ``berth overlay`` while it runs.

Cluster IPAM (:mod:`ipam.cluster`) refreshes ``/berth/ipam/hosts/<host>`` only when a CNI call runs, so a host
whose containers do not change for longer than ``hostTTL`` would look dead to ``berth ipam check``. The overlay
daemon runs on every host anyway: it holds the key under a lease of the same length, renewed by the one
:class:`store.keeper.LeaseKeeper`. A CNI call finds the key's lease alive and renews that same lease rather than
granting its own, so one lease carries the key; if the daemon dies, the key lasts one TTL more, as before.
"""
from __future__ import annotations

import logging
import time

from ipam.cluster import host_key, host_record, live_elsewhere, name_taken
from store.api import LeaseNotFound, Store
from store.keeper import LeaseKeeper
from store.machine import machine_id

log = logging.getLogger("berth.overlay")


class IpamHostTaken(RuntimeError):
    pass


class IpamHostKeeper:
    def __init__(self, store: Store, host: str, ttl: float) -> None:
        self.store, self.host, self.key = store, host, host_key(host)
        self.machine = machine_id()
        self.keeper = LeaseKeeper(store, ttl, self._write, name=f"berth-overlay-ipam-host-{host}")

    def start(self) -> "IpamHostKeeper":
        """Take over the key's lease if it is alive (written by a CNI call), else write the key under a new one."""
        kv = self.store.get(self.key)
        other = live_elsewhere(kv.value, self.machine) if kv is not None else None
        if other is not None:
            raise IpamHostTaken(name_taken(self.host, other) + " (--ipam-host)")
        lease = self.keeper.acquire(reuse=kv.lease if kv is not None else 0)
        if kv is None or kv.lease != lease:
            try:
                self._write(lease)
            except LeaseNotFound:  # it ran out between the grant and the write: once more with a fresh one
                self._write(self.keeper.acquire())
        self.keeper.start()
        log.info("keeping cluster IPAM host %s alive (lease %x)", self.host, self.keeper.lease_id)
        return self

    def _write(self, lease_id: int) -> None:
        self.store.put(self.key, host_record(self.host, time.time(), self.machine), lease=lease_id)

    def stop(self) -> None:
        self.keeper.stop()
