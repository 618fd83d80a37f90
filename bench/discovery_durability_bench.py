"""Discovery durability and scale, embedded store (SQLite) and etcd side by side.

    .venv/bin/python bench/discovery_durability_bench.py [--count 700] [--stall 20] [--scale 10000]
                                                         [--backends sqlite,etcd] [--skip-scale]

Stall: a real ``berth agent`` (HTTP API, default 15 s lease) takes ``--count`` registrations through
``PUT /v1/agent/service/register`` from 8 clients. A quarter in, the store stalls for ``--stall`` seconds, longer
than the lease: etcd gets SIGSTOP then SIGCONT; the embedded store, which has no server to stop, is stalled the
way a frozen process stalls it, by another process holding SQLite's write lock for the same time. Reported:
how many were acknowledged (HTTP 200), how many are in the store after recovery (and still, one lease TTL
later), seconds from the store's
return until every acknowledged one is in it, and register->visible p50/p99 (from sending the request to a watcher
in another process seeing the record; the three quarters sent during the stall wait for the store, so p50 and p99
show the stall, and the rows "before the stall" show the quiet figures).

Scale: ``--scale`` registrations (default 10,000) into one agent with a ``berth dns`` following the same store;
reported: register->visible p50/p99 (from sending the request), and the resident memory of the agent and of ``berth dns`` after all are in
(the last name answered by ``berth dns`` proves it holds them).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from discovery_bench import WATCHER, percentile  # noqa: E402  (the same watcher process, keyed by store key)
VENV_BIN = REPO / ".venv" / "bin"
HOST = "bench-host"
LEASE_TTL = 15.0  # the agent's default

def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return total / 1024


class Agent:
    def __init__(self, url: str, work: Path, ttl: float) -> None:
        argv = [str(VENV_BIN / "berth"), "agent", "--store", url, "--socket", str(work / "agent.sock"),
                "--http", "127.0.0.1:0", "--host", HOST, "--ttl", str(ttl), "--state-dir", str(work / "state"),
                "--log-level", "WARNING"]
        self.log = open(work / "agent.log", "ab")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, start_new_session=True)
        line = self.proc.stdout.readline()
        if not line.startswith(b"ready"):
            raise RuntimeError(f"agent did not start: {(work / 'agent.log').read_text()[-2000:]}")
        self.port = int(line.split(b"http=")[1])

    def register(self, service_id: str, name: str) -> tuple[int, int]:
        body = json.dumps({"ID": service_id, "Name": name, "Address": "10.77.0.1", "Port": 8080}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/agent/service/register", data=body,
                                         method="PUT")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, time.monotonic_ns()
        except OSError:
            return 0, time.monotonic_ns()

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()


class Watcher:
    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WATCHER, url], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, cwd=REPO)
        assert self.proc.stdout.readline().startswith(b"ready"), "watcher did not start"

    def seen(self) -> dict[str, int]:
        """service ID → CLOCK_MONOTONIC ns when the watcher first saw its record."""
        from discovery.model import endpoint_key
        self.proc.stdin.close()
        out = self.proc.stdout.read().decode().strip().splitlines()[-1]
        self.proc.wait()
        by_key = json.loads(out)
        prefix = endpoint_key(HOST, "")
        return {key[len(prefix):]: at for key, at in by_key.items() if key.startswith(prefix)}


def stored_ids(url: str) -> set[str]:
    from discovery.model import EndpointRecord
    from discovery.publish import host_prefix
    from store.api import open_store
    store = open_store(url)
    try:
        items, _ = store.get_prefix(host_prefix(HOST))
        return {EndpointRecord.from_json(kv.value).id for kv in items}
    finally:
        store.close()


class Stall:
    """``begin()`` freezes the store, ``end()`` lets it go: SIGSTOP/SIGCONT for etcd, a held write lock for
    SQLite (the lock holder is a separate process, as a frozen writer on the same host would be)."""

    def __init__(self, backend: str, cluster=None, db: Path | None = None) -> None:
        self.backend, self.cluster, self.db = backend, cluster, db
        self.holder: subprocess.Popen | None = None

    def begin(self) -> None:
        if self.backend == "etcd":
            self.cluster.members[0].process.send_signal(signal.SIGSTOP)
            return
        script = ("import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                  "c.execute('BEGIN IMMEDIATE')\nprint('locked', flush=True)\nsys.stdin.read()\n"
                  "c.execute('ROLLBACK')\n")
        self.holder = subprocess.Popen([sys.executable, "-c", script, str(self.db)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE)
        assert self.holder.stdout.readline().strip() == b"locked"

    def end(self) -> None:
        if self.backend == "etcd":
            self.cluster.members[0].process.send_signal(signal.SIGCONT)
            return
        self.holder.stdin.close()
        self.holder.wait()


def stall_run(url: str, stall: Stall, count: int, seconds: float, work: Path) -> dict:
    """A quarter registered before the stall, the rest while the store is stalled."""
    agent = Agent(url, work, ttl=LEASE_TTL)
    watcher = Watcher(url)
    sent: dict[str, int] = {}
    acks: dict[str, int] = {}
    lock = threading.Lock()

    def one(index: int) -> None:
        sid = f"bench-{index}"
        start = time.monotonic_ns()
        status, at = agent.register(sid, "bench-svc")
        with lock:
            sent[sid] = start
            if status == 200:
                acks[sid] = at

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(one, range(count // 4)))
            stall.begin()
            stalled_at = time.monotonic_ns()
            during = [pool.submit(one, index) for index in range(count // 4, count)]
            time.sleep(seconds)  # the stall itself
            stall.end()
            resumed_at = time.monotonic_ns()
            for future in during:
                future.result()
        recovered = None
        deadline = time.monotonic() + 120
        present: set[str] = set()
        while time.monotonic() < deadline:
            try:
                present = stored_ids(url)
            except Exception:
                present = set()
            if set(acks) <= present:
                recovered = (time.monotonic_ns() - resumed_at) / 1e9
                break
            time.sleep(0.1)
        time.sleep(LEASE_TTL)  # a lease lifetime later: a record written under a lease that then lapsed is gone
        try:
            later = set(acks) & stored_ids(url)
        except Exception:
            later = set()
        seen = watcher.seen()
    finally:
        agent.close()
        if watcher.proc.poll() is None:
            watcher.proc.kill()
            watcher.proc.wait()
    latencies = [(seen[sid] - sent[sid]) / 1e6 for sid in acks if sid in seen]
    before = [(seen[sid] - sent[sid]) / 1e6 for sid in acks if sid in seen and sent[sid] < stalled_at]
    in_stall = sum(1 for sid in acks if stalled_at <= sent[sid] < resumed_at)
    return {"acknowledged": len(acks), "acknowledged_in_stall": in_stall, "refused": count - len(acks),
            "present": len(set(acks) & present), "present_a_ttl_later": len(later), "recovery_s": recovered,
            "p50_ms": statistics.median(latencies), "p99_ms": percentile(latencies, 99),
            "before_p50_ms": statistics.median(before), "before_p99_ms": percentile(before, 99)}


def scale_run(url: str, count: int, work: Path) -> dict:
    import dns.exception
    import dns.message
    import dns.query
    from tests.etcd_harness import free_port

    agent = Agent(url, work, ttl=LEASE_TTL)
    watcher = Watcher(url)
    port = free_port()
    dns_log = open(work / "dns.log", "ab")
    dnsd = subprocess.Popen([str(VENV_BIN / "berth"), "dns", "--store", url, "--listen", f"127.0.0.1:{port}",
                             "--no-forward"], stdout=subprocess.PIPE, stderr=dns_log, start_new_session=True)
    acks: dict[str, int] = {}
    try:
        assert dnsd.stdout.readline().startswith(b"dnsd: listening"), "berth dns did not start"
        base_agent, base_dns = rss_mib(agent.proc.pid), rss_mib(dnsd.pid)

        def one(index: int) -> None:
            sid = f"bench-{index}"
            start = time.monotonic_ns()
            status, _at = agent.register(sid, f"bench-{index}")
            if status == 200:
                acks[sid] = start
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(one, range(count)))
        last = f"bench-{count - 1}.berth.internal."
        deadline = time.monotonic() + 120
        answered = False
        while time.monotonic() < deadline and not answered:
            try:
                reply = dns.query.udp(dns.message.make_query(last, "A"), "127.0.0.1", port=port, timeout=2)
                answered = bool(reply.answer)
            except dns.exception.Timeout:
                continue
            if not answered:
                time.sleep(0.2)
        agent_mib, dns_mib = rss_mib(agent.proc.pid), rss_mib(dnsd.pid)
        seen = watcher.seen()
    finally:
        agent.close()
        if dnsd.poll() is None:
            os.killpg(dnsd.pid, signal.SIGKILL)
        dnsd.wait()
        dns_log.close()
        if watcher.proc.poll() is None:
            watcher.proc.kill()
            watcher.proc.wait()
    latencies = [(seen[sid] - at) / 1e6 for sid, at in acks.items() if sid in seen]
    return {"acknowledged": len(acks), "visible": len(latencies), "dns_answered_last": answered,
            "p50_ms": statistics.median(latencies), "p99_ms": percentile(latencies, 99),
            "agent_mib": agent_mib, "agent_idle_mib": base_agent, "dns_mib": dns_mib, "dns_idle_mib": base_dns}


def with_store(backend: str, work: Path, body):
    if backend == "sqlite":
        db = work / "berth.db"
        return body(f"sqlite:///{db}", Stall("sqlite", db=db))
    from tests.etcd_harness import start_etcd
    with start_etcd(1) as cluster:
        return body(cluster.url, Stall("etcd", cluster=cluster))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=700)
    parser.add_argument("--stall", type=float, default=20.0)
    parser.add_argument("--scale", type=int, default=10_000)
    parser.add_argument("--backends", default="sqlite,etcd")
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args()
    backends = args.backends.split(",")
    stall_results, scale_results = {}, {}
    for backend in backends:
        with tempfile.TemporaryDirectory(prefix="bt-durbench-") as tmp:
            stall_results[backend] = with_store(backend, Path(tmp), lambda url, stall: stall_run(
                url, stall, args.count, args.stall, Path(tmp)))
        print(f"stall {backend}: {json.dumps(stall_results[backend])}", flush=True)
        if not args.skip_scale:
            with tempfile.TemporaryDirectory(prefix="bt-durbench-") as tmp:
                scale_results[backend] = with_store(backend, Path(tmp), lambda url, _stall: scale_run(
                    url, args.scale, Path(tmp)))
            print(f"scale {backend}: {json.dumps(scale_results[backend])}", flush=True)

    print(f"\n{args.count} registrations through a {args.stall:g} s store stall (lease TTL {LEASE_TTL:g} s)")
    print(f"{'':28}" + "".join(f"{b:>14}" for b in backends))
    rows = [("acknowledged (200)", "acknowledged", "{:d}"), ("  of them sent in the stall", "acknowledged_in_stall", "{:d}"),
            ("present after recovery", "present", "{:d}"), ("  and a lease TTL later", "present_a_ttl_later", "{:d}"),
            ("s to full recovery", "recovery_s", "{:.1f}"), ("register->visible p50 ms", "p50_ms", "{:.1f}"),
            ("register->visible p99 ms", "p99_ms", "{:.1f}"), ("  before the stall p50 ms", "before_p50_ms", "{:.1f}"),
            ("  before the stall p99 ms", "before_p99_ms", "{:.1f}")]
    for label, key, fmt in rows:
        cells = [stall_results[b][key] for b in backends]
        print(f"{label:28}" + "".join(f"{'never' if c is None else fmt.format(c):>14}" for c in cells))
    if scale_results:
        print(f"\n{args.scale} registered endpoints")
        print(f"{'':28}" + "".join(f"{b:>14}" for b in backends))
        rows = [("acknowledged (200)", "acknowledged", "{:d}"), ("visible to a watcher", "visible", "{:d}"),
                ("register->visible p50 ms", "p50_ms", "{:.1f}"), ("register->visible p99 ms", "p99_ms", "{:.1f}"),
                ("agent RSS MiB", "agent_mib", "{:.0f}"), ("  idle, before MiB", "agent_idle_mib", "{:.0f}"),
                ("berth dns RSS MiB", "dns_mib", "{:.0f}"), ("  idle, before MiB", "dns_idle_mib", "{:.0f}"),
                ("dns answers the last", "dns_answered_last", "{}")]
        for label, key, fmt in rows:
            print(f"{label:28}" + "".join(f"{fmt.format(scale_results[b][key]):>14}" for b in backends))
    return 0


if __name__ == "__main__":
    sys.exit(main())
