"""``berth ipam check``: cluster IPAM as the datastore holds it — pool use per host and block, leaked addresses,
blocks whose owner is gone, duplicates — and ``--release --yes`` to free the leaks it found.

One read of the store (one revision), the judgement in :mod:`ipam.check` (pure), then the release: each freed
address is one compare-and-swap against the revision it was judged at, so an address that changed since (its
container came back, a DEL ran) is left alone. Freed addresses are quarantined as a DEL would do; a departed
host's block whose last address was freed loses its claim, so another host can take it.

Exit status: 0 nothing found (or everything found released), 1 leaks or duplicates remain, 2 the store could
not be read or the arguments are wrong.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

DEFAULT_MIN_AGE = 300.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="ipam_command", required=True, metavar="COMMAND")
    check = sub.add_parser("check", help="report pool use, leaked addresses, ownerless blocks and duplicates")
    check.add_argument("--store", default=os.environ.get("BERTH_STORE", "sqlite:////var/lib/berth/berth.db"),
                       help="datastore URL (default $BERTH_STORE or the embedded file)")
    check.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    check.add_argument("--valid-attachments", metavar="FILE",
                       help='the runtimes\' attachment lists: {"<host>": [{"containerID": ..., "ifname": ...}]}')
    check.add_argument("--min-age", type=float, default=DEFAULT_MIN_AGE, metavar="SECONDS",
                       help=f"never count an address younger than this as leaked (default {DEFAULT_MIN_AGE:g})")
    check.add_argument("--release", action="store_true", help="free the leaked addresses reported (needs --yes)")
    check.add_argument("--yes", action="store_true", help="confirm --release")
    pool = sub.add_parser("pool", help="show a network's pool policy, or change it (--quarantine, "
                                       "--release-departed-after)")
    pool.add_argument("network", help="the CNI network name")
    pool.add_argument("--store", default=os.environ.get("BERTH_STORE", "sqlite:////var/lib/berth/berth.db"),
                      help="datastore URL (default $BERTH_STORE or the embedded file)")
    pool.add_argument("--quarantine", type=float, metavar="SECONDS",
                      help="how long a released address waits before it is handed out again")
    pool.add_argument("--release-departed-after", type=float, metavar="SECONDS",
                      help="free a departed host's addresses no live agent vouches for this long after it was "
                           "first seen gone (0: only `berth ipam check --release` frees them)")


def load_lists(path: str | None) -> dict[str, frozenset[tuple[str, str]]]:
    if path is None:
        return {}
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise ValueError("--valid-attachments: expected an object of host -> list of attachments")
    out = {}
    for host, items in raw.items():
        if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("containerID"), str)
                                                  for i in items):
            raise ValueError(f"--valid-attachments: {host!r}: expected a list of {{containerID, ifname}}")
        out[host] = frozenset((i["containerID"], str(i.get("ifname", ""))) for i in items)
    return out


def as_document(report, freed=(), blocks=(), skipped=(), marks=None) -> dict:
    def leak(item):
        h = item.held
        return {"network": h.network, "address": str(h.address), "block": h.block, "containerId": h.record.container_id,
                "ifname": h.record.ifname, "host": h.record.host, "reason": item.reason}

    return {
        "version": 1, "revision": report.revision,
        "blocks": [{"network": b.network, "block": b.block, "owner": b.owner, "ownerLive": b.owner_live,
                    "held": b.held, "quarantined": b.quarantined, "capacity": b.capacity} for b in report.blocks],
        "hosts": [{"host": h, **counts} for h, counts in sorted(report.hosts().items())],
        "leaked": [leak(item) for item in report.leaked],
        "ownerless": [{"network": b.network, "block": b.block, "owner": b.owner, "held": b.held}
                      for b in report.ownerless],
        "departed": [{"host": host, "since": since} for host, (since, _rev) in sorted((marks or {}).items())],
        "duplicates": list(report.duplicates), "problems": list(report.problems),
        "released": [leak(item) for item in freed], "releasedBlocks": [f"{b.network} {b.block}" for b in blocks],
        "changedSinceRead": [leak(item) for item in skipped],
    }


def render(doc: dict) -> str:
    lines = [f"cluster IPAM at store revision {doc['revision']}", "", "blocks:"]
    for b in doc["blocks"]:
        state = "" if b["ownerLive"] else "  (owner not live)"
        lines.append(f"  {b['network']:<16} {b['block']:<24} {b['owner']:<16} {b['held']:>4}/{b['capacity']:<4} held"
                     f" {b['quarantined']:>3} quarantined{state}")
    lines += ["", "hosts:"] + [f"  {h['host']:<16} {h['blocks']:>3} blocks {h['held']:>5} addresses held"
                               for h in doc["hosts"]]
    if doc["departed"]:
        lines += ["", "departed (first seen gone):"] + [
            f"  {d['host']:<16} {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(d['since']))} UTC"
            for d in doc["departed"]]
    for title, key in (("leaked", "leaked"), ("released", "released"), ("changed since read, not freed",
                                                                         "changedSinceRead")):
        if doc[key]:
            lines += ["", f"{title}:"] + [f"  {x['address']:<18} {x['containerId']}/{x['ifname']} on {x['host']} "
                                          f"({x['network']}): {x['reason']}" for x in doc[key]]
    for title, key in (("duplicates", "duplicates"), ("problems", "problems"), ("blocks released", "releasedBlocks")):
        if doc[key]:
            lines += ["", f"{title}:"] + [f"  {x}" for x in doc[key]]
    if not doc["leaked"] and not doc["duplicates"]:
        lines += ["", "no leaked address, no duplicate"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import logging
    logging.getLogger("kazoo").setLevel(logging.ERROR)  # its reconnect chatter is not the user's business here
    return run_pool(args) if args.ipam_command == "pool" else run_check(args)


def run_pool(args: argparse.Namespace) -> int:
    """Print the pool's definition; with a policy flag, change it first (compare-and-swap: a concurrent change
    is reported, not overwritten). Hosts whose config names another value are refused until they agree."""
    from dataclasses import replace

    from ipam.blocks import parse_pool_policy, with_policy
    from ipam.cluster import network_prefix
    from store.api import Compare, Put, StoreError, open_store

    changes = {k: v for k, v in (("quarantine", args.quarantine),
                                 ("release_departed_after", args.release_departed_after)) if v is not None}
    if any(not 0 <= v <= 30 * 86400 for v in changes.values()):
        print("berth ipam pool: seconds must be from 0 to 2592000", file=sys.stderr)
        return 2
    try:
        with open_store(args.store) as store:
            key = network_prefix(args.network) + "pool"
            kv = store.get(key)
            if kv is None:
                print(f"berth ipam pool: network {args.network!r} has no cluster IPAM pool in {args.store}",
                      file=sys.stderr)
                return 2
            value = kv.value
            if changes:
                value = with_policy(kv.value, replace(parse_pool_policy(kv.value), **changes))
                if not store.txn([Compare(key, "mod_revision", "=", kv.mod_revision)], [Put(key, value)]).succeeded:
                    print("berth ipam pool: the pool changed while this ran; nothing written", file=sys.stderr)
                    return 2
    except (ValueError, OSError, StoreError) as exc:
        print(f"berth ipam pool: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(json.loads(value), indent=2, sort_keys=True))
    return 0


def run_check(args: argparse.Namespace) -> int:
    from discovery.ipam_liveness import read_liveness
    from ipam.check import IPAM_PREFIX, judge
    from ipam.reclaim import departure_marks, release
    from store.api import StoreError, open_store

    if args.release and not args.yes:
        print("berth ipam check: --release frees addresses; add --yes to confirm", file=sys.stderr)
        return 2
    try:
        lists = load_lists(args.valid_attachments)
        store = open_store(args.store)
    except (ValueError, OSError, StoreError) as exc:
        print(f"berth ipam check: {exc}", file=sys.stderr)
        return 2
    try:
        kvs, revision = store.get_prefix(IPAM_PREFIX)
        report = judge(kvs, revision, read_liveness(store, kvs, lists), time.time(), args.min_age)
        marks = departure_marks(kvs)
        freed, blocks, skipped = release(store, report, report.leaked, marks) if args.release else ([], [], [])
    except StoreError as exc:
        print(f"berth ipam check: {args.store}: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    doc = as_document(report, freed, blocks, skipped, marks)
    print(json.dumps(doc, indent=2, sort_keys=True) if args.json else render(doc))
    remaining = len(report.leaked) - len(freed)
    return 1 if remaining or report.duplicates else 0
