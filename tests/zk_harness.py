"""Real ZooKeeper servers for tests: one server or a three-member ensemble, on free ports, in a temporary dir.

Use the fixtures (``zk_server``: one server per test module; ``zk_ensemble``: three members per test) or call
:func:`start_zookeeper` and close what it returns. Every member is killed and every dir removed at teardown,
pass or fail; members also get SIGKILL from the kernel when the thread that started them dies (``setpriv
--pdeathsig``; ``zkServer.sh start-foreground`` execs java, so the signal reaches the JVM itself).

Debian's ``zkEnv.sh`` fixes the log dir to ``/var/log/zookeeper`` whatever the environment says, so the log
settings (and ``jute.maxbuffer``) go in ``SERVER_JVMFLAGS``, whose ``-D`` flags come last and win. ZooKeeper's
default ``jute.maxbuffer`` (1 MiB, for a whole request) is smaller than the contract's largest write (a 1 MiB
value, stored once in its key's node and once in the change log), so the servers get 4 MiB.
"""
from __future__ import annotations

import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.cluster_harness import Cluster, MemberProcess, distinct_ports, start_cluster
from tests.ports import free_port

ZK_SERVER_SCRIPT = "/usr/share/zookeeper/bin/zkServer.sh"
JUTE_MAXBUFFER = 4 * 1024 * 1024


def four_letter_word(port: int, word: bytes, timeout: float = 1.0, host: str = "127.0.0.1",
                     netns: str | None = None) -> str:
    """Ask a server one of ZooKeeper's four-letter words (from inside ``netns`` when given); '' when it does not
    answer."""
    if netns:
        return _in_netns(netns, lambda: four_letter_word(port, word, timeout, host))
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(word)
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
            return b"".join(chunks).decode(errors="replace")
    except OSError:
        return ""


def _in_netns(netns: str, func):
    """``func()`` on a short-lived thread inside ``netns`` (namespaces are per thread)."""
    from pyroute2 import netns as pyroute2_netns

    result = [""]

    def body():
        pyroute2_netns.setns(netns, flags=0)
        result[0] = func()

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    return result[0]


@dataclass
class ZkMember(MemberProcess):
    myid: int
    client_port: int
    quorum_port: int
    election_port: int
    root: Path
    process: subprocess.Popen | None = None
    ensemble: str = ""   # the server.N lines every member's zoo.cfg carries (empty for a lone server)
    host: str = "127.0.0.1"
    netns: str | None = None   # run inside this network namespace (the overlay's underlay), listening on host

    @property
    def label(self) -> str:
        return f"zookeeper {self.myid}"

    @property
    def dir(self) -> Path:
        return self.root / f"zk{self.myid}"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "zk.log"

    def write_config(self) -> Path:
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        lines = ["tickTime=2000", "initLimit=10", "syncLimit=5", f"dataDir={self.dir / 'data'}",
                 f"clientPort={self.client_port}", f"clientPortAddress={self.host}", "admin.enableServer=false",
                 "4lw.commands.whitelist=ruok,stat", "maxClientCnxns=200"]
        if self.ensemble:
            (self.dir / "data" / "myid").write_text(f"{self.myid}\n")
            lines.append(self.ensemble)
        config = self.dir / "zoo.cfg"
        config.write_text("\n".join(lines) + "\n")
        return config

    def start(self) -> None:
        """Start the server (its data dir is kept, so this is also how a killed member comes back)."""
        if self.running:
            return
        config = self.write_config()
        flags = (f"-Dzookeeper.log.dir={self.dir} -Dzookeeper.root.logger=WARN,CONSOLE "
                 f"-Djute.maxbuffer={JUTE_MAXBUFFER}")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SERVER_JVMFLAGS": flags, "ZOO_LOG_DIR": str(self.dir)}
        inside = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.spawn([*inside, ZK_SERVER_SCRIPT, "start-foreground", str(config)], env)

    def ready(self) -> bool:
        """Answers clients: a lone server says ``imok``; an ensemble member also needs a quorum (``stat``)."""
        if not self.ensemble:
            return self.ask(b"ruok") == "imok"
        return "Mode:" in self.ask(b"stat")

    def leads(self) -> bool:
        return self.mode() in ("leader", "standalone")

    def ask(self, word: bytes) -> str:
        return four_letter_word(self.client_port, word, host=self.host, netns=self.netns)

    def mode(self) -> str:
        for line in self.ask(b"stat").splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return ""


class ZkEnsemble(Cluster[ZkMember]):
    """One server or several started together. ``url`` is the ``zk://`` store URL naming every member."""

    def __init__(self, members: list[ZkMember], root: Path) -> None:
        super().__init__(members, root, "zk")


def start_zookeeper(size: int = 1, wait: bool = True, host: str = "127.0.0.1",
                    netns: str | None = None) -> ZkEnsemble:
    """Start ``size`` members on ``host`` (loopback by default; inside ``netns`` when given); serving on return.

    Debian's ZooKeeper logs through SLF4J without a binding, so a taken port leaves no message: a member that
    exits while starting is taken for one, and the ensemble is started again on fresh ports."""
    def exited(ensemble: ZkEnsemble) -> bool:
        return any(not member.running for member in ensemble.members)
    return start_cluster(lambda: _launch(size, host, netns), wait, exited)


def _launch(size: int, host: str = "127.0.0.1", netns: str | None = None) -> ZkEnsemble:
    root = Path(tempfile.mkdtemp(prefix="bt-zk-"))
    pick = distinct_ports(free_port)
    members = [ZkMember(myid, pick(), pick(), pick(), root, host=host, netns=netns) for myid in range(1, size + 1)]
    if size > 1:
        lines = "\n".join(f"server.{m.myid}={host}:{m.quorum_port}:{m.election_port}" for m in members)
        for member in members:
            member.ensemble = lines
    ensemble = ZkEnsemble(members, root)
    try:
        for member in members:
            member.start()
    except BaseException:
        ensemble.close()
        raise
    return ensemble


@pytest.fixture(scope="module")
def zk_server() -> Iterator[ZkEnsemble]:
    """One ZooKeeper server for the whole test module (tests keep apart by key prefix); ``.url`` is the store URL."""
    ensemble = start_zookeeper(1)
    try:
        yield ensemble
    finally:
        ensemble.close()


@pytest.fixture
def zk_ensemble() -> Iterator[ZkEnsemble]:
    """A fresh three-member ensemble on loopback for one test; ``kill(i)`` / ``restart(i)`` a member."""
    ensemble = start_zookeeper(3)
    try:
        yield ensemble
    finally:
        ensemble.close()
