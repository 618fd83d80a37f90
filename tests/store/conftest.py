"""The store contract runs against every backend: ``store_url`` is parametrized over them.

etcd and ZooKeeper tests share one server per module and keep apart by key prefix (``prefix`` is unique per test)."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from store.api import WatchEvent, open_store
from tests.conftest import REPO_ROOT, unique_name
from tests.etcd_harness import etcd_cluster, etcd_server  # noqa: F401  (fixtures used by this area)
from tests.zk_harness import zk_ensemble, zk_server  # noqa: F401  (fixtures used by this area)

ETCD_BACKEND_BUILT = importlib.util.find_spec("store.etcd") is not None
BACKENDS = ["sqlite", pytest.param("etcd", marks=[pytest.mark.etcd, pytest.mark.skipif(
    not ETCD_BACKEND_BUILT, reason="store/etcd.py not landed yet")]),
            pytest.param("zk", marks=[pytest.mark.zk, pytest.mark.service])]  # service: kept out of the pure tier
WAIT = 15.0  # seconds before a test waiting for an event gives up (a hang guard, not a speed assertion)


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="bt-store-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=BACKENDS)
def store_url(request, scratch_dir) -> str:
    if request.param == "sqlite":
        return f"sqlite://{scratch_dir}/bt-store.db"
    if request.param == "zk":
        return request.getfixturevalue("zk_server").url
    return request.getfixturevalue("etcd_server").url


@pytest.fixture
def store(store_url):
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def prefix() -> str:
    return unique_name("st") + "/"


def collect(watch, count: int, timeout: float = WAIT) -> list[WatchEvent]:
    """Read batches until ``count`` events arrived; fails the test (instead of hanging) after ``timeout``."""
    events: list[WatchEvent] = []
    while len(events) < count:
        batch = watch.next_batch(timeout)
        assert batch is not None, f"watch gave {len(events)} of {count} events: {events}"
        events.extend(batch.events)
    return events


class Workers:
    """Store clients in other processes (``tests/store/workers.py``); every one is killed at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, netns: str | None = None) -> subprocess.Popen:
        inside = ["ip", "netns", "exec", netns] if netns else []
        proc = subprocess.Popen([*inside, sys.executable, "-m", "tests.store.workers", *args], cwd=REPO_ROOT, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    @staticmethod
    def expect(proc: subprocess.Popen, line: str) -> None:
        got = proc.stdout.readline().strip()
        assert got == line, f"worker said {got!r}, expected {line!r}"

    def race(self, argvs: list[tuple[str, ...]]) -> list[str]:
        """Start every worker, wait until all are ready, release them together, return what each printed."""
        procs = [self.start(*argv) for argv in argvs]
        for proc in procs:
            self.expect(proc, "ready")
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [proc.stdout.readline().strip() for proc in procs]
        for proc in procs:
            proc.stdin.close()
            assert proc.wait(timeout=60) == 0
        return results

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream and not stream.closed:
                    stream.close()


@pytest.fixture
def workers() -> Iterator[Workers]:
    pool = Workers()
    try:
        yield pool
    finally:
        pool.cleanup()


def outcome_within(call, guard: float):
    """Run ``call()`` on a thread: what it returned, or the exception it raised. Fails the test when it is still
    running after ``guard`` seconds (for calls that must end at a deadline rather than hang)."""
    import threading

    outcome: list = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # the outcome under test
            outcome.append(exc)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(guard)
    assert not thread.is_alive(), f"the call was still running after {guard:g} s"
    return outcome[0]
