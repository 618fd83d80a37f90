"""Cluster IPAM next to host-local, in one run on one machine.

Latency: ADD then DEL of ``--count`` containers, one exec per call, the tools alternating call by call so machine
noise hits all alike: the reference host-local, berth-ipam in host-local mode, and berth-ipam in cluster mode on
the embedded SQLite store, one etcd member, a three-member etcd, one ZooKeeper server and a three-member ZooKeeper
ensemble; then the cluster handlers in process (what a CNI daemon pays per call, without Python's start-up).
Throughput: ``--hosts`` processes (one per simulated host) each allocating ``--per-host`` addresses in process,
all at once, into one pool in /26 blocks; allocations per second over the whole run, on SQLite, 3-member etcd and
3-member ZooKeeper.
Run: ``.venv/bin/python bench/ipam_cluster_bench.py [--count 100] [--hosts 16] [--per-host 50]``
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
HOST_LOCAL = "/usr/lib/cni/host-local"
BERTH_IPAM = str(Path(sys.executable).parent / "berth-ipam")


def config(data_dir: str, store: str | None = None, network: str = "benchnet", host: str = "bench0") -> bytes:
    ipam = {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": "10.240.0.0/16"}]]}
    if store:
        ipam |= {"store": store, "host": host}
    return json.dumps({"cniVersion": "1.0.0", "name": network, "type": "bridge", "ipam": ipam}).encode()


def env(command: str, container_id: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
            "CNI_NETNS": "/run/netns/bench", "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}


def call(executable: str | None, command: str, container_id: str, stdin: bytes) -> float:
    start = time.perf_counter()
    if executable is None:
        from cni_plugins import ipam_plugin, skel
        reply = skel.dispatch(ipam_plugin.HANDLERS, env(command, container_id), stdin)
        code, out = reply.exit_code, reply.stdout
    else:
        proc = subprocess.run([executable], input=stdin, env=env(command, container_id), capture_output=True,
                              check=False)
        code, out = proc.returncode, proc.stdout
    elapsed = (time.perf_counter() - start) * 1000
    if code != 0:
        raise SystemExit(f"{executable or 'in process'} {command} {container_id} failed: {out[:300]!r}")
    return elapsed


def latency(tools: list[tuple[str, str | None, bytes]], count: int) -> None:
    times: dict[tuple[str, str], list[float]] = {}
    for command in ("ADD", "DEL"):
        for n in range(count):
            for label, executable, stdin in tools:
                times.setdefault((label, command), []).append(call(executable, command, f"c{n}", stdin))
    print(f"\nlatency, sequential: median ms per operation (ratio = tool / reference host-local), {count} containers")
    print(f"  {'tool':40} {'ADD':>8} {'ratio':>6} {'DEL':>8} {'ratio':>6}")
    for label, _executable, _stdin in tools:
        cells = []
        for command in ("ADD", "DEL"):
            median = statistics.median(times[(label, command)])
            cells += [f"{median:8.2f}", f"{median / statistics.median(times[(tools[0][0], command)]):6.2f}"]
        print(f"  {label:40} " + " ".join(cells))


WORKER = """
import json, sys, time
sys.path.insert(0, sys.argv[5])
from ipam.allocator import allocate
from ipam.cluster import ClusterStore
from ipam.config import parse_ipam_config
from ipam.store import Attachment
url, host, count, data = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
cfg = parse_ipam_config({"store": url, "host": host, "dataDir": data, "ranges": [[{"subnet": "10.241.0.0/16"}]]},
                        "benchpool")
store = ClusterStore(cfg)
sys.stdin.readline()  # every host starts together
start = time.perf_counter()
for n in range(count):
    with store.lock():
        allocate(store, list(cfg.range_sets), Attachment(f"{host}-{n}", "eth0"))
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def throughput(url: str, hosts: int, per_host: int, root: str) -> tuple[float, float]:
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, f"h{i}", str(per_host), f"{root}/h{i}", str(REPO)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for i in range(hosts)]
    time.sleep(2.0)  # let every worker import and open its store
    start = time.perf_counter()
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"throughput worker failed on {url}")
    wall = time.perf_counter() - start
    return hosts * per_host / wall, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--per-host", type=int, default=50)
    args = parser.parse_args()
    from tests.etcd_harness import start_etcd
    from tests.zk_harness import start_zookeeper

    with tempfile.TemporaryDirectory(prefix="berth-ipam-cluster-bench-") as root, contextlib.ExitStack() as stack:
        etcd1 = stack.enter_context(start_etcd(1))
        etcd3 = stack.enter_context(start_etcd(3))
        zk1 = stack.enter_context(start_zookeeper(1))
        zk3 = stack.enter_context(start_zookeeper(3))
        sqlite = f"sqlite://{root}/bench.db"
        print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
        tools = [("reference host-local", HOST_LOCAL, config(f"{root}/ref")),
                 ("berth-ipam host-local mode", BERTH_IPAM, config(f"{root}/berth")),
                 ("berth-ipam cluster, SQLite", BERTH_IPAM, config(f"{root}/c1", sqlite)),
                 ("berth-ipam cluster, etcd 1 member", BERTH_IPAM, config(f"{root}/c2", etcd1.url)),
                 ("berth-ipam cluster, etcd 3 members", BERTH_IPAM, config(f"{root}/c3", etcd3.url)),
                 ("berth-ipam cluster, ZooKeeper 1 server", BERTH_IPAM, config(f"{root}/c6", zk1.url)),
                 ("berth-ipam cluster, ZooKeeper 3 members", BERTH_IPAM, config(f"{root}/c7", zk3.url)),
                 ("in process: cluster, SQLite", None, config(f"{root}/c4", f"sqlite://{root}/inproc.db")),
                 ("in process: cluster, etcd 3 members", None, config(f"{root}/c5", etcd3.url, "benchinproc")),
                 ("in process: cluster, ZooKeeper 3 members", None, config(f"{root}/c8", zk3.url, "benchinproc"))]
        latency(tools, args.count)
        print(f"\nthroughput: {args.hosts} host processes x {args.per_host} ADDs in process, all at once")
        for label, url in (("SQLite", f"sqlite://{root}/throughput.db"), ("etcd 3 members", etcd3.url),
                           ("ZooKeeper 3 members", zk3.url)):
            rate, wall = throughput(url, args.hosts, args.per_host, f"{root}/{label.split()[0]}")
            print(f"  {label:20} {rate:8.1f} allocations/s ({args.hosts * args.per_host} in {wall:.2f} s)")
        print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
