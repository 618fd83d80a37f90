"""Memory does not follow the attacker (issue 13, point 3), measured on the server process' RSS: 50,000 distinct
UDP queries with trailing junk, 3,000 distinct TCP queries of 60 kB and 50,000 distinct cacheable names keep a
running ``berth dns`` within 20 MB of its resting size (before the fix: +106 MB and +172 MB)."""
from __future__ import annotations

import os
import socket
import struct
import threading
import time

import dns.message
import pytest

pytestmark = pytest.mark.service

Z = "berth.internal"
BOUND = 20 << 20


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def query(name: str, qid: int) -> bytes:
    message = dns.message.make_query(name, "A")
    message.id = qid & 0xFFFF
    return message.to_wire()


class UdpBlaster:
    """Sends queries in bursts and counts the replies, so the test knows the server has seen them all."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.connect(("127.0.0.1", port))
        self.replies = 0
        self.done = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        self.sock.settimeout(0.5)
        while not self.done.is_set():
            try:
                self.sock.recv(4096)
                self.replies += 1
            except socket.timeout:
                continue
            except OSError:
                return

    def send(self, packets, window: int = 64) -> None:
        """At most ``window`` queries unanswered: the server keeps up, and the test knows it has seen them all
        (a reply lost on the way only lets the sender on once replies have stopped coming for a moment)."""
        self.sent = getattr(self, "sent", 0)
        for packet in packets:
            self._wait_for(self.sent - window)
            self.sock.send(packet)
            self.sent += 1
        self._wait_for(self.sent)

    def _wait_for(self, count: int) -> None:
        last, quiet_since = self.replies, time.monotonic()
        while self.replies < count and time.monotonic() - quiet_since < 0.5:
            time.sleep(0.001)
            if self.replies != last:
                last, quiet_since = self.replies, time.monotonic()

    def close(self) -> None:
        self.done.set()
        self.sock.close()
        self.reader.join(timeout=5)


def tcp_ask(sock: socket.socket, packet: bytes) -> bytes:
    sock.sendall(struct.pack("!H", len(packet)) + packet)
    header = _read(sock, 2)
    return _read(sock, struct.unpack("!H", header)[0])


def _read(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "server closed the connection"
        data += chunk
    return data


def test_rss_stays_bounded_under_distinct_junk_and_large_tcp_queries(start_dns, records_file):
    server = start_dns("--records", str(records_file), "--no-forward")
    pid = server.proc.pid
    blaster = UdpBlaster(server.port)
    try:
        warm = [query(f"btweb1.{Z}", i) + os.urandom(900) for i in range(2000)]
        warm += [query(f"btwarm{i}.{Z}", i) for i in range(2000)]
        blaster.send(warm)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            for i in range(50):
                tcp_ask(sock, query(f"btweb{i % 2 + 1}.{Z}", i) + os.urandom(60_000))
        resting = rss(pid)

        blaster.send(query(f"btweb1.{Z}", i) + os.urandom(900) for i in range(50_000))
        after_udp = rss(pid)
        assert after_udp - resting < BOUND, f"RSS grew {(after_udp - resting) >> 20} MB under UDP junk"

        for connection in range(10):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                for i in range(300):
                    reply = tcp_ask(sock, query(f"btweb1.{Z}", i) + os.urandom(60_000))
                    assert dns.message.from_wire(reply).answer[0][0].address == "10.89.0.11"
        after_tcp = rss(pid)
        assert after_tcp - resting < BOUND, f"RSS grew {(after_tcp - resting) >> 20} MB under large TCP queries"

        blaster.send(query(f"btdistinct{i}.{Z}", i) for i in range(50_000))  # every one cacheable (NXDOMAIN)
        after_names = rss(pid)
        assert after_names - resting < BOUND, f"RSS grew {(after_names - resting) >> 20} MB under distinct names"
        assert blaster.replies > 0.95 * blaster.sent  # the server really answered them
    finally:
        blaster.close()
