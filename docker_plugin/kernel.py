"""The kernel side of the Docker face, made of the parts the CNI bridge uses (:mod:`datapath`: ``link_ops``,
``rtnl``, ``firewall``, ``ports``). Failures are :mod:`datapath.errors`; the driver maps them to its answers.

Docker's remote-driver contract differs from CNI in one place: the driver creates the veth pair in the host
namespace and Docker moves the container end into the sandbox (and renames it ``eth<N>``) after ``Join``. So the
peer is created in this thread's own namespace, down, and the container's addresses are Docker's to put on it.
"""
from __future__ import annotations

import ipaddress
from typing import Iterable, Optional

from datapath import firewall, link_ops, ports, rtnl
from datapath.errors import LinkError
from datapath.specs import BridgeSpec, PortSpec

OWN_NETNS = "/proc/thread-self/ns/net"
FIREWALL_BACKEND = "nftables"


def ensure_bridge(name: str, mtu: int, gateways: Iterable[ipaddress.IPv4Interface | ipaddress.IPv6Interface]) -> None:
    """The network's bridge with its gateway addresses, and forwarding on (as a gateway bridge of the CNI face)."""
    spec = BridgeSpec(name=name, mtu=mtu, promisc=False, vlan_filtering=False,
                      gateway_addresses=tuple(gateways), force_address=False)
    with rtnl.Rtnl() as nl:
        bridge = link_ops.ensure_bridge(nl, spec)
        if spec.gateway_addresses:
            link_ops.ensure_gateway_addresses(nl, bridge.index, spec)
    forwarding = []
    if any(g.version == 4 for g in spec.gateway_addresses):
        forwarding.append(("net/ipv4/ip_forward", "1"))
        forwarding.append((f"net/ipv4/conf/{name}/route_localnet", "1"))  # host-local clients of -p ports
    if any(g.version == 6 for g in spec.gateway_addresses):
        forwarding.append(("net/ipv6/conf/all/forwarding", "1"))
    link_ops.write_host_sysctls(tuple(forwarding))


def bridge_exists(name: str) -> bool:
    with rtnl.Rtnl() as nl:
        link = nl.link(name)
    return link is not None and link.kind == "bridge"


def delete_link(name: str) -> bool:
    """Remove a link by name; False when it was not there."""
    with rtnl.Rtnl() as nl:
        return nl.delete_link(name=name)


def create_port(bridge: str, host_name: str, peer_name: str, mtu: int, mac: Optional[str]) -> None:
    """A veth pair: ``host_name`` a port of ``bridge`` and up, ``peer_name`` left here for Docker to move."""
    undo = link_ops.Undo()
    spec = PortSpec(host_name=host_name, ifname=peer_name, mtu=mtu, mac=mac, hairpin=False, isolated=False, pvid=0,
                    trunk=(), preserve_default_vlan=True)
    try:
        with rtnl.Rtnl() as nl:
            bridge_link = nl.link(bridge)
            if bridge_link is None:
                raise LinkError(f"bridge {bridge} is missing")
            host, _ = link_ops.create_veth(nl, OWN_NETNS, spec, bridge_link.index, undo)
        if host.name != host_name:  # create_veth draws another name when ours is taken: not ours to use
            undo.unwind()
            raise LinkError(f"veth name {host_name} is taken")
    except BaseException:
        undo.unwind()
        raise


def delete_port(host_name: str, peer_name: str) -> None:
    """Both ends, whichever is still here: Docker moves the container end back out of the sandbox before Leave."""
    with rtnl.Rtnl() as nl:
        if not nl.delete_link(name=host_name):
            nl.delete_link(name=peer_name)


# --- firewall: the same rules, tags and host-port lock as the CNI bridge and portmap -----------------------------

def _backend(role: str) -> firewall.Backend:
    return firewall.backend_for(FIREWALL_BACKEND, role)


def add_masquerade(tag: str, addresses: Iterable[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
                   scope: str = "") -> None:
    """Masquerade what leaves ``scope`` (the whole overlay network), or else the address's own subnet."""
    rules = [firewall.Masquerade(source=a.ip, subnet=ipaddress.ip_network(scope) if scope and a.version == 4
                                 else a.network) for a in addresses]
    if rules:
        backend = _backend("nat")
        backend.remove([tag])
        backend.add(tag, rules)


def remove_masquerade(tag: str) -> None:
    _backend("nat").remove([tag])


def add_port_rules(tag: str, claims, rules: list[firewall.Rule]) -> None:
    """Check-then-add under the host-port lock the CNI portmap holds, so a host port is one container's across
    both faces. ``claims(existing_comments)`` names the conflicts: PortConflict, and nothing added, when any."""
    ports.publish(_backend("portmap"), tag, rules, claims)


def remove_port_rules(tag: str) -> None:
    _backend("portmap").remove([tag])


def gc_rules(network: str, keep: Iterable[str]) -> list[str]:
    """Remove the rules of every attachment of ``network`` not in ``keep``."""
    keep = set(keep)
    return [tag for role in ("nat", "portmap") for tag in firewall.gc(_backend(role), network, keep)]
