"""Cluster IPAM's block model, pure: a pool split into blocks, records as the datastore holds them, and which
address to try next. No store, no clock, no randomness of its own (both are passed in).

Calico's model: a range set is cut into aligned blocks (``/26`` for IPv4 and ``/122`` for IPv6 unless the config
says otherwise; never wider than a range's own subnet); a host claims whole blocks and allocates inside them,
and takes a free address from another host's block (borrows) only when every block of the pool is claimed.
A released address is quarantined: it stays recorded, with the time it was freed, until the quarantine has
passed, so a slow DEL of an old container cannot collide with the new one that got its address.
"""
from __future__ import annotations

import ipaddress
import json
import random
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

from .addresses import IPAddress, IPNetwork
from .allocator import usable
from .config import Range, RangeSet

SMALL_POOL = 4096  # blocks: up to this many are listed and shuffled; more are sampled at random


def block_name(block: IPNetwork) -> str:
    """A block as a key component: ``10.1.0.64_26`` (no slash inside a key path)."""
    return f"{block.network_address}_{block.prefixlen}"


def parse_block_name(name: str) -> IPNetwork:
    address, _, length = name.partition("_")
    return ipaddress.ip_network(f"{address}/{length}")


@dataclass(frozen=True)
class BlockPool:
    """One range set cut into blocks of ``prefixlen`` (per range: at most as wide as the range's subnet)."""

    range_set: RangeSet
    prefixlen: int

    def _length(self, r: Range) -> int:
        return max(self.prefixlen, r.subnet.prefixlen)

    def block_of(self, ip: IPAddress) -> IPNetwork | None:
        r = self.range_set.range_for(ip)
        if r is None:
            return None
        return ipaddress.ip_network(f"{ip}/{self._length(r)}", strict=False)

    def _runs(self) -> list[tuple[Range, int, int]]:
        """Per range: (range, first block's integer address, number of blocks)."""
        runs = []
        for r in self.range_set.ranges:
            size = 1 << (r.subnet.max_prefixlen - self._length(r))
            first = int(r.range_start) // size * size
            runs.append((r, first, (int(r.range_end) - first) // size + 1))
        return runs

    def block_count(self) -> int:
        return sum(count for _r, _first, count in self._runs())

    def block_at(self, index: int) -> IPNetwork:
        for r, first, count in self._runs():
            if index < count:
                length = self._length(r)
                size = 1 << (r.subnet.max_prefixlen - length)
                return ipaddress.ip_network((first + index * size, length))
            index -= count
        raise IndexError(index)

    def holds(self, block: IPNetwork) -> bool:
        """Whether ``block`` is one of this pool's (a network's claims list every range set's blocks)."""
        return any(r.version == block.version and block.subnet_of(r.subnet) and block.prefixlen == self._length(r)
                   for r in self.range_set.ranges)

    def addresses(self, block: IPNetwork) -> Iterator[tuple[Range, IPAddress]]:
        """Every address of ``block`` that may be handed out, in order, with the range it belongs to."""
        for r in self.range_set.ranges:
            if r.version != block.version or not block.subnet_of(r.subnet):
                continue
            low = max(int(block.network_address), int(r.range_start))
            high = min(int(block.broadcast_address), int(r.range_end))
            for value in range(low, high + 1):
                ip = ipaddress.ip_address(value)
                if usable(r, ip):
                    yield r, ip

    def unclaimed(self, claimed: set[IPNetwork], rng: random.Random, limit: int = 64) -> list[IPNetwork]:
        """Up to ``limit`` blocks nobody claimed, in random order (hosts claiming at once rarely collide)."""
        count = self.block_count()
        if count <= SMALL_POOL:
            free = [b for b in (self.block_at(i) for i in range(count)) if b not in claimed]
            free = list(dict.fromkeys(free))  # two ranges of one subnet may share a block
            rng.shuffle(free)
            return free[:limit]
        picked: dict[IPNetwork, None] = {}
        for _ in range(limit * 4):
            block = self.block_at(rng.randrange(count))
            if block not in claimed:
                picked[block] = None
            if len(picked) >= limit:
                break
        return list(picked)


@dataclass(frozen=True)
class BlockClaim:
    """The value of a block's key: who owns it. ``token`` makes each claim's bytes unique (so a claim whose
    answer was lost can be recognised as ours when read back)."""

    host: str
    token: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "BlockClaim":
        raw = json.loads(data)
        return cls(str(raw["host"]), str(raw["token"]))


@dataclass(frozen=True)
class AddressRecord:
    """The value of an address's key: the attachment holding it, or (``released_at`` set) the one that held it
    until then, kept through the quarantine. DEL, CHECK and GC need nothing but these records."""

    container_id: str
    ifname: str
    network: str
    host: str
    token: str
    released_at: float | None = None
    taken_at: float = 0.0  # wall clock when it was handed out: ``berth ipam check`` never frees a fresh one

    @property
    def held(self) -> bool:
        return self.released_at is None

    def free_at(self, quarantine: float) -> float:
        """When the address may be handed out again (``inf`` while it is held)."""
        return float("inf") if self.released_at is None else self.released_at + quarantine

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "AddressRecord":
        raw = json.loads(data)
        released = raw.get("released_at")
        return cls(str(raw["container_id"]), str(raw["ifname"]), str(raw["network"]), str(raw["host"]),
                   str(raw["token"]), None if released is None else float(released), float(raw.get("taken_at", 0)))


def read_record(data: bytes, network: str) -> AddressRecord:
    """A stored address record; one that cannot be read counts as held by nobody known (never handed out)."""
    try:
        return AddressRecord.from_json(data)
    except (ValueError, KeyError, TypeError):
        return AddressRecord("?", "", network, "?", "unreadable")


def read_claim(data: bytes) -> BlockClaim:
    """A stored block claim; one that cannot be read counts as another host's (its block is never claimed over)."""
    try:
        return BlockClaim.from_json(data)
    except (ValueError, KeyError, TypeError):
        return BlockClaim("?", "unreadable")


@dataclass(frozen=True)
class PoolPolicy:
    """How a network's released and departed addresses come back, the same on every host: it is stored with the
    pool (set by the first host's config, changed with ``berth ipam pool``), so no host can hand an address out
    earlier than another would."""

    quarantine: float = 60.0             # seconds a released address waits before it is handed out again
    release_departed_after: float = 0.0  # seconds a departed host's unvouched addresses are kept (0: until
                                         # ``berth ipam check --release`` frees them)


def pool_definition(range_sets: Sequence[RangeSet], sizes: Sequence[int], policy: PoolPolicy = PoolPolicy()) -> bytes:
    """What every host of a network must agree on: the ranges, the block sizes they are cut by, and the policy."""
    sets = [[f"{r.subnet} {r.range_start}-{r.range_end} gw {r.gateway}" for r in rs.ranges] for rs in range_sets]
    return json.dumps({"rangeSets": sets, "blockSizes": list(sizes), "quarantine": policy.quarantine,
                       "releaseDepartedAfter": policy.release_departed_after}, sort_keys=True).encode()


def pool_shape(data: bytes) -> tuple:
    """The part of a definition no host may see differently: ranges and block sizes."""
    raw = json.loads(data)
    return raw["rangeSets"], raw["blockSizes"]


def parse_pool_policy(data: bytes) -> PoolPolicy:
    """A stored definition's policy (one written before the policy was stored has the defaults)."""
    raw = json.loads(data)
    default = PoolPolicy()
    return PoolPolicy(float(raw.get("quarantine", default.quarantine)),
                      float(raw.get("releaseDepartedAfter", default.release_departed_after)))


def with_policy(data: bytes, policy: PoolPolicy) -> bytes:
    """A stored definition with its policy replaced (``berth ipam pool``)."""
    raw = json.loads(data)
    raw.update(quarantine=policy.quarantine, releaseDepartedAfter=policy.release_departed_after)
    return json.dumps(raw, sort_keys=True).encode()


def parse_pool_definition(data: bytes) -> list[BlockPool]:
    """The pools a network's definition describes (for ``berth ipam check``, which has no CNI config)."""
    raw = json.loads(data)
    pools = []
    for ranges, size in zip(raw["rangeSets"], raw["blockSizes"]):
        parsed = []
        for text in ranges:
            subnet, span, _gw, gateway = text.split()
            start, end = span.split("-")
            parsed.append(Range(ipaddress.ip_network(subnet), ipaddress.ip_address(start), ipaddress.ip_address(end),
                                ipaddress.ip_address(gateway)))
        pools.append(BlockPool(RangeSet(tuple(parsed)), int(size)))
    return pools


def free_in_block(pool: BlockPool, block: IPNetwork, records: dict[IPAddress, AddressRecord], now: float,
                  quarantine: float) -> list[tuple[Range, IPAddress]]:
    """The addresses of ``block`` that are neither held nor still in quarantine at ``now``."""
    out = []
    for r, ip in pool.addresses(block):
        record = records.get(ip)
        if record is None or record.free_at(quarantine) <= now:
            out.append((r, ip))
    return out


def order_blocks(claims: dict[IPNetwork, BlockClaim], host: str) -> tuple[list[IPNetwork], list[IPNetwork]]:
    """(this host's blocks, every other host's) — the first to fill, the second to borrow from."""
    own = sorted(b for b, claim in claims.items() if claim.host == host)
    others = sorted(b for b, claim in claims.items() if claim.host != host)
    return own, others


def blocks_to_give_back(pool: BlockPool, claims: dict[IPNetwork, BlockClaim], host: str,
                        emptied: Sequence[IPNetwork]) -> list[IPNetwork]:
    """Of the ``emptied`` blocks (``host``'s, nothing held in them any more), those it gives back so another host
    can claim them: all but one, as Calico frees an empty block's affinity, keeping one so a host whose only
    container comes and goes does not claim and give up a block every time."""
    own = [b for b, claim in claims.items() if claim.host == host and pool.holds(b)]
    emptied = sorted(b for b in set(emptied) if b in own)
    keep = 0 if len(own) > len(emptied) else 1
    return emptied[keep:]


def spread(candidates: Sequence[tuple[Range, IPAddress]], rng: random.Random) -> list[tuple[Range, IPAddress]]:
    """Free addresses in random order: parallel ADDs on one host then rarely race for the same one."""
    out = list(candidates)
    rng.shuffle(out)
    return out
