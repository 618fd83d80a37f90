#!/usr/bin/env python3
"""berth dns's memory per name beside dnsmasq's, in one run, on the same names.

    .venv/bin/python bench/dns_memory_bench.py [--scale 10000] [--shape aliased|plain] [--also /work/main]
                                               [--duration 2] [--rounds 3]

N endpoints go into a real SQLite store, served by ``berth dns --store`` (one worker), and the same names go
into a hosts file served by dnsmasq. ``aliased`` endpoints (the default) have an alias and a network, so each
brings 7 names (its address name, 4 container names, its service name, its PTR); ``plain`` ones are
``dns_bench.py --scale``'s (name and address: 4); ``services`` ones are instances of 50 services with a tag and
a port (the service names' A and SRV sets hold 200 records each: the index's shared-name path). Printed per
server:

- RSS at rest once every name answers, and RSS of the same berth dns over an empty store (Python and its
  imports): the difference over the names is what one name costs;
- the zone index alone, by tracemalloc, in a fresh process of that tree: ``ZoneBuilder.update`` over the same
  endpoints, the time of that full build and of one incremental update (one endpoint changes), and the mean
  time of ``ZoneIndex.lookup`` (every name, A/PTR/SRV: what a query the packed cache misses costs in the index);
- queries/s over all names (dnsperf, the servers alternated ``--rounds`` times: min-median-max).

``--also TREE`` adds the berth dns of another checkout (its own ``.venv``), e.g. main, to the same run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import dns_bench as bench  # noqa: E402

from discovery.model import EndpointRecord, PortBinding, endpoint_key  # noqa: E402

ZONE = bench.ZONE

# Runs in a fresh interpreter of the tree measured (sys.argv: tree, records.json); prints one JSON line.
PROBE = r"""
import dataclasses, gc, json, sys, time, tracemalloc
sys.path.insert(0, sys.argv[1])
from discovery.model import EndpointRecord
from dnsd.names import ZoneConfig
from dnsd.zonebuild import ZoneBuilder
with open(sys.argv[2]) as f:
    records = {f"k{i}": EndpointRecord.from_dict(item) for i, item in enumerate(json.load(f))}
gc.collect()
tracemalloc.start()
before = tracemalloc.get_traced_memory()[0]
builder = ZoneBuilder(ZoneConfig())
started = time.perf_counter()
index = builder.update(records, 1)
build = time.perf_counter() - started
gc.collect()
traced = tracemalloc.get_traced_memory()[0] - before
tracemalloc.stop()
questions = [(name, qtype) for name in index.names() for qtype in (1, 12, 33)]
lookups = []
for _ in range(3):  # the best of three passes over every name (A, PTR, SRV), so a busy machine shows less
    started = time.perf_counter()
    for name, qtype in questions:
        index.lookup(name, qtype)
    lookups.append((time.perf_counter() - started) / len(questions))
records = dict(records, k0=dataclasses.replace(records["k0"], addresses=("10.199.0.1",)))
started = time.perf_counter()
builder.update(records, 2)
one = time.perf_counter() - started
print(json.dumps({"traced": traced, "names": len(index.names()), "build": build, "one": one,
                  "lookup": min(lookups)}))
"""


def endpoint(i: int, shape: str) -> EndpointRecord:
    extra = {"aliased": dict(aliases=(f"btalias{i}",), network="btnet"), "plain": {},
             "services": dict(service=f"btsvc{i % 50}", tags=("primary",), ports=(PortBinding(80),))}[shape]
    return EndpointRecord(id=f"btbench{i}/eth0", name=f"btbench{i}", addresses=(bench_address(i),), **extra)


def bench_address(i: int) -> str:
    return f"10.{200 + i // 65025}.{i // 255 % 255}.{i % 255 + 1}"


def make_world(folder: Path, count: int, shape: str) -> tuple[str, dict[str, str]]:
    """A SQLite store with the endpoints, the same forward names in a hosts file, and the query file."""
    records = [endpoint(i, shape) for i in range(count)]
    expected: dict[str, str] = {}
    for r in records:
        for name in r.names:
            expected[f"{name}.{ZONE}"] = r.addresses[0]
            if r.network:
                expected[f"{name}.{r.network}.{ZONE}"] = r.addresses[0]
    (folder / "hosts").write_text("".join(f"{addr} {name}\n" for name, addr in expected.items()))
    (folder / "known.txt").write_text("".join(f"{name} A\n" for name in expected))
    (folder / "records.json").write_text(json.dumps([r.to_dict() for r in records]))
    url = f"sqlite:///{folder / 'berth.db'}"
    from store.api import Put, open_store
    store = open_store(url)
    try:
        for start in range(0, len(records), 100):
            store.txn([], [Put(endpoint_key("btbenchhost", r.id), r.to_json().encode())
                           for r in records[start:start + 100]])
    finally:
        store.close()
    return url, expected


def python_of(tree: Path) -> str:
    return sys.executable if tree == REPO else str(tree / ".venv" / "bin" / "python")


def start_tree_dnsd(tree: Path, url: str) -> bench.Server:
    server = bench.start_dnsd(tree, 1, [], ["--store", url], python=python_of(tree), tree=tree)
    server.name = f"berth dns ({'this tree' if tree == REPO else tree})"
    return server


def probe(tree: Path, records_file: Path) -> dict:
    out = subprocess.run([python_of(tree), "-c", PROBE, str(tree), str(records_file)], capture_output=True,
                         text=True, check=True, cwd=tree).stdout
    return json.loads(out.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=10_000, help="endpoints (default 10,000)")
    parser.add_argument("--shape", choices=("aliased", "plain", "services"), default="aliased")
    parser.add_argument("--also", action="append", default=[], type=Path, help="another checkout's berth dns")
    parser.add_argument("--duration", type=float, default=2, help="seconds per dnsperf run (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="dnsperf runs per server, alternated")
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    trees = [REPO] + [t.resolve() for t in args.also]
    with tempfile.TemporaryDirectory(prefix="bt-dnsmem-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)  # dnsmasq reads its hosts file after dropping to an unprivileged user
        (folder / "empty").mkdir()
        empty_url, _ = make_world(folder / "empty", 0, args.shape)
        url, expected = make_world(folder, args.scale, args.shape)
        print(f"{args.scale:,} endpoints ({args.shape}: {len(expected):,} forward names, the same in dnsmasq's "
              f"hosts file), load average {bench.os.getloadavg()[0]:.1f}")
        memory_section(trees, folder, url, empty_url, expected, args)
        print("\nthe zone index alone (tracemalloc of ZoneBuilder.update, a fresh process per tree):")
        print(f"  {'tree':<40} {'names':>7} {'traced MB':>9} {'B/name':>7} {'full build s':>12} "
              f"{'one change ms':>13} {'lookup us':>9}")
        for tree in trees:
            p = probe(tree, folder / "records.json")
            print(f"  {str(tree):<40} {p['names']:>7,} {p['traced'] / 1e6:>9.1f} {p['traced'] / p['names']:>7.0f} "
                  f"{p['build']:>12.2f} {1000 * p['one']:>13.1f} {1e6 * p['lookup']:>9.2f}")
    return 0


def memory_section(trees: list[Path], folder: Path, url: str, empty_url: str, expected: dict[str, str],
                   args: argparse.Namespace) -> None:
    """Each server's RSS over no names and over all of them, and its queries/s (servers alternated)."""
    empty: dict[str, float] = {}
    servers: list[bench.Server] = []
    try:
        for tree in trees:
            idle = start_tree_dnsd(tree, empty_url)
            empty[idle.name] = bench.rss_mb(idle)
            idle.stop()
        servers = [start_tree_dnsd(tree, url) for tree in trees] + [bench.start_dnsmasq(folder)]
        rest = {s.name: bench.rss_mb(s) for s in servers}  # before any query: no cached answers yet
        for server in servers:
            print(f"  {server.name:<40} {bench.verify(server, list(expected), expected)}")
        runs: dict[str, list[float]] = {s.name: [] for s in servers}
        for _ in range(args.rounds):
            for server in servers:
                runs[server.name].append(bench.measure(server, folder / "known.txt", args.clients,
                                                       args.duration).qps)
        print(f"\n  {'server':<40} {'RSS MB':>7} {'empty':>6} {'KB/endpoint':>11} {'after load':>10} "
              f"{'queries/s min-median-max':>25}")
        for server in servers:
            qps = sorted(runs[server.name])
            spread = f"{qps[0]:,.0f}-{statistics.median(qps):,.0f}-{qps[-1]:,.0f}"
            idle = empty.get(server.name)
            per = "" if idle is None else f"{1024 * (rest[server.name] - idle) / args.scale:.2f}"
            print(f"  {server.name:<40} {rest[server.name]:>7.1f} {'' if idle is None else f'{idle:.1f}':>6} "
                  f"{per:>11} {bench.rss_mb(server):>10.1f} {spread:>25}")
        print(f"  (RSS MB: at rest before any query; empty: the same berth dns over an empty store; after load: "
              f"once every name was asked and {args.rounds} dnsperf runs of {args.duration:g} s, -c {args.clients})")
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
