"""Freeing what cluster IPAM's judgement (:mod:`ipam.check`) found leaked, and the departure clock behind the
grace period: the store side, shared by ``berth ipam check --release`` and ``berth overlay``'s reclaim loop.

A host is *departed* once its liveness key (``hosts/<host>``) is gone and no discovery agent of that name is live.
The first reclaim pass that sees it so writes ``departed/<host>`` with the time (create-if-absent: passes on
several hosts agree on the first); the host's return deletes it (``ClusterStore._refresh_host``) and so does a
pass that sees it live again. A network whose pool sets ``releaseDepartedAfter`` has a departed host's addresses
freed by the reclaim loop once that long has passed since the mark, unless a live agent vouches for them.

Every free is one compare-and-swap at the revision judged, and a departed host's also compares its liveness key
still absent and its mark unchanged: an address whose container came back, whose DEL ran, or whose host
returned is left alone.
"""
from __future__ import annotations

import json
import time
from typing import Callable, Sequence

from store.api import Compare, Delete, Put, Store

from .blocks import PoolPolicy, parse_pool_policy
from .check import IPAM_PREFIX, Leak, Liveness, Report, judge, releasable_blocks
from .cluster import departed_key, host_key, network_prefix, quarantined

DEPARTED_PREFIX = IPAM_PREFIX + "departed/"
RECLAIMER_KEY = IPAM_PREFIX + "reclaimer"  # which host runs the passes, under that host's liveness lease


def my_turn(store: Store, host: str, lease: int) -> bool:
    """Whether ``host`` runs the reclaim passes: one host at a time does (a pass reads every address record), the
    first to create the key under its lease; when that host dies its lease ends, the key goes and another takes
    over at its next interval. Without a lease (0) every caller runs: a free is a compare-and-swap anyway."""
    if not lease:
        return True
    if store.create(RECLAIMER_KEY, host.encode(), lease=lease):
        return True
    kv = store.get(RECLAIMER_KEY)
    return kv is None or kv.value == host.encode()


def departure_marks(kvs: Sequence) -> dict[str, tuple[float, int]]:
    """host -> (when it was first seen departed, the mark's mod revision), from a snapshot of ``/berth/ipam/``."""
    marks = {}
    for kv in kvs:
        if kv.key.startswith(DEPARTED_PREFIX):
            try:
                marks[kv.key[len(DEPARTED_PREFIX):]] = (float(json.loads(kv.value)["since"]), kv.mod_revision)
            except (ValueError, KeyError, TypeError):
                marks[kv.key[len(DEPARTED_PREFIX):]] = (0.0, kv.mod_revision)  # unreadable: no grace is owed
    return marks


def policies(kvs: Sequence) -> dict[str, PoolPolicy]:
    """network -> its stored pool's policy."""
    out = {}
    for kv in kvs:
        parts = kv.key[len(IPAM_PREFIX):].split("/")
        if len(parts) == 3 and parts[0] == "networks" and parts[2] == "pool":
            try:
                out[parts[1]] = parse_pool_policy(kv.value)
            except (ValueError, KeyError, TypeError):
                continue
    return out


def departures(report: Report, live: Liveness, marks: dict[str, tuple[float, int]]) -> tuple[set[str], set[str]]:
    """(hosts to mark departed: holding addresses or blocks, not live, not yet marked; marks to clear: of hosts
    live again or holding nothing any more)."""
    holders = {h.record.host for h in report.held} | {b.owner for b in report.blocks}
    return ({h for h in holders if h not in live.hosts and h not in marks},
            {h for h in marks if h in live.hosts or h not in holders})


def due(report: Report, marks: dict[str, tuple[float, int]], pools: dict[str, PoolPolicy], now: float) -> list[Leak]:
    """The departed leaks whose network's grace has run out since their host was marked."""
    out = []
    for leak in report.leaked:
        grace = pools.get(leak.held.network, PoolPolicy()).release_departed_after
        mark = marks.get(leak.held.record.host)
        if leak.reason == "departed" and grace > 0 and mark is not None and mark[0] + grace <= now:
            out.append(leak)
    return out


def release(store: Store, report: Report, leaks: Sequence[Leak], marks: dict[str, tuple[float, int]] | None = None,
            clock: Callable[[], float] = time.time) -> tuple[list, list, list]:
    """Free ``leaks`` (quarantined, as a DEL would), then the emptied blocks of owners that are not live."""
    freed, skipped = [], []
    for leak in leaks:
        held, record = leak.held, leak.held.record
        index = f"{network_prefix(held.network)}attachments/{record.container_id}/{record.ifname}/{held.address}"
        compares = [Compare(held.key, "mod_revision", "=", held.mod_revision)]
        if leak.reason == "departed":
            compares.append(Compare(host_key(record.host), "version", "=", 0))
            if marks is not None and record.host in marks:
                compares.append(Compare(departed_key(record.host), "mod_revision", "=", marks[record.host][1]))
        done = store.txn(compares, [Put(held.key, quarantined(record, clock()).to_json()), Delete(index)])
        (freed if done.succeeded else skipped).append(leak)
    gone = {(leak.held.network, leak.held.address) for leak in freed}
    blocks = []
    for usage in releasable_blocks(report, gone):
        if store.txn([Compare(usage.key, "mod_revision", "=", usage.mod_revision)], [Delete(usage.key)]).succeeded:
            blocks.append(usage)
    return freed, blocks, skipped


def reclaim_pass(store: Store, read_liveness: Callable[[Store, Sequence], Liveness],
                 clock: Callable[[], float] = time.time) -> tuple[list, list]:
    """One pass of the reclaim loop: departure marks kept up to date, then the addresses whose grace ran out
    freed. Returns (freed leaks, released blocks)."""
    kvs, revision = store.get_prefix(IPAM_PREFIX)
    live = read_liveness(store, kvs)
    now = clock()
    report = judge(kvs, revision, live, now, min_age=0.0)
    marks = departure_marks(kvs)
    to_mark, to_clear = departures(report, live, marks)
    for host in to_mark:
        store.create(departed_key(host), json.dumps({"host": host, "since": now}).encode())
    for host in to_clear:
        store.txn([Compare(departed_key(host), "mod_revision", "=", marks[host][1])], [Delete(departed_key(host))])
    ready = due(report, marks, policies(kvs), now)
    if not ready:
        return [], []
    freed, blocks, _skipped = release(store, report, ready, marks, clock)
    return freed, blocks
