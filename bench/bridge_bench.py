"""Bridge plugin benchmark, side by side in one run: the reference Go ``bridge`` + ``host-local`` against Berth.

    sudo .venv/bin/python bench/bridge_bench.py [--sequential 100] [--parallel 500] [--workers 8]

Columns:
  reference         /usr/lib/cni/bridge with /usr/lib/cni/host-local, exec'd per call (what a runtime does)
  berth exec        .venv/bin/berth-bridge exec'd per call, IPAM berth-ipam in its process
  berth in-process  the same handlers called in this process (what the local CNI daemon will do), berth-ipam

Everything happens inside a namespace made for the run that plays the host (bridge, sysctls, rules, all private),
and every container gets a fresh namespace that is created before its ADD is timed. Prints medians, ratios to the
reference, and whether any address was handed out twice or anything (veth, reservation, rule) was left behind.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cni_plugins import skel
from datapath import netns  # noqa: E402

VENV_BIN = REPO / ".venv" / "bin"
REFERENCE_DIR = "/usr/lib/cni"
CNI_PATH = f"{VENV_BIN}:{REFERENCE_DIR}"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


class Impl:
    def __init__(self, label: str, plugin: str, ipam: str, mode: str) -> None:
        self.label, self.plugin, self.ipam, self.mode = label, plugin, ipam, mode

    def config(self, bridge: str, data_dir: str, ip_masq: bool) -> dict:
        return {"cniVersion": "1.0.0", "name": f"btbench-{bridge}", "type": self.plugin, "bridge": bridge,
                "isGateway": True, "ipMasq": ip_masq,
                "ipam": {"type": self.ipam, "ranges": [[{"subnet": "10.231.0.0/16"}]], "dataDir": data_dir}}

    def call(self, command: str, conf: dict, cid: str, ns_path: str) -> tuple[float, dict | None, str]:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": ns_path, "CNI_IFNAME": "eth0",
               "CNI_PATH": CNI_PATH, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        stdin = json.dumps(conf).encode()
        start = time.perf_counter()
        if self.mode == "in-process":
            from cni_plugins import bridge

            reply = skel.dispatch(bridge.HANDLERS, env, stdin)
            rc, out = reply.exit_code, reply.stdout
        else:
            executable = str(VENV_BIN / self.plugin) if self.plugin.startswith("berth") \
                else f"{REFERENCE_DIR}/{self.plugin}"
            proc = subprocess.run([executable], input=stdin, env=env, capture_output=True, check=False)
            rc, out = proc.returncode, proc.stdout
        elapsed = time.perf_counter() - start
        parsed = json.loads(out) if out.strip() else None
        if rc != 0:
            return elapsed, None, f"{command} {cid}: {out.decode()[:300]}"
        return elapsed, parsed, ""


def make_namespaces(count: int, tag: str) -> list[str]:
    """Fresh namespaces named ``btbench-…``: not ``bt-…``, which a test run under CI sweeps away at its start."""
    names = [f"btbench-{tag}{i}-{secrets.token_hex(2)}" for i in range(count)]
    for name in names:
        sh("ip", "netns", "add", name)
    return names


def drop_namespaces(names: list[str]) -> None:
    for name in names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def leftovers(bridge: str, data_dir: str, network: str) -> dict:
    ports = json.loads(subprocess.run(["ip", "-j", "link", "show", "master", bridge], capture_output=True,
                                      text=True).stdout or "[]")
    net_dir = Path(data_dir) / network
    reserved = [p for p in net_dir.iterdir() if p.name[0].isdigit()] if net_dir.is_dir() else []
    ruleset = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    rules = [l for l in ruleset.splitlines() if "masquerade" in l and "comment" in l]
    return {"veths": len(ports), "reservations": len(reserved), "rules": len(rules)}


def run_sequential(impl: Impl, count: int, work: Path, ip_masq: bool) -> dict:
    bridge = "btb" + secrets.token_hex(4)
    data_dir = str(work / f"{impl.label.replace(' ', '-')}-seq")
    conf = impl.config(bridge, data_dir, ip_masq)
    spaces = make_namespaces(count, "s")
    adds, dels, addresses, errors = [], [], [], []
    try:
        for i, name in enumerate(spaces):
            t, res, err = impl.call("ADD", conf, f"seq{i}", f"/run/netns/{name}")
            adds.append(t)
            if err:
                errors.append(err)
            elif res:
                addresses.extend(ip["address"] for ip in res.get("ips", []))
        for i, name in enumerate(spaces):
            t, _, err = impl.call("DEL", conf, f"seq{i}", f"/run/netns/{name}")
            dels.append(t)
            if err:
                errors.append(err)
        left = leftovers(bridge, data_dir, conf["name"])
    finally:
        drop_namespaces(spaces)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
    return {"add": statistics.median(adds), "del": statistics.median(dels), "errors": errors,
            "duplicates": len(addresses) - len(set(addresses)), "addresses": len(addresses), **left}


def run_parallel(impl: Impl, count: int, workers: int, work: Path, ip_masq: bool, host_path: str) -> dict:
    bridge = "btb" + secrets.token_hex(4)
    data_dir = str(work / f"{impl.label.replace(' ', '-')}-par")
    conf = impl.config(bridge, data_dir, ip_masq)
    spaces = make_namespaces(count, "p")
    adds, addresses, errors = [], [], []
    lock = threading.Lock()

    def one(i: int, command: str) -> None:
        # Each worker thread enters the bench host namespace itself: namespaces are per thread.
        with netns.entered(host_path):
            t, res, err = impl.call(command, conf, f"par{i}", f"/run/netns/{spaces[i]}")
        with lock:
            if command == "ADD":
                adds.append(t)
                if res:
                    addresses.extend(ip["address"] for ip in res.get("ips", []))
            if err:
                errors.append(err)

    def timed_batch(command: str) -> float:
        start = time.perf_counter()
        pool = concurrent.futures.ThreadPoolExecutor(workers)
        try:
            list(pool.map(lambda i: one(i, command), range(count)))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: drop what has not started
        return time.perf_counter() - start

    try:
        add_wall = timed_batch("ADD")
        del_wall = timed_batch("DEL")
        left = leftovers(bridge, data_dir, conf["name"])
    finally:
        drop_namespaces(spaces)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
    return {"add": statistics.median(adds) if adds else float("nan"), "add_wall": add_wall, "del_wall": del_wall,
            "errors": errors, "duplicates": len(addresses) - len(set(addresses)), "addresses": len(addresses),
            **left}


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=500)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--ip-masq", action="store_true", help="also install masquerade rules per container")
    parser.add_argument("--only", default="", help="comma-separated labels to run (reference, exec, in-process)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    impls = [Impl("reference", "bridge", "host-local", "exec"),
             Impl("berth exec", "berth-bridge", "berth-ipam", "exec"),
             Impl("berth in-process", "berth-bridge", "berth-ipam", "in-process")]
    if args.only:
        wanted = args.only.split(",")
        impls = [i for i in impls if any(w in i.label for w in wanted)]
    host = f"btbench-host-{secrets.token_hex(3)}"
    sh("ip", "netns", "add", host)
    work = Path(tempfile.mkdtemp(prefix="bt-bridge-bench-"))
    results: dict[str, dict] = {}
    try:
        with netns.entered(f"/run/netns/{host}"):
            sh("ip", "link", "set", "lo", "up")
            for impl in impls:
                seq = run_sequential(impl, args.sequential, work, args.ip_masq)
                par = run_parallel(impl, args.parallel, args.workers, work, args.ip_masq, f"/run/netns/{host}")
                results[impl.label] = {"seq": seq, "par": par}
                print(f"  done: {impl.label}", file=sys.stderr, flush=True)
    finally:
        subprocess.run(["ip", "netns", "del", host], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)

    ref = results.get("reference")
    print(f"\nbridge + IPAM, {args.sequential} sequential ADD then DEL; {args.parallel} containers, "
          f"{args.workers} ADDs in parallel (ipMasq={args.ip_masq}); medians per call")
    print(f"{'':18} {'seq ADD':>11} {'seq DEL':>11} {'par ADD':>11} {'par ADD wall':>13} {'par DEL wall':>13}"
          f" {'x ref ADD':>9} {'dup':>4} {'left (veth/res/rule)':>21} {'errors':>6}")
    for label, r in results.items():
        seq, par = r["seq"], r["par"]
        ratio = f"{seq['add'] / ref['seq']['add']:8.1f}x" if ref else "      -"
        left = f"{seq['veths'] + par['veths']}/{seq['reservations'] + par['reservations']}/" \
               f"{seq['rules'] + par['rules']}"
        print(f"{label:18} {fmt_ms(seq['add'])} {fmt_ms(seq['del'])} {fmt_ms(par['add'])} "
              f"{par['add_wall']:11.2f} s {par['del_wall']:11.2f} s {ratio:>9} "
              f"{seq['duplicates'] + par['duplicates']:4d} {left:>21} {len(seq['errors']) + len(par['errors']):6d}")
        for err in (seq["errors"] + par["errors"])[:3]:
            print(f"    error: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
