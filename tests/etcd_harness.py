"""Real etcd servers for tests: one member or a three-member cluster, on free ports, in a temporary data dir.

Use the fixtures (``etcd_server``: one member per test module; ``etcd_cluster``: three members per test) or call
:func:`start_etcd` directly and close what it returns. Every member is killed and every data dir removed at
teardown, pass or fail; members also get SIGKILL from the kernel if the process that started them dies
(``setpriv --pdeathsig``), so a killed pytest leaves no etcd behind. Start members from the main thread: the
signal follows the *thread* that started them.

For the overlay tests a member can listen on another address (``host="10.99.0.1"``, an address the test
made) or run inside a network namespace the test made (``netns="bt-ns-…"``).
"""
from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from tests.ports import free_port  # noqa: F401 - also the harness's public helper

ETCD_BINARY = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL_BINARY = shutil.which("etcdctl") or "/usr/bin/etcdctl"
START_TIMEOUT = 60.0  # a hang guard: healthy in well under a second when idle


def _die_with_parent() -> list[str]:
    """A command prefix asking the kernel to SIGKILL the member when the thread that started it dies.

    util-linux's ``setpriv`` does it between fork and exec; a Python ``preexec_fn`` would run Python in a
    child forked from a process whose gRPC threads (any etcd client) make that unsafe."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL"] if setpriv else []


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class EtcdMember:
    name: str
    host: str
    client_port: int
    peer_port: int
    data_dir: Path
    netns: str | None = None
    process: subprocess.Popen | None = None
    initial_cluster: str = ""
    cluster_token: str = ""
    extra_args: tuple[str, ...] = ()

    @property
    def client_url(self) -> str:
        return _url(self.host, self.client_port)

    @property
    def peer_url(self) -> str:
        return _url(self.host, self.peer_port)

    @property
    def endpoint(self) -> str:
        """``host:port`` as the ``etcd://`` store URL wants it."""
        return f"[{self.host}]:{self.client_port}" if ":" in self.host else f"{self.host}:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def argv(self) -> list[str]:
        argv = [ETCD_BINARY, "--name", self.name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", self.initial_cluster, "--initial-cluster-token", self.cluster_token,
                "--heartbeat-interval", "50", "--election-timeout", "500",
                "--logger", "zap", "--log-level", "warn", *self.extra_args]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return [*_die_with_parent(), *argv]

    def start(self) -> None:
        """Start the process (the data dir is kept, so this is also how a killed member comes back)."""
        if self.running:
            return
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            start_new_session=True)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash: no goodbye to the cluster."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            self.process = None

    def healthy(self) -> bool:
        if self.netns:
            done = subprocess.run(["ip", "netns", "exec", self.netns, ETCDCTL_BINARY, "--endpoints",
                                   self.client_url, "--command-timeout=1s", "endpoint", "health"],
                                  capture_output=True, text=True, check=False)
            return done.returncode == 0
        try:
            with urllib.request.urlopen(self.client_url + "/health", timeout=1) as response:
                return json.load(response).get("health") == "true"
        except (OSError, ValueError):
            return False

    def status(self) -> dict:
        """The member's ``/v3/maintenance/status`` through etcd's JSON gateway (ids come as strings)."""
        request = urllib.request.Request(self.client_url + "/v3/maintenance/status", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=2) as response:
            return json.load(response)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass
class EtcdCluster:
    """One or more members started together. ``url`` is the ``etcd://`` store URL naming every member."""

    members: list[EtcdMember]
    root: Path
    _closed: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(member.endpoint for member in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    def member_url(self, index: int) -> str:
        return "etcd://" + self.members[index].endpoint

    def wait_healthy(self, members: list[EtcdMember] | None = None, timeout: float = START_TIMEOUT) -> None:
        members = self.members if members is None else members
        deadline = time.monotonic() + timeout
        pending = list(members)
        while pending:
            pending = [member for member in pending if not member.healthy()]
            for member in pending:
                if not member.running:
                    raise RuntimeError(f"etcd member {member.name} exited:\n{member.log_tail()}")
            if pending and time.monotonic() > deadline:
                tails = "\n".join(f"--- {m.name}\n{m.log_tail()}" for m in pending)
                raise RuntimeError(f"etcd members not healthy after {timeout:.0f}s:\n{tails}")
            if pending:
                time.sleep(0.05)

    def leader_index(self, timeout: float = START_TIMEOUT) -> int:
        """Which running member leads now (waits through an election)."""
        deadline = time.monotonic() + timeout
        while True:
            for index, member in enumerate(self.members):
                if not member.running or member.netns:
                    continue
                with contextlib.suppress(OSError, ValueError, KeyError):
                    status = member.status()
                    if status.get("leader") and status["leader"] == status["header"]["member_id"]:
                        return index
            if time.monotonic() > deadline:
                raise RuntimeError(f"no etcd leader after {timeout:.0f}s")
            time.sleep(0.05)

    def kill(self, index: int) -> EtcdMember:
        member = self.members[index]
        member.kill()
        return member

    def restart(self, index: int, wait: bool = True) -> EtcdMember:
        member = self.members[index]
        member.kill()
        member.start()
        if wait:
            self.wait_healthy([member])
        return member

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for member in self.members:
            with contextlib.suppress(Exception):
                member.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "EtcdCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


PORT_ATTEMPTS = 3


def start_etcd(size: int = 1, host: str = "127.0.0.1", netns: str | None = None,
               extra_args: tuple[str, ...] = (), wait: bool = True) -> EtcdCluster:
    """Start ``size`` members listening on ``host`` (in ``netns`` when given); healthy on return.

    The ports are free when picked, but another process on the machine may bind one (or use it as the local port
    of a connection) before etcd does: when a member then fails with "address already in use", the cluster is
    started again on fresh ports."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        cluster = _launch(size, host, netns, extra_args)
        try:
            if wait:
                cluster.wait_healthy()
            return cluster
        except BaseException:
            port_taken = any("address already in use" in member.log_tail(200) for member in cluster.members)
            cluster.close()
            if not port_taken or attempt == PORT_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _launch(size: int, host: str, netns: str | None, extra_args: tuple[str, ...]) -> EtcdCluster:
    root = Path(tempfile.mkdtemp(prefix="bt-etcd-"))
    token = "bt-" + secrets.token_hex(6)
    ports: set[int] = set()

    def pick() -> int:
        while True:
            port = free_port("127.0.0.1" if netns else host)
            if port not in ports:
                ports.add(port)
                return port

    members = [EtcdMember(f"bt{index}", host, pick(), pick(), root / f"bt{index}.etcd", netns,
                          cluster_token=token, extra_args=tuple(extra_args)) for index in range(size)]
    initial = ",".join(f"{member.name}={member.peer_url}" for member in members)
    cluster = EtcdCluster(members, root)
    try:
        for member in members:
            member.initial_cluster = initial
            member.start()
    except BaseException:
        cluster.close()
        raise
    return cluster


@pytest.fixture(scope="module")
def etcd_server() -> Iterator[EtcdCluster]:
    """One etcd member for the whole test module (tests keep apart by key prefix); ``.url`` is the store URL."""
    cluster = start_etcd(1)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A fresh three-member cluster on loopback for one test; ``kill(i)`` / ``restart(i)`` a member."""
    cluster = start_etcd(3)
    try:
        yield cluster
    finally:
        cluster.close()
