"""A real podman for end-to-end tests, kept apart from the host's own podman and from other tests.

Everything podman keeps lives in a temporary folder: its config (named by ``CONTAINERS_CONF``, never
/etc/containers), storage (``--root``/``--runroot``), the network configs it reads, and a busybox root filesystem to
run containers from (no image registry is reachable). Use the ``podman`` fixture, or :class:`PodmanHarness` as a
context manager::

    with PodmanHarness.create() as pm:
        pm.write_network("btnet1", berth_network_plugins(bridge="btbr1", subnet="10.231.7.0/24", data_dir=...))
        port, cid = pm.run_publishing("web", 80, network="btnet1", command=["httpd", "-f", "-p", "80", "-h", "/www"])

Containers are removed with ``rm -f -t 0`` (a busybox PID 1 ignores SIGTERM, so a grace period only waits).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import pytest

from berth.private_docker import busybox_rootfs
from tests.conftest import REFERENCE_CNI_DIR, VENV_BIN, unique_name
from tests.ports import port_taken, with_free_port
from tests.waiting import wait_until

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
PODMAN_TIMEOUT = 120


def available() -> Optional[str]:
    """None when podman and a static busybox are here, else why not."""
    if os.geteuid() != 0:
        return "podman tests need root"
    if not shutil.which("podman"):
        return "podman is not installed"
    if not Path(BUSYBOX).exists():
        return "busybox-static is not installed"
    return None


def build_rootfs(path: Path, www: str = "") -> Path:
    """A root filesystem with busybox and every applet linked in /bin, plus /www/index.html for httpd."""
    return busybox_rootfs(path, www or "berth")


def berth_network_plugins(*, bridge: str, subnet: str, data_dir: str, ipam: str = "berth-ipam",
                          is_gateway: bool = True, ip_masq: bool = False, portmap: bool = True,
                          extra: Iterable[dict] = ()) -> list[dict]:
    """The plugin chain of a Berth network: berth-bridge (with ``ipam``), then berth-portmap, then ``extra``."""
    plugins = [{"type": "berth-bridge", "bridge": bridge, "isGateway": is_gateway, "ipMasq": ip_masq,
                "ipam": {"type": ipam, "ranges": [[{"subnet": subnet}]], "dataDir": data_dir}}]
    if portmap:
        plugins.append({"type": "berth-portmap", "capabilities": {"portMappings": True}})
    plugins.extend(extra)
    return plugins


def random_test_subnet() -> str:
    """A /24 in 10.231.0.0/16, the range Berth's tests keep for themselves, random so parallel runs differ."""
    return f"10.231.{100 + secrets.randbelow(150)}.0/24"


class PodmanHarness:
    def __init__(self, work: Path, plugin_dirs: Sequence[str] = (str(VENV_BIN), str(REFERENCE_CNI_DIR))) -> None:
        self.work = work
        self.netdir = work / "net.d"
        self.netdir.mkdir(parents=True, exist_ok=True)
        self.conf = work / "containers.conf"
        self.conf.write_text(
            "[network]\n"
            "network_backend = \"cni\"\n"
            f"cni_plugin_dirs = {json.dumps(list(plugin_dirs))}\n"
            f"network_config_dir = \"{self.netdir}\"\n"
            "[containers]\n"
            "default_ulimits = []\n"
            "[engine]\n"
            "runtime = \"runc\"\n")
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}
        self.rootfs = build_rootfs(work / "rootfs")
        self.storage = ["--root", str(work / "root"), "--runroot", str(work / "run")]
        self.containers: list[str] = []

    @classmethod
    def create(cls, **kwargs) -> "PodmanHarness":
        # podman wants a short runroot path: keep the work folder directly under /tmp.
        return cls(Path(tempfile.mkdtemp(prefix="bt-pm-", dir="/tmp")), **kwargs)

    def __call__(self, *args: str, check: bool = True, timeout: float = PODMAN_TIMEOUT) -> subprocess.CompletedProcess:
        proc = subprocess.run(["podman", *self.storage, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def write_network(self, name: str, plugins: list[dict[str, Any]], cni_version: str = "1.0.0") -> Path:
        path = self.netdir / f"{name}.conflist"
        path.write_text(json.dumps({"cniVersion": cni_version, "name": name, "plugins": plugins}, indent=1))
        return path

    def run(self, name: str, *, network: str, command: Sequence[str], publish: Sequence[str] = (),
            aliases: Sequence[str] = (), extra: Sequence[str] = ()) -> str:
        """Start a detached container from the busybox rootfs; returns its id."""
        args = ["run", "-d", "--name", name, "--network", network]
        for port in publish:
            args += ["-p", port]
        for alias in aliases:
            args += ["--network-alias", alias]
        self.containers.append(name)
        proc = self(*args, *extra, "--rootfs", str(self.rootfs), *command)
        return proc.stdout.strip().splitlines()[-1]

    def run_publishing(self, name: str, container_port: int, *, network: str, command: Sequence[str],
                       host_ip: str = "127.0.0.1", **kwargs) -> tuple[int, str]:
        """``run`` with ``container_port`` published on a free host port: ``(host port, container id)``. Podman
        binds the host port itself; when something took it since it was picked, the half-made container goes and
        the run is tried again on another port."""
        def attempt(port: int) -> str:
            try:
                return self.run(name, network=network, command=command, publish=[f"{host_ip}:{port}:{container_port}"],
                                **kwargs)
            except AssertionError as exc:
                if port_taken(exc):
                    self("rm", "-f", "-t", "0", name, check=False)
                    self.containers.remove(name)
                raise

        return with_free_port(attempt, host=host_ip)

    def exec(self, name: str, *command: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess:
        return self("exec", name, *command, check=check, timeout=timeout)

    def wait_listening(self, name: str, port: int, timeout: float = PODMAN_TIMEOUT) -> None:
        """Wait until a server in container ``name`` listens on TCP ``port``: ``run`` returns once the container's
        process has started, a moment before that process has bound its port."""
        def bound() -> bool:
            out = self.exec(name, "netstat", "-ltn").stdout
            return any(fields[3].endswith(f":{port}") for fields in map(str.split, out.splitlines())
                       if len(fields) > 3 and fields[0].startswith("tcp"))

        wait_until(bound, timeout, interval=0.2, what=f"a server in {name} listening on port {port}")

    def address(self, name: str, ifname: str = "eth0") -> str:
        """The container's first IPv4 address with prefix, read inside it."""
        out = self.exec(name, "ip", "-4", "-o", "addr", "show", ifname, check=True).stdout.split()
        return out[out.index("inet") + 1]

    def remove(self, *names: str) -> None:
        if names:
            self("rm", "-f", "-t", "0", *names)
            for name in names:
                if name in self.containers:
                    self.containers.remove(name)

    def close(self) -> None:
        names = self("ps", "-aq", check=False).stdout.split()
        if names:
            self("rm", "-f", "-t", "0", *names, check=False)
        self("rm", "-f", "-t", "0", "--all", check=False)
        self.containers.clear()
        subprocess.run(["umount", "-R", str(self.work / "root" / "overlay")], capture_output=True, check=False)
        shutil.rmtree(self.work, ignore_errors=True)
        self.drop_idle_berth_tables()

    @staticmethod
    def drop_idle_berth_tables() -> None:
        """Remove Berth's nftables tables from the host when no attachment's rule is left in them (another test
        may still be using a table that holds rules, so only idle ones go)."""
        from datapath.firewall_nft import TABLES, run as nft

        for family, table in TABLES.values():
            rc, out, _ = nft(f"list table {family} {table}", json_output=True)
            items = json.loads(out).get("nftables", []) if rc == 0 else []
            if rc == 0 and not any(str(i.get("rule", {}).get("comment", "")).startswith("berth ") for i in items):
                nft(f"delete table {family} {table}")

    def __enter__(self) -> "PodmanHarness":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture
def podman():
    """A :class:`PodmanHarness` of the test's own; every container and file it made is gone afterwards."""
    reason = available()
    if reason:
        pytest.skip(reason)
    harness = PodmanHarness.create()
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def berth_network(podman, host_links, tmp_path):
    """``berth_network(ipam="berth-ipam", **kw)`` → (network name, bridge, subnet, IPAM data dir), written for
    ``podman``; the bridge is deleted afterwards."""
    def make(**kwargs):
        name, bridge = unique_name("net"), unique_name("br")
        host_links.append(bridge)
        subnet = kwargs.pop("subnet", None) or random_test_subnet()
        data_dir = str(tmp_path / f"ipam-{name}")
        podman.write_network(name, berth_network_plugins(bridge=bridge, subnet=subnet, data_dir=data_dir, **kwargs))
        return name, bridge, subnet, data_dir
    return make
