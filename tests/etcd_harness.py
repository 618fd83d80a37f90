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
import subprocess
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.cluster_harness import Cluster, MemberProcess, distinct_ports, start_cluster
from tests.ports import free_port  # noqa: F401 - also the harness's public helper

ETCD_BINARY = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL_BINARY = shutil.which("etcdctl") or "/usr/bin/etcdctl"


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@dataclass
class EtcdMember(MemberProcess):
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
    def label(self) -> str:
        return f"etcd member {self.name}"

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
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    def start(self) -> None:
        """Start the process (the data dir is kept, so this is also how a killed member comes back)."""
        if not self.running:
            self.spawn(self.argv())

    def ready(self) -> bool:
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

    def leads(self) -> bool:
        if self.netns:
            return False  # the JSON gateway is not reachable from here
        with contextlib.suppress(OSError, ValueError, KeyError):
            status = self.status()
            return bool(status.get("leader")) and status["leader"] == status["header"]["member_id"]
        return False

    def status(self) -> dict:
        """The member's ``/v3/maintenance/status`` through etcd's JSON gateway (ids come as strings)."""
        request = urllib.request.Request(self.client_url + "/v3/maintenance/status", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=2) as response:
            return json.load(response)


class EtcdCluster(Cluster[EtcdMember]):
    """One or more members started together. ``url`` is the ``etcd://`` store URL naming every member."""

    def __init__(self, members: list[EtcdMember], root: Path) -> None:
        super().__init__(members, root, "etcd")


def start_etcd(size: int = 1, host: str = "127.0.0.1", netns: str | None = None,
               extra_args: tuple[str, ...] = (), wait: bool = True) -> EtcdCluster:
    """Start ``size`` members listening on ``host`` (in ``netns`` when given); healthy on return (started again
    on fresh ports when a member finds its port taken meanwhile)."""
    def port_taken(cluster: EtcdCluster) -> bool:
        return any("address already in use" in member.log_tail(200) for member in cluster.members)
    return start_cluster(lambda: _launch(size, host, netns, extra_args), wait, port_taken)


def _launch(size: int, host: str, netns: str | None, extra_args: tuple[str, ...]) -> EtcdCluster:
    root = Path(tempfile.mkdtemp(prefix="bt-etcd-"))
    token = "bt-" + secrets.token_hex(6)
    pick = distinct_ports(lambda: free_port("127.0.0.1" if netns else host))
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
