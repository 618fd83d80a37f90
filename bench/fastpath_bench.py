#!/usr/bin/env python3
"""CNI fast path: Berth's bridge + IPAM against the reference Go bridge + host-local, side by side in one run.

Every container gets a fresh network namespace (made before the clock starts); each ADD and DEL is timed as a
runtime sees it: exec of the plugin with the CNI environment and the config on stdin, until it exits.
Paths measured for Berth:
  daemon/native  the native launcher forwarding to `berth cni-daemon` (how Berth is meant to run)
  daemon/python  the Python launcher (python -IS) forwarding to the daemon
  in-process     the launcher with no daemon: Python imports and runs the plugin itself (the fallback's cost)
Then 500 containers, 8 ADDs at a time: throughput, duplicate addresses, and what is left after DEL.

    sudo .venv/bin/python bench/fastpath_bench.py [--sequential 200] [--parallel 500] [--fallback 30]
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REFERENCE_DIR = "/usr/lib/cni"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Flavour:
    """One plugin chain under test: its conf, its bin directory and environment."""

    def __init__(self, label, plugin, ipam, bridge, subnet, bin_dirs, data_dir, extra_env=None):
        self.label, self.plugin, self.bridge = label, plugin, bridge
        self.conf = json.dumps({"cniVersion": "1.0.0", "name": f"btbench{secrets.token_hex(2)}", "type": plugin,
                                "bridge": bridge, "isGateway": True,
                                "ipam": {"type": ipam, "subnet": subnet, "dataDir": str(data_dir)}}).encode()
        self.executable = str(Path(bin_dirs[0]) / plugin)
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_PATH": ":".join(map(str, bin_dirs)),
                    "CNI_IFNAME": "eth0", **(extra_env or {})}
        self.data_dir = Path(data_dir)

    def call(self, command, container, netns):
        env = dict(self.env, CNI_COMMAND=command, CNI_CONTAINERID=container, CNI_NETNS=f"/run/netns/{netns}")
        started = time.perf_counter()
        proc = subprocess.run([self.executable], input=self.conf, env=env, capture_output=True)
        elapsed = (time.perf_counter() - started) * 1000
        if proc.returncode != 0:
            raise RuntimeError(f"{self.label} {command} {container}: {proc.stdout[:300]!r} {proc.stderr[-300:]!r}")
        return elapsed, (json.loads(proc.stdout) if command == "ADD" else None)


def make_netns(count, tag):
    names = [f"bt-fp{tag}-{i}" for i in range(count)]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    return names


def drop_netns(names):
    for name in names:
        subprocess.run(["ip", "netns", "del", name], check=False)


def sequential(flavour, count):
    names = make_netns(count, secrets.token_hex(2))
    try:
        adds = [flavour.call("ADD", f"seq{i}", n)[0] for i, n in enumerate(names)]
        dels = [flavour.call("DEL", f"seq{i}", n)[0] for i, n in enumerate(names)]
    finally:
        drop_netns(names)
    return statistics.median(adds), statistics.median(dels)


def parallel(flavour, count, workers=8):
    names = make_netns(count, secrets.token_hex(2))
    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(lambda i: flavour.call("ADD", f"par{i}", names[i])[1], range(count)))
        add_seconds = time.perf_counter() - started
        addresses = [ip["address"].split("/")[0] for r in results for ip in r.get("ips", [])]
        duplicates = len(addresses) - len(set(addresses))
        started = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda i: flavour.call("DEL", f"par{i}", names[i]), range(count)))
        del_seconds = time.perf_counter() - started
    finally:
        drop_netns(names)
    ports = subprocess.run(["ip", "-o", "link", "show", "master", flavour.bridge], capture_output=True,
                           text=True).stdout.strip()
    network_dir = flavour.data_dir / json.loads(flavour.conf)["name"]
    reservations = [p.name for p in network_dir.iterdir()
                    if p.name != "lock" and not p.name.startswith("last_reserved_ip")] if network_dir.exists() else []
    return {"add_per_s": count / add_seconds, "del_per_s": count / del_seconds, "duplicates": duplicates,
            "leftover_ports": len(ports.splitlines()) if ports else 0, "leftover_reservations": len(reservations)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=500)
    parser.add_argument("--fallback", type=int, default=30, help="containers for the no-daemon path")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, bridges)")

    work = Path(tempfile.mkdtemp(prefix="bt-fastpath-bench-"))
    berth_bin = work / "cni-bin"
    subprocess.run([str(REPO / ".venv/bin/berth"), "install-cni", "--dir", str(berth_bin)], check=True,
                   capture_output=True)
    socket_path = work / "run" / "cni.sock"
    daemon = subprocess.Popen([str(REPO / ".venv/bin/berth"), "cni-daemon", "--socket", str(socket_path),
                               "--log-level", "WARNING"])
    bridges = []
    try:
        while not socket_path.exists():
            if daemon.poll() is not None:
                sys.exit("cni-daemon did not start")
            time.sleep(0.05)
        time.sleep(0.5)
        rest_kib = rss_kib(daemon.pid)

        def flavour(label, kind, octet, extra_env=None, python_launcher=False):
            bridge = f"btfp{secrets.token_hex(3)}"
            bridges.append(bridge)
            if kind == "reference":
                return Flavour(label, "bridge", "host-local", bridge, f"10.{octet}.0.0/16", [REFERENCE_DIR],
                               work / f"data-{octet}", extra_env)
            bin_dir = berth_bin / ".berth-python" if python_launcher else berth_bin
            return Flavour(label, "berth-bridge", "berth-ipam", bridge, f"10.{octet}.0.0/16",
                           [bin_dir, REFERENCE_DIR], work / f"data-{octet}",
                           dict(extra_env or {}, BERTH_CNI_SOCKET=str(socket_path)))

        reference = flavour("reference bridge+host-local", "reference", 240)
        flavours = [
            (reference, args.sequential),
            (flavour("berth daemon/native launcher", "berth", 241), args.sequential),
            (flavour("berth daemon/python launcher", "berth", 242, python_launcher=True), args.sequential),
            (flavour("berth in-process (no daemon)", "berth", 243, {"BERTH_CNI_DAEMON": "off"}), args.fallback),
        ]
        print(f"sequential ADD then DEL into fresh namespaces (median ms per operation)")
        print(f"{'':34} {'n':>5} {'ADD ms':>9} {'DEL ms':>9} {'ADD ratio':>10} {'DEL ratio':>10}")
        ref_add = ref_del = None
        for fl, count in flavours:
            add, delete = sequential(fl, count)
            if ref_add is None:
                ref_add, ref_del = add, delete
            print(f"{fl.label:34} {count:5d} {add:9.2f} {delete:9.2f} {add / ref_add:9.2f}x {delete / ref_del:9.2f}x")

        print(f"\n{args.parallel} containers, 8 ADDs (then DELs) at a time")
        print(f"{'':34} {'ADD/s':>8} {'DEL/s':>8} {'ADD ratio':>10} {'dup IPs':>8} {'left ports':>11}"
              f" {'left IPs':>9}")
        ref_rate = None
        for fl in (flavour("reference bridge+host-local", "reference", 244),
                   flavour("berth daemon/native launcher", "berth", 245)):
            out = parallel(fl, args.parallel)
            ref_rate = ref_rate or out["add_per_s"]
            print(f"{fl.label:34} {out['add_per_s']:8.1f} {out['del_per_s']:8.1f} "
                  f"{out['add_per_s'] / ref_rate:9.2f}x {out['duplicates']:8d} {out['leftover_ports']:11d} "
                  f"{out['leftover_reservations']:9d}")
        print(f"\ncni-daemon memory: {rest_kib / 1024:.1f} MiB at rest, "
              f"{rss_kib(daemon.pid) / 1024:.1f} MiB after the runs")
    finally:
        daemon.terminate()
        daemon.wait(10)
        for bridge in bridges:
            subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)
        subprocess.run(["nft", "delete", "table", "ip", "berth-nat"], check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
