"""The datastore side of a host's subnet lease: find or claim it, keep it alive, reserve subnets.

Claiming is compare-and-swap on the key's existence, so when many hosts start at once each subnet goes to exactly
one of them; the loser re-lists and tries another. A host's lease is found again by its underlay address (as
flannel does), so a restarted daemon keeps its subnet and VTEP MAC and its peers notice nothing.
"""
from __future__ import annotations

import ipaddress
import logging
import random
import time
from dataclasses import dataclass, replace

from overlay.config import NetworkConfig, parse_config
from overlay.lease import LeaseFormatError, SubnetLease, config_key, parse_lease, subnet_key, subnets_prefix
from overlay.subnets import candidate_subnets
from store.api import KeyValue, Store, StoreError

log = logging.getLogger("berth.overlay")

CLAIM_ROUNDS = 20


class ClaimError(RuntimeError):
    pass


@dataclass(frozen=True)
class HeldLease:
    """A lease this host holds: the record, and the store lease keeping it (0 for a reservation)."""

    lease: SubnetLease
    store_lease: int
    ttl: float
    written_at: float = 0.0  # wall clock just before the write that took (or renewed) it


def load_config(store: Store, prefix: str) -> NetworkConfig:
    kv = store.get(config_key(prefix))
    if kv is None:
        raise ClaimError(f"no overlay network configured at {config_key(prefix)} (run `berth overlay init`)")
    return parse_config(kv.value)


def write_config(store: Store, prefix: str, config: NetworkConfig, force: bool = False) -> bool:
    """Store the network config; refuse to change an existing one unless ``force`` (hosts would disagree)."""
    key = config_key(prefix)
    if store.create(key, config.to_json()):
        return True
    current = store.get(key)
    if current is not None and current.value == config.to_json():
        return True
    if not force:
        return False
    store.put(key, config.to_json())
    return True


def list_leases(store: Store, prefix: str) -> tuple[list[tuple[KeyValue, SubnetLease]], int]:
    kvs, revision = store.get_prefix(subnets_prefix(prefix))
    out = []
    for kv in kvs:
        try:
            out.append((kv, parse_lease(kv.key, kv.value, prefix)))
        except LeaseFormatError as exc:
            log.warning("ignoring %s", exc)
    return out, revision


def find_own(leases: list[tuple[KeyValue, SubnetLease]], public_ip: ipaddress.IPv4Address
             ) -> tuple[KeyValue, SubnetLease] | None:
    """This host's lease: a reservation first (it never expires), else the most recent one."""
    mine = [(kv, lease) for kv, lease in leases if lease.public_ip == public_ip]
    if not mine:
        return None
    mine.sort(key=lambda pair: (pair[0].lease == 0, pair[0].mod_revision), reverse=True)
    return mine[0]


def acquire(store: Store, prefix: str, config: NetworkConfig, public_ip: ipaddress.IPv4Address, mac: str,
            ttl: float, preferred: ipaddress.IPv4Network | None = None,
            rng: random.Random | None = None, ipam_host: str = "") -> HeldLease:
    """Reuse this host's lease (keeping its MAC) or claim a free subnet. ``mac`` is used only for a new lease;
    ``ipam_host`` (the cluster IPAM host name) is written into either."""
    rng = rng or random.Random()
    store_lease = store.grant_lease(ttl)
    try:
        for _ in range(CLAIM_ROUNDS):
            leases, _revision = list_leases(store, prefix)
            own = find_own(leases, public_ip)
            if own is not None:
                held = _reuse(store, prefix, own, mac, store_lease.id, store_lease.ttl, ipam_host)
                if held is not None:
                    if held.store_lease == 0:
                        store.revoke_lease(store_lease.id)
                    return held
                continue
            taken = [lease.subnet for _kv, lease in leases]
            candidates = candidate_subnets(config, taken, rng, preferred)
            if not candidates:
                raise ClaimError(f"no free subnet left in {config.network} "
                                 f"({config.subnet_min.network_address}..{config.subnet_max.network_address})")
            for subnet in candidates[:4]:
                lease = SubnetLease(subnet, public_ip, mac, config.vni, ipam_host=ipam_host)
                started = time.time()
                if store.create(subnet_key(subnet, prefix), lease.to_json(), lease=store_lease.id):
                    return HeldLease(lease, store_lease.id, store_lease.ttl, started)
            time.sleep(rng.uniform(0, 0.05))  # every try lost a race: let the winners' writes settle
        raise ClaimError(f"could not claim a subnet after {CLAIM_ROUNDS} rounds of contention")
    except BaseException:
        _revoke_quietly(store, store_lease.id)
        raise


def _reuse(store: Store, prefix: str, own: tuple[KeyValue, SubnetLease], mac: str, lease_id: int,
           ttl: float, ipam_host: str = "") -> HeldLease | None:
    kv, lease = own
    lease = replace(lease, vtep_mac=lease.vtep_mac or mac, ipam_host=ipam_host or lease.ipam_host)
    started = time.time()
    if kv.lease == 0:  # a reservation: it stays without a store lease
        if store.compare_and_swap(kv.key, lease.to_json(), kv.mod_revision, lease=0):
            return HeldLease(lease, 0, 0.0, started)
        return None
    # move the key under this run's store lease; the value (subnet, MAC) stays as the peers know it
    if store.compare_and_swap(kv.key, lease.to_json(), kv.mod_revision, lease=lease_id):
        return HeldLease(lease, lease_id, ttl, started)
    return None


def reclaim(store: Store, prefix: str, held: HeldLease, lease_id: int = 0) -> HeldLease:
    """After the store lease was lost: the same subnet again under ``lease_id`` (the keeper's new lease; 0:
    grant one here), or ClaimError when another host took the subnet meanwhile. Idempotent: the key already
    under ``lease_id`` with this host's record is success."""
    granted = 0
    if not lease_id:
        granted = lease_id = store.grant_lease(held.ttl).id
    key = subnet_key(held.lease.subnet, prefix)
    if store.create(key, held.lease.to_json(), lease=lease_id):
        return HeldLease(held.lease, lease_id, held.ttl)
    kv = store.get(key)
    if kv is not None:
        try:
            current = parse_lease(kv.key, kv.value, prefix)
        except LeaseFormatError:
            current = None
        if current is not None and current.public_ip == held.lease.public_ip:
            if kv.lease == lease_id or store.compare_and_swap(key, held.lease.to_json(), kv.mod_revision,
                                                               lease=lease_id):
                return HeldLease(held.lease, lease_id, held.ttl)
    if granted:
        _revoke_quietly(store, granted)
    raise ClaimError(f"subnet {held.lease.subnet} was taken by another host while this host's lease was lost")


def reserve(store: Store, prefix: str, config: NetworkConfig, subnet: ipaddress.IPv4Network,
            public_ip: ipaddress.IPv4Address) -> SubnetLease:
    """A subnet kept for the host at ``public_ip`` forever (no store lease); that host fills in its MAC."""
    if not subnet.subnet_of(config.network) or subnet.prefixlen != config.subnet_len:
        raise ClaimError(f"{subnet} is not a /{config.subnet_len} inside {config.network}")
    leases, _ = list_leases(store, prefix)
    for kv, lease in leases:
        if lease.subnet.overlaps(subnet) and lease.public_ip != public_ip:
            raise ClaimError(f"{subnet} overlaps {lease.subnet}, held by {lease.public_ip}")
    key = subnet_key(subnet, prefix)
    existing = store.get(key)
    mac = ""
    if existing is not None:
        try:
            mac = parse_lease(key, existing.value, prefix).vtep_mac
        except LeaseFormatError:
            pass
    lease = SubnetLease(subnet, public_ip, mac, config.vni, reserved=True)
    store.put(key, lease.to_json())
    return lease


def unreserve(store: Store, prefix: str, subnet: ipaddress.IPv4Network) -> bool:
    return store.delete(subnet_key(subnet, prefix)) > 0


def release(store: Store, prefix: str, held: HeldLease) -> None:
    """Give the subnet back now (on an orderly shutdown that asks for it); reservations stay."""
    if held.store_lease:
        _revoke_quietly(store, held.store_lease)


def _revoke_quietly(store: Store, lease_id: int) -> None:
    try:
        store.revoke_lease(lease_id)
    except StoreError:
        pass
