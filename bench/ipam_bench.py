"""berth-ipam next to the reference host-local, in one run on one machine: same config, same operations.

Sequential: 200 ADDs then 200 DELs, the two tools alternating call by call so machine noise hits both alike.
Parallel: 200 ADDs then 200 DELs with 8 calls in flight, one tool after the other. A third column runs
berth-ipam's handlers in process (``skel.dispatch``), what a long-lived daemon would pay per call.
Run: ``.venv/bin/python bench/ipam_bench.py [--count 200] [--parallel 8]``
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
from pathlib import Path

HOST_LOCAL = "/usr/lib/cni/host-local"
BERTH_IPAM = str(Path(sys.executable).parent / "berth-ipam")
IN_PROCESS = "berth-ipam (in process)"


def config(data_dir: str) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "benchnet", "type": "bridge",
                       "ipam": {"type": "host-local", "dataDir": data_dir,
                                "ranges": [[{"subnet": "10.250.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}}
                      ).encode()


def env(command: str, container_id: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
            "CNI_NETNS": "/run/netns/bench", "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}


def call(tool: str, command: str, container_id: str, stdin: bytes) -> float:
    """One CNI call; returns its wall time in ms. Fails loudly: a benchmark of errors measures nothing."""
    start = time.perf_counter()
    if tool == IN_PROCESS:
        from cni_plugins import ipam_plugin, skel
        reply = skel.dispatch(ipam_plugin.HANDLERS, env(command, container_id), stdin)
        code, out = reply.exit_code, reply.stdout
    else:
        proc = subprocess.run([tool], input=stdin, env=env(command, container_id), capture_output=True, check=False)
        code, out = proc.returncode, proc.stdout
    elapsed = (time.perf_counter() - start) * 1000
    if code != 0:
        raise SystemExit(f"{tool} {command} {container_id} failed: {out.decode(errors='replace')}")
    return elapsed


def sequential(tools: list[str], count: int, stdins: dict[str, bytes]) -> dict[tuple[str, str], list[float]]:
    times: dict[tuple[str, str], list[float]] = {}
    for command in ("ADD", "DEL"):
        for n in range(count):
            for tool in tools:
                times.setdefault((tool, command), []).append(call(tool, command, f"seq{n}", stdins[tool]))
    return times


def parallel(tools: list[str], count: int, width: int, stdins: dict[str, bytes]) -> dict[tuple[str, str], list[float]]:
    times: dict[tuple[str, str], list[float]] = {}
    for tool in tools:
        for command in ("ADD", "DEL"):
            with ThreadPoolExecutor(max_workers=width) as pool:
                times[(tool, command)] = list(pool.map(
                    lambda n, t=tool, c=command: call(t, c, f"par{n}", stdins[t]), range(count)))
    return times


def report(title: str, times: dict[tuple[str, str], list[float]], tools: list[str]) -> None:
    print(f"\n{title}: median ms per operation (ratio = tool / host-local)")
    print(f"  {'tool':28} {'ADD':>8} {'ratio':>6} {'DEL':>8} {'ratio':>6}")
    for tool in tools:
        cells = []
        for command in ("ADD", "DEL"):
            median = statistics.median(times[(tool, command)])
            base = statistics.median(times[(HOST_LOCAL, command)])
            cells += [f"{median:8.2f}", f"{median / base:6.2f}"]
        print(f"  {Path(tool).name if tool != IN_PROCESS else tool:28} " + " ".join(cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=8)
    args = parser.parse_args()
    for tool in (HOST_LOCAL, BERTH_IPAM):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"missing {tool}: run `make deps` first")
    tools = [HOST_LOCAL, BERTH_IPAM, IN_PROCESS]
    root = tempfile.mkdtemp(prefix="berth-ipam-bench-")
    try:
        stdins = {tool: config(os.path.join(root, f"seq{i}")) for i, tool in enumerate(tools)}
        print(f"{args.count} containers, cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
        report("sequential", sequential(tools, args.count, stdins), tools)
        stdins = {tool: config(os.path.join(root, f"par{i}")) for i, tool in enumerate(tools)}
        report(f"{args.parallel} in parallel", parallel(tools, args.count, args.parallel, stdins), tools)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
