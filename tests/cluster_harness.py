"""What the etcd and ZooKeeper test harnesses share: a member process that dies with its starter, and a cluster
of them that a test can kill, restart, ask for its leader and close (pass or fail).

Each harness says only what differs: how a member is started, when it is ready, whether it leads, and the store
URL scheme; see :mod:`tests.etcd_harness` and :mod:`tests.zk_harness`.
"""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generic, TypeVar

START_TIMEOUT = 60.0  # a hang guard: members are ready within seconds when the machine is idle
PORT_ATTEMPTS = 3


def die_with_parent() -> list[str]:
    """A command prefix asking the kernel to SIGKILL the member when the thread that started it dies.

    util-linux's ``setpriv`` does it between fork and exec; a Python ``preexec_fn`` would run Python in a child
    forked from a process whose gRPC threads (any etcd client) make that unsafe."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL"] if setpriv else []


class MemberExited(RuntimeError):
    """A member died while the cluster waited for it."""


class MemberProcess:
    """The process side of a member; the subclass (a dataclass) has ``process`` and ``log_path``."""

    process: subprocess.Popen | None
    log_path: Path
    label: str = "member"

    def spawn(self, argv: list[str], env: dict | None = None) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([*die_with_parent(), *argv], stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=log, env=env, start_new_session=True)

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

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    # what each kind says for itself
    def start(self) -> None:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def leads(self) -> bool:
        raise NotImplementedError

    @property
    def endpoint(self) -> str:
        raise NotImplementedError


M = TypeVar("M", bound=MemberProcess)


@dataclass
class Cluster(Generic[M]):
    """Members started together; ``url`` names every member for the store, ``member_url(i)`` one of them."""

    members: list[M]
    root: Path
    scheme: str
    _closed: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"{self.scheme}://" + ",".join(member.endpoint for member in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    def member_url(self, index: int) -> str:
        return f"{self.scheme}://" + self.members[index].endpoint

    def wait_ready(self, members: list[M] | None = None, timeout: float = START_TIMEOUT) -> None:
        pending = list(self.members if members is None else members)
        deadline = time.monotonic() + timeout
        while pending:
            pending = [member for member in pending if not member.ready()]
            for member in pending:
                if not member.running:
                    raise MemberExited(f"{member.label} exited:\n{member.log_tail()}")
            if pending and time.monotonic() > deadline:
                tails = "\n".join(f"--- {m.label}\n{m.log_tail()}" for m in pending)
                raise RuntimeError(f"{self.scheme} members not ready after {timeout:.0f}s:\n{tails}")
            if pending:
                time.sleep(0.05)

    def leader_index(self, timeout: float = START_TIMEOUT) -> int:
        """Which running member leads now (waits through an election)."""
        deadline = time.monotonic() + timeout
        while True:
            for index, member in enumerate(self.members):
                if member.running and member.leads():
                    return index
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {self.scheme} leader after {timeout:.0f}s")
            time.sleep(0.05)

    def kill(self, index: int) -> M:
        member = self.members[index]
        member.kill()
        return member

    def restart(self, index: int, wait: bool = True) -> M:
        member = self.members[index]
        member.kill()
        member.start()
        if wait:
            self.wait_ready([member])
        return member

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for member in self.members:
            with contextlib.suppress(Exception):
                member.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_cluster(launch: Callable[[], Cluster], wait: bool, port_was_taken: Callable[[Cluster], bool]) -> Cluster:
    """``launch()`` and wait until every member is ready; ready on return.

    The ports are free when picked, but another process may bind one before the member does: when a member then
    fails and ``port_was_taken`` says so, the cluster is started again on fresh ports."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        cluster = launch()
        try:
            if wait:
                cluster.wait_ready()
            return cluster
        except BaseException as exc:
            retry = isinstance(exc, (MemberExited, RuntimeError)) and port_was_taken(cluster)
            cluster.close()
            if not retry or attempt == PORT_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def distinct_ports(pick: Callable[[], int]) -> Callable[[], int]:
    """A port picker that never hands out the same port twice for one cluster."""
    taken: set[int] = set()

    def next_port() -> int:
        while True:
            port = pick()
            if port not in taken:
                taken.add(port)
                return port
    return next_port
