#!/usr/bin/env python3
"""CNI fast and cold paths: Berth's bridge + IPAM against the reference Go bridge + host-local, side by side.

Every container gets a fresh network namespace (made before the clock starts); each ADD and DEL is timed as a
runtime sees it: exec of the plugin with the CNI environment and the config on stdin, until it exits. The
flavours take turns call by call (ADD of container i for each flavour, then the next i; DELs likewise), so a
machine that gets busier half way slows all of them alike. Paths measured for Berth:
  daemon/native  the native launcher forwarding to `berth cni-daemon` (how Berth is meant to run)
  daemon/python  the Python launcher (python -IS) forwarding to the daemon
  cold           no daemon listening: the native launcher execs the Python launcher, which runs the plugin itself
Then IPAM alone, as another plugin would exec it (host-local against berth-ipam, cold and through the daemon,
beside the floor any Python plugin stands on: the bare interpreter, and with json and ipaddress imported);
then 500 containers, 8 ADDs at a time: throughput, duplicate addresses, and what is left after DEL; last, what
the cold path imports (`python -X importtime` of one cold bridge ADD, DEL and IPAM ADD).

    sudo .venv/bin/python bench/fastpath_bench.py [--sequential 200] [--cold 100] [--ipam 200] [--parallel 500]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
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
    """One plugin chain under test: its conf, the executable a runtime execs, and its environment."""

    def __init__(self, label, executable, ipam, bridge, subnet, bin_dirs, data_dir, extra_env=None):
        self.label, self.bridge = label, bridge
        self.conf = json.dumps({"cniVersion": "1.0.0", "name": f"btbench{secrets.token_hex(2)}",
                                "type": Path(executable).name, "bridge": bridge, "isGateway": True,
                                "ipam": {"type": ipam, "subnet": subnet, "dataDir": str(data_dir)}}).encode()
        self.executable = str(executable)
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_PATH": ":".join(map(str, bin_dirs)),
                    "CNI_IFNAME": "eth0", **(extra_env or {})}
        self.data_dir = Path(data_dir)

    def environment(self, command, container, netns):
        return dict(self.env, CNI_COMMAND=command, CNI_CONTAINERID=container, CNI_NETNS=f"/run/netns/{netns}")

    def call(self, command, container, netns):
        """(wall ms, CPU ms, result): CPU is the exec'd process's and its children's, read from this process's
        reaped-children usage, so it is exact only while one call runs at a time (the sequential tables)."""
        env = self.environment(command, container, netns)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.run([self.executable], input=self.conf, env=env, capture_output=True)
        elapsed = (time.perf_counter() - started) * 1000
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
        if proc.returncode != 0:
            raise RuntimeError(f"{self.label} {command} {container}: {proc.stdout[:300]!r} {proc.stderr[-300:]!r}")
        return elapsed, cpu, (json.loads(proc.stdout) if command == "ADD" else None)


class InterpreterFloor:
    """What no Python plugin can go below: the interpreter started as the launcher starts it (``-I -S``), then
    with the two standard modules any CNI plugin needs (``json`` for its config, ``ipaddress`` for its addresses)
    — no Berth code at all. Timed like a plugin call, taking its turn with the others."""

    def __init__(self, label, code):
        self.label = label
        self.argv = [os.path.realpath(sys.executable), "-I", "-S", "-c", code]

    def call(self, command, container, netns):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(self.argv, check=True, capture_output=True)
        elapsed = (time.perf_counter() - started) * 1000
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return elapsed, (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000, None


def make_netns(count, tag):
    names = [f"bt-fp{tag}-{i}" for i in range(count)]
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    return names


def drop_netns(names):
    for name in names:
        subprocess.run(["ip", "netns", "del", name], check=False)


def sequential(runs, commands=("ADD", "DEL")):
    """``runs`` = [(flavour, count)]: every ADD, then every DEL, the flavours taking turns; per flavour and
    command, the median wall ms and median CPU ms."""
    spaces = [make_netns(count, secrets.token_hex(2)) for _, count in runs]
    timings = [{command: [] for command in commands} for _ in runs]
    try:
        for command in commands:
            for i in range(max(count for _, count in runs)):
                for (flavour, count), names, times in zip(runs, spaces, timings):
                    if i < count:
                        times[command].append(flavour.call(command, f"seq{i}", names[i])[:2])
    finally:
        for names in spaces:
            drop_netns(names)
    return [{command: (statistics.median(w for w, _ in times[command]), statistics.median(c for _, c in times[command]))
             for command in commands} for times in timings]


def print_table(title, runs, results, commands=("ADD", "DEL")):
    print(f"\n{title}: median wall ms per operation and its ratio to the first row; CPU ms of the exec'd process")
    print(f"{'':36} {'n':>5}" + "".join(f" {c + ' ms':>9} {'ratio':>7} {'CPU ms':>7}" for c in commands))
    reference = results[0]
    for (flavour, count), result in zip(runs, results):
        print(f"{flavour.label:36} {count:5d}" + "".join(
            f" {result[c][0]:9.2f} {result[c][0] / reference[c][0]:6.2f}x {result[c][1]:7.1f}" for c in commands))


def parallel(flavour, count, workers=8):
    names = make_netns(count, secrets.token_hex(2))
    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(lambda i: flavour.call("ADD", f"par{i}", names[i])[2], range(count)))
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


IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)")


def import_profile(flavour, command, container, netns):
    """``python -X importtime`` of one cold call through the Python launcher: (modules, top-level total ms,
    [(ms, module)] of the dearest top-level imports, whether pyroute2 was imported)."""
    launcher = Path(flavour.executable).parent / ".berth-python" / Path(flavour.executable).name
    interpreter = launcher.read_text().splitlines()[0][2:].split()
    env = flavour.environment(command, container, netns)
    proc = subprocess.run([*interpreter, "-X", "importtime", str(launcher)], input=flavour.conf, env=env,
                          capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"importtime {command}: {proc.stdout[:300]!r} {proc.stderr[-300:]!r}")
    lines = proc.stderr.decode(errors="replace").splitlines()
    rows = [(int(m[2]) / 1000, len(m[3]), m[4]) for m in map(IMPORT_LINE.match, lines) if m]
    top = sorted(((ms, name) for ms, depth, name in rows if depth == 0), reverse=True)
    return len(rows), sum(ms for ms, _ in top), top[:6], any(name.startswith("pyroute2") for _, _, name in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequential", type=int, default=200, help="containers for the reference and daemon rows")
    parser.add_argument("--cold", "--fallback", type=int, default=100, help="containers for the no-daemon row")
    parser.add_argument("--ipam", type=int, default=200, help="calls for the IPAM-alone rows")
    parser.add_argument("--parallel", type=int, default=500)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, bridges)")

    work = Path(tempfile.mkdtemp(prefix="bt-fastpath-bench-"))
    berth_bin = work / "cni-bin"
    subprocess.run([str(REPO / ".venv/bin/berth"), "install-cni", "--dir", str(berth_bin)], check=True,
                   capture_output=True)
    socket_path = work / "run" / "cni.sock"
    no_daemon = {"BERTH_CNI_SOCKET": str(work / "run" / "nobody-listens.sock")}
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
        octets = iter(range(240, 255))

        def flavour(label, kind, extra_env=None, python_launcher=False, ipam_alone=False):
            bridge = f"btfp{secrets.token_hex(3)}"
            bridges.append(bridge)
            octet = next(octets)
            reference = kind == "reference"
            ipam = "host-local" if reference else "berth-ipam"
            bin_dir = Path(REFERENCE_DIR) if reference else berth_bin / (".berth-python" if python_launcher else "")
            executable = bin_dir / (ipam if ipam_alone else "bridge" if reference else "berth-bridge")
            env = extra_env if reference else {"BERTH_CNI_SOCKET": str(socket_path), **(extra_env or {})}
            return Flavour(label, executable, ipam, bridge, f"10.{octet}.0.0/16", [bin_dir, REFERENCE_DIR],
                           work / f"data-{octet}", env)

        runs = [
            (flavour("reference bridge+host-local", "reference"), args.sequential),
            (flavour("berth daemon/native launcher", "berth"), args.sequential),
            (flavour("berth daemon/python launcher", "berth", python_launcher=True), args.sequential),
            (flavour("berth cold (no daemon)", "berth", no_daemon), args.cold),
        ]
        print_table("sequential ADD then DEL into fresh namespaces", runs, sequential(runs))
        cold = runs[-1][0]

        ipam_runs = [
            (flavour("reference host-local", "reference", ipam_alone=True), args.ipam),
            (flavour("berth-ipam cold (no daemon)", "berth", no_daemon, ipam_alone=True), args.ipam),
            (flavour("berth-ipam daemon/native launcher", "berth", ipam_alone=True), args.ipam),
            (InterpreterFloor("floor: python -I -S, nothing", "pass"), args.ipam),
            (InterpreterFloor("floor: python -I -S, json+ipaddress", "import json, ipaddress"), args.ipam),
        ]
        print_table("IPAM alone, exec'd as another plugin would", ipam_runs, sequential(ipam_runs))
        cold_ipam = ipam_runs[1][0]

        print(f"\n{args.parallel} containers, 8 ADDs (then DELs) at a time")
        print(f"{'':36} {'ADD/s':>8} {'DEL/s':>8} {'ADD ratio':>10} {'dup IPs':>8} {'left ports':>11}"
              f" {'left IPs':>9}")
        ref_rate = None
        for fl in (flavour("reference bridge+host-local", "reference"),
                   flavour("berth daemon/native launcher", "berth")):
            out = parallel(fl, args.parallel)
            ref_rate = ref_rate or out["add_per_s"]
            print(f"{fl.label:36} {out['add_per_s']:8.1f} {out['del_per_s']:8.1f} "
                  f"{out['add_per_s'] / ref_rate:9.2f}x {out['duplicates']:8d} {out['leftover_ports']:11d} "
                  f"{out['leftover_reservations']:9d}")
        print(f"\ncni-daemon memory: {rest_kib / 1024:.1f} MiB at rest, "
              f"{rss_kib(daemon.pid) / 1024:.1f} MiB after the runs")

        print("\nwhat one cold call imports (python -X importtime; top-level imports, each with what it pulls in)")
        names = make_netns(1, secrets.token_hex(2))
        try:
            for label, fl, command in (("bridge ADD", cold, "ADD"), ("bridge DEL", cold, "DEL"),
                                       ("ipam ADD", cold_ipam, "ADD"), ("ipam DEL", cold_ipam, "DEL")):
                count, total, top, pyroute2 = import_profile(fl, command, "imports", names[0])
                print(f"  {label:11} {count:4d} modules, {total:6.1f} ms, pyroute2 "
                      f"{'imported' if pyroute2 else 'not imported'}; dearest: "
                      + ", ".join(f"{name} {ms:.1f}" for ms, name in top))
        finally:
            drop_netns(names)
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
