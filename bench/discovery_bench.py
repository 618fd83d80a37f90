"""Registration-to-visibility latency: from ``berth-register ADD`` returning to a watcher in another process
seeing the record, over SQLite and etcd. p50/p99 over N registrations (goal: p99 < 50 ms).

    .venv/bin/python bench/discovery_bench.py [--count 1000] [--backends sqlite,etcd]

Each ADD is a real exec of the plugin with CNI_* env and the config on stdin, as a runtime does it, against a
real ``berth agent``. The watcher is a separate process running :class:`discovery.view.DiscoveryView` and stamping
each new key with CLOCK_MONOTONIC (one clock for every process on the machine). A record seen before the plugin
process was reaped counts as 0 ms; how many were is reported too.
"""
from __future__ import annotations

import argparse
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
VENV_BIN = REPO / ".venv" / "bin"

WATCHER = r"""
import sys, time, json
from store.api import open_store
from discovery.view import DiscoveryView
seen = {}
def on_change(change):
    now = time.monotonic_ns()
    for key in change.added:
        seen.setdefault(key, now)
view = DiscoveryView(open_store(sys.argv[1]))
view.subscribe(on_change)
view.start()
print("ready", flush=True)
sys.stdin.read()          # until the benchmark closes our stdin
time.sleep(0.5)
view.stop()
print(json.dumps(seen), flush=True)
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[index]


def run_backend(url: str, count: int, work: Path, via: str = "exec") -> dict:
    from discovery.model import endpoint_key
    host = "bench-host"
    sock, state = work / "agent.sock", work / "state"
    agent = subprocess.Popen([str(VENV_BIN / "berth"), "agent", "--store", url, "--socket", str(sock),
                              "--no-http", "--host", host, "--ttl", "30", "--state-dir", str(state),
                              "--log-level", "WARNING"], stdout=subprocess.PIPE, start_new_session=True)
    watcher = subprocess.Popen([sys.executable, "-c", WATCHER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               cwd=REPO)
    daemon = None
    plugin = str(VENV_BIN / "berth-register")
    extra_env: dict[str, str] = {}
    if via == "daemon":  # the thin launcher forwarding to ``berth cni-daemon`` (the fast path runtimes get)
        cni_sock = work / "cni" / "cni.sock"
        daemon = subprocess.Popen([str(VENV_BIN / "berth"), "cni-daemon", "--socket", str(cni_sock)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        subprocess.run([str(VENV_BIN / "berth"), "install-cni", "--dir", str(work / "cni-bin")], check=True,
                       stdout=subprocess.DEVNULL)  # launchers of this very build, so the daemon answers them
        plugin = str(work / "cni-bin" / "berth-register")
        extra_env["BERTH_CNI_SOCKET"] = str(cni_sock)
        deadline = time.monotonic() + 20
        while not cni_sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    try:
        assert agent.stdout.readline().startswith(b"ready"), "agent did not start"
        assert watcher.stdout.readline().startswith(b"ready"), "watcher did not start"
        netns = f"/proc/{os.getpid()}/ns/net"
        returned: dict[str, int] = {}
        started: dict[str, int] = {}
        exec_ms: list[float] = []
        for i in range(count):
            cid = f"bench{i:06d}"
            config = {"cniVersion": "1.0.0", "name": "benchnet", "type": "berth-register",
                      "agentSocket": str(sock), "spoolDir": str(state / "spool"),
                      "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": netns}],
                                     "ips": [{"address": f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}/8",
                                              "interface": 0}]}}
            env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
                   "CNI_IFNAME": "eth0", "CNI_PATH": str(VENV_BIN),
                   "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAME=svc{i}", **extra_env}
            start = time.monotonic_ns()
            proc = subprocess.run([plugin], input=json.dumps(config).encode(), env=env, capture_output=True)
            end = time.monotonic_ns()
            if proc.returncode != 0:
                raise RuntimeError(f"ADD failed: {proc.stdout!r} {proc.stderr!r}")
            returned[endpoint_key(host, f"{cid}/eth0")] = end
            started[endpoint_key(host, f"{cid}/eth0")] = start
            exec_ms.append((end - start) / 1e6)
        watcher.stdin.close()
        seen = json.loads(watcher.stdout.read().decode().strip().splitlines()[-1])
    finally:
        for proc in (watcher, agent, daemon):
            if proc is None:
                continue
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    missing = [k for k in returned if k not in seen]
    lat = [max(0.0, (seen[k] - t) / 1e6) for k, t in returned.items() if k in seen]
    from_start = [(seen[k] - started[k]) / 1e6 for k in returned if k in seen]
    early = sum(1 for k, t in returned.items() if k in seen and seen[k] <= t)
    return {"count": count, "missing": len(missing), "visible_before_return": early,
            "p50_ms": statistics.median(lat), "p99_ms": percentile(lat, 99), "max_ms": max(lat),
            "start_p50_ms": statistics.median(from_start), "start_p99_ms": percentile(from_start, 99),
            "add_exec_p50_ms": statistics.median(exec_ms), "add_exec_p99_ms": percentile(exec_ms, 99)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--backends", default="sqlite,etcd")
    parser.add_argument("--via", choices=("exec", "daemon"), default="exec",
                        help="exec: the Python plugin executable; daemon: the native launcher + berth cni-daemon")
    args = parser.parse_args()
    results = {}
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix="bt-discbench-") as tmp:
            work = Path(tmp)
            if backend == "sqlite":
                results[backend] = run_backend(f"sqlite:///{work / 'berth.db'}", args.count, work, args.via)
            elif backend == "etcd":
                try:
                    import store.etcd  # noqa: F401
                except ImportError:
                    print("etcd: skipped (store/etcd.py not available)")
                    continue
                from tests.etcd_harness import start_etcd
                with start_etcd(1) as cluster:
                    results[backend] = run_backend(cluster.url, args.count, work, args.via)
            else:
                raise SystemExit(f"unknown backend {backend!r}")
        r = results[backend]
        print(f"{backend} ({args.via}): n={r['count']} missing={r['missing']} register->watcher p50={r['p50_ms']:.2f} ms "
              f"p99={r['p99_ms']:.2f} ms max={r['max_ms']:.2f} ms (visible before ADD returned: "
              f"{r['visible_before_return']}); ADD exec start->watcher p50={r['start_p50_ms']:.1f} ms "
              f"p99={r['start_p99_ms']:.1f} ms; ADD exec p50={r['add_exec_p50_ms']:.1f} ms "
              f"p99={r['add_exec_p99_ms']:.1f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
