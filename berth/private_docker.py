"""A private Docker engine with Berth's plugin, in a simulated host of its own: for ``berth demo --docker``, the
Docker tests and the Docker benchmark.

One holder process owns a fresh network namespace (or enters a given one: a host of an overlay simulation) and a
private mount namespace, where a tmpfs covers ``/run`` so ``/run/docker/plugins`` (where Docker looks for v1
plugins) is this engine's alone. dockerd (private data root, exec root and socket; no iptables, no default
bridge) and ``berth docker-plugin`` run inside both namespaces through ``nsenter``: every bridge, veth and
nftables rule they make lives in the simulated host, never on the machine. :meth:`PrivateDocker.stop` removes the
containers, stops dockerd and the plugin by their pids, ends whatever else is left in the mount namespace, then
the holder: the namespaces go with it.
"""
from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

DOCKERD = shutil.which("dockerd") or "/usr/bin/dockerd"
DOCKER_CLI = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")
DOCKER_API_VERSION = "1.41"  # dockerd 20.10's: a newer CLI on PATH speaks it too
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
IMAGE = "bt-busybox:1"
PAGE = "berth"  # the image's /www/index.html
HOLDER_LIFETIME = 3600  # seconds: a holder orphaned by a killed run ends on its own
COMMAND_TIMEOUT = 120
BERTH = [sys.executable, "-m", "berth.cli"]


def missing() -> Optional[str]:
    """None when a private engine can run here, else why not."""
    if os.geteuid() != 0:
        return "a private Docker engine needs root"
    if not Path(DOCKERD).exists():
        return "dockerd is not installed (make apt: docker.io)"
    if not Path(BUSYBOX).exists():
        return "busybox-static is not installed"
    return None


def poll(predicate: Callable, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, ``grace`` seconds, then SIGKILL; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip())
    except ValueError:
        return False
    return True


def busybox_rootfs(path: Path, page: str = PAGE) -> Path:
    """A root filesystem of busybox-static with every applet linked in /bin and ``page`` in /www for httpd (the
    podman tests' containers use it too)."""
    bin_dir = path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(BUSYBOX, bin_dir / "busybox")
    for applet in subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split():
        if applet != "busybox" and not (bin_dir / applet).exists():
            (bin_dir / applet).symlink_to("busybox")
    for folder in ("proc", "sys", "dev", "etc", "tmp", "www", "run"):
        (path / folder).mkdir(exist_ok=True)
    (path / "www" / "index.html").write_text(page)
    return path


class PrivateDocker:
    """dockerd + berth docker-plugin in private namespaces; ``docker(...)`` runs the CLI against it."""

    def __init__(self, work: Path, netns: Optional[str] = None, subnet_file: Optional[str] = None,
                 store_url: Optional[str] = None, label: str = "bt-dockerhost", name_prefix: str = "bt") -> None:
        self.work = work
        self.netns, self.subnet_file, self.label = netns, subnet_file, label
        self.plugin_name = f"{name_prefix}-berth-{secrets.token_hex(3)}"
        self.bridge_prefix = f"{name_prefix}-"
        self.state_dir = work / "plugin-state"
        self.socket = work / "docker.sock"
        self.plugin_log = work / "plugin.log"
        self.agent_socket = work / "agent.sock"
        self.spool_dir = work / "agent-state" / "spool"
        self.store_url = store_url or f"sqlite:///{work / 'discovery.db'}"
        self.holder: Optional[subprocess.Popen] = None
        self.dockerd: Optional[subprocess.Popen] = None
        self.plugin: Optional[subprocess.Popen] = None
        self.services: list[subprocess.Popen] = []
        self.agent: Optional[subprocess.Popen] = None

    # --- life cycle ----------------------------------------------------------------------------------------------

    @classmethod
    def start(cls, prefix: str = "bt-docker-", **kwargs) -> "PrivateDocker":
        """A new simulated host; ``netns`` (a path) puts it in an existing network namespace instead of a new one,
        ``subnet_file`` is that host's overlay subnet file."""
        host = cls(Path(tempfile.mkdtemp(prefix=prefix)), **kwargs)
        try:
            host._start_holder()
            host.start_plugin()
            host._start_dockerd()
            host._import_image()
        except BaseException:
            host.stop()
            raise
        return host

    def _start_holder(self) -> None:
        ready = self.work / "ready"
        script = (f"mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -p /run/docker/plugins && ip link set lo up"
                  f" && touch {ready} && exec sleep {HOLDER_LIFETIME}")
        if self.netns:
            argv = ["nsenter", f"--net={self.netns}", "unshare", "-m", "--propagation", "private", "sh", "-c", script]
        else:
            argv = ["unshare", "-m", "-n", "--propagation", "private", "sh", "-c", script]
        self.holder = subprocess.Popen(argv)
        poll(lambda: ready.exists() or self.holder.poll() is not None, 30, "the namespace holder")
        if self.holder.poll() is not None:
            raise RuntimeError("could not set up the private namespaces")

    def inside(self, *argv: str) -> list[str]:
        """``argv`` run inside the simulated host (its network and mount namespaces)."""
        assert self.holder is not None
        return ["nsenter", "-t", str(self.holder.pid), "-m", "-n", *argv]

    @property
    def netns_path(self) -> str:
        assert self.holder is not None
        return f"/proc/{self.holder.pid}/ns/net"

    def _spawn(self, argv: list[str], log_name: str, **kwargs) -> subprocess.Popen:
        log = open(self.work / log_name, "ab")
        try:
            return subprocess.Popen(self.inside(*argv), stdout=kwargs.pop("stdout", log), stderr=log, **kwargs)
        finally:
            log.close()

    def start_plugin(self) -> None:
        self.plugin = self._spawn([
            *BERTH, "docker-plugin", "--name", self.plugin_name, "--state-dir", str(self.state_dir),
            "--bridge-prefix", self.bridge_prefix, "--docker-host", f"unix://{self.socket}",
            "--agent-socket", str(self.agent_socket), "--spool-dir", str(self.spool_dir), "--log-level", "INFO",
            *(["--subnet-file", self.subnet_file] if self.subnet_file else [])], self.plugin_log.name)
        sock = self.plugin_socket
        poll(lambda: sock.exists() or self.plugin.poll() is not None, 30, "the plugin socket")
        if self.plugin.poll() is not None:
            raise RuntimeError(f"berth docker-plugin exited: {self.plugin_log.read_text()[-2000:]}")

    def stop_plugin(self) -> None:
        if self.plugin is not None:
            stop(self.plugin)
            self.plugin = None

    @property
    def plugin_socket(self) -> Path:
        """The plugin's socket as seen from outside the mount namespace."""
        assert self.holder is not None
        return Path(f"/proc/{self.holder.pid}/root/run/docker/plugins/{self.plugin_name}.sock")

    def _start_dockerd(self) -> None:
        self.dockerd = self._spawn([
            DOCKERD, "--data-root", str(self.work / "root"), "--exec-root", str(self.work / "exec"),
            "-H", f"unix://{self.socket}", "--pidfile", str(self.work / "dockerd.pid"),
            "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--bridge=none",
            "--userland-proxy=false", "--shutdown-timeout=2"], "dockerd.log")  # busybox PID 1 ignores SIGTERM
        poll(lambda: self.dockerd.poll() is not None or self.docker("version", check=False).returncode == 0,
             60, "dockerd", interval=0.2)
        if self.dockerd.poll() is not None:
            raise RuntimeError("dockerd exited: " + (self.work / "dockerd.log").read_text()[-2000:])

    def restart_dockerd(self, forget_networks: bool = False) -> None:
        """Stop dockerd (it stops its containers) and start it again on the same data root; with
        ``forget_networks`` its network database is deleted in between, as a reset engine would have it."""
        assert self.dockerd is not None
        stop(self.dockerd, grace=30)
        if forget_networks:
            (self.work / "root" / "network" / "files" / "local-kv.db").unlink()
        self._start_dockerd()

    def _import_image(self) -> None:
        rootfs = busybox_rootfs(self.work / "rootfs")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            subprocess.run([DOCKER_CLI, "import", "-", IMAGE], stdin=tar.stdout, env=self.env, check=True,
                           capture_output=True, timeout=COMMAND_TIMEOUT)
        finally:
            tar.stdout.close()
            tar.wait()

    def start_agent(self) -> None:
        """A discovery agent inside the simulated host on ``store_url`` (its spool is the plugin's); one at most."""
        if self.agent is not None and self.agent.poll() is None:
            return
        proc = self._spawn([*BERTH, "agent", "--store", self.store_url, "--socket", str(self.agent_socket),
                            "--no-http", "--host", self.label, "--state-dir", str(self.work / "agent-state"),
                            "--spool-dir", str(self.spool_dir), "--resync", "1"], "agent.log", stdout=subprocess.PIPE)
        self.services.append(proc)
        self.agent = proc
        line = proc.stdout.readline()
        proc.stdout.close()
        if not line.startswith(b"ready"):
            raise RuntimeError("agent did not start: " + (self.work / "agent.log").read_text()[-2000:])

    def start_dns(self, *listen: str) -> None:
        """``berth dns`` inside the simulated host, answering from the agent's store on ``listen`` addresses."""
        argv = [*BERTH, "dns", "--store", self.store_url, "--no-forward"]
        for address in listen:
            argv += ["--listen", address]
        self.services.append(self._spawn(argv, "dns.log"))

    def stop(self) -> None:
        try:
            if self.dockerd is not None and self.dockerd.poll() is None:
                ids = self.docker("ps", "-aq", check=False).stdout.split()
                if ids:
                    self.docker("rm", "-f", *ids, check=False)
                for name in self.docker("network", "ls", "-q", "--filter", f"driver={self.plugin_name}",
                                        check=False).stdout.split():
                    self.docker("network", "rm", name, check=False)
            if self.dockerd is not None:
                stop(self.dockerd, grace=20)
            self.stop_plugin()
            for proc in reversed(self.services):
                stop(proc)
            self._end_leftovers()
        finally:
            if self.holder is not None:
                stop(self.holder)
            shutil.rmtree(self.work, ignore_errors=True)

    def _end_leftovers(self) -> None:
        """containerd and its shims, if any outlived dockerd: every process in our mount namespace but the holder."""
        if self.holder is None or self.holder.poll() is not None:
            return
        ours = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
        for _ in range(2):
            left = []
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) == self.holder.pid:
                    continue
                try:
                    if os.readlink(f"/proc/{entry}/ns/mnt") == ours:
                        left.append(int(entry))
                except OSError:
                    continue
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not left:
                return
            time.sleep(0.5)

    # --- commands ------------------------------------------------------------------------------------------------

    @property
    def env(self) -> dict:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_API_VERSION": DOCKER_API_VERSION}

    def docker(self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
        proc = subprocess.run([DOCKER_CLI, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def run_here(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A command in the simulated host's namespaces (a client of its published ports)."""
        return subprocess.run(self.inside(*argv), capture_output=True, text=True, timeout=timeout)

    def create_network(self, name: str, subnet: str, *options: str) -> str:
        return self.docker("network", "create", "-d", self.plugin_name, "--ipam-driver", self.plugin_name,
                           "--subnet", subnet, *options, name).stdout.strip()

    def run_httpd(self, name: str, network: str, *options: str) -> str:
        return self.docker("run", "-d", "--name", name, "--network", network, *options, IMAGE,
                           "httpd", "-f", "-p", "80", "-h", "/www").stdout.strip()

    def address_of(self, container: str) -> str:
        return self.docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                           container).stdout.strip()

    def fetch_from(self, container: str, url: str) -> str:
        """A page fetched inside ``container`` (busybox wget; its -T crashes, so the bound is from outside)."""
        try:
            proc = self.docker("exec", container, "wget", "-q", "-O", "-", url, check=False, timeout=15)
        except subprocess.TimeoutExpired:
            return ""
        return proc.stdout if proc.returncode == 0 else ""

    def fetch_here(self, url: str) -> str:
        try:
            proc = self.run_here(BUSYBOX, "wget", "-q", "-O", "-", url, timeout=15)
        except subprocess.TimeoutExpired:
            return ""
        return proc.stdout if proc.returncode == 0 else ""

    def dig(self, name: str, server: str, port: int) -> Optional[list[str]]:
        """The A records ``berth dns`` gives for ``name`` (dig, bounded); None when no answer came at all."""
        proc = self.run_here("dig", "+short", "+time=2", "+tries=1", "-p", str(port), f"@{server}", name, "A")
        if proc.returncode != 0:
            return None
        return sorted(line for line in proc.stdout.splitlines() if _is_address(line))

    def links(self) -> list[str]:
        out = self.run_here("ip", "-o", "link", "show").stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]

    def rule_comments(self) -> list[str]:
        out = self.run_here("nft", "list", "ruleset").stdout
        return [line.split('comment "', 1)[1].rstrip('"') for line in out.splitlines() if 'comment "' in line]
