"""What following cluster IPAM costs the overlay daemon, pure (no kernel, no store): per watch batch, the reducer's
step (``BlockView.apply``) and the routes it implies (``block_routes``), for a cluster of ``--hosts`` hosts with
``--blocks`` claimed /26 blocks and ``--addresses`` held addresses, ``--borrowed`` of them borrowed.

Most batches are an ADD or a DEL inside a host's own block: the reducer must say "nothing to route" quickly.
Run: ``.venv/bin/python bench/overlay_blocks_bench.py [--hosts 16] [--blocks 256] [--addresses 8000]``
"""
from __future__ import annotations

import argparse
import ipaddress
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ipam.blocks import AddressRecord, BlockClaim, block_name  # noqa: E402
from overlay.blocks import IPAM_NETWORKS_PREFIX, BlockView, block_routes  # noqa: E402
from overlay.lease import SubnetLease  # noqa: E402

NET = IPAM_NETWORKS_PREFIX + "bench/"


def listing(hosts: int, blocks: int, addresses: int, borrowed: int):
    pool = ipaddress.ip_network("10.0.0.0/8")
    cut = list(pool.subnets(new_prefix=26))[:blocks]
    items = [SimpleNamespace(key=f"{NET}blocks/{block_name(b)}", value=BlockClaim(f"h{i % hosts}", "t").to_json())
             for i, b in enumerate(cut)]
    per_block = max(1, addresses // blocks)
    for i, b in enumerate(cut):
        for j in range(per_block):
            holder = f"h{(i + (1 if i * per_block + j < borrowed else 0)) % hosts}"
            ip = b.network_address + 2 + j
            items.append(SimpleNamespace(key=f"{NET}ips/{block_name(b)}/{ip}",
                                         value=AddressRecord("c", "eth0", "bench", holder, "t").to_json()))
    return cut, items


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=256)
    parser.add_argument("--addresses", type=int, default=8000)
    parser.add_argument("--borrowed", type=int, default=100)
    parser.add_argument("--batches", type=int, default=200)
    args = parser.parse_args()
    cut, items = listing(args.hosts, args.blocks, args.addresses, args.borrowed)
    peers = [SubnetLease(ipaddress.IPv4Network(f"10.255.{i}.0/24"), ipaddress.IPv4Address(f"192.168.0.{i + 1}"),
                         f"02:00:00:00:00:{i:02x}", 1, ipam_host=f"h{i}") for i in range(args.hosts)]
    view = BlockView()
    started = time.perf_counter()
    snapshot = view.reset(items)
    reset_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    routes = block_routes(snapshot, peers, "h0", "berth.1")
    routes_ms = (time.perf_counter() - started) * 1000
    steps = []
    for n in range(args.batches):  # an ADD in h1's block: a record written, nothing to route
        block = cut[1]
        ip = block.network_address + 60 - (n % 2)
        record = AddressRecord("c", "eth0", "bench", "h1", f"t{n}").to_json()
        event = SimpleNamespace(kind="put", key=f"{NET}ips/{block_name(block)}/{ip}", value=record)
        started = time.perf_counter()
        changed = view.apply(SimpleNamespace(events=[event]))
        steps.append((time.perf_counter() - started) * 1000)
        assert changed is None
    print(f"{args.hosts} hosts, {len(cut)} blocks, {len(items) - len(cut)} addresses ({args.borrowed} borrowed): "
          f"{len(routes)} routes on h0")
    print(f"  listing -> view: {reset_ms:.1f} ms; view -> routes: {routes_ms:.1f} ms")
    print(f"  one ADD inside a host's own block (reducer step, nothing to route): median "
          f"{statistics.median(steps):.2f} ms, max {max(steps):.2f} ms over {len(steps)} batches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
