"""From the other hosts' leases to the kernel entries this host should have: pure, no netlink, no datastore.

``LeaseWatcher`` turns a snapshot and then watch deltas into the current set of peer leases (flannel's
``LeaseWatcher.Reset/Update``); ``desired_state`` says which routes, neighbours and FDB entries those peers need;
``plan`` diffs that against what the kernel holds, so the same code installs new peers, removes departed ones and
sweeps entries left behind by an earlier run.
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Iterable

from overlay.config import DEFAULT_PREFIX
from overlay.lease import LeaseFormatError, SubnetLease, parse_lease, subnet_from_key

log = logging.getLogger("berth.overlay")


@dataclass(frozen=True)
class Route:
    """``dst`` via ``gateway`` on ``device`` (onlink): the peer's VTEP on the VXLAN device, or with direct
    routing the peer's underlay address on the underlay interface; for an IPv6 ``dst`` (a cluster IPAM block) the
    peer VTEP's IPv6 link-local address. Without a gateway, ``dst`` is on ``device`` itself (scope link): an
    address this host borrowed from a peer's block, on this host's bridge."""

    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    device: str


@dataclass(frozen=True)
class Neighbour:
    """A permanent ARP (or, for a VTEP's IPv6 link-local address, NDP) entry on the VXLAN device: the peer's VTEP
    address answers with its VTEP MAC."""

    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    mac: str


@dataclass(frozen=True)
class FdbEntry:
    """Frames for ``mac`` leave the VXLAN device encapsulated to the peer's underlay address ``dst``."""

    mac: str
    dst: ipaddress.IPv4Address


@dataclass(frozen=True)
class KernelState:
    routes: frozenset[Route] = frozenset()
    neighbours: frozenset[Neighbour] = frozenset()
    fdb: frozenset[FdbEntry] = frozenset()


@dataclass(frozen=True)
class Plan:
    """What to change, in the order to apply it: routes go first and come last, so traffic is never sent to a
    peer whose neighbour or FDB entry is missing."""

    remove_routes: tuple[Route, ...] = ()
    remove_neighbours: tuple[Neighbour, ...] = ()
    remove_fdb: tuple[FdbEntry, ...] = ()
    add_fdb: tuple[FdbEntry, ...] = ()
    add_neighbours: tuple[Neighbour, ...] = ()
    add_routes: tuple[Route, ...] = ()

    def empty(self) -> bool:
        return not any((self.remove_routes, self.remove_neighbours, self.remove_fdb,
                        self.add_fdb, self.add_neighbours, self.add_routes))


@dataclass(frozen=True)
class Delta:
    added: tuple[SubnetLease, ...] = ()
    removed: tuple[SubnetLease, ...] = ()
    own_lost: bool = False  # this host's own lease key was deleted (it expired or was revoked)


@dataclass
class LeaseWatcher:
    """The current peer leases, kept exact from one snapshot and then the watch's batches.

    This host's own lease is tracked apart (``own_subnet``) and never becomes a peer, nor does any lease that
    names this host's underlay address."""

    own_subnet: ipaddress.IPv4Network | None  # None until this host's lease is claimed
    own_public_ip: ipaddress.IPv4Address
    prefix: str = DEFAULT_PREFIX
    leases: dict[ipaddress.IPv4Network, SubnetLease] = field(default_factory=dict)

    def reset(self, snapshot: Iterable[tuple[str, bytes]]) -> Delta:
        """Replace the view with a full listing; returns what changed against the old view."""
        fresh: dict[ipaddress.IPv4Network, SubnetLease] = {}
        own_seen = False
        for key, value in snapshot:
            lease = self._parse(key, value)
            if lease is None:
                own_seen = own_seen or self._is_own_key(key)
                continue
            fresh[lease.subnet] = lease
        added = tuple(v for k, v in fresh.items() if self.leases.get(k) != v)
        removed = tuple(v for k, v in self.leases.items() if k not in fresh)
        self.leases = fresh
        return Delta(added, removed, own_lost=self.own_subnet is not None and not own_seen)

    def apply(self, events: Iterable) -> Delta:
        """Apply watch events (objects with ``kind``, ``key``, ``value``) in order."""
        added: dict[ipaddress.IPv4Network, SubnetLease] = {}
        removed: dict[ipaddress.IPv4Network, SubnetLease] = {}
        own_lost = False
        for event in events:
            if event.kind == "delete":
                if self._is_own_key(event.key):
                    own_lost = True
                    continue
                self._forget(event.key, added, removed)
                continue
            lease = self._parse(event.key, event.value)
            if lease is None:
                if self._is_own_key(event.key):
                    own_lost = False
                    continue
                # an unreadable value replaced a lease: forget the peer rather than route on stale data
                self._forget(event.key, added, removed)
                continue
            if self.leases.get(lease.subnet) != lease:
                self.leases[lease.subnet] = lease
                added[lease.subnet] = lease
                removed.pop(lease.subnet, None)
        return Delta(tuple(added.values()), tuple(removed.values()), own_lost)

    def _forget(self, key: str, added: dict, removed: dict) -> None:
        """The peer lease at ``key`` is gone (deleted, or its value became unreadable): stop routing to it, and
        drop it from this batch's additions so one delta never both adds and removes a subnet."""
        try:
            subnet = subnet_from_key(key, self.prefix)
        except LeaseFormatError:
            return
        old = self.leases.pop(subnet, None)
        added.pop(subnet, None)
        if old is not None:
            removed[subnet] = old

    def _is_own_key(self, key: str) -> bool:
        if self.own_subnet is None:
            return False
        try:
            return subnet_from_key(key, self.prefix) == self.own_subnet
        except LeaseFormatError:
            return False

    def _parse(self, key: str, value: bytes) -> SubnetLease | None:
        """A peer lease, or None for this host's own key, foreign keys and unreadable values."""
        try:
            lease = parse_lease(key, value, self.prefix)
        except LeaseFormatError as exc:
            log.warning("ignoring %s", exc)
            return None
        if lease.subnet == self.own_subnet or lease.public_ip == self.own_public_ip:
            return None
        if self.own_subnet is not None and lease.subnet.overlaps(self.own_subnet):
            log.warning("ignoring lease %s: it overlaps this host's subnet %s", lease.subnet, self.own_subnet)
            return None
        return lease


def desired_state(peers: Iterable[SubnetLease], vxlan_device: str, underlay_device: str = "",
                  direct_networks: Iterable[ipaddress.IPv4Network] = ()) -> KernelState:
    """One route + one neighbour + one FDB entry per peer; with direct routing (``direct_networks`` = the
    underlay's on-link networks) a peer on the same layer-2 segment gets a plain route via its underlay address."""
    direct_networks = tuple(direct_networks)
    routes, neighbours, fdb = set(), set(), set()
    for lease in peers:
        if any(lease.public_ip in net for net in direct_networks):
            routes.add(Route(lease.subnet, lease.public_ip, underlay_device))
            continue
        if not lease.vtep_mac:
            continue  # a reservation whose host has not come up yet: nothing to send frames to
        routes.add(Route(lease.subnet, lease.vtep_ip, vxlan_device))
        neighbours.add(Neighbour(lease.vtep_ip, lease.vtep_mac))
        fdb.add(FdbEntry(lease.vtep_mac, lease.public_ip))
    return KernelState(frozenset(routes), frozenset(neighbours), frozenset(fdb))


def plan(desired: KernelState, actual: KernelState) -> Plan:
    def order(items):
        return tuple(sorted(items, key=repr))

    return Plan(
        remove_routes=order(actual.routes - desired.routes),
        remove_neighbours=order(actual.neighbours - desired.neighbours),
        remove_fdb=order(actual.fdb - desired.fdb),
        add_fdb=order(desired.fdb - actual.fdb),
        add_neighbours=order(desired.neighbours - actual.neighbours),
        add_routes=order(desired.routes - actual.routes),
    )
