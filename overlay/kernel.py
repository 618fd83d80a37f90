"""The netlink side: the VXLAN device, reading what the kernel holds, and applying a ``reconcile.Plan``.

Every route the daemon installs carries its own protocol number (``ROUTE_PROTO``), so reading them back finds
exactly Berth's routes, including those of an earlier run, and nothing an administrator added. Neighbours and FDB
entries are read from the VXLAN device only, which belongs to the daemon. Routes and neighbours are IPv4 and
IPv6 alike (cluster IPAM's IPv6 blocks, :mod:`overlay.blocks`); the FDB is the IPv4 underlay's.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import secrets
from dataclasses import dataclass

from pyroute2.netlink.exceptions import NetlinkError

from overlay.blocks import vtep_link_local
from overlay.config import VXLAN_OVERHEAD
from overlay.reconcile import FdbEntry, KernelState, Neighbour, Plan, Route

log = logging.getLogger("berth.overlay")

ROUTE_PROTO = 77  # "berth" in /etc/iproute2/rt_protos terms: not one of the well-known numbers
RT_TABLE_MAIN = 254
NUD_PERMANENT = 0x80
RTNH_F_ONLINK = 4
RT_SCOPE_LINK = 253
AF_INET, AF_INET6 = 2, 10
FAMILIES = (AF_INET, AF_INET6)


class KernelError(RuntimeError):
    pass


@dataclass(frozen=True)
class Underlay:
    name: str
    index: int
    address: ipaddress.IPv4Interface
    mtu: int
    networks: tuple[ipaddress.IPv4Network, ...]  # on-link IPv4 networks, for direct routing


@dataclass(frozen=True)
class VxlanSpec:
    name: str
    vni: int
    port: int
    local: ipaddress.IPv4Address
    underlay_index: int
    mac: str
    mtu: int
    vtep_ip: ipaddress.IPv4Address | None  # None: leave the addresses alone (the subnet is not known yet)


def random_mac() -> str:
    """A locally administered unicast MAC."""
    first = (secrets.randbits(8) & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in [first, *secrets.token_bytes(5)])


def underlay(ipr, name: str, public_ip: str | None = None) -> Underlay:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise KernelError(f"underlay interface {name!r} does not exist")
    index = found[0]
    link = ipr.link("get", index=index)[0]
    addresses = [ipaddress.IPv4Interface((a.get("IFA_ADDRESS"), a["prefixlen"]))
                 for a in ipr.get_addr(family=AF_INET, index=index)]
    if not addresses:
        raise KernelError(f"underlay interface {name!r} has no IPv4 address")
    chosen = addresses[0]
    if public_ip:
        matches = [a for a in addresses if str(a.ip) == public_ip]
        if not matches:
            raise KernelError(f"--public-ip {public_ip} is not an address of {name!r}")
        chosen = matches[0]
    return Underlay(name, index, chosen, link.get("mtu"), tuple(a.network for a in addresses))


def vxlan_mtu(underlay_mtu: int, configured: int = 0) -> int:
    return configured or underlay_mtu - VXLAN_OVERHEAD


def existing_mac(ipr, name: str) -> str:
    found = ipr.link_lookup(ifname=name)
    return ipr.link("get", index=found[0])[0].get("address") if found else ""


def ensure_vxlan(ipr, spec: VxlanSpec) -> int:
    """The device exactly as ``spec`` says; kept (and so its traffic undisturbed) when it already matches."""
    found = ipr.link_lookup(ifname=spec.name)
    if found and not _matches(ipr.link("get", index=found[0])[0], spec):
        log.info("recreating %s: its VXLAN settings changed", spec.name)
        ipr.link("del", index=found[0])
        found = []
    if not found:
        ipr.link("add", ifname=spec.name, kind="vxlan", vxlan_id=spec.vni, vxlan_port=spec.port,
                 vxlan_learning=0, vxlan_local=str(spec.local), vxlan_link=spec.underlay_index,
                 address=spec.mac, mtu=spec.mtu)
        found = ipr.link_lookup(ifname=spec.name)
    index = found[0]
    link = ipr.link("get", index=index)[0]
    if link.get("address") != spec.mac or link.get("mtu") != spec.mtu:
        ipr.link("set", index=index, address=spec.mac, mtu=spec.mtu)
    if spec.vtep_ip is not None:
        _ensure_only_address(ipr, index, ipaddress.IPv4Interface((spec.vtep_ip, 32)))
    ipr.link("set", index=index, state="up")
    return index


def _ensure_only_address(ipr, index: int, want: ipaddress.IPv4Interface) -> None:
    for addr in ipr.get_addr(family=AF_INET, index=index):
        have = ipaddress.IPv4Interface((addr.get("IFA_ADDRESS"), addr["prefixlen"]))
        if have != want:
            ipr.addr("del", index=index, address=str(have.ip), prefixlen=have.network.prefixlen)
    if not ipr.get_addr(family=AF_INET, index=index, address=str(want.ip)):
        ipr.addr("add", index=index, address=str(want.ip), prefixlen=32)


def _matches(link, spec: VxlanSpec) -> bool:
    if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "vxlan":
        return False
    data = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA")
    if data is None:
        return False
    return (data.get("IFLA_VXLAN_ID") == spec.vni and data.get("IFLA_VXLAN_PORT") == spec.port
            and data.get("IFLA_VXLAN_LOCAL") == str(spec.local) and not data.get("IFLA_VXLAN_LEARNING")
            and data.get("IFLA_VXLAN_LINK") == spec.underlay_index)


def read_state(ipr, vxlan_index: int) -> KernelState:
    names = {link["index"]: link.get("ifname") for link in ipr.get_links()}
    routes = set()
    for family in FAMILIES:
        for r in ipr.get_routes(family=family, table=RT_TABLE_MAIN, proto=ROUTE_PROTO):
            if r["proto"] != ROUTE_PROTO:
                continue
            dst = ipaddress.ip_network((r.get("dst") or ("::" if family == AF_INET6 else "0.0.0.0"), r["dst_len"]))
            gateway = r.get("gateway")
            routes.add(Route(dst, ipaddress.ip_address(gateway) if gateway else None, names.get(r.get("oif"), "")))
    neighbours = set()
    for family in FAMILIES:
        for n in ipr.get_neighbours(family=family, ifindex=vxlan_index):
            if n["state"] & NUD_PERMANENT and n.get("lladdr") and n["ifindex"] == vxlan_index:
                neighbours.add(Neighbour(ipaddress.ip_address(n.get("dst")), n.get("lladdr")))
    fdb = set()
    for f in ipr.fdb("dump", ifindex=vxlan_index):
        dst = f.get("NDA_DST")
        if dst and f.get("lladdr") and f["ifindex"] == vxlan_index:
            fdb.add(FdbEntry(f.get("lladdr"), ipaddress.IPv4Address(dst)))
    return KernelState(frozenset(routes), frozenset(neighbours), frozenset(fdb))


def apply_plan(ipr, plan: Plan, vxlan_index: int, devices: dict[str, int] | None = None) -> None:
    """Make the changes; an entry already gone (or already there) is not an error, so a repeat is harmless.
    ``devices`` maps route device names to indexes (looked up when missing: one netlink dump each)."""
    devices = dict(devices or {})
    for route in plan.remove_routes:
        via = {"gateway": str(route.gateway)} if route.gateway is not None else {}
        _tolerate(ipr.route, "del", dst=str(route.dst), proto=ROUTE_PROTO, table=RT_TABLE_MAIN,
                  family=_family(route.dst), **via)
    for n in plan.remove_neighbours:
        _tolerate(ipr.neigh, "del", dst=str(n.ip), lladdr=n.mac, ifindex=vxlan_index, family=_family(n.ip))
    for f in plan.remove_fdb:
        _tolerate(ipr.fdb, "del", ifindex=vxlan_index, lladdr=f.mac, dst=str(f.dst))
    for f in plan.add_fdb:
        _tolerate(ipr.fdb, "append", ifindex=vxlan_index, lladdr=f.mac, dst=str(f.dst), state=NUD_PERMANENT)
    for n in plan.add_neighbours:
        ipr.neigh("replace", dst=str(n.ip), lladdr=n.mac, ifindex=vxlan_index, state=NUD_PERMANENT,
                  family=_family(n.ip))
    for route in plan.add_routes:
        if route.device not in devices:
            found = ipr.link_lookup(ifname=route.device)
            if not found:
                raise KernelError(f"route {route.dst}: device {route.device!r} does not exist")
            devices[route.device] = found[0]
        common = {"dst": str(route.dst), "oif": devices[route.device], "proto": ROUTE_PROTO,
                  "table": RT_TABLE_MAIN, "family": _family(route.dst)}
        if route.gateway is None:
            # IPv6 has no route scopes (the kernel makes every one global); IPv4's on-link ones are scope link
            ipr.route("replace", **common, **({"scope": RT_SCOPE_LINK} if route.dst.version == 4 else {}))
        elif route.gateway.version == 6:  # a VTEP's link-local address: on-link by definition
            ipr.route("replace", **common, gateway=str(route.gateway))
        else:
            ipr.route("replace", **common, gateway=str(route.gateway), flags=RTNH_F_ONLINK)


def _family(address) -> int:
    return AF_INET if address.version == 4 else AF_INET6


def _tolerate(call, *args, **kwargs) -> None:
    try:
        call(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ESRCH, errno.EEXIST):
            raise


def devices_holding(ipr, addresses) -> dict:
    """Which local device carries each of ``addresses`` (IPv4 or IPv6; one address dump per family asked for): the
    bridge that is a cluster pool's gateway on this host. Addresses no device carries are left out."""
    wanted = {ipaddress.ip_address(a) for a in addresses}
    if not wanted:
        return {}
    names = {link["index"]: link.get("ifname") for link in ipr.get_links()}
    found = {}
    for family in sorted({_family(a) for a in wanted}):
        for addr in ipr.get_addr(family=family):
            ip = ipaddress.ip_address(addr.get("IFA_ADDRESS"))
            if ip in wanted and addr["index"] in names:
                found[ip] = names[addr["index"]]
    return found


def enable_ipv6(ipr, device: str, index: int, mac: str) -> None:
    """IPv6 on the VXLAN device, with the link-local address its peers route to (EUI-64 of its MAC): a device with
    IPv6 disabled neither sends nor accepts it. Only this device's sysctl: IPv6 forwarding is the bridge plugin's
    (on at a container's ADD, as the reference bridge does), so a host without IPv6 containers keeps its own
    router-advertisement behaviour."""
    path = f"/proc/sys/net/ipv6/conf/{device}/disable_ipv6"
    try:
        with open(path, "r+") as handle:
            if handle.read().strip() != "0":
                handle.seek(0)
                handle.write("0\n")
    except OSError as exc:
        raise KernelError(f"{device}: enabling IPv6 for the cluster pool's IPv6 blocks: {exc}") from None
    address = vtep_link_local(mac)
    if not ipr.get_addr(family=AF_INET6, index=index, address=str(address)):
        _tolerate(ipr.addr, "add", index=index, address=str(address), prefixlen=64, family=AF_INET6)


def enable_forwarding() -> None:
    """IPv4 forwarding in this network namespace (the sysctl is per namespace): without it a host drops every
    packet between its containers and the overlay."""
    with open("/proc/sys/net/ipv4/ip_forward", "w") as handle:
        handle.write("1\n")
