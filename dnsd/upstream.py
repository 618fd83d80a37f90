"""Talking to upstream resolvers (the only blocking I/O of forwarding, kept out of the core).

UDP first, the same question again over TCP when the UDP answer comes back truncated; a timeout per upstream and
failover to the next one in order when an upstream is silent, unreachable, or answers SERVFAIL/REFUSED.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
import time
from dataclasses import dataclass

TC_BIT = 0x02  # in the third header byte
RETRY_NEXT_RCODES = (2, 5)  # SERVFAIL, REFUSED: another upstream may do better


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int = 53

    @classmethod
    def parse(cls, text: str) -> "Upstream":
        """``IP``, ``IP:PORT``, ``[IPv6]:PORT`` or a bare IPv6 address."""
        text = text.strip()
        if text.startswith("["):
            host, _, port = text[1:].partition("]")
            return cls(str(ipaddress.ip_address(host)), int(port.lstrip(":") or 53))
        if text.count(":") == 1:
            host, port = text.split(":")
            return cls(str(ipaddress.ip_address(host)), int(port))
        return cls(str(ipaddress.ip_address(text)))

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET


def parse_resolv_conf(text: str) -> list[Upstream]:
    """The ``nameserver`` lines of a resolv.conf, in order."""
    found = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                found.append(Upstream(str(ipaddress.ip_address(fields[1].split("%", 1)[0]))))
            except ValueError:
                continue
    return found


def resolve(packet: bytes, upstreams: list[Upstream], timeout: float = 2.0) -> bytes | None:
    """Ask each upstream in turn; the first good reply, else the last reply seen, else None."""
    last = None
    for upstream in upstreams:
        try:
            reply = _ask_udp(packet, upstream, timeout)
            if reply[2] & TC_BIT:
                reply = _ask_tcp(packet, upstream, timeout)
        except (OSError, ValueError):
            continue
        if (reply[3] & 0xF) not in RETRY_NEXT_RCODES:
            return reply
        last = reply
    return last


def _ask_udp(packet: bytes, upstream: Upstream, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    with socket.socket(upstream.family, socket.SOCK_DGRAM) as sock:
        sock.connect((upstream.host, upstream.port))  # connected: ICMP unreachable fails fast, strangers ignored
        sock.send(packet)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{upstream.host}:{upstream.port} did not answer")
            sock.settimeout(remaining)
            reply = sock.recv(65535)
            if len(reply) >= 12 and reply[:2] == packet[:2] and reply[2] & 0x80:
                return reply


def _ask_tcp(packet: bytes, upstream: Upstream, timeout: float) -> bytes:
    with socket.create_connection((upstream.host, upstream.port), timeout=timeout) as sock:
        sock.sendall(struct.pack("!H", len(packet)) + packet)
        length = struct.unpack("!H", _read_exactly(sock, 2))[0]
        reply = _read_exactly(sock, length)
    if len(reply) < 12 or reply[:2] != packet[:2]:
        raise ValueError("mismatched TCP reply")
    return reply


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    chunks = []
    while count:
        chunk = sock.recv(count)
        if not chunk:
            raise ConnectionError("upstream closed the connection")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)
