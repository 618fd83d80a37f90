"""berth-ipam next to the reference host-local, in one run on one machine: same config, same operations.

Sequential: 200 ADDs then 200 DELs, the tools alternating call by call so machine noise hits all alike.
Parallel: 200 ADDs then 200 DELs with 8 calls in flight, one tool after the other. Paths measured for Berth:
  console script   .venv/bin/berth-ipam exec'd per call (Python with site, then the plugin's imports)
  launcher         the thin launcher ``berth install-cni`` writes, with no daemon: it runs the plugin itself
  cni-daemon       the same launcher forwarding to a ``berth cni-daemon`` started for this run
  in process       the handlers called in this process (``skel.dispatch``): the daemon's own cost per call
Run: ``.venv/bin/python bench/ipam_bench.py [--count 200] [--parallel 8]`` (root: the daemon's socket)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HOST_LOCAL = "/usr/lib/cni/host-local"
BERTH = Path(sys.executable).parent / "berth"
CONSOLE = "berth-ipam console script"
LAUNCHER = "berth-ipam launcher"
DAEMON = "berth-ipam via cni-daemon"
IN_PROCESS = "berth-ipam in process"


@dataclass(frozen=True)
class Tool:
    label: str
    executable: str | None          # None: call the handlers in this process
    extra_env: tuple[tuple[str, str], ...] = ()


def config(data_dir: str) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "benchnet", "type": "bridge",
                       "ipam": {"type": "host-local", "dataDir": data_dir,
                                "ranges": [[{"subnet": "10.250.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}}
                      ).encode()


def env(tool: Tool, command: str, container_id: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
            "CNI_NETNS": "/run/netns/bench", "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", **dict(tool.extra_env)}


def call(tool: Tool, command: str, container_id: str, stdin: bytes) -> float:
    """One CNI call; returns its wall time in ms. Fails loudly: a benchmark of errors measures nothing."""
    start = time.perf_counter()
    if tool.executable is None:
        from cni_plugins import ipam_plugin, skel
        reply = skel.dispatch(ipam_plugin.HANDLERS, env(tool, command, container_id), stdin)
        code, out = reply.exit_code, reply.stdout
    else:
        proc = subprocess.run([tool.executable], input=stdin, env=env(tool, command, container_id),
                              capture_output=True, check=False)
        code, out = proc.returncode, proc.stdout
    elapsed = (time.perf_counter() - start) * 1000
    if code != 0:
        raise SystemExit(f"{tool.label} {command} {container_id} failed: {out.decode(errors='replace')}")
    return elapsed


def sequential(tools: list[Tool], count: int, stdins: dict[str, bytes]) -> dict[tuple[str, str], list[float]]:
    times: dict[tuple[str, str], list[float]] = {}
    for command in ("ADD", "DEL"):
        for n in range(count):
            for tool in tools:
                times.setdefault((tool.label, command), []).append(
                    call(tool, command, f"seq{n}", stdins[tool.label]))
    return times


def parallel(tools: list[Tool], count: int, width: int, stdins: dict[str, bytes]) -> dict[tuple[str, str], list[float]]:
    times: dict[tuple[str, str], list[float]] = {}
    for tool in tools:
        for command in ("ADD", "DEL"):
            with ThreadPoolExecutor(max_workers=width) as pool:
                times[(tool.label, command)] = list(pool.map(
                    lambda n, t=tool, c=command: call(t, c, f"par{n}", stdins[t.label]), range(count)))
    return times


def report(title: str, times: dict[tuple[str, str], list[float]], tools: list[Tool]) -> None:
    print(f"\n{title}: median ms per operation (ratio = tool / host-local)")
    print(f"  {'tool':28} {'ADD':>8} {'ratio':>6} {'DEL':>8} {'ratio':>6}")
    for tool in tools:
        cells = []
        for command in ("ADD", "DEL"):
            median = statistics.median(times[(tool.label, command)])
            base = statistics.median(times[("host-local", command)])
            cells += [f"{median:8.2f}", f"{median / base:6.2f}"]
        print(f"  {tool.label:28} " + " ".join(cells))


def start_daemon(root: str) -> tuple[subprocess.Popen | None, list[Tool]]:
    """Launchers in a temp dir and a daemon on a temp socket; without root or ``berth`` only the other paths."""
    bin_dir, socket_path = os.path.join(root, "bin"), os.path.join(root, "run", "cni.sock")
    installed = subprocess.run([str(BERTH), "install-cni", "--dir", bin_dir, "--socket", socket_path],
                               capture_output=True, check=False)
    if installed.returncode != 0:
        print(f"(no launcher: {installed.stderr.decode(errors='replace').strip()[:200]})")
        return None, []
    launcher = os.path.join(bin_dir, "berth-ipam")
    tools = [Tool(LAUNCHER, launcher, (("BERTH_CNI_SOCKET", os.path.join(root, "no-daemon.sock")),))]
    daemon = subprocess.Popen([str(BERTH), "cni-daemon", "--socket", socket_path], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not os.path.exists(socket_path) and daemon.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if os.path.exists(socket_path):
        tools.append(Tool(DAEMON, launcher, (("BERTH_CNI_SOCKET", socket_path),)))
    return daemon, tools


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=8)
    args = parser.parse_args()
    console = str(Path(sys.executable).parent / "berth-ipam")
    for path in (HOST_LOCAL, console):
        if not os.access(path, os.X_OK):
            raise SystemExit(f"missing {path}: run `make deps` first")
    root = tempfile.mkdtemp(prefix="berth-ipam-bench-")
    daemon = None
    try:
        daemon, berth_paths = start_daemon(root)
        tools = [Tool("host-local", HOST_LOCAL), Tool(CONSOLE, console), *berth_paths, Tool(IN_PROCESS, None)]
        stdins = {t.label: config(os.path.join(root, f"seq{i}")) for i, t in enumerate(tools)}
        print(f"{args.count} containers, cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
        report("sequential", sequential(tools, args.count, stdins), tools)
        stdins = {t.label: config(os.path.join(root, f"par{i}")) for i, t in enumerate(tools)}
        report(f"{args.parallel} in parallel", parallel(tools, args.count, args.parallel, stdins), tools)
        print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    finally:
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
