"""Fixtures for dnsd: a running ``berth dns`` process, an in-process server over a view the test changes, and a
tiny upstream DNS server on loopback (never a real resolver)."""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from dnslib import QTYPE, RR, DNSRecord

from discovery.model import EndpointRecord, Health, PortBinding
from dnsd.acl import RecursionPolicy
from dnsd.names import ZoneConfig
from dnsd.responder import Responder
from dnsd.server import ServerOptions, Worker, bind_listener
from dnsd.upstream import Upstream
from dnsd.view import StaticView
from tests.waiting import stop_process

REPO = Path(__file__).resolve().parents[2]
ZONE = "berth.internal"


def sample_records() -> list[EndpointRecord]:
    """A small world: two web replicas (one tagged), a db with an IPv6 address, a critical endpoint, names on
    two networks, TXT, and a service with enough endpoints to overflow 512 bytes."""
    records = [
        EndpointRecord(id="c1/eth0", name="btweb1", service="btweb", addresses=("10.89.0.11",), network="btnet",
                       aliases=("btwww",), ports=(PortBinding(8080),), tags=("primary",)),
        EndpointRecord(id="c2/eth0", name="btweb2", service="btweb", addresses=("10.89.0.12",), network="btnet",
                       ports=(PortBinding(8080), PortBinding(5353, "udp"))),
        EndpointRecord(id="c3/eth0", name="btdb", addresses=("10.89.0.20", "fd89::20"), network="btnet",
                       ports=(PortBinding(5432),), txt=("role=primary",)),
        EndpointRecord(id="c4/eth0", name="btsick", service="btweb", addresses=("10.89.0.66",), network="btnet",
                       ports=(PortBinding(8080),), health=Health.CRITICAL),
        EndpointRecord(id="c5/eth0", name="btdup", addresses=("10.89.0.31",), network="btnet"),
        EndpointRecord(id="c6/eth1", name="btdup", addresses=("10.90.0.31",), network="btother"),
    ]
    records += [EndpointRecord(id=f"big{i}/eth0", name=f"btbig{i}", service="btbig", network="btnet",
                               addresses=(f"10.91.0.{i + 1}",), ports=(PortBinding(80),)) for i in range(100)]
    records += [EndpointRecord(id=f"mid{i}/eth0", name=f"btmid{i}", service="btmid", network="btnet",
                               addresses=(f"10.92.0.{i + 1}",)) for i in range(50)]
    return records


def write_records(path: Path, records: list[EndpointRecord]) -> None:
    """Atomically, so the server never reads half a file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([r.to_dict() for r in records]))
    os.replace(tmp, path)


class DnsProcess:
    """``berth dns`` running as a real process on a free loopback port."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "berth.cli", "dns", "--listen", "127.0.0.1:0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.ports: dict[str, int] = {}  # listen host -> port
        while (line := self.proc.stdout.readline()).startswith("dnsd: listening on "):
            host, _, port = line.split()[3].rpartition(":")
            self.ports[host.strip("[]")] = int(port)
        if not line.startswith("dnsd: forwarding") or not self.ports:
            self.stop()
            raise RuntimeError(f"berth dns did not start: {line!r} {self.proc.stderr.read()}")
        self.host = "127.0.0.1"
        self.port = self.ports[self.host]

    def stop(self) -> None:
        stop_process(self.proc, grace=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


@pytest.fixture
def records_file(tmp_path):
    path = tmp_path / "records.json"
    write_records(path, sample_records())
    return path


@pytest.fixture
def start_dns():
    """``start_dns(*args)`` → a running :class:`DnsProcess`; every one is stopped at teardown."""
    started: list[DnsProcess] = []

    def start(*args: str) -> DnsProcess:
        server = DnsProcess(list(args))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def dns_module_server():
    """One shared authoritative-only server over the sample records for the read-only tests of a module."""
    with tempfile.TemporaryDirectory(prefix="bt-dnsd-") as tmp:
        path = Path(tmp) / "records.json"
        write_records(path, sample_records())
        server = DnsProcess(["--records", str(path), "--no-forward"])
        try:
            yield server
        finally:
            server.stop()


class InProcessServer:
    """The real shell (sockets, threads) in this process, over a :class:`StaticView` the test changes."""

    def __init__(self, view: StaticView, policy: RecursionPolicy = RecursionPolicy(),
                 upstreams: tuple[Upstream, ...] = (), **options) -> None:
        self.view = view
        self.listener = bind_listener("127.0.0.1", 0, 1)
        self.port = self.listener.port
        self.responder = Responder(view, ZoneConfig(), policy, forwarding=bool(upstreams))
        options.setdefault("upstream_timeout", 1.0)
        self.worker = Worker(self.responder, ServerOptions(upstreams=tuple(upstreams), **options))
        self.worker.start(self.listener.udp, [self.listener.tcp])

    def stop(self) -> None:
        self.worker.stop()
        self.listener.close()


@pytest.fixture
def live_view():
    """``(view, server)``: an in-process server answering from a view the test mutates."""
    view = StaticView(sample_records())
    server = InProcessServer(view)
    try:
        yield view, server
    finally:
        server.stop()


class TinyUpstream:
    """A loopback DNS server standing in for the upstream resolver (UDP and TCP), counting what it is asked.

    ``answers[(name, qtype)] = [zone-file lines]``; names in ``truncate_udp`` get TC over UDP, the full answer over
    TCP; everything else is NXDOMAIN."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], list[str]] = {}
        self.truncate_udp: set[str] = set()
        self.udp_queries: list[str] = []
        self.tcp_queries: list[str] = []
        self.udp, self.tcp, self.port = self._bind_pair()
        self.tcp.listen(8)
        self.stopping = False
        self.threads = [threading.Thread(target=self._serve_udp, daemon=True),
                        threading.Thread(target=self._serve_tcp, daemon=True)]
        for thread in self.threads:
            thread.start()

    @staticmethod
    def _bind_pair() -> tuple[socket.socket, socket.socket, int]:
        """A UDP and a TCP socket on the same free port (the port the kernel picks for UDP may be taken for TCP)."""
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind(("127.0.0.1", port))
                return udp, tcp, port
            except OSError:
                udp.close()
                tcp.close()
        raise RuntimeError("no port free for both UDP and TCP on 127.0.0.1")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _answer(self, data: bytes, over_tcp: bool) -> bytes:
        query = DNSRecord.parse(data)
        name = str(query.q.qname).rstrip(".").lower()
        qtype = QTYPE[query.q.qtype]
        (self.tcp_queries if over_tcp else self.udp_queries).append(name)
        reply = query.reply()
        lines = self.answers.get((name, qtype))
        if lines is None:
            reply.header.rcode = 3
            reply.add_auth(*RR.fromZone("example. 60 IN SOA ns.example. h.example. 1 2 3 4 30"))
        elif name in self.truncate_udp and not over_tcp:
            reply.header.tc = 1
        else:
            for line in lines:
                reply.add_answer(*RR.fromZone(line))
        return bytes(reply.pack())

    def _serve_udp(self) -> None:
        while not self.stopping:
            try:
                data, client = self.udp.recvfrom(65535)
                if self.stopping:
                    return
                self.udp.sendto(self._answer(data, False), client)
            except OSError:
                return

    def _serve_tcp(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn:
                try:
                    size = struct.unpack("!H", conn.recv(2))[0]
                    data = b""
                    while len(data) < size:
                        data += conn.recv(size - len(data))
                    reply = self._answer(data, True)
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
                except (OSError, struct.error):
                    continue

    def stop(self) -> None:
        self.stopping = True
        for sock in (self.udp, self.tcp):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self.threads:
            thread.join(timeout=5)


@pytest.fixture
def tiny_upstream():
    server = TinyUpstream()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def silent_port():
    """A loopback UDP port that receives and never answers (a dead upstream that times out)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def agent_process(tmp_path):
    """A real ``berth agent`` over a fresh SQLite store, its Consul-compatible API on a free loopback port."""
    from tests.discovery.conftest import AgentProcess
    workdir = tmp_path / "agent"
    workdir.mkdir()
    agent = AgentProcess(f"sqlite:///{tmp_path / 'berth.db'}", workdir, "bthost-dns", 5.0, ())
    agent.start()
    try:
        yield agent
    finally:
        agent.kill()
