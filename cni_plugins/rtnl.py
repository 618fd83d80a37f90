"""A lean rtnetlink socket for the plugins' hot path: pyroute2 encodes, a plain socket carries, replies are skimmed.

pyroute2's ``IPRoute`` runs each call through its own asyncio loop and decodes every attribute of every reply (a
link message carries ~40, with stats and per-family settings): that was most of a warm ADD. Here each request is
built with pyroute2's message classes (the library knows the kernel's layouts; we do not re-spell them), sent on a
plain ``NETLINK_ROUTE`` socket, and answered by reading the error code of the ACK, or, for a link, the few
attributes the plugins use. Several requests can go in one ``send`` (:meth:`Rtnl.batch`), each with its own ACK.

Operations that are rare on the ADD path (creating a bridge, VLANs, port flags, listing addresses) keep using
pyroute2's full API through :attr:`Rtnl.ipr`, opened on first use in the same namespace.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Optional

from cni_plugins import netns

NETLINK_ROUTE, SOL_NETLINK, NETLINK_CAP_ACK = 0, 270, 10
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 17, 18, 19, 20, 24
# linux/if_link.h: the attributes read from a link reply
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER, IFLA_LINKINFO = 1, 3, 4, 5, 10, 18
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_BR_VLAN_FILTERING = 1, 2, 7
IFF_UP = 0x1
GROUP_LINK = 0x1  # RTMGRP_LINK: link notifications
RT_TABLE_MAIN, RTPROT_STATIC, RTN_UNICAST = 254, 4, 1  # what pyroute2's route("add") sends by default
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_NLA = struct.Struct("=HH")
_NLA_TYPE_MASK = 0x3FFF

_classes_lock = threading.Lock()
_classes: Optional[tuple] = None


def message_classes():
    """pyroute2's (ifinfmsg, ifaddrmsg, rtmsg, NetlinkError), imported once without the package's heavy init."""
    global _classes
    if _classes is None:
        with _classes_lock:
            netns.register_lazy_pyroute2()
            from pyroute2.netlink.exceptions import NetlinkError
            from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
            from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
            from pyroute2.netlink.rtnl.rtmsg import rtmsg

            _classes = (ifinfmsg, ifaddrmsg, rtmsg, NetlinkError)
    return _classes


def warm() -> None:
    """For a long-lived daemon: import pyroute2's message classes and ``IPRoute`` (a new bridge needs it), encode
    each kind of request once (pyroute2 compiles a class's attribute map on first use) and open one socket, so the
    first container costs what every other one does."""
    netns._iproute_class()
    with Rtnl() as nl:
        fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for msg, msg_type, flags in (veth_request("warm0", "warm1", fd, 1500, "02:00:00:00:00:01", 1, True),
                                         set_up_request(1),
                                         address_request(1, ipaddress.ip_interface("192.0.2.1/24"), 0x02),
                                         address_request(1, ipaddress.ip_interface("2001:db8::1/64"), 0x02),
                                         route_request(1, ipaddress.ip_network("192.0.2.0/24"),
                                                       ipaddress.ip_address("192.0.2.1")),
                                         route_request(1, ipaddress.ip_network("2001:db8::/64"), None)):
                nl._encode(msg, msg_type, flags)  # encoded only: nothing is sent
        finally:
            os.close(fd)
        nl.link("lo")


def netlink_error(code: int):
    return message_classes()[3](code)


@dataclass(frozen=True)
class Link:
    """The part of a link the plugins use."""

    index: int
    flags: int
    name: str
    mac: str
    mtu: int
    kind: str
    master: int           # 0: no master
    peer_index: int       # IFLA_LINK: a veth's peer (in the peer's namespace)
    br_vlan_filtering: bool

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


def _attributes(data: bytes, offset: int, end: int) -> dict[int, bytes]:
    """Type → payload of one level of attributes (nested ones are walked again on demand)."""
    found = {}
    while offset + 4 <= end:
        length, kind = _NLA.unpack_from(data, offset)
        if length < 4:
            break
        found[kind & _NLA_TYPE_MASK] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return found


def _u32(payload: Optional[bytes]) -> int:
    return struct.unpack_from("=I", payload)[0] if payload and len(payload) >= 4 else 0


def _text(payload: Optional[bytes]) -> str:
    return payload.split(b"\0", 1)[0].decode() if payload else ""


def parse_link(data: bytes) -> Link:
    """A ``RTM_NEWLINK`` reply (one message, header included) read for the fields of :class:`Link` only."""
    length = _HEADER.unpack_from(data)[0]
    _family, _type, index, flags, _change = _IFINFO.unpack_from(data, _HEADER.size)
    attrs = _attributes(data, _HEADER.size + _IFINFO.size, length)
    kind, vlan_filtering = "", False
    info = attrs.get(IFLA_LINKINFO)
    if info:
        nested = _attributes(info, 0, len(info))
        kind = _text(nested.get(IFLA_INFO_KIND))
        if kind == "bridge" and nested.get(IFLA_INFO_DATA):
            data_attrs = _attributes(nested[IFLA_INFO_DATA], 0, len(nested[IFLA_INFO_DATA]))
            vlan_filtering = bool(data_attrs.get(IFLA_BR_VLAN_FILTERING, b"\0")[0])
    mac = attrs.get(IFLA_ADDRESS, b"")
    return Link(index=index, flags=flags, name=_text(attrs.get(IFLA_IFNAME)), mac=":".join(f"{b:02x}" for b in mac),
                mtu=_u32(attrs.get(IFLA_MTU)), kind=kind, master=_u32(attrs.get(IFLA_MASTER)),
                peer_index=_u32(attrs.get(IFLA_LINK)), br_vlan_filtering=vlan_filtering)


class Rtnl:
    """One ``NETLINK_ROUTE`` socket, bound to the network namespace of the thread that opened it.

    Not shared between threads: a handler opens its own (tens of microseconds) and closes it."""

    def __init__(self, netns_path: Optional[str] = None, groups: int = 0) -> None:
        """In the thread's own namespace, or (``netns_path``) in that one: the socket keeps it after we return.
        ``groups`` subscribes to notifications (a bit mask, e.g. :data:`GROUP_LINK`)."""
        message_classes()
        if netns_path is None:
            self.sock = self._open(groups)
        else:
            with netns.entered(netns_path):
                self.sock = self._open(groups)
        self.netns_path = netns_path
        self._seq = 0
        self._ipr = None

    @staticmethod
    def _open(groups: int) -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # errors without a copy of our request
            sock.bind((0, groups))
        except OSError:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        self.sock.close()
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    @property
    def ipr(self):
        """pyroute2's full ``IPRoute`` in this socket's namespace, for the rare operations."""
        if self._ipr is None:
            self._ipr = netns.iproute(self.netns_path)
        return self._ipr

    # --- requests ----------------------------------------------------------------------------------------------

    def _encode(self, msg, msg_type: int, flags: int) -> tuple[int, bytes]:
        self._seq += 1
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = NLM_F_REQUEST | flags
        msg["header"]["sequence_number"] = self._seq
        msg.encode()
        return self._seq, bytes(msg.data)

    def batch(self, requests: list[tuple[object, int, int]]) -> list[int]:
        """Send ``(message, type, flags)`` requests in one write; returns each one's errno (0 = done), in order.

        The kernel runs them one after another, and runs the later ones even when an earlier one failed."""
        encoded = [self._encode(msg, msg_type, flags | NLM_F_ACK) for msg, msg_type, flags in requests]
        self.sock.send(b"".join(data for _, data in encoded))
        codes = {seq: None for seq, _ in encoded}
        pending = len(codes)
        while pending:
            for msg_type, seq, data, offset in self._replies():
                if msg_type == NLMSG_ERROR and seq in codes and codes[seq] is None:
                    codes[seq] = -struct.unpack_from("=i", data, offset + _HEADER.size)[0]
                    pending -= 1
        return [codes[seq] for seq, _ in encoded]

    def call(self, msg, msg_type: int, flags: int = 0) -> None:
        """One request; raises pyroute2's ``NetlinkError`` with the kernel's errno when it fails."""
        code = self.batch([(msg, msg_type, flags)])[0]
        if code:
            raise netlink_error(code)

    def _replies(self):
        data = self.sock.recv(1 << 16)
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, msg_type, _flags, seq, _port = _HEADER.unpack_from(data, offset)
            if length < _HEADER.size:
                break
            yield msg_type, seq, data, offset
            offset += (length + 3) & ~3

    # --- links -------------------------------------------------------------------------------------------------

    def link(self, name: Optional[str] = None, index: int = 0) -> Optional[Link]:
        """The link by name or index, or None when there is none (a kernel-side lookup: no dump)."""
        return self.links([(name, index)])[0]

    def links(self, queries: list[tuple[Optional[str], int]]) -> list[Optional[Link]]:
        """Several ``(name, index)`` lookups in one write; None for each link that does not exist."""
        ifinfmsg = message_classes()[0]
        encoded = []
        for name, index in queries:
            msg = ifinfmsg()
            msg["index"] = index
            if name is not None:
                msg["attrs"] = [("IFLA_IFNAME", name)]
            encoded.append(self._encode(msg, RTM_GETLINK, 0))
        self.sock.send(b"".join(data for _, data in encoded))
        found: dict[int, Optional[Link]] = {}
        failure = 0
        while len(found) < len(encoded):
            for msg_type, seq, reply, offset in self._replies():
                if seq in found or not any(seq == s for s, _ in encoded):
                    continue
                if msg_type == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", reply, offset + _HEADER.size)[0]
                    found[seq] = None
                    if code != errno.ENODEV:
                        failure = failure or code
                else:
                    length = _HEADER.unpack_from(reply, offset)[0]
                    found[seq] = parse_link(reply[offset:offset + length])
        if failure:
            raise netlink_error(failure)
        return [found[seq] for seq, _ in encoded]

    def delete_link(self, name: Optional[str] = None, index: int = 0) -> bool:
        """Remove a link by name or index; False when it was not there."""
        ifinfmsg = message_classes()[0]
        msg = ifinfmsg()
        msg["index"] = index
        if name is not None:
            msg["attrs"] = [("IFLA_IFNAME", name)]
        code = self.batch([(msg, RTM_DELLINK, 0)])[0]
        if code in (errno.ENODEV, errno.ENOENT):
            return False
        if code:
            raise netlink_error(code)
        return True


def deleted_link_names(data: bytes) -> list[str]:
    """Names of the links whose ``RTM_DELLINK`` notifications are in ``data`` (one read of a watching socket)."""
    names, offset = [], 0
    while offset + _HEADER.size <= len(data):
        length, msg_type = _HEADER.unpack_from(data, offset)[:2]
        if length < _HEADER.size:
            break
        if msg_type == RTM_DELLINK:
            names.append(parse_link(data[offset:offset + length]).name)
        offset += (length + 3) & ~3
    return names


def rtnl_barrier_request():
    """A request that changes nothing but is served under the kernel's RTNL lock (``RTM_SETLINK`` naming no link:
    EINVAL), so its answer comes only after whoever holds the lock now (a link's unregistration) has let go."""
    return message_classes()[0](), RTM_SETLINK, 0


# --- request builders (messages for Rtnl.batch / Rtnl.call) -----------------------------------------------------

def veth_request(name: str, peer_name: str, peer_netns_fd: int, mtu: int, peer_mac: Optional[str],
                 master: int, up: bool):
    """``RTM_NEWLINK`` for a veth pair whose peer is created directly in another namespace, the host end already
    a port of ``master`` (0: none) and up when ``up`` — one request instead of create, set master, set up."""
    ifinfmsg = message_classes()[0]
    peer = [("IFLA_IFNAME", peer_name), ("IFLA_NET_NS_FD", peer_netns_fd)]
    attrs = [("IFLA_IFNAME", name)]
    if mtu:
        attrs.append(("IFLA_MTU", mtu))
        peer.append(("IFLA_MTU", mtu))
    if peer_mac:
        peer.append(("IFLA_ADDRESS", peer_mac))
    if master:
        attrs.append(("IFLA_MASTER", master))
    attrs.append(("IFLA_LINKINFO", {"attrs": [
        ("IFLA_INFO_KIND", "veth"),
        ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": peer})]})]}))
    msg = ifinfmsg()
    if up:
        msg["flags"] = msg["change"] = IFF_UP
    msg["attrs"] = attrs
    return msg, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL


def set_up_request(index: int):
    ifinfmsg = message_classes()[0]
    msg = ifinfmsg()
    msg["index"] = index
    msg["flags"] = msg["change"] = IFF_UP
    return msg, RTM_NEWLINK, 0


def address_request(index: int, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface, flags: int = 0):
    """``RTM_NEWADDR`` as pyroute2's ``addr("add")`` sends it (no broadcast, scope global)."""
    ifaddrmsg = message_classes()[1]
    msg = ifaddrmsg()
    msg["family"] = socket.AF_INET if address.version == 4 else socket.AF_INET6
    msg["prefixlen"] = address.network.prefixlen
    msg["index"] = index
    msg["flags"] = flags & 0xFF
    ip = str(address.ip)
    msg["attrs"] = [("IFA_LOCAL", ip), ("IFA_ADDRESS", ip)] if address.version == 4 else [("IFA_ADDRESS", ip)]
    if flags:
        msg["attrs"].append(("IFA_FLAGS", flags))
    return msg, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL


def route_request(index: int, dst: ipaddress.IPv4Network | ipaddress.IPv6Network,
                  gateway: Optional[ipaddress.IPv4Address | ipaddress.IPv6Address]):
    """``RTM_NEWROUTE`` in the main table, as pyroute2's ``route("add")`` sends it (proto static, scope global)."""
    rtmsg = message_classes()[2]
    msg = rtmsg()
    msg["family"] = socket.AF_INET if dst.version == 4 else socket.AF_INET6
    msg["dst_len"] = dst.prefixlen
    msg["table"] = RT_TABLE_MAIN
    msg["proto"] = RTPROT_STATIC
    msg["type"] = RTN_UNICAST
    attrs = [("RTA_TABLE", RT_TABLE_MAIN)]
    if dst.prefixlen:
        attrs.append(("RTA_DST", str(dst.network_address)))
    if gateway is not None:
        attrs.append(("RTA_GATEWAY", str(gateway)))
    attrs.append(("RTA_OIF", index))
    msg["attrs"] = attrs
    return msg, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL


def open_netns_fd(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
