"""What a bridge attachment should look like, computed without touching the kernel.

ADD turns the config and IPAM's answer into an :class:`AddPlan` (bridge, veth pair, container addresses, routes,
sysctls, masquerade networks) and the result to print; CHECK compares the same expectations with an
:class:`Observed` snapshot. All of it is pure, so every decision is unit-tested without root.
"""
from __future__ import annotations

import ipaddress

from cni_plugins.bridge_config import BridgeConfig
from cni_plugins.types import IPConfig, Interface, Result, Route
from datapath.specs import BridgeSpec, ContainerSpec, Observed, PortSpec
from ipam.addresses import IPAddress, IPInterface
from ipam.record import Record, replace

# Index of each interface in the result, as the reference bridge orders them.
BRIDGE_IDX, HOST_VETH_IDX, CONTAINER_IDX = 0, 1, 2
DEFAULT_ROUTES = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}
RT_SCOPE_LINK = 253
SUBNET_VIA_GATEWAY_PRIORITY = 128  # below the 256 of the kernel's on-link IPv6 prefix route, so it wins


class AddPlan(Record):
    bridge: BridgeSpec
    port: PortSpec
    container: ContainerSpec
    host_sysctls: tuple[tuple[str, str], ...]
    masquerade: tuple[IPInterface, ...]  # container address with its subnet
    ips: tuple[IPConfig, ...]            # as the result reports them
    routes: tuple[Route, ...]


def gateway_for(ip: IPConfig, cfg: BridgeConfig) -> IPAddress | None:
    """IPAM's gateway, or, for a gateway bridge without one, the subnet's first address (as the reference)."""
    if ip.gateway is not None or not cfg.is_gateway:
        return ip.gateway
    return ip.address.network.network_address + 1


def _complete_ips(ipam: Result | None, cfg: BridgeConfig) -> tuple[IPConfig, ...]:
    if ipam is None:
        return ()
    return tuple(replace(ip, gateway=gateway_for(ip, cfg), interface=CONTAINER_IDX) for ip in ipam.ips)


def subnet_via_gateway(ips: tuple[IPConfig, ...]) -> list[Route]:
    """``ipv6SubnetViaGateway``: the container reaches its own IPv6 subnet through the gateway, not on the link.

    Cluster IPAM's IPv6 pool spans hosts, so most of the container's subnet is elsewhere, and nothing on the bridge
    answers neighbour solicitations for it (proxy NDP knows single addresses only). So: the gateway on the link
    (a /128, scope link: a gateway must be reached on-link or no route via it can be added, and the next route
    would otherwise be the one found for it) and the subnet via the gateway with a metric below the on-link
    prefix route's. The prefix route stays (the kernel's own), so the address still reads as the result says."""
    routes = []
    for ip in ips:
        if ip.address.version == 6 and ip.gateway is not None:
            routes.append(Route(dst=ipaddress.ip_network(ip.gateway), scope=RT_SCOPE_LINK))
            routes.append(Route(dst=ip.address.network, gw=ip.gateway, priority=SUBNET_VIA_GATEWAY_PRIORITY))
    return routes


def _result_routes(ipam: Result | None, ips: tuple[IPConfig, ...], cfg: BridgeConfig) -> tuple[Route, ...]:
    routes = list(ipam.routes) if ipam else []
    if cfg.ipv6_subnet_via_gateway:
        routes = subnet_via_gateway(ips) + routes
    if cfg.is_default_gateway:
        for ip in ips:
            default = DEFAULT_ROUTES[ip.address.version]
            if ip.gateway is not None and not any(r.dst == default for r in routes):
                routes.append(Route(dst=default, gw=ip.gateway))
    return tuple(routes)


def kernel_routes(routes: tuple[Route, ...], ips: tuple[IPConfig, ...]) -> tuple[Route, ...]:
    """Routes as installed: one without a gateway goes via the first gateway of its family, as ConfigureIface does,
    except a route to a gateway itself (on the link: :func:`subnet_via_gateway`; results older than 1.1.0 carry
    no scope, so the destination says it)."""
    gateways = {ipaddress.ip_network(ip.gateway) for ip in ips if ip.gateway is not None}
    out = []
    for route in routes:
        gw = route.gw
        if gw is None and (route.scope == RT_SCOPE_LINK or route.dst in gateways):
            out.append(replace(route, scope=RT_SCOPE_LINK))
            continue
        if gw is None:
            gw = next((ip.gateway for ip in ips if ip.address.version == route.dst.version and ip.gateway), None)
        out.append(replace(route, gw=gw))
    return tuple(dict.fromkeys(out))


def container_sysctls(ifname: str, ips: tuple[IPConfig, ...], cfg: BridgeConfig) -> tuple[tuple[str, str], ...]:
    out = []
    if any(ip.address.version == 4 for ip in ips):
        out.append((f"net/ipv4/conf/{ifname}/arp_notify", "1"))
    if any(ip.address.version == 6 for ip in ips):
        out.append((f"net/ipv6/conf/{ifname}/disable_ipv6", "0"))
        if not cfg.enable_dad:
            out.append((f"net/ipv6/conf/{ifname}/accept_dad", "0"))
    return tuple(out)


def host_sysctls(cfg: BridgeConfig, ips: tuple[IPConfig, ...]) -> tuple[tuple[str, str], ...]:
    """A gateway bridge forwards: ``ip_forward`` (and IPv6 forwarding) on, as the reference does."""
    if not cfg.is_gateway:
        return ()
    out = []
    if any(ip.address.version == 4 for ip in ips):
        out.append(("net/ipv4/ip_forward", "1"))
    if any(ip.address.version == 6 for ip in ips):
        out.append(("net/ipv6/conf/all/forwarding", "1"))
    return tuple(out)


def plan_add(cfg: BridgeConfig, ifname: str, host_name: str, mac: str | None,
             ipam: Result | None) -> AddPlan:
    """The whole desired state of one attachment."""
    ips = _complete_ips(ipam, cfg)
    routes = _result_routes(ipam, ips, cfg)
    gateways: tuple[IPInterface, ...] = ()
    if cfg.is_gateway:
        gateways = tuple(dict.fromkeys(
            ipaddress.ip_interface(f"{ip.gateway}/{ip.address.network.prefixlen}") for ip in ips if ip.gateway))
    configure = not cfg.disable_container_interface
    return AddPlan(
        bridge=BridgeSpec(name=cfg.bridge, mtu=cfg.mtu, promisc=cfg.promisc_mode, vlan_filtering=cfg.vlan_filtering,
                          gateway_addresses=gateways, force_address=cfg.force_address),
        port=PortSpec(host_name=host_name, ifname=ifname, mtu=cfg.mtu, mac=mac, hairpin=cfg.hairpin_mode,
                      isolated=cfg.port_isolation, pvid=cfg.vlan, trunk=cfg.vlan_trunk,
                      preserve_default_vlan=cfg.preserve_default_vlan),
        container=ContainerSpec(up=configure, addresses=tuple(ip.address for ip in ips) if configure else (),
                                routes=kernel_routes(routes, ips) if configure else (),
                                sysctls=container_sysctls(ifname, ips, cfg) if configure else (),
                                nodad=not cfg.enable_dad),
        host_sysctls=host_sysctls(cfg, ips),
        masquerade=tuple(ip.address for ip in ips) if cfg.ip_masq else (),
        ips=ips, routes=routes)


def build_result(cfg: BridgeConfig, plan: AddPlan, bridge_mac: str, host_mac: str, container_mac: str,
                 netns: str) -> Result:
    """The spec's result: bridge, host veth, container interface, then IPs pointing at the container's."""
    interfaces = (
        Interface(name=plan.bridge.name, mac=bridge_mac),
        Interface(name=plan.port.host_name, mac=host_mac),
        Interface(name=plan.port.ifname, mac=container_mac, sandbox=netns, mtu=plan.port.mtu or None),
    )
    return Result(cni_version=cfg.cni_version, interfaces=interfaces, ips=plan.ips, routes=plan.routes,
                  dns=cfg.dns)


# --- CHECK -------------------------------------------------------------------------------------------------------

def check_problems(cfg: BridgeConfig, prev: Result, ifname: str, netns: str, observed: Observed) -> list[str]:
    """Every way the namespace and host differ from ``prevResult``; empty when the attachment is intact."""
    problems: list[str] = []
    bridge = observed.host_links.get(cfg.bridge)
    if bridge is None:
        problems.append(f"bridge {cfg.bridge} is missing")
    elif bridge.kind != "bridge":
        problems.append(f"{cfg.bridge} is a {bridge.kind or 'plain'} link, not a bridge")
    container_entry = next((i for i in prev.interfaces if i.sandbox and i.name == ifname), None)
    if container_entry is None:
        problems.append(f"prevResult lists no interface {ifname} in a sandbox")
    host_entries = [i for i in prev.interfaces if not i.sandbox and i.name != cfg.bridge]
    host = observed.host_links.get(host_entries[0].name) if host_entries else None
    if not host_entries:
        problems.append("prevResult lists no host veth")
    elif host is None:
        problems.append(f"host veth {host_entries[0].name} is missing")
    elif host.master != cfg.bridge:
        problems.append(f"host veth {host.name} is not a port of {cfg.bridge}")
    link = observed.container
    if link is None:
        problems.append(f"interface {ifname} is missing in {netns}")
        return problems
    if link.kind != "veth":
        problems.append(f"interface {ifname} is a {link.kind or 'plain'} link, not a veth")
    if container_entry is not None and container_entry.mac and container_entry.mac.lower() != link.mac.lower():
        problems.append(f"interface {ifname} has MAC {link.mac}, prevResult says {container_entry.mac}")
    if host is not None and link.peer_index != observed.host_indexes.get(host.name):
        problems.append(f"interface {ifname} is not the peer of {host.name}")
    if cfg.disable_container_interface:
        return problems
    for ip in prev.ips:
        if ip.interface is not None and prev.interfaces[ip.interface].name != ifname:
            continue
        if ip.address not in observed.container_addresses:
            problems.append(f"address {ip.address} is missing on {ifname}")
    for route in kernel_routes(prev.routes, prev.ips):
        if (route.dst, route.gw) not in observed.container_routes:
            problems.append(f"route to {route.dst} via {route.gw} is missing in {netns}")
    return problems
