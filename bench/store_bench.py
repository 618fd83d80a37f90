"""Datastore latency, side by side: the embedded SQLite store, etcd (one member, three) and ZooKeeper (one, three).

    .venv/bin/python bench/store_bench.py [--ops 1000] [--watch 500] [--backends sqlite,etcd,etcd3,zk,zk3]

For put, get, create-if-absent (txn), update-if-unchanged (txn) and lease keep-alive (the cost a live lease
puts on the store, once per TTL/3 per agent or overlay host): sequential calls from one client, each timed,
after the same untimed warm-up writes on every backend. For watch: a writer stamps each value with the monotonic
clock (shared by every process on a Linux machine); a watcher in another process reports when it saw it.
Figures are milliseconds, p50 / p99.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from store.api import open_store  # noqa: E402

WARM_UP = 300  # writes made before timing starts, on every backend alike

WATCHER = """
import sys, time
from store.api import open_store
url, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = open_store(url)
watch = store.watch_prefix(prefix)
watch.next_batch(0.01)
print("ready", flush=True)
seen = 0
while seen < count:
    batch = watch.next_batch(30)
    if batch is None:
        break
    now = time.monotonic_ns()
    for event in batch.events:
        print((now - int(event.value)) / 1e6, flush=False)
        seen += 1
sys.stdout.flush()
watch.close()
store.close()
"""


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def timed(call, count: int) -> list[float]:
    samples = []
    for index in range(count):
        start = time.perf_counter()
        call(index)
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def bench_ops(url: str, count: int) -> dict[str, list[float]]:
    store = open_store(url)
    try:
        for index in range(WARM_UP):  # untimed: a JVM server (ZooKeeper) compiles its hot paths first
            store.put(f"btbench/warm/{index}", b"x" * 100)
        results = {
            "put": timed(lambda i: store.put(f"btbench/put/{i}", b"x" * 100), count),
            "get": timed(lambda i: store.get(f"btbench/put/{i}"), count),
            "create (txn)": timed(lambda i: store.create(f"btbench/create/{i}", b"x" * 100), count),
        }
        revision = store.put("btbench/cas", b"0")
        state = {"revision": revision}

        def swap(i: int) -> None:
            assert store.compare_and_swap("btbench/cas", str(i).encode(), state["revision"])
            state["revision"] += 1

        results["update-if-unchanged (txn)"] = timed(swap, count)
        lease = store.grant_lease(60)
        results["lease keep-alive"] = timed(lambda i: store.keep_alive(lease.id), count)
        store.revoke_lease(lease.id)
        return results
    finally:
        store.close()


def bench_watch(url: str, count: int) -> list[float]:
    prefix = f"btbench/watch/{time.monotonic_ns()}/"
    watcher = subprocess.Popen([sys.executable, "-c", WATCHER, url, prefix, str(count)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    store = open_store(url)
    try:
        assert watcher.stdout.readline().strip() == "ready"
        for index in range(count):
            store.put(f"{prefix}{index}", str(time.monotonic_ns()).encode())
            time.sleep(0.002)  # paced: this measures latency, not a flood's queueing
        out, _ = watcher.communicate(timeout=60)
        return [float(line) for line in out.split()]
    finally:
        store.close()
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1000)
    parser.add_argument("--watch", type=int, default=500)
    parser.add_argument("--backends", default="sqlite,etcd,etcd3,zk,zk3")
    args = parser.parse_args()
    from tests.etcd_harness import start_etcd
    from tests.zk_harness import start_zookeeper

    columns: dict[str, dict[str, list[float]]] = {}
    with ExitStack() as cleanup:
        for backend in args.backends.split(","):
            if backend == "sqlite":
                folder = tempfile.mkdtemp(prefix="bt-bench-")
                cleanup.callback(shutil.rmtree, folder, True)
                url, label = f"sqlite://{folder}/bench.db", "sqlite"
            elif backend.startswith("zk"):
                size = 3 if backend == "zk3" else 1
                ensemble = cleanup.enter_context(start_zookeeper(size))
                url, label = ensemble.url, f"zookeeper {size} member{'s' if size > 1 else ''}"
            else:
                size = 3 if backend == "etcd3" else 1
                cluster = cleanup.enter_context(start_etcd(size))
                url, label = cluster.url, f"etcd {size} member{'s' if size > 1 else ''}"
            results = bench_ops(url, args.ops)
            results["watch, other process"] = bench_watch(url, args.watch)
            columns[label] = results

    labels = list(columns)
    print(f"store latency in ms, p50 / p99 ({args.ops} ops each, {args.watch} watched writes)")
    print(f"{'operation':<28}" + "".join(f"{label:>22}" for label in labels))
    for operation in next(iter(columns.values())):
        cells = []
        for label in labels:
            samples = columns[label][operation]
            p50, p99 = percentiles(samples)
            cells.append(f"{p50:8.2f} / {p99:8.2f}" + ("" if len(samples) else " (none)"))
        print(f"{operation:<28}" + "".join(f"{cell:>22}" for cell in cells))


if __name__ == "__main__":
    main()
