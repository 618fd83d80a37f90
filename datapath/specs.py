"""What the datapath is asked to build (a bridge, a veth port, a container interface) and what it finds (CHECK's
snapshot): plain records, so each face plans them without touching the kernel and :mod:`datapath.link_ops`
carries them out."""
from __future__ import annotations

from ipam.addresses import IPAddress, IPInterface, IPNetwork
from ipam.record import Record


class BridgeSpec(Record):
    name: str
    mtu: int
    promisc: bool
    vlan_filtering: bool
    gateway_addresses: tuple[IPInterface, ...]  # put on the bridge when isGateway
    force_address: bool


class PortSpec(Record):
    """The veth pair: its host end is a bridge port, its peer is the container's interface."""

    host_name: str
    ifname: str
    mtu: int
    mac: str | None
    hairpin: bool
    isolated: bool
    pvid: int
    trunk: tuple[int, ...]
    preserve_default_vlan: bool


class ContainerSpec(Record):
    up: bool
    addresses: tuple[IPInterface, ...]
    routes: tuple  # of routes with ``dst``, ``gw``, ``priority``, ``scope`` (the CNI result's Route), gateway filled in
    sysctls: tuple[tuple[str, str], ...]
    nodad: bool                          # IPv6 addresses skip duplicate address detection


class ObservedLink(Record):
    name: str
    kind: str
    mac: str
    master: str | None = None   # name of the master (host side)
    peer_index: int | None = None


class Observed(Record):
    """What CHECK found in the kernel: the host's links by name, and the container's interface with its state."""

    host_links: dict[str, ObservedLink]
    host_indexes: dict[str, int]
    container: ObservedLink | None
    container_addresses: frozenset[IPInterface]
    container_routes: frozenset[tuple[IPNetwork, IPAddress | None]]
