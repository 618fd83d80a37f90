"""Simulated hosts on one machine: what the tests, the benchmark and ``make demo`` share.

A host is a network namespace whose ``underlay0`` is a veth to a bridge inside an underlay namespace of the
simulation's own, so hosts share one layer-2 segment and nothing touches the machine's real network. Each host runs
its own ``berth overlay`` process (``ip netns exec``); an embedded SQLite store is shared through the file system,
an etcd can run inside the underlay namespace (at ``underlay_gateway``), reachable from every host.

    with simulated_hosts(2, "sqlite:///tmp/x.db") as sim:
        a, b = sim.hosts
        a.subnet()   # this host's subnet, from its subnet file
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from overlay import subnetfile
from overlay.kernel import ROUTE_PROTO

UNDERLAY_IFACE = "underlay0"
BRIDGE = "br0"


class SimError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SimError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _ip_batch(netns: str, commands: list[str]) -> None:
    done = subprocess.run(["ip", "-n", netns, "-batch", "-"], input="\n".join(commands) + "\n",
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SimError(f"ip -n {netns} -batch: {done.stderr.strip()}")


def _sysctl(netns: str, key: str, value: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", f"{key}={value}"], check=True,
                   capture_output=True)


@dataclass
class SimHost:
    label: str
    netns: str
    address: ipaddress.IPv4Interface
    workdir: Path
    sim: "SimCluster"
    process: subprocess.Popen | None = None
    _log_offset: int = 0

    @property
    def subnet_file(self) -> Path:
        return self.workdir / "subnet.env"

    @property
    def log_path(self) -> Path:
        return self.workdir / "overlay.log"

    def argv(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns, sys.executable, "-m", "berth.cli", "overlay",
                "--store", self.sim.store_url, "--prefix", self.sim.prefix, "--iface", UNDERLAY_IFACE,
                "--subnet-file", str(self.subnet_file), "--lease-ttl", str(self.sim.lease_ttl),
                "--ipam-host", self.label,  # simulated hosts share one hostname: the label names each for IPAM
                *self.sim.daemon_args]

    def start(self, wait: bool = True, timeout: float = 30.0) -> None:
        """Start this host's daemon (again, after a kill: it finds its lease and keeps its subnet and MAC)."""
        if self.running:
            return
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            start_new_session=True)
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        retries = 2
        while "ready:" not in self.log_since_start():
            if self.process is None or self.process.poll() is not None:
                if (self.process is not None and self.process.returncode == 255 and retries
                        and "berth.overlay" not in self.log_since_start()):
                    # `ip netns exec` itself failed (its mount set-up, on a machine busy making namespaces)
                    retries -= 1
                    self.process = None
                    self.start(wait=False)
                    continue
                raise SimError(f"{self.label}: berth overlay exited:\n{self.log_since_start()}")
            if time.monotonic() > deadline:
                raise SimError(f"{self.label}: berth overlay not ready after {timeout:.0f}s:\n"
                               f"{self.log_since_start()}")
            time.sleep(0.05)

    def log_since_start(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL, grace: float = 30.0) -> None:
        """Send ``sig`` and wait for the exit; SIGKILL after ``grace`` seconds (an orderly stop releases its lease
        and removes its kernel state first, which takes longer on a loaded machine)."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(sig)
                try:
                    self.process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def subnet(self) -> ipaddress.IPv4Network:
        return subnetfile.read(self.subnet_file).subnet.network

    def exec(self, *argv: str, check: bool = True, timeout: float | None = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.netns, *argv], capture_output=True, text=True,
                              check=check, timeout=timeout)


@dataclass
class PlainContainer:
    """A container stand-in made by hand (a namespace with a veth on the host's bridge): for tests and
    benchmarks of the overlay alone, without the CNI plugins."""

    netns: str
    host: SimHost
    address: ipaddress.IPv4Interface


@dataclass
class SimCluster:
    store_url: str
    name_prefix: str = "bt"
    lease_ttl: float = 5.0
    prefix: str = "/berth/overlay"
    underlay_net: ipaddress.IPv4Network = ipaddress.IPv4Network("10.213.0.0/24")
    daemon_args: tuple[str, ...] = ()
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bt-overlay-sim-")))
    hosts: list[SimHost] = field(default_factory=list)
    containers: list[PlainContainer] = field(default_factory=list)
    underlay_ns: str = ""
    _tag: str = field(default_factory=lambda: secrets.token_hex(3))

    @property
    def underlay_gateway(self) -> ipaddress.IPv4Address:
        """The underlay namespace's own address on the bridge (run etcd there, or ping it from a container)."""
        return self.underlay_net.broadcast_address - 1

    def create_underlay(self) -> str:
        self.underlay_ns = f"{self.name_prefix}-ul-{self._tag}"
        _ip("netns", "add", self.underlay_ns)
        _ip_batch(self.underlay_ns, [
            "link set lo up",
            f"link add {BRIDGE} type bridge",
            f"addr add {self.underlay_gateway}/{self.underlay_net.prefixlen} dev {BRIDGE}",
            f"link set {BRIDGE} up",
        ])
        return self.underlay_ns

    def add_host(self) -> SimHost:
        if not self.underlay_ns:
            self.create_underlay()
        index = len(self.hosts)
        address = ipaddress.IPv4Interface((self.underlay_net.network_address + index + 1,
                                           self.underlay_net.prefixlen))
        netns = f"{self.name_prefix}-h{index}-{self._tag}"
        _ip("netns", "add", netns)
        host = SimHost(f"h{index}", netns, address, self.workdir / f"h{index}", self)
        host.workdir.mkdir(parents=True, exist_ok=True)
        self.hosts.append(host)
        _ip_batch(netns, [
            "link set lo up",
            f"link add {UNDERLAY_IFACE} type veth peer name p{index} netns {self.underlay_ns}",
            f"addr add {address} dev {UNDERLAY_IFACE}",
            f"link set {UNDERLAY_IFACE} up",
        ])
        _ip_batch(self.underlay_ns, [f"link set p{index} master {BRIDGE}", f"link set p{index} up"])
        return host

    def add_plain_container(self, host: SimHost, mtu: int | None = None) -> PlainContainer:
        """A namespace with ``eth0`` on the host's bridge ``cbr0`` (gateway = the subnet's first address)."""
        subnet = host.subnet()
        settings = subnetfile.read(host.subnet_file)
        mtu = mtu or settings.mtu
        gateway = subnet.network_address + 1
        mine = [c for c in self.containers if c.host is host]
        address = ipaddress.IPv4Interface((gateway + 1 + len(mine), subnet.prefixlen))
        if not mine:
            _ip_batch(host.netns, ["link add cbr0 type bridge", f"addr add {gateway}/{subnet.prefixlen} dev cbr0",
                                   f"link set cbr0 mtu {mtu}", "link set cbr0 up"])
        netns = f"{self.name_prefix}-c{len(self.containers)}-{self._tag}"
        _ip("netns", "add", netns)
        container = PlainContainer(netns, host, address)
        self.containers.append(container)
        veth = f"c{len(mine)}"
        _ip_batch(host.netns, [f"link add {veth} mtu {mtu} type veth peer name eth0 netns {netns}",
                               f"link set {veth} master cbr0", f"link set {veth} up"])
        _ip_batch(netns, ["link set lo up", f"addr add {address} dev eth0", "link set eth0 up",
                          f"route add default via {gateway}"])
        return container

    def init_network(self, network: str = "10.214.0.0/16", subnet_len: int | None = None, vni: int | None = None,
                     port: int | None = None, direct_routing: bool = False, subnet_min: str | None = None,
                     subnet_max: str | None = None) -> None:
        """``berth overlay init`` run inside the underlay namespace, so a store reachable only there works too."""
        if not self.underlay_ns:
            self.create_underlay()
        argv = ["ip", "netns", "exec", self.underlay_ns, sys.executable, "-m", "berth.cli", "overlay", "init",
                "--store", self.store_url, "--prefix", self.prefix, "--network", network]
        for flag, value in (("--subnet-len", subnet_len), ("--vni", vni), ("--port", port),
                            ("--subnet-min", subnet_min), ("--subnet-max", subnet_max)):
            if value is not None:
                argv += [flag, str(value)]
        if direct_routing:
            argv.append("--direct-routing")
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise SimError(f"berth overlay init: {done.stderr.strip()}")

    def start_all(self, timeout: float = 60.0) -> None:
        """Start every host's daemon at once, then wait until each is ready and has learned every other one."""
        for host in self.hosts:
            host.start(wait=False)
        for host in self.hosts:
            host.wait_ready(timeout)
        self.wait_converged(timeout)

    def wait_converged(self, timeout: float = 30.0) -> None:
        """Wait until every running host has its route to every other running host's subnet.

        A daemon says ready once it holds its own lease; it learns the hosts that started after it from its watch a
        moment later, so whoever wants a full mesh (a test, the demo) waits for this too."""
        deadline = time.monotonic() + timeout
        while True:
            missing = self._missing_routes()
            if not missing:
                return
            if time.monotonic() > deadline:
                raise SimError("overlay not converged after {:.0f}s: {}".format(
                    timeout, "; ".join(f"{host.label} lacks {', '.join(subnets)}" for host, subnets in missing)))
            time.sleep(0.05)

    def _missing_routes(self) -> list[tuple[SimHost, list[str]]]:
        running = [host for host in self.hosts if host.running]
        subnets = {host.label: str(host.subnet()) for host in running}
        missing = []
        for host in running:
            routes = subprocess.run(["ip", "-n", host.netns, "-4", "route", "show", "proto", str(ROUTE_PROTO)],
                                    capture_output=True, text=True).stdout
            known = {line.split()[0] for line in routes.splitlines() if line.strip()}
            lacking = [subnet for label, subnet in subnets.items() if label != host.label and subnet not in known]
            if lacking:
                missing.append((host, lacking))
        return missing

    def summary(self) -> str:
        """One line per host: namespace, underlay address, subnet and VTEP MAC (from its subnet file)."""
        lines = [f"{'HOST':<5} {'NAMESPACE':<20} {'UNDERLAY':<16} {'SUBNET':<18} {'VTEP MAC':<18} DAEMON"]
        for host in self.hosts:
            found = subnetfile.read_if_present(host.subnet_file)
            subnet = str(found.subnet.network) if found else "-"
            mac = found.vtep_mac if found and found.vtep_mac else "-"
            lines.append(f"{host.label:<5} {host.netns:<20} {str(host.address.ip):<16} {subnet:<18} {mac:<18} "
                         f"{'running' if host.running else 'stopped'}")
        return "\n".join(lines)

    def teardown(self) -> None:
        """Stop every daemon and remove every namespace this simulation made; safe to call twice."""
        for host in self.hosts:
            with contextlib.suppress(Exception):
                host.kill(signal.SIGKILL)
        for ns in [c.netns for c in self.containers] + [h.netns for h in self.hosts] + [self.underlay_ns]:
            if ns:
                _ip("netns", "del", ns, check=False)
        self.containers.clear()
        self.hosts.clear()
        self.underlay_ns = ""
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def simulated_hosts(count: int, store_url: str, *, name_prefix: str = "bt", lease_ttl: float = 5.0,
                    network: str | None = "10.214.0.0/16", daemon_args: tuple[str, ...] = (),
                    start: bool = True) -> Iterator[SimCluster]:
    """``count`` hosts on one underlay, each with its daemon running on ``store_url``; all gone afterwards.

    ``network``: write this overlay network config first (None: the store already has one)."""
    if os.geteuid() != 0:
        raise SimError("simulated hosts need root (network namespaces)")
    sim = SimCluster(store_url, name_prefix=name_prefix, lease_ttl=lease_ttl, daemon_args=tuple(daemon_args))
    try:
        sim.create_underlay()
        if network:
            sim.init_network(network)
        for _ in range(count):
            sim.add_host()
        if start:
            sim.start_all()
        yield sim
    finally:
        sim.teardown()
