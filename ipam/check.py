"""``berth ipam check``'s judgement, pure: one snapshot of cluster IPAM's keys (and of who is alive) in, a report out.

An address is *leaked* when its attachment is gone and nobody will free it:
- ``unlisted``: its host's runtime gave its list of attachments (the GC data, ``cni.dev/valid-attachments``)
  and this one is not on it;
- ``departed``: its host is not live (neither its IPAM lease nor a discovery agent of that name) and no live
  agent registers its container or its address.
Nothing younger than ``min_age`` is ever leaked (an ADD in flight is on no list yet), nor an address a live
agent's endpoint names: those attachments might still be live. A *duplicate* is one address held twice (two
networks whose pools overlap) or held by one container while a live agent registers it for another.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .blocks import (AddressRecord, BlockClaim, BlockPool, PoolPolicy, parse_block_name, parse_pool_definition,
                     parse_pool_policy)
from .addresses import IPAddress

IPAM_PREFIX = "/berth/ipam/"


@dataclass(frozen=True)
class Held:
    network: str
    address: IPAddress
    block: str
    record: AddressRecord
    key: str
    mod_revision: int


@dataclass(frozen=True)
class Leak:
    held: Held
    reason: str  # "unlisted" | "departed"


@dataclass(frozen=True)
class BlockUsage:
    network: str
    block: str
    owner: str
    owner_live: bool
    held: int
    quarantined: int
    capacity: int
    key: str = ""
    mod_revision: int = 0


@dataclass(frozen=True)
class Liveness:
    """Who may still hold attachments: live IPAM hosts and agents, the endpoints live agents register, and the
    runtimes' own attachment lists per host (``(container ID, ifname)``; only for hosts given)."""

    hosts: frozenset[str] = frozenset()
    endpoint_containers: Mapping[str, str] = field(default_factory=dict)   # container ID -> host of its agent
    endpoint_addresses: Mapping[IPAddress, str] = field(default_factory=dict)  # address -> container ID
    runtime_lists: Mapping[str, frozenset[tuple[str, str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    revision: int
    blocks: tuple[BlockUsage, ...]
    held: tuple[Held, ...]
    leaked: tuple[Leak, ...]
    duplicates: tuple[str, ...]
    problems: tuple[str, ...]

    @property
    def ownerless(self) -> tuple[BlockUsage, ...]:
        return tuple(b for b in self.blocks if not b.owner_live)

    def hosts(self) -> dict[str, dict[str, int]]:
        """Per host: blocks owned and addresses held (its own blocks and borrowed ones together)."""
        out: dict[str, dict[str, int]] = {}
        for usage in self.blocks:
            out.setdefault(usage.owner, {"blocks": 0, "held": 0})["blocks"] += 1
        for held in self.held:
            out.setdefault(held.record.host, {"blocks": 0, "held": 0})["held"] += 1
        return out


def judge(kvs: Sequence, revision: int, live: Liveness, now: float, min_age: float) -> Report:
    """The report for ``kvs`` (every key under ``/berth/ipam/``, read at ``revision``)."""
    problems: list[str] = []
    pools: dict[str, list[BlockPool]] = {}
    claims: dict[tuple[str, str], tuple[BlockClaim, object]] = {}
    records: list[Held] = []
    released: list[tuple[str, str, AddressRecord]] = []
    policies: dict[str, PoolPolicy] = {}
    for kv in kvs:
        parts = kv.key[len(IPAM_PREFIX):].split("/")
        try:
            if parts[0] != "networks" or len(parts) < 3:
                continue
            network, kind = parts[1], parts[2]
            if kind == "pool":
                pools[network] = parse_pool_definition(kv.value)
                policies[network] = parse_pool_policy(kv.value)
            elif kind == "blocks":
                claims[(network, parts[3])] = (BlockClaim.from_json(kv.value), kv)
            elif kind == "ips":
                record = AddressRecord.from_json(kv.value)
                if record.held:
                    records.append(Held(network, ipaddress.ip_address(parts[4]), parts[3], record, kv.key,
                                        kv.mod_revision))
                else:
                    released.append((network, parts[3], record))
        except (ValueError, KeyError, IndexError) as exc:
            problems.append(f"{kv.key}: {type(exc).__name__}: {exc}")
    quarantined: dict[tuple[str, str], int] = {}
    for network, block, record in released:  # still in quarantine by its pool's policy
        if record.free_at(policies.get(network, PoolPolicy()).quarantine) > now:
            quarantined[(network, block)] = quarantined.get((network, block), 0) + 1
    held_in: dict[tuple[str, str], int] = {}
    for held in records:
        held_in[(held.network, held.block)] = held_in.get((held.network, held.block), 0) + 1
    blocks = []
    for (network, name), (claim, kv) in sorted(claims.items()):
        block = parse_block_name(name)
        capacity = sum(sum(1 for _ in pool.addresses(block)) for pool in pools.get(network, []) if pool.holds(block))
        blocks.append(BlockUsage(network, name, claim.host, claim.host in live.hosts, held_in.get((network, name), 0),
                                 quarantined.get((network, name), 0), capacity, kv.key, kv.mod_revision))
    return Report(revision, tuple(blocks), tuple(records), tuple(_leaks(records, live, now, min_age)),
                  tuple(_duplicates(records, live)), tuple(problems))


def _leaks(records: Sequence[Held], live: Liveness, now: float, min_age: float) -> list[Leak]:
    leaks = []
    for held in records:
        record = held.record
        if now - record.taken_at < min_age:
            continue  # an ADD may be in flight: no runtime lists it yet
        if record.container_id in live.endpoint_containers or held.address in live.endpoint_addresses:
            continue  # a live agent says the container is there
        listed = live.runtime_lists.get(record.host)
        if listed is not None and (record.container_id, record.ifname) not in listed:
            leaks.append(Leak(held, "unlisted"))
        elif record.host not in live.hosts:
            leaks.append(Leak(held, "departed"))
    return leaks


def _duplicates(records: Sequence[Held], live: Liveness) -> list[str]:
    found = []
    by_address: dict[IPAddress, list[Held]] = {}
    for held in records:
        by_address.setdefault(held.address, []).append(held)
    for address, holders in sorted(by_address.items()):
        if len(holders) > 1:
            who = ", ".join(f"{h.record.container_id} on {h.record.host} ({h.network})" for h in holders)
            found.append(f"{address} is held {len(holders)} times: {who}")
        registered = live.endpoint_addresses.get(address)
        if registered and all(h.record.container_id != registered for h in holders):
            found.append(f"{address} is held by {holders[0].record.container_id} but a live agent registers it "
                         f"for {registered}")
    return found


def releasable_blocks(report: Report, freed: set[tuple[str, IPAddress]]) -> list[BlockUsage]:
    """Blocks of owners that are not live with nothing held once ``freed`` is freed: their claims can go (the
    quarantined records stay and keep their addresses out of use until their time has passed)."""
    still = {}
    for held in report.held:
        if (held.network, held.address) not in freed:
            still[(held.network, held.block)] = True
    return [b for b in report.ownerless if (b.network, b.block) not in still]
