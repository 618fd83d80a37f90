"""Shared fixtures for every tier.

Everything a test makes on the host carries the test prefix ``bt`` (namespaces ``bt-…``, links ``bt…``), so a
leftover is recognisable as test-made and the session-wide sweep below can remove it even after a crash.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.waiting import stop_process

TEST_PREFIX = "bt"
REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(os.environ.get("BERTH_VENV_BIN", REPO_ROOT / ".venv" / "bin"))
# The plugin executables a runtime should use: thin launchers written by `berth install-cni` (`make venv` does it).
CNI_BIN = Path(os.environ.get("BERTH_CNI_BIN", REPO_ROOT / ".venv" / "cni-bin"))
REFERENCE_CNI_DIR = Path("/usr/lib/cni")


def pytest_addoption(parser):
    parser.addoption("--cni-daemon", action="store_true",
                     help="run a CNI daemon for the session, so plugin executables answer through it")


# Where the launchers in CNI_BIN look for the daemon (``make venv`` bakes this path into them).
CNI_DAEMON_SOCKET = REPO_ROOT / ".venv" / "run" / "cni.sock"


@pytest.fixture(scope="session", autouse=True)
def cni_daemon(request):
    """With ``--cni-daemon``: every plugin call a test makes through CNI_BIN goes through a live daemon."""
    if not request.config.getoption("--cni-daemon"):
        yield None
        return
    # Launchers of another build fall back to in process: reinstall them so they match the daemon's code.
    run(str(VENV_BIN / "berth"), "install-cni", "--dir", str(CNI_BIN), "--socket", str(CNI_DAEMON_SOCKET))
    proc = subprocess.Popen([str(VENV_BIN / "berth"), "cni-daemon", "--socket", str(CNI_DAEMON_SOCKET),
                             "--log-level", "INFO"])
    try:
        import time
        deadline = time.monotonic() + 60
        while not CNI_DAEMON_SOCKET.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the CNI daemon did not start")
            time.sleep(0.05)
        yield proc
    finally:
        stop_process(proc, grace=30)


def unique_name(kind: str = "", length: int = 15) -> str:
    """A test-made name: the ``bt`` prefix, an optional kind, random hex; at most ``length`` characters."""
    stem = f"{TEST_PREFIX}{kind}"
    return (stem + secrets.token_hex(8))[:length]


def run(*argv: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kwargs)


# Modules whose tests start real servers or daemons (agents, DNS servers, CNI daemons, store writers in other
# processes): correct and needed, but seconds each, so `make test-pure` leaves them out.
SERVICE_MODULES = {
    "tests/core/test_fastpath.py", "tests/discovery/test_register.py", "tests/discovery/test_consul_api.py",
    "tests/discovery/test_agent.py", "tests/discovery/test_view.py", "tests/discovery/test_skydns.py",
    "tests/store/test_contract.py", "tests/dnsd/test_forwarding.py", "tests/dnsd/test_dnspython.py",
    "tests/dnsd/test_dig.py", "tests/dnsd/test_view_changes.py", "tests/dnsd/test_store_e2e.py",
    "tests/overlay/test_cli.py", "tests/discovery/test_durability.py", "tests/store/test_follower_keeper.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("::", 1)[0] in SERVICE_MODULES:
            item.add_marker(pytest.mark.service)
    if os.geteuid() == 0:
        return
    skip_root = pytest.mark.skip(reason="needs root (network namespaces, links, firewall)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip_root)


class NetnsFactory:
    """Creates named network namespaces and removes every one of them at teardown, pass or fail."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def __call__(self, kind: str = "ns") -> str:
        name = f"{TEST_PREFIX}-{kind}-{secrets.token_hex(4)}"
        run("ip", "netns", "add", name)
        self.created.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    @staticmethod
    def path(name: str) -> str:
        return f"/run/netns/{name}"

    def cleanup(self) -> None:
        for name in reversed(self.created):
            run("ip", "netns", "del", name, check=False)
        self.created.clear()


@pytest.fixture
def netns():
    """``netns()`` → the name of a fresh namespace (its path is ``/run/netns/<name>``); all deleted afterwards."""
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def host_links():
    """Register host link names to delete at teardown: ``host_links.append("btbr0a1b")``."""
    names: list[str] = []
    yield names
    for name in names:
        run("ip", "link", "del", name, check=False)


def plugin_path(name: str) -> Path:
    """The executable a runtime would exec for one of Berth's plugins (``berth-ipam`` …): the thin launcher in
    ``CNI_BIN`` (forwarding to a CNI daemon when one runs, in process otherwise), else the venv's console script."""
    launcher = CNI_BIN / name
    if launcher.exists():
        return launcher
    path = VENV_BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found:
            return Path(found)
    return path


@pytest.fixture(scope="session", autouse=True)
def sweep_test_leftovers():
    """In CI, remove test-made namespaces left by an earlier, killed run (never anything without the prefix).

    Only under ``CI=true``: on a developer machine several test runs may share the host at once."""
    if os.geteuid() != 0 or os.environ.get("CI") != "true":
        yield
        return

    def sweep() -> None:
        listing = run("ip", "-o", "netns", "list", check=False).stdout.split("\n")
        for line in listing:
            name = line.split(" ")[0]
            if name.startswith(f"{TEST_PREFIX}-"):
                run("ip", "netns", "del", name, check=False)

    sweep()
    yield
    sweep()
