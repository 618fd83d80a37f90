"""The demo's world: simulated hosts with their daemons, and containers attached by the real CNI chain.

Everything lives in namespaces named ``bd-...-<tag>`` and a temporary directory; ``teardown`` undoes it in reverse
(CNI DEL through the chain, then daemons, then namespaces) and is safe to call twice, after any failure.
The machine's own network is never touched: every command runs with ``ip -n``/``ip netns exec``.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from berth.demo_probe import processes_mentioning
from berth.interrupts import checkpoint
from overlay import subnetfile
from overlay.sim import SimCluster, SimHost

UNDERLAY = ipaddress.IPv4Network("10.231.0.0/24")
OVERLAY = "10.232.0.0/16"
ZONE = "berth.internal"
NETWORK = "berth-demo"
BRIDGE = "bd0"
VXLAN = "berth.1"  # the overlay's default VNI is 1
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class DemoError(RuntimeError):
    pass


def cni_bin_dir(workdir: Path) -> str:
    """The plugin executables beside this installation (``make venv`` puts them in .venv/cni-bin); otherwise a
    fresh ``berth install-cni`` into the demo's own directory."""
    beside = Path(sys.executable).parent.parent / "cni-bin"
    if (beside / "berth-overlay").exists():
        return str(beside)
    target = workdir / "cni-bin"
    done = subprocess.run([sys.executable, "-m", "berth.cli", "install-cni", "--dir", str(target)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise DemoError(f"berth install-cni: {done.stderr.strip()}")
    return str(target)


@dataclass
class Daemon:
    """A long-running process inside a namespace, its output in a log file."""

    what: str
    process: subprocess.Popen
    log: Path

    def wait_for(self, marker: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            checkpoint()
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            if marker in text:
                return text
            if self.process.poll() is not None:
                raise DemoError(f"{self.what} exited:\n{text.strip()[-1500:]}")
            if time.monotonic() > deadline:
                raise DemoError(f"{self.what} not ready after {timeout:.0f}s:\n{text.strip()[-1500:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Host:
    """A simulated host and what the demo runs on it besides its overlay daemon."""

    name: str  # "A", "B"
    sim: SimHost
    workdir: Path
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def netns(self) -> str:
        return self.sim.netns

    @property
    def address(self) -> str:
        return str(self.sim.address.ip)

    def lease(self) -> subnetfile.SubnetFile:
        return subnetfile.read(self.sim.subnet_file)

    def conflist(self) -> list[dict]:
        """The host's network config list, as a runtime would read it from a .conflist."""
        return [
            {"type": "berth-overlay", "subnetFile": str(self.sim.subnet_file), "dataDir": str(self.workdir / "overlay"),
             "delegate": {"bridge": BRIDGE, "dns": {"nameservers": [self.address], "search": [ZONE]}},
             "ipam": {"dataDir": str(self.workdir / "ipam"), "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "berth-portmap", "capabilities": {"portMappings": True}},
            {"type": "berth-register", "agentSocket": str(self.workdir / "agent.sock"),
             "spoolDir": str(self.workdir / "spool"), "capabilities": {"aliases": True, "portMappings": True}},
        ]

    def reservations(self) -> list[str]:
        path = self.workdir / "ipam" / NETWORK
        return sorted(f for f in os.listdir(path) if f[0].isdigit()) if path.exists() else []


@dataclass
class Container:
    name: str
    host: Host
    netns: str
    container_id: str
    aliases: tuple[str, ...] = ()
    ports: tuple[dict, ...] = ()
    result: dict | None = None
    steps: list[str] = field(default_factory=list)  # what each plugin of the chain did, for the story
    lost: bool = False  # the runtime forgot it: GC, not DEL, frees what it held
    reclaimed: bool = False  # GC freed what it held: the teardown has nothing left to DEL

    @property
    def address(self) -> str:
        return self.result["ips"][0]["address"].split("/")[0] if self.result else "-"


class World:
    def __init__(self, workdir: Path, tag: str) -> None:
        self.workdir, self.tag = workdir, tag
        self.store_url = f"sqlite:///{workdir / 'berth.db'}"
        self.sim = SimCluster(self.store_url, name_prefix="bd", lease_ttl=10.0, underlay_net=UNDERLAY,
                              daemon_args=("--release-on-exit",), workdir=workdir / "sim", _tag=tag)
        self.hosts: list[Host] = []
        self.containers: list[Container] = []
        self.servers: list[Daemon] = []
        self.cni_bin = ""
        self.resolv_dirs: list[Path] = []
        self.dns_seen: list[tuple[str, str, str, str]] = []  # (asked by, server, question, answer)
        self.overlay_traffic: dict[str, tuple[int, int]] = {}  # host -> VXLAN packets (sent, received)
        self.overlay_frames: list[str] = []  # VXLAN frames seen on the underlay, decoded

    # -- hosts --------------------------------------------------------------------------------------------------
    def start_hosts(self, count: int = 2) -> None:
        self.sim.create_underlay()
        self.sim.init_network(OVERLAY)
        for index in range(count):
            sim_host = self.sim.add_host()
            host = Host("AB"[index], sim_host, self.workdir / f"host{'AB'[index]}")
            host.workdir.mkdir(parents=True, exist_ok=True)
            self.hosts.append(host)
        self.sim.start_all(timeout=60)

    def peer_routes(self, host: Host) -> list[str]:
        """The overlay daemon's routes to the other hosts' subnets (protocol 77)."""
        out = subprocess.run(["ip", "-n", host.netns, "-j", "route", "show", "proto", "77"], capture_output=True,
                             text=True).stdout
        return [f"{r['dst']} via {r.get('gateway', '-')} dev {r.get('dev')}" for r in json.loads(out or "[]")]

    def _spawn(self, host_ns: str, what: str, argv: list[str], log: Path) -> Daemon:
        with open(log, "ab") as out:
            process = subprocess.Popen(["ip", "netns", "exec", host_ns, *argv], stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=out, start_new_session=True)
        return Daemon(what, process, log)

    def start_services(self, host: Host) -> None:
        """The host's discovery agent (socket only) and DNS server (on the host's underlay address)."""
        berth = [sys.executable, "-m", "berth.cli"]
        agent = self._spawn(host.netns, f"agent on host {host.name}", [
            *berth, "agent", "--store", self.store_url, "--socket", str(host.workdir / "agent.sock"), "--no-http",
            "--host", host.netns, "--address", host.address, "--ttl", "10",
            "--state-dir", str(host.workdir / "agent"), "--spool-dir", str(host.workdir / "spool")],
            host.workdir / "agent.log")
        host.daemons.append(agent)
        dns = self._spawn(host.netns, f"dns on host {host.name}", [
            *berth, "dns", "--store", self.store_url, "--listen", f"{host.address}:53", "--zone", ZONE,
            "--no-forward", "--ttl", "1", "--negative-ttl", "1"], host.workdir / "dns.log")
        host.daemons.append(dns)
        agent.wait_for("ready socket=")
        dns.wait_for("dnsd: listening on")

    # -- containers -----------------------------------------------------------------------------------------------
    def _plugin(self, host: Host, ctr: Container | None, command: str, conf: dict) -> dict | None:
        """Exec one plugin as a runtime does: inside the host's namespace, CNI environment, config on stdin
        (GC and STATUS concern no container: no container variables)."""
        env = {"PATH": PATH, "CNI_COMMAND": command, "CNI_PATH": f"{self.cni_bin}:/usr/lib/cni"}
        if ctr is not None:
            env.update({"CNI_CONTAINERID": ctr.container_id, "CNI_NETNS": f"/run/netns/{ctr.netns}",
                        "CNI_IFNAME": "eth0", "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAME={ctr.name}"})
        argv = ["ip", "netns", "exec", host.netns, os.path.join(self.cni_bin, conf["type"])]
        done = subprocess.run(argv, input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=60)
        out = done.stdout.decode()
        parsed = json.loads(out) if out.strip() else None
        if done.returncode != 0:
            detail = parsed.get("msg") if isinstance(parsed, dict) else (out or done.stderr.decode()).strip()
            raise DemoError(f"{conf['type']} {command}" + (f" for {ctr.name}" if ctr else "") + f": {detail}")
        return parsed

    def _plugin_conf(self, plugin: dict, ctr: Container, prev: dict | None) -> dict:
        """libcni's injection: name and version, the capabilities the plugin declares, the previous result."""
        conf = {**plugin, "cniVersion": "1.1.0", "name": NETWORK}
        wanted = plugin.get("capabilities") or {}
        runtime = {"portMappings": list(ctr.ports), "aliases": {NETWORK: list(ctr.aliases)}}
        runtime = {key: value for key, value in runtime.items() if wanted.get(key)}
        if runtime:
            conf["runtimeConfig"] = runtime
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def add_container(self, host: Host, name: str, aliases: tuple[str, ...] = (),
                      ports: tuple[dict, ...] = ()) -> Container:
        netns = f"bd-{name}-{self.tag}"
        ctr = Container(name, host, netns, f"bd{self.tag}{name}", aliases, ports)
        self.containers.append(ctr)  # first: an interrupt right after `ip netns add` must still find it
        subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True, capture_output=True)
        prev = None
        for plugin in host.conflist():
            prev = self._plugin(host, ctr, "ADD", self._plugin_conf(plugin, ctr, prev))
            ctr.result = prev
            ctr.steps.append(describe_step(plugin["type"], ctr, prev))
        self._write_resolv_conf(ctr)
        return ctr

    def _write_resolv_conf(self, ctr: Container) -> None:
        """What a runtime does with the result's ``dns``: the container's resolv.conf (``ip netns exec`` mounts
        /etc/netns/<name>/resolv.conf over /etc/resolv.conf for commands run in that namespace only)."""
        dns = (ctr.result or {}).get("dns") or {}
        if not dns.get("nameservers"):
            return
        directory = Path("/etc/netns") / ctr.netns
        self.resolv_dirs.append(directory)
        directory.mkdir(parents=True, exist_ok=True)
        lines = [f"nameserver {ns}" for ns in dns["nameservers"]]
        if dns.get("search"):
            lines.append("search " + " ".join(dns["search"]))
        (directory / "resolv.conf").write_text("\n".join(lines) + "\n")

    def whole_chain(self, host: Host, command: str, extra: dict | None = None) -> list[tuple[str, bool, str]]:
        """STATUS or GC through every plugin of the host's chain, as libcni does: (plugin, ok, error)."""
        done = []
        for plugin in host.conflist():
            conf = {**plugin, "cniVersion": "1.1.0", "name": NETWORK, **(extra or {})}
            try:
                self._plugin(host, None, command, conf)
                done.append((plugin["type"], True, ""))
            except (DemoError, OSError, subprocess.SubprocessError) as exc:
                done.append((plugin["type"], False, str(exc)))
        return done

    def lose(self, ctr: Container) -> None:
        """The container dies and the runtime forgets it: its namespace goes, no DEL is ever run."""
        ctr.lost = True
        subprocess.run(["ip", "netns", "del", ctr.netns], capture_output=True)

    def del_container(self, ctr: Container, report) -> bool:
        """CNI DEL through the chain in reverse, each plugin given the cached result; every step is tried."""
        ok = True
        for plugin in reversed(ctr.host.conflist()):
            try:
                self._plugin(ctr.host, ctr, "DEL", self._plugin_conf(plugin, ctr, ctr.result))
                report(f"{plugin['type']} DEL", True, "")
            except (DemoError, OSError, subprocess.SubprocessError) as exc:
                report(f"{plugin['type']} DEL", False, str(exc))
                ok = False
        return ok

    def serve_web(self, ctr: Container, page: str) -> None:
        root = self.workdir / "www"
        root.mkdir(exist_ok=True)
        (root / "index.html").write_text(page)
        self.servers.append(self._spawn(ctr.netns, f"web server in {ctr.name}", [
            sys.executable, "-m", "http.server", "80", "--bind", "0.0.0.0", "--directory", str(root)],
            self.workdir / "web.log"))

    # -- teardown -----------------------------------------------------------------------------------------------
    def stop_daemons(self) -> None:
        for daemon in self.servers + [d for h in self.hosts for d in reversed(h.daemons)]:
            with contextlib.suppress(Exception):
                daemon.stop()
        for host in self.hosts:  # SIGTERM: with --release-on-exit the subnet lease is given back
            with contextlib.suppress(Exception):
                host.sim.stop()
        for pid in processes_mentioning(str(self.workdir)):  # started, then interrupted before it was recorded
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def processes(self) -> list[subprocess.Popen]:
        made = [d.process for d in self.servers] + [d.process for h in self.hosts for d in h.daemons]
        return made + [h.process for h in self.sim.hosts if h.process is not None]

    def remove_namespaces(self) -> None:
        for ctr in self.containers:
            subprocess.run(["ip", "netns", "del", ctr.netns], capture_output=True)
        for directory in self.resolv_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        with contextlib.suppress(OSError):
            Path("/etc/netns").rmdir()  # only when empty, i.e. when nothing but the demo used it
        self.sim.teardown()
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        for name in listing:  # bd-*-<tag> is the demo's by construction, even one an interrupt kept off the books
            if name.startswith("bd-") and name.endswith(f"-{self.tag}"):
                subprocess.run(["ip", "netns", "del", name], capture_output=True)


def describe_step(plugin_type: str, ctr: Container, result: dict | None) -> str:
    """One line of the story for what a plugin of the chain did."""
    if plugin_type == "berth-overlay":
        ips = ", ".join(ip["address"] for ip in (result or {}).get("ips", []))
        gateways = ", ".join(ip.get("gateway", "-") for ip in (result or {}).get("ips", []))
        return f"berth-overlay  -> berth-bridge + berth-ipam: eth0 {ips}, gateway {gateways}, bridge {BRIDGE}"
    if plugin_type == "berth-portmap":
        if not ctr.ports:
            return "berth-portmap  -> no ports to publish"
        shown = ", ".join(f"{ctr.host.address}:{p['hostPort']} -> {p['containerPort']}/{p.get('protocol', 'tcp')}"
                          for p in ctr.ports)
        return f"berth-portmap  -> published {shown}"
    names = ", ".join((ctr.name, *ctr.aliases))
    return f"berth-register -> endpoint {names} handed to host {ctr.host.name}'s agent"
