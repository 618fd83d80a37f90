"""Routes for cluster IPAM's blocks, pure: which host owns which block, and the routes that follow from it.

Cluster IPAM (:mod:`ipam.cluster`) names a block's owner by its IPAM host name; the overlay knows peers by their
subnet lease, which carries the same name (``SubnetLease.ipam_host``, the daemon's ``--ipam-host``). That name is
the join: every IPv4 block owned by a peer gets a route via that peer's VTEP, on the VXLAN device (or, with direct
routing, via its underlay address), beside the peer's own subnet route, so the neighbour and FDB entry the peer
already has carry the block's traffic too. An address borrowed from another host's block (its record names the
host that took it, not the block's owner) gets a /32 route to the host holding it, and on that host a /32 onto the
bridge that carries the pool's gateway (else the owner's block route would send its traffic back to the owner).

IPv6 blocks and borrowed IPv6 addresses (/128) are routed the same way over the same IPv4 underlay and VXLAN
device, via the peer VTEP's IPv6 link-local address: the EUI-64 address of the VTEP MAC the lease already
carries (:func:`vtep_link_local`), with a permanent IPv6 neighbour entry for it and the peer's FDB entry. Linux
refuses an IPv6 route through an IPv4 gateway (``RTA_VIA``: "IPv6 does not support RTA_VIA attribute"; through a
nexthop object: "IPv6 routes can not use an IPv4 nexthop", 6.18), so an IPv6 next hop it must be; a link-local one
is valid on the VXLAN device by definition and needs no address plan and no new lease field (flannel instead gives
each VTEP an address from the host's IPv6 lease). With direct routing, IPv6 still goes over the VXLAN device: the
underlay is IPv4 and a peer's underlay IPv6 address is unknown.

``BlockView`` follows ``/berth/ipam/networks/`` (through :class:`store.follower.Follower`) and keeps only what
routing needs: claims and the holders of borrowed addresses. ``block_state`` turns it and the peers into routes
(``block_routes``) and the IPv6 next hops' neighbour and FDB entries, which :func:`overlay.reconcile.plan` diffs
with the kernel together with the peers' own.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ipam.blocks import parse_block_name, parse_pool_definition, read_claim, read_record
from overlay.lease import SubnetLease
from overlay.reconcile import FdbEntry, KernelState, Neighbour, Route

IPAM_NETWORKS_PREFIX = "/berth/ipam/networks/"  # ipam.cluster.network_prefix() without the network

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
BlockId = tuple[str, Network]  # (IPAM network name, block)


def parse_key(key: str, prefix: str = IPAM_NETWORKS_PREFIX):
    """``("block", network, block, None)``, ``("ip", network, block, ip)``, ``("pool", network, None, None)`` or
    None for other keys (attachment index entries, foreign keys, addresses outside the block they are filed under)."""
    if not key.startswith(prefix):
        return None
    parts = key[len(prefix):].split("/")
    if len(parts) == 2 and parts[1] == "pool":
        return ("pool", parts[0], None, None)
    try:
        if len(parts) == 3 and parts[1] == "blocks":
            block = parse_block_name(parts[2])
            return ("block", parts[0], block, None)
        if len(parts) == 4 and parts[1] == "ips":
            block, ip = parse_block_name(parts[2]), ipaddress.ip_address(parts[3])
            return ("ip", parts[0], block, ip) if ip.version == block.version and ip in block else None
    except ValueError:
        return None
    return None


@dataclass(frozen=True)
class BlockSnapshot:
    """What routing needs, copied out of the view (the follower's thread keeps changing the view itself)."""

    owners: dict[BlockId, str] = field(default_factory=dict)
    borrowed: dict[Address, tuple[str, str]] = field(default_factory=dict)  # -> (network, holder)
    gateways: dict[str, tuple[Address, ...]] = field(default_factory=dict)  # network -> its pool's


@dataclass
class BlockView:
    """Block owners and holders of addresses, as the store says (a pure reducer for the follower).

    ``holders`` keeps every held address (not only borrowed ones): whether an address is borrowed depends on its
    block's owner, which may be written after the address's record in another batch. Borrowed addresses are kept
    up to date per event (``_by_block`` finds a block's holders when its claim changes), so a batch costs what it
    touches, not the size of the pool. ``reset`` always returns a snapshot; ``apply`` returns one only when owners,
    borrowed addresses or gateways changed (most batches are ADDs and DELs inside a host's own blocks)."""

    prefix: str = IPAM_NETWORKS_PREFIX
    owners: dict[BlockId, str] = field(default_factory=dict)
    gateways: dict[str, tuple[Address, ...]] = field(default_factory=dict)
    holders: dict[tuple[str, Address], tuple[Network, str]] = field(default_factory=dict)
    borrowed: dict[Address, tuple[str, str]] = field(default_factory=dict)
    _by_block: dict[BlockId, set[Address]] = field(default_factory=dict)
    _changed: bool = False

    def reset(self, items: Sequence, revision: int = 0) -> BlockSnapshot:
        self.owners, self.holders, self.gateways, self.borrowed, self._by_block = {}, {}, {}, {}, {}
        for kv in items:
            self._put(kv.key, kv.value)
        self._changed = False
        return self.snapshot()

    def apply(self, batch) -> BlockSnapshot | None:
        self._changed = False
        for event in batch.events:
            if event.kind == "delete":
                self._drop(event.key)
            else:
                self._put(event.key, event.value)
        return self.snapshot() if self._changed else None

    def snapshot(self) -> BlockSnapshot:
        return BlockSnapshot(dict(self.owners), dict(self.borrowed), dict(self.gateways))

    def _put(self, key: str, value: bytes) -> None:
        parsed = parse_key(key, self.prefix)
        if parsed is None:
            return
        kind, network, block, ip = parsed
        if kind == "pool":
            try:
                pools = parse_pool_definition(value)
                gateways = tuple(r.gateway for p in pools for r in p.range_set.ranges)
            except (ValueError, KeyError, TypeError):
                gateways = None
            self._set_gateways(network, gateways)
        elif kind == "block":
            self._set_owner((network, block), read_claim(value).host)
        else:
            record = read_record(value, network)
            # released (quarantined) or unreadable: nobody to route it to
            self._set_holder(network, block, ip, record.host if record.held and record.host != "?" else None)

    def _drop(self, key: str) -> None:
        parsed = parse_key(key, self.prefix)
        if parsed is None:
            return
        kind, network, block, ip = parsed
        if kind == "pool":
            self._set_gateways(network, None)
        elif kind == "block":
            self._set_owner((network, block), None)
        else:
            self._set_holder(network, block, ip, None)

    def _set_gateways(self, network: str, gateways) -> None:
        if self.gateways.get(network) != gateways:
            self._changed = True
            if gateways is None:
                self.gateways.pop(network, None)
            else:
                self.gateways[network] = gateways

    def _set_owner(self, block_id: BlockId, host: str | None) -> None:
        if self.owners.get(block_id) == host:
            return
        if host is None:
            self.owners.pop(block_id, None)
        else:
            self.owners[block_id] = host
        self._changed = True
        for ip in self._by_block.get(block_id, ()):
            self._judge(block_id[0], ip)

    def _set_holder(self, network: str, block: Network, ip: Address,
                    host: str | None) -> None:
        members = self._by_block.setdefault((network, block), set())
        if host is None:
            self.holders.pop((network, ip), None)
            members.discard(ip)
        else:
            self.holders[(network, ip)] = (block, host)
            members.add(ip)
        self._judge(network, ip)

    def _judge(self, network: str, ip: Address) -> None:
        """Whether ``ip`` is borrowed now: held by a host other than its block's owner (or in a block nobody
        claims now)."""
        held = self.holders.get((network, ip))
        wanted = None
        if held is not None and self.owners.get((network, held[0])) != held[1]:
            wanted = (network, held[1])
        if self.borrowed.get(ip) != wanted:
            self._changed = True
            if wanted is None:
                self.borrowed.pop(ip, None)
            else:
                self.borrowed[ip] = wanted


def gateways_for_borrowed(view: BlockSnapshot, own_host: str) -> set[Address]:
    """The pool gateways whose devices this host needs: those of networks where it holds a borrowed address."""
    networks = {network for network, holder in view.borrowed.values() if holder == own_host}
    return {gw for network in networks for gw in view.gateways.get(network, ())}


def vtep_link_local(mac: str) -> ipaddress.IPv6Address:
    """The EUI-64 link-local address of a VTEP MAC (RFC 4291 appendix A): a peer's IPv6 next hop, named from its
    lease alone (the kernel gives the VXLAN device this address itself; :func:`overlay.kernel.enable_ipv6` makes
    sure)."""
    octets = bytes.fromhex(mac.replace(":", ""))
    if len(octets) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    interface_id = bytes([octets[0] ^ 0x02, *octets[1:3], 0xFF, 0xFE, *octets[3:]])
    return ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + interface_id)


def needs_ipv6(view: BlockSnapshot) -> bool:
    """Whether the VXLAN device must carry IPv6: some pool is dual-stack, so peers may send this host IPv6 (a
    device with IPv6 disabled drops what it receives) and this host may route IPv6 to them."""
    return any(gw.version == 6 for gateways in view.gateways.values() for gw in gateways) \
        or any(block.version == 6 for _net, block in view.owners) or any(ip.version == 6 for ip in view.borrowed)


def _host_route(ip: Address) -> Network:
    return ipaddress.ip_network((ip, ip.max_prefixlen))


def block_routes(view: BlockSnapshot, peers: Iterable[SubnetLease], own_host: str, vxlan_device: str,
                 underlay_device: str = "", direct_networks: Iterable[ipaddress.IPv4Network] = (),
                 bridges: dict[Address, str] | None = None) -> frozenset[Route]:
    """A route per block a peer owns and per address a peer borrowed, each via that peer as its subnet route goes
    (IPv6 ones via its VTEP's link-local address, always over VXLAN); and per address this host borrowed, one onto
    the device carrying its pool's gateway of that family (``bridges``: gateway -> device, from
    :func:`overlay.kernel.devices_holding`; none yet before the first container made the bridge).

    Blocks of this host and of hosts without a lease (gone, or not running the overlay) get none; so a departed
    host's blocks lose their routes on every peer as soon as its lease ends, claimed or not. One destination
    claimed by two hosts (two networks cut over the same range) goes to the first owner by name, never both."""
    direct_networks = tuple(direct_networks)
    by_host: dict[str, SubnetLease] = {}
    for lease in sorted(peers, key=lambda lease: str(lease.subnet)):
        if lease.ipam_host and lease.ipam_host != own_host:
            by_host.setdefault(lease.ipam_host, lease)

    def via(dst: Network, host: str) -> Route | None:
        lease = by_host.get(host)
        if lease is None or host == own_host:
            return None
        if dst.version == 4 and any(lease.public_ip in net for net in direct_networks):
            return Route(dst, lease.public_ip, underlay_device)
        if not lease.vtep_mac:
            return None
        if dst.version == 6:
            return Route(dst, vtep_link_local(lease.vtep_mac), vxlan_device)
        return Route(dst, lease.vtep_ip, vxlan_device)

    chosen: dict[Network, Route] = {}
    wanted = [(block, owner) for (_net, block), owner in view.owners.items()]
    wanted += [(_host_route(ip), holder) for ip, (_net, holder) in view.borrowed.items()]
    for dst, host in sorted(wanted, key=lambda pair: (pair[0].version, pair[0], pair[1])):
        if dst in chosen:
            continue
        route = via(dst, host)
        if route is not None:
            chosen[dst] = route
    bridges = bridges or {}
    for ip, (network, holder) in sorted(view.borrowed.items(), key=lambda item: (item[0].version, item[0])):
        if holder != own_host:
            continue
        device = next((bridges[gw] for gw in view.gateways.get(network, ())
                       if gw.version == ip.version and gw in bridges), None)
        if device is not None:
            chosen[_host_route(ip)] = Route(_host_route(ip), None, device)
    return frozenset(chosen.values())


def block_state(view: BlockSnapshot, peers: Iterable[SubnetLease], own_host: str, vxlan_device: str,
                underlay_device: str = "", direct_networks: Iterable[ipaddress.IPv4Network] = (),
                bridges: dict[Address, str] | None = None) -> KernelState:
    """:func:`block_routes` with the entries their IPv6 next hops need: per peer routed IPv6, a permanent
    neighbour for its VTEP's link-local address and its FDB entry (already there for a VXLAN peer: the union
    with :func:`overlay.reconcile.desired_state` keeps one; a directly routed peer gets it for IPv6 alone)."""
    peers = tuple(peers)
    routes = block_routes(view, peers, own_host, vxlan_device, underlay_device, direct_networks, bridges)
    hops = {route.gateway for route in routes if route.gateway is not None and route.gateway.version == 6}
    neighbours, fdb = set(), set()
    for lease in peers:
        if lease.vtep_mac and lease.ipam_host != own_host and vtep_link_local(lease.vtep_mac) in hops:
            neighbours.add(Neighbour(vtep_link_local(lease.vtep_mac), lease.vtep_mac))
            fdb.add(FdbEntry(lease.vtep_mac, lease.public_ip))
    return KernelState(routes, frozenset(neighbours), frozenset(fdb))
