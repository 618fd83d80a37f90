"""Netlink side effects of the bridge plugin: each function makes one part of a plan real.

Every function that creates something pushes its inverse on an :class:`Undo` stack, so ADD can unwind in reverse
when a later step fails. Creation tolerates ``EEXIST`` where another ADD may win a race (the bridge, its gateway
address), which is what makes two parallel first ADDs safe without a lock.

The ADD and DEL path talks netlink through :mod:`datapath.rtnl` (few round trips, replies skimmed); CHECK's
:func:`observe` reads full link messages through pyroute2's ``IPRoute``.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import select
import threading
import time
from collections.abc import Callable

from datapath import netns, rtnl
from datapath.errors import HostConflict, LinkError
from datapath.specs import BridgeSpec, ContainerSpec, Observed, ObservedLink, PortSpec

IFA_F_NODAD = 0x02
IFF_PROMISC = 0x100
BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED = 0x2, 0x4
HAIRPIN_ON = 1


class Undo:
    """A stack of inverse actions, run newest first; each is best effort so one failure does not stop the rest."""

    def __init__(self) -> None:
        self._steps: list[Callable[[], None]] = []

    def push(self, step: Callable[[], None]) -> None:
        self._steps.append(step)

    def unwind(self) -> None:
        while self._steps:
            step = self._steps.pop()
            try:
                step()
            except Exception:  # noqa: BLE001 - undo is best effort; the original error is what matters
                pass


def _code(exc: Exception) -> int:
    return getattr(exc, "code", 0) or 0


def fail(step: str, exc: Exception) -> LinkError:
    """A netlink failure as the datapath's link error, naming the step."""
    return LinkError(f"{step}: {os.strerror(_code(exc)) if _code(exc) else exc}", str(exc))


def kind_of(link) -> str:
    return link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")) or ""


def lookup(ipr, name: str):
    """The link called ``name``, or None: a kernel-side lookup (a dump would decode every link on the host)."""
    try:
        links = ipr.link("get", ifname=name)
    except rtnl.netlink_errors() as exc:
        if _code(exc) == errno.ENODEV:
            return None
        raise
    return links[0] if links else None


# --- host side ----------------------------------------------------------------------------------------------------

def ensure_bridge(nl: rtnl.Rtnl, spec: BridgeSpec) -> rtnl.Link:
    """Create the bridge or reuse it. A non-bridge of that name is an error."""
    link = nl.link(spec.name)
    if link is None:
        attrs = {"ifname": spec.name, "kind": "bridge"}
        if spec.mtu:
            attrs["mtu"] = spec.mtu
        if spec.vlan_filtering:
            attrs["br_vlan_filtering"] = 1
        try:
            nl.ipr.link("add", **attrs)
        except rtnl.netlink_errors() as exc:
            if _code(exc) != errno.EEXIST:  # another ADD created it first: fine
                raise fail(f"could not create bridge {spec.name}", exc) from None
        link = nl.link(spec.name)
        if link is None:
            raise LinkError(f"bridge {spec.name} vanished right after creation")
        try:  # its MAC set explicitly, or it takes its lowest port's and changes when that port goes, leaving
            # every container's ARP entry for the gateway pointing at a MAC nobody answers (the reference does this)
            nl.ipr.link("set", index=link.index, address=link.mac)
        except rtnl.netlink_errors() as exc:
            raise fail(f"could not fix the MAC of bridge {spec.name}", exc) from None
        if any(a.version == 6 for a in spec.gateway_addresses):
            _skip_dad(spec.name)
    if link.kind != "bridge":
        raise HostConflict(f"{spec.name} already exists but is not a bridge", link.kind)
    try:
        if spec.vlan_filtering and not link.br_vlan_filtering:
            nl.ipr.link("set", index=link.index, kind="bridge", br_vlan_filtering=1)
        if spec.promisc and not link.flags & IFF_PROMISC:
            nl.ipr.link("set", index=link.index, flags=IFF_PROMISC, change=IFF_PROMISC)
        if not link.up:
            nl.call(*rtnl.set_up_request(link.index))
    except rtnl.netlink_errors() as exc:
        raise fail(f"could not configure bridge {spec.name}", exc) from None
    return link


def _skip_dad(bridge: str) -> None:
    """A new IPv6 gateway bridge's link-local address usable at once, as its gateway address is (``NODAD``):
    while that address is tentative the host sends no neighbour solicitation on the bridge for traffic it
    forwards (their source must be a usable link-local address), so the first packets routed to a container
    here, from another host or another bridge, are dropped for the second or two DAD takes."""
    try:
        netns.write_sysctl(f"net/ipv6/conf/{bridge}/accept_dad", "0")
    except OSError as exc:
        raise LinkError(f"bridge {bridge}: turning off DAD for its IPv6 gateway: {exc}") from None


def ensure_gateway_addresses(nl: rtnl.Rtnl, index: int, spec: BridgeSpec) -> None:
    """Put each gateway address on the bridge; another address in the same subnet needs ``forceAddress``.

    The add comes first: on every ADD but a network's first it fails with EEXIST and nothing is listed, because
    listing a link's addresses means dumping every address on the host (one per container veth).
    """
    for wanted in spec.gateway_addresses:
        flags = IFA_F_NODAD if wanted.version == 6 else 0
        code = nl.batch([rtnl.address_request(index, wanted, flags)])[0]
        if code == errno.EEXIST:
            continue  # already there (or a parallel ADD just put it there)
        if code:
            raise fail(f"could not add {wanted} to bridge {spec.name}", rtnl.netlink_error(code))
        ipr = nl.ipr  # the network's first ADD: check what else the bridge holds
        present = [ipaddress.ip_interface(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}")
                   for a in ipr.get_addr(index=index)]
        others = [o for o in present if o.version == wanted.version and o.network == wanted.network and o != wanted]
        if others and not spec.force_address:
            ipr.addr("del", index=index, address=str(wanted.ip), prefixlen=wanted.network.prefixlen)
            raise HostConflict(
                f"bridge {spec.name} already has an IP address {others[0]} in the same subnet as {wanted}",
                "set forceAddress to replace it")
        for other in others:
            ipr.addr("del", index=index, address=str(other.ip), prefixlen=other.network.prefixlen)
        if others:  # removing a primary address takes its secondaries (ours) with it: put ours back
            try:
                ipr.addr("add", index=index, address=str(wanted.ip), prefixlen=wanted.network.prefixlen,
                         flags=flags)
            except rtnl.netlink_errors() as exc:
                if _code(exc) != errno.EEXIST:
                    raise fail(f"could not add {wanted} to bridge {spec.name}", exc) from None


def new_host_veth_name() -> str:
    return "veth" + os.urandom(4).hex()


def _plain_port(port: PortSpec) -> bool:
    """A port without flags or VLANs can be created enslaved and up in the same request."""
    return not (port.hairpin or port.isolated or port.pvid or port.trunk)


def create_veth(nl: rtnl.Rtnl, netns_path: str, port: PortSpec, bridge_index: int,
                undo: Undo) -> tuple[rtnl.Link, rtnl.Link]:
    """The veth pair, its peer created directly inside the container namespace and its host end already a port of
    the bridge; returns the host end and the bridge as they are now (a bridge takes its lowest port's MAC)."""
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        name = port.host_name
        for _ in range(5):
            code = nl.batch([rtnl.veth_request(name, port.ifname, fd, port.mtu, port.mac, bridge_index,
                                               up=_plain_port(port))])[0]
            if code == errno.EEXIST and nl.link(name) is not None:
                name = new_host_veth_name()  # host name taken: draw another
                continue
            if code == errno.EEXIST:
                raise HostConflict(f"container veth name provided ({port.ifname}) already exists")
            if code:
                raise fail(f"could not create veth {name}/{port.ifname}", rtnl.netlink_error(code))
            break
        else:
            raise LinkError("could not find a free host veth name")
    finally:
        os.close(fd)
    host, bridge = nl.links([(name, 0), (None, bridge_index)])
    if host is None or bridge is None:
        raise LinkError(f"veth {name} or its bridge vanished right after creation")
    undo.push(lambda: _delete_host_link(host.index))
    return host, bridge


def _delete_host_link(index: int) -> None:
    """Undo of :func:`create_veth`, on a socket of its own: the ADD's socket is closed by then."""
    with rtnl.Rtnl() as nl:
        nl.delete_link(index=index)


def attach_port(nl: rtnl.Rtnl, host_index: int, port: PortSpec) -> None:
    """Port flags and VLANs, then up; a plain port is already up (see :func:`create_veth`)."""
    if _plain_port(port):
        return
    try:
        ipr = nl.ipr
        if port.hairpin or port.isolated:
            flags = {}
            if port.hairpin:
                flags["mode"] = HAIRPIN_ON
            if port.isolated:
                flags["isolated"] = 1
            ipr.brport("set", index=host_index, **flags)
        if port.pvid:
            ipr.vlan_filter("add", index=host_index, vlan_info={
                "vid": port.pvid, "flags": BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED})
        for vid in port.trunk:
            ipr.vlan_filter("add", index=host_index, vlan_info={"vid": vid})
        if (port.pvid or port.trunk) and not port.preserve_default_vlan:
            ipr.vlan_filter("del", index=host_index, vlan_info={"vid": 1})
        nl.call(*rtnl.set_up_request(host_index))
    except rtnl.netlink_errors() as exc:
        raise fail(f"could not attach {port.host_name} to the bridge", exc) from None


# --- container side -----------------------------------------------------------------------------------------------

def configure_container(netns_path: str, index: int, port: PortSpec, spec: ContainerSpec, wait_dad: bool) -> str:
    """Sysctls, addresses, link up, routes inside the container (interface ``index`` there); returns its MAC.

    Addresses, up and routes go as one batch of requests, in that order; DAD, when waited for, splits it."""
    try:
        with netns.entered(netns_path):
            for key, value in spec.sysctls:
                netns.write_sysctl(key, value)
    except OSError as exc:
        raise fail(f"{port.ifname} in {netns_path}: sysctl", exc) from None
    steps: list[tuple[str, tuple]] = []
    for address in spec.addresses:
        flags = IFA_F_NODAD if address.version == 6 and spec.nodad else 0
        steps.append((f"add address {address}", rtnl.address_request(index, address, flags)))
    if spec.up:
        steps.append(("set link up", rtnl.set_up_request(index)))
    settle = wait_dad and any(a.version == 6 for a in spec.addresses)
    routes = [(f"add route {r.dst}", rtnl.route_request(index, r.dst, r.gw, r.priority, r.scope))
              for r in spec.routes]
    where = f"{port.ifname} in {netns_path}"
    if not index:
        raise LinkError(f"interface {where} did not appear")
    with rtnl.Rtnl(netns_path) as nl:
        try:
            if settle:
                _run_steps(nl, where, steps)
                _settle_ipv6(nl.ipr, index)
                _run_steps(nl, where, routes)
            else:
                _run_steps(nl, where, steps + routes)
            link = nl.link(index=index)
        except (*rtnl.netlink_errors(), OSError) as exc:
            raise fail(where, exc) from None
        if link is None:
            raise LinkError(f"interface {where} did not appear")
        return link.mac


def _run_steps(nl: rtnl.Rtnl, where: str, steps: list[tuple[str, tuple]]) -> None:
    """One write for all steps; the first that failed names the error."""
    if not steps:
        return
    codes = nl.batch([request for _, request in steps])
    for (step, _), code in zip(steps, codes):
        if code:
            raise fail(f"{where}: {step}", rtnl.netlink_error(code))


def _settle_ipv6(ipr, index: int, timeout: float = 5.0) -> None:
    """With DAD enabled, wait until no address is tentative (routes via them fail before)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(a["flags"] & 0x40 for a in ipr.get_addr(index=index, family=10)):  # IFA_F_TENTATIVE
            return
        time.sleep(0.05)


def delete_container_link(netns_path: str, ifname: str) -> bool:
    """Remove the container's interface (its host peer goes with it); an absent namespace or link is success.

    The kernel unregisters both ends under its RTNL lock and announces it; then, lock released, the request still
    waits for every pending RCU callback before it returns (~15-20 ms here, nothing anyone can observe). So the
    request runs on a helper thread, and we return as soon as the deletion is announced and RTNL is free again."""
    if not netns_path or not netns.exists(netns_path):
        return False
    with rtnl.Rtnl(netns_path, groups=rtnl.GROUP_LINK) as watch:  # listening before the request: nothing missed
        deletion = _LinkDeletion(netns_path, ifname)
        poller = select.poll()
        poller.register(watch.sock, select.POLLIN)
        poller.register(deletion.done, select.POLLIN)
        try:
            while True:
                if any(fd == deletion.done for fd, _ in poller.poll()):
                    return deletion.result()
                if ifname in rtnl.deleted_link_names(watch.sock.recv(1 << 16)):
                    break
        except OSError:  # the watch overflowed (a storm of link events): wait for the request itself
            return deletion.result()
        finally:
            deletion.forget()
    with rtnl.Rtnl() as nl:  # answered only once the unregistering request has let RTNL go: both ends are gone
        nl.batch([rtnl.rtnl_barrier_request()])
    return True


class _LinkDeletion:
    """``RTM_DELLINK`` by name on a thread of its own; :attr:`done` (a pipe) turns readable when it has returned."""

    def __init__(self, netns_path: str, ifname: str) -> None:
        self.done, self._write_end = os.pipe2(os.O_CLOEXEC)
        self._deleted = False
        self._error: BaseException | None = None
        self._where = f"could not delete {ifname} in {netns_path}"
        self._thread = threading.Thread(target=self._run, args=(netns_path, ifname), daemon=True,
                                        name="berth-dellink")
        self._thread.start()

    def _run(self, netns_path: str, ifname: str) -> None:
        try:
            with rtnl.Rtnl(netns_path) as nl:
                self._deleted = nl.delete_link(name=ifname)
        except BaseException as exc:  # noqa: BLE001 - handed over by result()
            self._error = exc
        finally:
            os.close(self._write_end)  # each side closes only its own end: no descriptor is reused under us

    def result(self) -> bool:
        self._thread.join()
        if isinstance(self._error, rtnl.netlink_errors()):
            raise fail(self._where, self._error) from None
        if self._error is not None:
            raise self._error
        return self._deleted

    def forget(self) -> None:
        """Stop watching; the request may still be waiting in the kernel and finishes on its own."""
        os.close(self.done)


def observe(netns_path: str, ifname: str, host_names: tuple[str, ...]) -> Observed:
    """A snapshot of what CHECK compares: named host links, the container's interface, its addresses and routes."""
    host_links: dict[str, ObservedLink] = {}
    host_indexes: dict[str, int] = {}
    ipr = netns.iproute()
    try:
        for name in host_names:
            link = lookup(ipr, name)
            if link is None:
                continue
            host_indexes[name] = link["index"]
            master = link.get("IFLA_MASTER")
            master_name = None
            if master:
                master_link = ipr.link("get", index=master)[0]
                master_name = master_link.get("IFLA_IFNAME")
            host_links[name] = ObservedLink(name=name, kind=kind_of(link), mac=link.get("IFLA_ADDRESS") or "",
                                            master=master_name)
    finally:
        ipr.close()
    container = None
    addresses: set = set()
    routes: set = set()
    if netns.exists(netns_path):
        ipr = netns.iproute(netns_path)
        try:
            link = lookup(ipr, ifname)
            if link is not None:
                index = link["index"]
                container = ObservedLink(name=ifname, kind=kind_of(link), mac=link.get("IFLA_ADDRESS") or "",
                                         peer_index=link.get("IFLA_LINK"))
                for a in ipr.get_addr(index=index):
                    addresses.add(ipaddress.ip_interface(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"))
                for family in (2, 10):
                    for r in ipr.get_routes(family=family, oif=index, table=254):
                        dst = r.get("RTA_DST")
                        net = ipaddress.ip_network(f"{dst}/{r['dst_len']}" if dst else
                                                   ("0.0.0.0/0" if family == 2 else "::/0"), strict=False)
                        gw = r.get("RTA_GATEWAY")
                        routes.add((net, ipaddress.ip_address(gw) if gw else None))
        finally:
            ipr.close()
    return Observed(host_links=host_links, host_indexes=host_indexes, container=container,
                    container_addresses=frozenset(addresses), container_routes=frozenset(routes))


def write_host_sysctls(sysctls: tuple[tuple[str, str], ...]) -> None:
    """Host sysctls (``ip_forward``): read first, so a host that already forwards sees no write."""
    for key, value in sysctls:
        try:
            if netns.read_sysctl(key) != value:
                netns.write_sysctl(key, value)
        except OSError as exc:
            raise LinkError(f"could not set sysctl {key}={value}: {exc}") from None
