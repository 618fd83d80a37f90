"""dnsd's counts as plain numbers, cheap where the answers are hot, read whole when someone scrapes.

A cache hit on the UDP loop adds one to a list slot that only that loop's thread writes (``HitCounter``): no lock,
no prometheus_client object, one dict lookup for which (type, rcode) the cached reply has. Everything off the fast
path (parsed queries, forwards, cache fills) counts under one lock per worker: it costs microseconds already.

With ``--workers N`` each worker is its own process: :func:`serve_snapshots` answers the parent's request for a
snapshot over a socket pair, and :class:`Hub` sums every worker's snapshot (``merge``), so /metrics tells the
totals of the whole server, not of one process picked at random.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from typing import Callable

MAX_KINDS = 64  # distinct (qtype, rcode) pairs tracked for cached replies; more fold into slot 0
FORWARD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SNAPSHOT_DEADLINE = 1.0  # seconds a worker has to send its snapshot
QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
          35: "NAPTR", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 99: "SPF",
          252: "AXFR", 251: "IXFR", 255: "ANY", 257: "CAA"}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def qtype_name(qtype: int | None) -> str:
    """A bounded label: the common types by name, every other number as "other" (clients choose the number)."""
    if qtype is None:
        return "unknown"
    return QTYPES.get(qtype, "other")


def rcode_name(rcode: int | None) -> str:
    if rcode is None:
        return "unknown"
    return RCODES.get(rcode, str(rcode) if 0 <= rcode < 16 else "other")


class Kinds:
    """Which (qtype, rcode) each cached reply has, as a small slot number the hit counters index."""

    def __init__(self) -> None:
        self.labels: list[tuple[int | None, int | None]] = [(None, None)]
        self._index: dict[tuple[int, int], int] = {}

    def slot(self, qtype: int, rcode: int) -> int:
        slot = self._index.get((qtype, rcode))
        if slot is None:
            if len(self.labels) >= MAX_KINDS:
                return 0
            slot = len(self.labels)
            self.labels.append((qtype, rcode))
            self._index[(qtype, rcode)] = slot
        return slot


class HitCounter(list):
    """Hits by kind slot, written by one thread only (its loop)."""

    def __init__(self) -> None:
        super().__init__([0] * MAX_KINDS)


class ResponderStats:
    """The slow path's counts, and the forwarder's, for one worker (many threads: one lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.replies: dict[tuple[int | None, int | None], int] = {}
        self.packed_hits = {"udp": 0, "tcp": 0}   # found through the scanned key (another spelling or size)
        self.packed_misses = {"udp": 0, "tcp": 0}
        self.forward_buckets = [0] * (len(FORWARD_BUCKETS) + 1)
        self.forward_sum = 0.0
        self.forward_failures = 0
        self.forward_overflow = 0

    def reply(self, qtype: int | None, rcode: int | None, count: int = 1) -> None:
        with self.lock:
            key = (qtype, rcode)
            self.replies[key] = self.replies.get(key, 0) + count

    def packed_lookup(self, transport: str, hit: bool) -> None:
        with self.lock:
            (self.packed_hits if hit else self.packed_misses)[transport] += 1

    def forwarded(self, seconds: float, ok: bool) -> None:
        slot = next((i for i, bound in enumerate(FORWARD_BUCKETS) if seconds <= bound), len(FORWARD_BUCKETS))
        with self.lock:
            self.forward_buckets[slot] += 1
            self.forward_sum += seconds
            if not ok:
                self.forward_failures += 1

    def overflowed(self) -> None:
        with self.lock:
            self.forward_overflow += 1


def snapshot(responder, stats: ResponderStats) -> dict:
    """One worker's numbers as a JSON-able document (the shape :func:`merge` sums)."""
    queries: dict[str, int] = {}

    def add(qtype, rcode, count) -> None:
        if count:
            key = f"{qtype_name(qtype)} {rcode_name(rcode)}"
            queries[key] = queries.get(key, 0) + count

    caches = {}
    for transport, packed in (("udp", responder.packed_udp), ("tcp", responder.packed_tcp)):
        labels = list(packed.kinds_table.labels)
        fast = [sum(column) for column in zip(*packed.hit_counters)] if packed.hit_counters else []
        for slot, count in enumerate(fast):
            add(*(labels[slot] if slot < len(labels) else (None, None)), count)
        with stats.lock:
            slow_hits, misses = stats.packed_hits[transport], stats.packed_misses[transport]
        caches[f"answers_{transport}"] = {"hits": sum(fast) + slow_hits, "misses": misses,
                                          "evictions": packed.evictions, "entries": len(packed),
                                          "bytes": packed.bytes}
    upstream = responder.upstream_cache
    caches["upstream"] = {"hits": upstream.hits, "misses": upstream.misses, "evictions": upstream.evictions,
                          "entries": len(upstream), "bytes": upstream.bytes}
    with stats.lock:
        for (qtype, rcode), count in stats.replies.items():
            add(qtype, rcode, count)
        forward = {"buckets": list(stats.forward_buckets), "sum": stats.forward_sum,
                   "failures": stats.forward_failures, "overflow": stats.forward_overflow}
    return {"queries": queries, "caches": caches, "forward": forward, "workers": 1, **own_process()}


def own_process() -> dict:
    """This worker's CPU seconds and resident bytes (with several workers the process collector sees only the
    parent, which answers no queries)."""
    times = os.times()
    try:
        with open("/proc/self/statm") as f:
            resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        resident = 0
    return {"cpu_seconds": times.user + times.system, "resident_bytes": resident}


def merge(snapshots: list[dict]) -> dict:
    """The sum of several workers' snapshots (each its own caches: entries and bytes add up too)."""
    total: dict = {"queries": {}, "caches": {}, "forward": {"buckets": [0] * (len(FORWARD_BUCKETS) + 1),
                                                              "sum": 0.0, "failures": 0, "overflow": 0},
                   "workers": 0, "cpu_seconds": 0.0, "resident_bytes": 0}
    for snap in snapshots:
        for field in ("workers", "cpu_seconds", "resident_bytes"):
            total[field] += snap.get(field, 0)
        for key, count in snap["queries"].items():
            total["queries"][key] = total["queries"].get(key, 0) + count
        for name, numbers in snap["caches"].items():
            into = total["caches"].setdefault(name, dict.fromkeys(numbers, 0))
            for field, value in numbers.items():
                into[field] = into.get(field, 0) + value
        forward = total["forward"]
        for i, count in enumerate(snap["forward"]["buckets"]):
            forward["buckets"][i] += count
        for field in ("sum", "failures", "overflow"):
            forward[field] += snap["forward"][field]
    return total


# -- workers in other processes ------------------------------------------------------------------------------------

MAX_SNAPSHOT = 1 << 20  # bytes; a snapshot is a few KiB (its labels are bounded)


def snapshot_channel() -> tuple[socket.socket, socket.socket]:
    """A socket pair that keeps message boundaries (one request, one reply per message)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def serve_snapshots(sock: socket.socket, take: Callable[[], dict]) -> threading.Thread:
    """In a worker process: answer each request (a sequence number) with that number and a JSON snapshot."""
    def loop() -> None:
        with sock:
            while True:
                try:
                    request = sock.recv(16)
                    if not request:
                        return  # the parent has gone
                    sock.send(request[:4] + json.dumps(take()).encode())
                except OSError:
                    return
    thread = threading.Thread(target=loop, name="dnsd-stats", daemon=True)
    thread.start()
    return thread


class Hub:
    """Where the parent (or the one worker's own process) gets every worker's snapshot from."""

    def __init__(self) -> None:
        self.local: list[Callable[[], dict]] = []
        self.remote: list[socket.socket] = []
        self.expected = 0
        self._lock = threading.Lock()  # one scrape at a time talks to the workers
        self._sequence = 0

    def snapshots(self) -> list[dict]:
        """Every worker's snapshot that arrives within the deadline. A late reply carries an old sequence number
        and is skipped by the next scrape; a worker whose socket has closed is not asked again."""
        found = [take() for take in self.local]
        with self._lock:
            self._sequence = (self._sequence + 1) % (1 << 32)
            wanted = struct.pack("!I", self._sequence)
            for sock in list(self.remote):
                try:
                    sock.send(wanted)
                    deadline = time.monotonic() + SNAPSHOT_DEADLINE
                    while (left := deadline - time.monotonic()) > 0:
                        sock.settimeout(left)
                        reply = sock.recv(MAX_SNAPSHOT)
                        if not reply:
                            raise ConnectionError("the worker has gone")
                        if reply[:4] == wanted:
                            found.append(json.loads(reply[4:]))
                            break
                except TimeoutError:
                    continue  # busy: not counted this time
                except (OSError, ValueError):
                    self.remote.remove(sock)
                    sock.close()
        return found

    def total(self) -> dict:
        merged = merge(self.snapshots())
        merged["expected"] = self.expected
        return merged
