"""Fixtures for the discovery tests: real stores, real agent processes, the plugin run as a runtime runs it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN, plugin_path, unique_name

# A network namespace path that exists while the tests run (the test process's own): anti-entropy keeps
# endpoints whose netns exists, so tests not about stale namespaces need no root to make one.
LIVE_NETNS = f"/proc/{os.getpid()}/ns/net"
# The one lease TTL for agents under test. Long enough that a loaded machine (other suites on both cores) never
# misses three renewals in a row, so a record that blinks is a bug; short enough that expiry shows in seconds.
LEASE_TTL = 5.0


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
def store_url(request, tmp_path):
    """A URL of a real, empty store: an SQLite file, or a real etcd server (its own data dir, free ports)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'berth.db'}"
        return
    try:
        import store.etcd  # noqa: F401  (the etcd backend lands separately)
    except ImportError:
        pytest.skip("the etcd store backend is not on this branch yet")
    from tests.etcd_harness import start_etcd
    with start_etcd(1) as cluster:
        yield cluster.url


@pytest.fixture
def open_url():
    """``open_url(url)`` → an opened store, closed at teardown."""
    from store.api import open_store
    opened = []

    def _open(url: str):
        store = open_store(url)
        opened.append(store)
        return store
    yield _open
    for store in opened:
        store.close()


class AgentProcess:
    """A real ``berth agent`` in its own process group (so SIGKILL takes it down at once)."""

    def __init__(self, store_url: str, workdir: Path, host: str, ttl: float, extra: tuple[str, ...]) -> None:
        self.store_url, self.host, self.ttl, self.extra = store_url, host, ttl, extra
        self.socket = str(workdir / "agent.sock")
        self.state_dir = str(workdir / "state")
        self.spool_dir = str(workdir / "state" / "spool")
        self.log = workdir / f"agent-{host}.log"
        self.proc: subprocess.Popen | None = None
        self.http_port = 0

    def start(self, timeout: float = 20.0) -> "AgentProcess":
        argv = [str(VENV_BIN / "berth"), "agent", "--store", self.store_url, "--socket", self.socket,
                "--http", "127.0.0.1:0", "--host", self.host, "--ttl", str(self.ttl),
                "--state-dir", self.state_dir, "--resync", "0.5", "--log-level", "DEBUG", *self.extra]
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith(b"ready") or not line:
                break
        if not line.startswith(b"ready"):
            self.kill()
            raise RuntimeError(f"agent did not start: {self.log.read_text()[-3000:]}")
        self.http_port = int(line.split(b"http=")[1])
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


@pytest.fixture
def agents(tmp_path):
    """``agents(store_url, host=..., ttl=...)`` → a started :class:`AgentProcess`; all killed at teardown."""
    made: list[AgentProcess] = []

    def _start(url: str, host: str | None = None, ttl: float = LEASE_TTL, workdir: Path | None = None,
               extra: tuple[str, ...] = (), start: bool = True) -> AgentProcess:
        wd = workdir or tmp_path / unique_name("ag")
        wd.mkdir(parents=True, exist_ok=True)
        agent = AgentProcess(url, wd, host or unique_name("h"), ttl, extra)
        made.append(agent)
        return agent.start() if start else agent
    yield _start
    for agent in made:
        agent.kill()


def run_register(command: str, config: dict, *, container_id: str = "", ifname: str = "eth0",
                 netns: str = LIVE_NETNS, name: str | None = None, extra_env: dict | None = None
                 ) -> tuple[int, dict | None, str]:
    """Exec berth-register as a runtime does: CNI_* environment, the network config on stdin."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
           "CNI_PATH": str(VENV_BIN) + ":/usr/lib/cni", "CNI_IFNAME": ifname}
    if container_id:
        env["CNI_CONTAINERID"] = container_id
    if netns:
        env["CNI_NETNS"] = netns
    args = "IgnoreUnknown=1"
    if name is not None:
        args += f";K8S_POD_NAME={name}"
    env["CNI_ARGS"] = args
    env.update(extra_env or {})
    proc = subprocess.run([str(plugin_path("berth-register"))], input=json.dumps(config).encode(), env=env,
                          capture_output=True, timeout=30)
    out = proc.stdout.decode()
    return proc.returncode, json.loads(out) if out.strip() else None, proc.stderr.decode()


def register_config(network: str, socket: str, spool_dir: str, *, address: str = "10.88.0.5/24",
                    aliases: list[str] | None = None, port_mappings: list[dict] | None = None,
                    version: str = "1.0.0") -> dict:
    """berth-register's stdin as a runtime builds it when the plugin is chained after bridge + portmap."""
    runtime: dict = {}
    if aliases is not None:
        runtime["aliases"] = {network: aliases}
    if port_mappings is not None:
        runtime["portMappings"] = port_mappings
    config = {
        "cniVersion": version, "name": network, "type": "berth-register",
        "agentSocket": socket, "spoolDir": spool_dir,
        "prevResult": {"cniVersion": version,
                       "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
                       "ips": [{"address": address, "interface": 0}]},
    }
    if runtime:
        config["runtimeConfig"] = runtime
    return config
