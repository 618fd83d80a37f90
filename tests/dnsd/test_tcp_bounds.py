"""Bounded TCP (issue 13, point 2) with real connections held open: a deadline per whole message, a cap per
source address, a global cap that closes the oldest idle connection first, pipelined answers in order, and honest
clients served while 500 slow clients try to hold every slot."""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading

import dns.message
import dns.query
import pytest

from dnsd.tcp import Connection, oldest_idle
from dnsd.upstream import Upstream
from dnsd.view import StaticView
from tests.waiting import wait_until

from .conftest import InProcessServer, sample_records

Z = "berth.internal"


def established(port: int) -> int:
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


def open_sockets(pid: int) -> int:
    """Sockets the server process holds (accepted connections, plus a few of its own)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    return count


def honest_query(port: int, source: str, name: str = f"btweb1.{Z}") -> str:
    reply = dns.query.tcp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=10, source=source)
    return reply.answer[0][0].address


def closed_by_server(sock: socket.socket, timeout: float = 30) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


class SlowClients:
    """``count`` connections spread over many loopback source addresses, each sending one byte of a message that
    never ends every ``interval`` seconds, reconnecting whenever the server closes one: a slow-loris attacker."""

    def __init__(self, port: int, count: int, sources: int, interval: float = 0.5) -> None:
        self.port, self.interval = port, interval
        self.addresses = [f"127.0.1.{i + 1}" for i in range(sources)]
        self.slots: list[socket.socket | None] = [None] * count
        self.reconnects = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _connect(self, index: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.addresses[index % len(self.addresses)], 0))
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", self.port))
            sock.send(b"\xff")  # the first byte of a 65,000-byte message that never comes
            sock.setblocking(False)
            self.slots[index] = sock
        except OSError:
            sock.close()

    def _run(self) -> None:
        while not self.stopping.wait(self.interval):
            for index, sock in enumerate(self.slots):
                if sock is not None:
                    try:
                        if sock.recv(1) == b"":  # closed by the server
                            raise ConnectionResetError
                    except BlockingIOError:
                        try:
                            sock.send(b"\x00")
                            continue
                        except OSError:
                            pass
                    except OSError:
                        pass
                    sock.close()
                    self.slots[index] = None
                    self.reconnects += 1
                self._connect(index)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)
        for sock in self.slots:
            if sock is not None:
                sock.close()


@pytest.mark.service
def test_honest_tcp_clients_are_served_while_500_slow_clients_try_to_hold_the_slots(start_dns, records_file):
    server = start_dns("--records", str(records_file), "--no-forward", "--tcp-idle-timeout", "5")
    attackers = SlowClients(server.port, count=500, sources=50)
    try:
        wait_until(lambda: established(server.port) >= 256, what="the slow clients filling every slot")
        answers = [honest_query(server.port, "127.0.2.1") for _ in range(10)]
        assert answers == ["10.89.0.11"] * 10
        assert open_sockets(server.proc.pid) <= 256 + 8  # the cap held (+ its listening and wake-up sockets)
        wait_until(lambda: attackers.reconnects > 0, what="the server closing slow clients")
    finally:
        attackers.stop()


@pytest.mark.service
def test_a_byte_now_and_then_does_not_extend_the_message_deadline(start_dns, records_file):
    server = start_dns("--records", str(records_file), "--no-forward", "--tcp-idle-timeout", "1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.send(b"\x01")
        sent = 1
        stop = threading.Event()

        def trickle() -> None:
            nonlocal sent
            while not stop.wait(0.2):  # far more often than the timeout: a per-recv timeout never fires
                try:
                    sock.send(b"\x00")
                    sent += 1
                except OSError:
                    return
        feeder = threading.Thread(target=trickle, daemon=True)
        feeder.start()
        try:
            assert closed_by_server(sock)
        finally:
            stop.set()
            feeder.join(timeout=5)
    assert sent >= 3  # bytes kept coming, and the connection was still closed


@pytest.mark.service
def test_connections_per_source_are_capped(start_dns, records_file):
    server = start_dns("--records", str(records_file), "--no-forward", "--max-tcp-per-source", "4")
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=5, source_address=("127.0.3.1", 0))
            for _ in range(4)]
    try:
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=5, source_address=("127.0.3.1", 0))
        with extra:
            assert closed_by_server(extra)
        assert honest_query(server.port, "127.0.3.2") == "10.89.0.11"  # another source is still served
        assert honest_query_on(held[0]) == "10.89.0.11"  # the held ones still work
    finally:
        for sock in held:
            sock.close()


def honest_query_on(sock: socket.socket) -> str:
    query = dns.message.make_query(f"btweb1.{Z}", "A").to_wire()
    sock.sendall(struct.pack("!H", len(query)) + query)
    sock.settimeout(10)
    size = struct.unpack("!H", _read(sock, 2))[0]
    return dns.message.from_wire(_read(sock, size)).answer[0][0].address


def _read(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, "closed"
        data += chunk
    return data


@pytest.mark.service
def test_pipelined_queries_are_answered_in_order_forwarded_ones_included(tiny_upstream, silent_port):
    tiny_upstream.answers[("btfar.example", "A")] = ["btfar.example. 60 IN A 192.0.2.7"]
    # the silent upstream first: the forwarded answer comes half a second after the zone answers are ready
    server = InProcessServer(StaticView(sample_records()), upstream_timeout=0.5,
                             upstreams=(Upstream("127.0.0.1", silent_port), Upstream.parse(tiny_upstream.address)))
    try:
        queries = [dns.message.make_query(name, "A") for name in ("btfar.example", f"btweb1.{Z}", f"btweb2.{Z}")]
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries)))
            replies = []
            for _ in queries:
                size = struct.unpack("!H", _read(sock, 2))[0]
                replies.append(dns.message.from_wire(_read(sock, size)))
        assert [r.id for r in replies] == [q.id for q in queries]
        assert [r.answer[0][0].address for r in replies] == ["192.0.2.7", "10.89.0.11", "10.89.0.12"]
    finally:
        server.stop()


def test_the_oldest_idle_connection_is_the_one_to_close():
    busy, idle_old, idle_new = (Connection(None, "a", t) for t in (0.0, 1.0, 2.0))
    busy.replies.append([None])  # a query being answered: never the victim
    assert oldest_idle([busy, idle_old, idle_new]) is idle_old
    assert oldest_idle([busy]) is None


def test_framing_splits_and_joins_messages_and_restarts_the_deadline():
    conn = Connection(None, "a", 0.0)
    assert conn.feed(b"\x00\x03ab", 1.0) == [] and conn.waiting_since == 0.0
    assert conn.feed(b"c\x00\x01x\x00", 2.0) == [b"abc", b"x"] and conn.waiting_since == 2.0
    assert conn.expired(13.0, 10.0) and not conn.expired(11.0, 10.0)
    conn.replies.append([None])  # waiting on our upstream only: not the client's fault
    assert not conn.expired(13.0, 10.0)
