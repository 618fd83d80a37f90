"""A lean rtnetlink socket for the plugins' hot path: requests packed with ``struct``, replies skimmed.

pyroute2's ``IPRoute`` runs each call through its own asyncio loop and decodes every attribute of every reply (a
link message carries ~40, with stats and per-family settings): that was most of a warm ADD. pyroute2's message
classes alone still cost 60-430 us to encode one request (a veth with its peer is the dearest): with eight ADDs
at a time, all serialised on the interpreter lock, that was a quarter of the daemon's work, so the few fixed
layouts used here (ifinfomsg, ifaddrmsg, rtmsg and their attributes) are packed directly. An ACK is read for its
error code only, a link reply for the handful of attributes the plugins use; several requests can share one
``send`` (:meth:`Rtnl.batch`), each with its own ACK.

pyroute2 stays the netlink library for everything else: operations that are rare on the ADD path (creating a
bridge, VLANs, port flags, listing addresses) go through its full ``IPRoute`` (:attr:`Rtnl.ipr`, opened on first
use in the same namespace) and CHECK reads links with it. Failures on the lean path are :class:`NetlinkError`,
shaped like pyroute2's, so a common ADD or DEL never imports pyroute2 (not even its error class, which brought
``logging`` and ``typing`` along).
"""
from __future__ import annotations

import _socket  # socket.py's C core: the wrapper's enum conversions and selectors cost a cold call ~2 ms
import errno
import ipaddress
import os
import struct
import sys

from datapath import netns
from ipam.record import Record

NETLINK_ROUTE, SOL_NETLINK, NETLINK_CAP_ACK = 0, 270, 10
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 17, 18, 19, 20, 24
# linux/if_link.h: the attributes read from a link reply
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER, IFLA_LINKINFO = 1, 3, 4, 5, 10, 18
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_BR_VLAN_FILTERING = 1, 2, 7
IFLA_NET_NS_FD, VETH_INFO_PEER, NLA_F_NESTED = 28, 1, 0x8000
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8           # linux/if_addr.h
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15  # linux/rtnetlink.h
IFF_UP = 0x1
GROUP_LINK = 0x1  # RTMGRP_LINK: link notifications
RT_TABLE_MAIN, RTPROT_STATIC, RTN_UNICAST = 254, 4, 1  # what pyroute2's route("add") sends by default
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefix length, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
_NLA = struct.Struct("=HH")
_NLA_TYPE_MASK = 0x3FFF

class NetlinkError(Exception):
    """The kernel refused a request: ``code`` is its errno. The shape of pyroute2's ``NetlinkError``, which the
    rare requests made through pyroute2 raise instead; ``except rtnl.netlink_errors()`` catches both."""

    def __init__(self, code: int, msg: str | None = None) -> None:
        super().__init__(code, msg or os.strerror(code))
        self.code = code


def netlink_error(code: int) -> NetlinkError:
    return NetlinkError(code)


def netlink_errors() -> tuple[type[Exception], ...]:
    """What a failed netlink request raises: ours, and pyroute2's once something has imported it (it cannot be
    raised before). Called where the exception is caught, so the common path never imports pyroute2 for it."""
    pyroute2_errors = sys.modules.get("pyroute2.netlink.exceptions")
    theirs = getattr(pyroute2_errors, "NetlinkError", None)
    return (NetlinkError,) if theirs is None else (NetlinkError, theirs)


def warm() -> None:
    """For a long-lived daemon: import pyroute2's ``IPRoute`` (a new bridge needs it) and open one socket, so the
    first container costs what every other one does."""
    netns._iproute_class()
    with Rtnl() as nl:
        nl.link("lo")


class Link(Record):
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


def _u32(payload: bytes | None) -> int:
    return struct.unpack_from("=I", payload)[0] if payload and len(payload) >= 4 else 0


def _text(payload: bytes | None) -> str:
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

    def __init__(self, netns_path: str | None = None, groups: int = 0) -> None:
        """In the thread's own namespace, or (``netns_path``) in that one: the socket keeps it after we return.
        ``groups`` subscribes to notifications (a bit mask, e.g. :data:`GROUP_LINK`)."""
        if netns_path is None:
            self.sock = self._open(groups)
        else:
            with netns.entered(netns_path):
                self.sock = self._open(groups)
        self.netns_path = netns_path
        self._seq = 0
        self._ipr = None

    @staticmethod
    def _open(groups: int) -> _socket.socket:
        sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, NETLINK_ROUTE)
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

    def _encode(self, body: bytes, msg_type: int, flags: int) -> tuple[int, bytes]:
        self._seq += 1
        return self._seq, _HEADER.pack(_HEADER.size + len(body), msg_type, NLM_F_REQUEST | flags, self._seq, 0) + body

    def batch(self, requests: list[tuple[bytes, int, int]]) -> list[int]:
        """Send ``(body, type, flags)`` requests in one write; returns each one's errno (0 = done), in order.

        The kernel runs them one after another, and runs the later ones even when an earlier one failed."""
        encoded = [self._encode(body, msg_type, flags | NLM_F_ACK) for body, msg_type, flags in requests]
        self.sock.send(b"".join(data for _, data in encoded))
        codes = {seq: None for seq, _ in encoded}
        pending = len(codes)
        while pending:
            for msg_type, seq, data, offset in self._replies():
                if msg_type == NLMSG_ERROR and seq in codes and codes[seq] is None:
                    codes[seq] = -struct.unpack_from("=i", data, offset + _HEADER.size)[0]
                    pending -= 1
        return [codes[seq] for seq, _ in encoded]

    def call(self, body: bytes, msg_type: int, flags: int = 0) -> None:
        """One request; raises :class:`NetlinkError` with the kernel's errno when it fails."""
        code = self.batch([(body, msg_type, flags)])[0]
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

    def link(self, name: str | None = None, index: int = 0) -> Link | None:
        """The link by name or index, or None when there is none (a kernel-side lookup: no dump)."""
        return self.links([(name, index)])[0]

    def links(self, queries: list[tuple[str | None, int]]) -> list[Link | None]:
        """Several ``(name, index)`` lookups in one write; None for each link that does not exist."""
        encoded = [self._encode(_link_body(index, name), RTM_GETLINK, 0) for name, index in queries]
        self.sock.send(b"".join(data for _, data in encoded))
        found: dict[int, Link | None] = {}
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

    def delete_link(self, name: str | None = None, index: int = 0) -> bool:
        """Remove a link by name or index; False when it was not there."""
        code = self.batch([(_link_body(index, name), RTM_DELLINK, 0)])[0]
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
    return _link_body(0, None), RTM_SETLINK, 0


# --- request builders (messages for Rtnl.batch / Rtnl.call) -----------------------------------------------------

def veth_request(name: str, peer_name: str, peer_netns_fd: int, mtu: int, peer_mac: str | None,
                 master: int, up: bool):
    """``RTM_NEWLINK`` for a veth pair whose peer is created directly in another namespace, the host end already
    a port of ``master`` (0: none) and up when ``up`` — one request instead of create, set master, set up."""
    peer = [_nla_text(IFLA_IFNAME, peer_name), _nla_u32(IFLA_NET_NS_FD, peer_netns_fd)]
    attrs = [_nla_text(IFLA_IFNAME, name)]
    if mtu:
        attrs.append(_nla_u32(IFLA_MTU, mtu))
        peer.append(_nla_u32(IFLA_MTU, mtu))
    if peer_mac:
        peer.append(_nla(IFLA_ADDRESS, bytes.fromhex(peer_mac.replace(":", ""))))
    if master:
        attrs.append(_nla_u32(IFLA_MASTER, master))
    peer_info = _nla(VETH_INFO_PEER | NLA_F_NESTED, _IFINFO.pack(0, 0, 0, 0, 0) + b"".join(peer))
    attrs.append(_nla(IFLA_LINKINFO | NLA_F_NESTED, _nla_text(IFLA_INFO_KIND, "veth")
                      + _nla(IFLA_INFO_DATA | NLA_F_NESTED, peer_info)))
    flags = IFF_UP if up else 0
    return _IFINFO.pack(0, 0, 0, flags, flags) + b"".join(attrs), RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL


def set_up_request(index: int):
    return _IFINFO.pack(0, 0, index, IFF_UP, IFF_UP), RTM_NEWLINK, 0


def address_request(index: int, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface, flags: int = 0):
    """``RTM_NEWADDR`` as pyroute2's ``addr("add")`` sends it (no broadcast, scope global)."""
    family = _socket.AF_INET if address.version == 4 else _socket.AF_INET6
    packed = address.ip.packed
    attrs = [_nla(IFA_ADDRESS, packed)]
    if address.version == 4:
        attrs.insert(0, _nla(IFA_LOCAL, packed))
    if flags:
        attrs.append(_nla_u32(IFA_FLAGS, flags))
    body = _IFADDR.pack(family, address.network.prefixlen, flags & 0xFF, 0, index) + b"".join(attrs)
    return body, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL


def route_request(index: int, dst: ipaddress.IPv4Network | ipaddress.IPv6Network,
                  gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None, priority: int | None = None,
                  scope: int | None = None):
    """``RTM_NEWROUTE`` in the main table, as pyroute2's ``route("add")`` sends it (proto static, scope global
    unless ``scope`` says otherwise); ``priority`` is the metric (None: the kernel's default, 0 for IPv4 and 1024
    for IPv6)."""
    family = _socket.AF_INET if dst.version == 4 else _socket.AF_INET6
    attrs = [_nla_u32(RTA_TABLE, RT_TABLE_MAIN)]
    if dst.prefixlen:
        attrs.append(_nla(RTA_DST, dst.network_address.packed))
    if gateway is not None:
        attrs.append(_nla(RTA_GATEWAY, gateway.packed))
    if priority is not None:
        attrs.append(_nla_u32(RTA_PRIORITY, priority))
    attrs.append(_nla_u32(RTA_OIF, index))
    body = _RTMSG.pack(family, dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, scope or 0, RTN_UNICAST, 0) \
        + b"".join(attrs)
    return body, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL


def _link_body(index: int, name: str | None) -> bytes:
    return _IFINFO.pack(0, 0, index, 0, 0) + (_nla_text(IFLA_IFNAME, name) if name is not None else b"")


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _NLA.pack(length, kind) + payload + b"\0" * (-length % 4)


def _nla_u32(kind: int, value: int) -> bytes:
    return _nla(kind, struct.pack("=I", value))


def _nla_text(kind: int, text: str) -> bytes:
    return _nla(kind, text.encode() + b"\0")
