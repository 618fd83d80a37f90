"""Docker's network-driver requests turned into Berth's records and rule plans, without touching the kernel.

Everything here is pure: what bridge a network gets, which interface names an endpoint's veth pair carries, which
host ports ``-p`` asks for and which firewall rules publish them (planned by :mod:`datapath.ports`, as the CNI
portmap's are, so both faces write the same rules and see each other's host ports).
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any, Iterable

from datapath import firewall
from datapath.errors import InvalidInput
from datapath.ifname import interface_name
from datapath.ports import conflicts, parse_mappings, plan_rules
from docker_plugin.errors import DriverError, from_datapath, mapping, text

GENERIC = "com.docker.network.generic"
PORTMAP = "com.docker.network.portmap"
OPTION_BRIDGE, OPTION_MTU, OPTION_MASQUERADE = "berth.bridge", "berth.mtu", "berth.masquerade"
OPTION_OVERLAY = "berth.overlay"
KNOWN_OPTIONS = (OPTION_BRIDGE, OPTION_MTU, OPTION_MASQUERADE, OPTION_OVERLAY)
PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}
CONTAINER_IFNAME = "eth0"  # only for the rule tag: Docker picks the name in the sandbox
ENDPOINT_MARK = "docker-"  # a rule tag's container field for an endpoint of this face
_DOCKER_ID = re.compile(r"[0-9a-f]{12,64}\Z")


def docker_id(request: dict, key: str) -> str:
    value = text(request, key)
    if not _DOCKER_ID.match(value):
        raise DriverError(f"{key}: {value!r} is not a Docker id (12 to 64 lowercase hex digits)")
    return value


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise DriverError(f"-o {key}: expected true or false, got {value!r}")


def _ip_data(entries: Any, field: str) -> list[dict]:
    """``IPv4Data``/``IPv6Data``: the pool and the gateway (``a.b.c.d/len``) IPAM gave each."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise DriverError(f"{field}: expected a list")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DriverError(f"{field}[{i}]: expected an object")
        try:
            pool = ipaddress.ip_network(text(entry, "Pool"))
            gateway = ipaddress.ip_interface(text(entry, "Gateway")) if entry.get("Gateway") else None
        except ValueError as exc:
            raise DriverError(f"{field}[{i}]: {exc}") from None
        if gateway is not None and gateway.ip not in pool:
            raise DriverError(f"{field}[{i}]: gateway {gateway} is not in pool {pool}")
        out.append({"pool": str(pool), "gateway": str(gateway) if gateway else ""})
    return out


def plan_network(request: dict, bridge_prefix: str) -> dict:
    """The record of a new network: bridge name, MTU, masquerade, and its subnets with their gateways."""
    network_id = docker_id(request, "NetworkID")
    options = mapping(request, "Options")
    generic = options.get(GENERIC) or {}
    if not isinstance(generic, dict):
        raise DriverError(f"Options.{GENERIC}: expected an object")
    unknown = sorted(k for k in generic if k.startswith("berth.") and k not in KNOWN_OPTIONS)
    if unknown:
        raise DriverError(f"unknown option -o {unknown[0]} (Berth knows {', '.join(KNOWN_OPTIONS)})")
    bridge = generic.get(OPTION_BRIDGE) or (bridge_prefix + network_id)[:15]
    try:
        interface_name(bridge, f"-o {OPTION_BRIDGE}")
    except ValueError as exc:
        raise DriverError(str(exc)) from None
    mtu_text = generic.get(OPTION_MTU, "0")
    try:
        mtu = int(mtu_text)
        if not (mtu == 0 or 68 <= mtu <= 65535):
            raise ValueError
    except (TypeError, ValueError):
        raise DriverError(f"-o {OPTION_MTU}: expected a number between 68 and 65535, got {mtu_text!r}") from None
    subnets = _ip_data(request.get("IPv4Data"), "IPv4Data") + _ip_data(request.get("IPv6Data"), "IPv6Data")
    masquerade = generic.get(OPTION_MASQUERADE)
    return {"id": network_id, "bridge": bridge, "mtu": mtu, "subnets": subnets,
            "masquerade": True if masquerade is None else _flag(masquerade, OPTION_MASQUERADE),
            "masquerade_set": masquerade is not None,
            "overlay": _flag(generic.get(OPTION_OVERLAY, False), OPTION_OVERLAY), "masquerade_scope": ""}


def join_overlay(network: dict, pools: list[dict], lease) -> dict:
    """A network on this host's overlay subnet (its pool came from ``--ipam-opt berth.overlay=true``): the
    overlay's MTU, and masquerading only of traffic that leaves the whole overlay network, by the bridge only when
    the overlay daemon does not masquerade itself (``FLANNEL_IPMASQ``), as berth-overlay's CNI config does."""
    on_overlay = [p for p in pools if p.get("overlay")]
    if network["overlay"] and not on_overlay:
        raise DriverError(f"-o {OPTION_OVERLAY}=true needs the pool of this host's overlay subnet: "
                          f"add --ipam-opt {OPTION_OVERLAY}=true (and no --subnet)")
    if not on_overlay:
        return network
    if lease is None:
        raise DriverError("the overlay's subnet file is gone: is berth overlay running on this host?", 409)
    return {**network, "overlay": True, "mtu": network["mtu"] or lease.mtu,
            "masquerade": network["masquerade"] if network["masquerade_set"] else not lease.ipmasq,
            "masquerade_scope": str(lease.network)}


def gateways(network: dict) -> list:
    return [ipaddress.ip_interface(s["gateway"]) for s in network["subnets"] if s["gateway"]]


def plan_endpoint(request: dict, network: dict) -> dict:
    """The record of a new endpoint: its addresses (from Docker's IPAM call), MAC, and the veth pair's names."""
    endpoint_id = docker_id(request, "EndpointID")
    interface = mapping(request, "Interface")
    addresses = []
    for key in ("Address", "AddressIPv6"):
        value = text(interface, key, required=False)
        if value:
            try:
                address = ipaddress.ip_interface(value)
            except ValueError as exc:
                raise DriverError(f"Interface.{key}: {exc}") from None
            if not any(address.ip in ipaddress.ip_network(s["pool"]) for s in network["subnets"]):
                raise DriverError(f"Interface.{key}: {address} is in none of network {network['id'][:12]}'s subnets")
            addresses.append(str(address))
    mac = text(interface, "MacAddress", required=False)
    return {"id": endpoint_id, "network": network["id"], "addresses": addresses, "mac_given": bool(mac),
            "mac": mac or mac_for(addresses),
            "host": "vb" + endpoint_id[:11], "peer": "vc" + endpoint_id[:11]}


def mac_for(addresses: list[str]) -> str:
    """A MAC that follows the IPv4 address (``02:be:`` and its four bytes, locally administered), as Docker's own
    bridge does with ``02:42:``: a new container on an address the host's ARP cache still maps to an old one's MAC
    would otherwise be unreachable until that entry goes stale. Empty (the veth's random MAC) without IPv4."""
    v4 = next((ipaddress.ip_interface(a).ip for a in addresses if ipaddress.ip_interface(a).version == 4), None)
    return "" if v4 is None else "02:be:" + ":".join(f"{b:02x}" for b in v4.packed)


def tag(endpoint: dict) -> str:
    """The firewall tag of an endpoint's rules: the CNI face's format, endpoint id for container id."""
    return firewall.attachment_tag(endpoint["network"], ENDPOINT_MARK + endpoint["id"][:24], CONTAINER_IFNAME)


def readable_conflicts(messages: list[str]) -> list[str]:
    """The portmap plan names a rule's owner as a container; for an owner from this face, say which endpoint
    (``docker network inspect`` lists endpoint ids)."""
    return [m.replace(f"by container {ENDPOINT_MARK}", "by the container of Docker endpoint ") for m in messages]


def port_mappings(options: dict) -> list[dict]:
    """``-p`` as Docker sends it (``com.docker.network.portmap``) in the CNI portmap's ``portMappings`` shape."""
    raw = options.get(PORTMAP) or []
    if not isinstance(raw, list):
        raise DriverError(f"Options.{PORTMAP}: expected a list")
    out = []
    for binding in raw:
        if not isinstance(binding, dict):
            raise DriverError(f"Options.{PORTMAP}: expected objects")
        proto = binding.get("Proto", 6)
        protocol = PROTOCOLS.get(proto) if isinstance(proto, int) else str(proto).lower()
        host_port, end = binding.get("HostPort") or 0, binding.get("HostPortEnd") or 0
        port = binding.get("Port")
        if not host_port:
            raise DriverError(f"-p {port}/{protocol}: Berth publishes only explicit host ports "
                              f"(-p HOSTPORT:{port})")
        if end and end != host_port:
            raise DriverError(f"-p {host_port}-{end}:{port}: Berth publishes single host ports, not ranges")
        out.append({"hostPort": host_port, "containerPort": port, "protocol": protocol,
                    "hostIP": binding.get("HostIP") or ""})
    return out


def plan_ports(endpoint: dict, mappings: Iterable[dict]):
    """The DNAT rules for ``mappings`` and a function naming which of them another attachment already holds."""
    try:
        parsed = parse_mappings(list(mappings))
    except InvalidInput as exc:
        raise from_datapath(exc) from None
    addresses = [ipaddress.ip_interface(a).ip for a in endpoint["addresses"]]
    endpoint_tag = tag(endpoint)
    return plan_rules(parsed, addresses), (
        lambda existing: readable_conflicts(conflicts(parsed, endpoint_tag, existing)))
