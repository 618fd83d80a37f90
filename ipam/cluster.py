"""Cluster IPAM's store side: the reservation-store interface (:mod:`ipam.store`) over the shared datastore.

Keys (all under ``/berth/ipam/``)::

    hosts/<host>                                   liveness, under the host's lease (kept by store.keeper)
    departed/<host>                                when a host was first seen gone (ipam.reclaim)
    networks/<net>/pool                            the pool's definition, so every host cuts it the same way
    networks/<net>/blocks/<block>                  BlockClaim: the owning host (no lease: a dead host's
                                                   blocks stay until ``berth ipam check --release``)
    networks/<net>/ips/<block>/<ip>                AddressRecord: held by an attachment, or quarantined
    networks/<net>/attachments/<cid>/<ifname>/<ip> index for DEL, CHECK and GC

A block is claimed by create-if-absent; an address is taken by one transaction that compares the block's claim
(unchanged since read) and the address's record (absent, or a quarantine that has run out) and writes both the
record and the attachment's index entry. Every record carries a fresh token, so a write whose answer was lost
is recognised when read back (store.etcd). No lock is needed: the compare-and-swap decides.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import random
import secrets
import time
from typing import Callable, Iterable, Iterator

from store.api import Compare, Delete, LeaseNotFound, Put, Store, StoreError, open_store
from store.keeper import LeaseKeeper
from store.machine import machine_id, other_machine

from .blocks import (AddressRecord, BlockClaim, BlockPool, PoolPolicy, block_name, blocks_to_give_back,
                     free_in_block, order_blocks,
                     parse_block_name, parse_pool_policy, pool_definition, pool_shape, read_claim, read_record,
                     spread)
from .addresses import IPAddress, IPNetwork
from .config import ClusterConfig, IpamConfig, Range, RangeSet
from .disk import DiskStore
from .errors import ConfigError, StoreBusy, StoreFailure
from .store import Attachment

PREFIX = "/berth/ipam/"
RESERVE_TRIES = 4  # a reserve whose compare failed re-reads and tries again while the address still looks free


def host_key(host: str) -> str:
    return f"{PREFIX}hosts/{host}"


def departed_key(host: str) -> str:
    return f"{PREFIX}departed/{host}"


def host_record(host: str, now: float, machine: str) -> bytes:
    """The value of a host's liveness key (written here on CNI calls and by ``berth overlay`` while it runs)."""
    return json.dumps({"host": host, "since": now, "machine": machine}).encode()


def live_elsewhere(value: bytes, machine: str) -> str | None:
    """The other machine's ID if a live liveness key says this host name is in use there (two hosts configured
    with one name would share blocks silently, and the overlay would route them to one of the two)."""
    try:
        return other_machine(str(json.loads(value).get("machine", "")), machine)
    except (ValueError, AttributeError):
        return None


def name_taken(host: str, other: str) -> str:
    return (f"ipam.host: {host!r} is live on another machine (machine ID {other}); every host needs a name of "
            f"its own")


def network_prefix(network: str) -> str:
    return f"{PREFIX}networks/{network}/"




@contextlib.contextmanager
def store_errors(what: str) -> Iterator[None]:
    """Datastore failures as the IPAM library's: retryable ones say "try again later" (CNI 11)."""
    try:
        yield
    except StoreError as exc:
        if exc.retryable:
            raise StoreBusy(f"cluster IPAM: {what}: {exc}") from exc
        raise StoreFailure(f"cluster IPAM: {what}: {exc}") from exc


def quarantined(record: AddressRecord, now: float) -> AddressRecord:
    """``record`` released at ``now``, with a fresh token (a release whose answer was lost is read back)."""
    return AddressRecord(record.container_id, record.ifname, record.network, record.host, secrets.token_hex(8),
                         released_at=now, taken_at=record.taken_at)


class ClusterStore:
    """One network's reservations in the datastore, as seen by one host. One instance per operation."""

    def __init__(self, cfg: IpamConfig, store: Store | None = None, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        if cfg.cluster is None:
            raise ValueError("ClusterStore needs a config with 'store' set")
        self.cfg = cfg
        self.cluster: ClusterConfig = cfg.cluster
        self.host = self.cluster.host
        self.network = cfg.network
        self.prefix = network_prefix(cfg.network)
        self.pools = [BlockPool(rs, self.cluster.block_size(rs.version)) for rs in cfg.range_sets]
        self.clock = clock
        self.rng = rng or random.Random()
        self.machine = machine_id()
        self._store: Store | None = store  # given: used as is (tests); else one opened per session
        self._claims: dict[IPNetwork, object] = {}  # block -> its KeyValue as last read
        self._policy: PoolPolicy | None = None  # the stored pool's, read once per operation

    # -- sessions ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _session(self) -> Iterator[Store]:
        if self._store is not None:
            yield self._store
            return
        with store_errors(f"open {self.cluster.store_url}"):
            opened = open_store(self.cluster.store_url)
        self._store = opened
        try:
            yield opened
        finally:
            self._store = None
            opened.close()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The host's lock of this network (host-local's flock under ``dataDir``: operations of one host go one
        at a time, as Calico's plugin does, so parallel ADDs fill one block instead of each claiming its own;
        hosts never wait for each other, compare-and-swap decides between them), one store session, the pool
        checked against the store's definition and the host's liveness lease refreshed."""
        with DiskStore(self.network, self.cfg.data_dir).lock(), self._session(), store_errors("prepare"):
            self._ensure_pool()
            self._refresh_host()
            yield

    def exists(self) -> bool:
        return True

    def check_usable(self) -> None:
        with self._session() as store, store_errors("read the pool"):
            store.get(self.prefix + "pool")

    def _ensure_pool(self) -> None:
        """The network's stored definition created from this config, or checked against it: the ranges and
        block sizes must be the same; the policy must be too where this config names it, else the pool's holds."""
        store = self._store
        key = self.prefix + "pool"
        default = PoolPolicy()
        mine = PoolPolicy(default.quarantine if self.cluster.quarantine is None else self.cluster.quarantine,
                          self.cluster.release_departed_after or 0.0)
        wanted = pool_definition(self.cfg.range_sets, [p.prefixlen for p in self.pools], mine)
        current = store.get(key)
        if current is None and store.create(key, wanted):
            self._policy = mine
            return
        current = current or store.get(key)
        if current is None:
            raise StoreBusy(f"cluster IPAM: the pool of {self.network!r} was created and deleted meanwhile")
        if pool_shape(current.value) != pool_shape(wanted):
            raise ConfigError(f"ipam.ranges: network {self.network!r} is defined differently in the store "
                              f"({current.value.decode(errors='replace')}); this config says {wanted.decode()}")
        stored = parse_pool_policy(current.value)
        for field, key_name in (("quarantine", "quarantine"), ("release_departed_after", "releaseDepartedAfter")):
            named = getattr(self.cluster, field)
            if named is not None and named != getattr(stored, field):
                raise ConfigError(f"ipam.{key_name}: network {self.network!r}'s pool says {getattr(stored, field):g}"
                                  f"; this config says {named:g} (leave it out to take the pool's, or change the "
                                  f"pool with `berth ipam pool`)")
        self._policy = stored

    @property
    def quarantine(self) -> float:
        """The pool's quarantine (read from the store when no lock() has read it yet)."""
        if self._policy is None:
            kv = self._store.get(self.prefix + "pool")
            self._policy = parse_pool_policy(kv.value) if kv is not None else PoolPolicy(
                self.cluster.quarantine if self.cluster.quarantine is not None else PoolPolicy().quarantine)
        return self._policy.quarantine

    def _refresh_host(self) -> None:
        """The host's liveness key under its lease: the lease renewed if alive, else a new one granted."""
        store = self._store
        key = host_key(self.host)
        kv = store.get(key)
        other = live_elsewhere(kv.value, self.machine) if kv is not None else None
        if other is not None:
            raise ConfigError(name_taken(self.host, other))
        keeper = LeaseKeeper(store, self.cluster.host_ttl, name=f"ipam-host-{self.host}")
        lease = keeper.acquire(reuse=kv.lease if kv is not None else 0)
        if kv is None or kv.lease != lease:
            value = host_record(self.host, self.clock(), self.machine)
            try:
                store.put(key, value, lease=lease)
            except LeaseNotFound:  # it ran out between the grant and the write: once more with a fresh one
                store.put(key, value, lease=keeper.acquire())
            store.delete(departed_key(self.host))  # back: a departure clock started while away starts again

    # -- keys -------------------------------------------------------------------------------------------
    def _block_of(self, ip: IPAddress) -> IPNetwork | None:
        return next((b for b in (p.block_of(ip) for p in self.pools) if b is not None), None)

    def _block_key(self, block: IPNetwork) -> str:
        return f"{self.prefix}blocks/{block_name(block)}"

    def _ip_key(self, block: IPNetwork, ip: IPAddress) -> str:
        return f"{self.prefix}ips/{block_name(block)}/{ip}"

    def _attachment_prefix(self, attachment: Attachment) -> str:
        return f"{self.prefix}attachments/{attachment.container_id}/" + (
            f"{attachment.ifname}/" if attachment.ifname else "")

    # -- reading ----------------------------------------------------------------------------------------
    def _read_claims(self) -> dict[IPNetwork, BlockClaim]:
        kvs, _ = self._store.get_prefix(self.prefix + "blocks/")
        claims = {}
        for kv in kvs:
            block = parse_block_name(kv.key.rsplit("/", 1)[1])
            self._claims[block] = kv
            claims[block] = read_claim(kv.value)
        return claims

    def _records(self, block: IPNetwork) -> dict[IPAddress, tuple[object, AddressRecord]]:
        kvs, _ = self._store.get_prefix(f"{self.prefix}ips/{block_name(block)}/")
        return {ipaddress.ip_address(kv.key.rsplit("/", 1)[1]): (kv, read_record(kv.value, self.network)) for kv in kvs}

    def _free(self, pool: BlockPool, block: IPNetwork) -> list[tuple[Range, IPAddress]]:
        records = {ip: record for ip, (_kv, record) in self._records(block).items()}
        return spread(free_in_block(pool, block, records, self.clock(), self.quarantine), self.rng)

    # -- the Store protocol -----------------------------------------------------------------------------
    def candidates(self, range_set: RangeSet, idx: int) -> Iterator[tuple[Range, IPAddress]]:
        """This host's blocks first, then new blocks it claims, then (the pool otherwise full) borrowing."""
        pool = self.pools[idx]
        with store_errors("list blocks"):
            claims = {b: c for b, c in self._read_claims().items() if pool.holds(b)}
        own, others = order_blocks(claims, self.host)
        for block in own:
            with store_errors("read a block"):
                free = self._free(pool, block)
            yield from free
        claimed = set(claims)
        while batch := pool.unclaimed(claimed, self.rng):
            for block in batch:
                claimed.add(block)
                with store_errors("claim a block"):
                    won = self._claim(block)
                    free = self._free(pool, block) if won else []
                yield from free
        for block in others:
            with store_errors("read a block"):
                free = self._free(pool, block)
            yield from free

    def _claim(self, block: IPNetwork) -> bool:
        key = self._block_key(block)
        if not self._store.create(key, BlockClaim(self.host, secrets.token_hex(8)).to_json()):
            return False
        self._claims[block] = self._store.get(key)
        return True

    def last_reserved(self, range_set: int) -> IPAddress | None:
        return None

    def reserve(self, attachment: Attachment, ip: IPAddress, range_set: int) -> bool:
        block = self._block_of(ip)
        if block is None:
            return False
        with store_errors(f"reserve {ip}"):
            return self._reserve(attachment, ip, block)

    def _reserve(self, attachment: Attachment, ip: IPAddress, block: IPNetwork) -> bool:
        store = self._store
        block_kv = self._claims.get(block)
        for _ in range(RESERVE_TRIES):
            if block_kv is None:
                block_kv = store.get(self._block_key(block))
                if block_kv is None:  # a requested address in a block nobody holds: claim it first
                    self._claim(block)
                    block_kv = store.get(self._block_key(block))
                    if block_kv is None:
                        continue
            ip_key = self._ip_key(block, ip)
            ip_kv = store.get(ip_key)
            quarantine = self.quarantine
            if ip_kv is not None and read_record(ip_kv.value, self.network).free_at(quarantine) > self.clock():
                return False
            token = secrets.token_hex(8)
            record = AddressRecord(attachment.container_id, attachment.ifname, self.network, self.host, token,
                                   taken_at=self.clock())
            writes = [Put(ip_key, record.to_json()), Put(self._attachment_prefix(attachment) + str(ip), token.encode())]
            if read_claim(block_kv.value).host != self.host:
                # borrowing: the claim is rewritten as it is, so whoever gives the block up (its owner emptying
                # it, or a reclaim of a departed owner), comparing the claim's revision, sees this address taken
                writes.append(Put(block_kv.key, block_kv.value))
            result = store.txn(
                [Compare(block_kv.key, "mod_revision", "=", block_kv.mod_revision),
                 Compare(ip_key, "mod_revision", "=", ip_kv.mod_revision if ip_kv is not None else 0)], writes)
            if result.succeeded:
                return True
            block_kv = None  # the block or the address changed under us: read both again
        return False

    def release(self, attachment: Attachment, ips: Iterable[IPAddress] | None = None) -> list[IPAddress]:
        wanted = None if ips is None else set(ips)
        freed: list[IPAddress] = []
        with self._session() as store, store_errors(f"release {attachment.container_id}"):
            kvs, _ = store.get_prefix(self._attachment_prefix(attachment))
            for kv in kvs:
                ifname, ip_text = kv.key.rsplit("/", 2)[1:]
                ip = ipaddress.ip_address(ip_text)
                if wanted is not None and ip not in wanted:
                    continue
                if self._release_one(store, Attachment(attachment.container_id, ifname), ip, kv.key):
                    freed.append(ip)
            if freed:
                self._give_back_emptied(store, freed)
        return freed

    def _give_back_emptied(self, store: Store, freed: list[IPAddress]) -> None:
        """This host's blocks the release emptied, given back (all but one: blocks.blocks_to_give_back). The
        claim goes by compare-and-swap at the revision read with the block's records, and a borrower rewrites
        the claim with each address it takes, so a block is never given up under an address just taken; its
        quarantined records stay and keep their addresses out of use for whoever claims it next."""
        touched = {b for b in (self._block_of(ip) for ip in freed) if b is not None}
        claims = self._read_claims()
        for pool in self.pools:
            emptied = {}
            for block in touched:
                kv, claim = self._claims.get(block), claims.get(block)
                if kv is None or claim is None or not pool.holds(block) or claim.host != self.host:
                    continue
                if not any(record.held for _kv, record in self._records(block).values()):
                    emptied[block] = kv
            for block in blocks_to_give_back(pool, claims, self.host, list(emptied)):
                kv = emptied[block]
                store.txn([Compare(kv.key, "mod_revision", "=", kv.mod_revision)], [Delete(kv.key)])

    def _release_one(self, store: Store, attachment: Attachment, ip: IPAddress, index_key: str) -> bool:
        """Quarantine ``ip`` if ``attachment`` holds it; the index entry goes either way."""
        block = self._block_of(ip)
        ip_key = self._ip_key(block, ip) if block is not None else None
        for _ in range(RESERVE_TRIES):
            ip_kv = store.get(ip_key) if ip_key else None
            record = read_record(ip_kv.value, self.network) if ip_kv is not None else None
            if record is None or not record.held or (record.container_id, record.ifname) != (
                    attachment.container_id, attachment.ifname):
                store.delete(index_key)
                return False
            released = quarantined(record, self.clock())
            if store.txn([Compare(ip_key, "mod_revision", "=", ip_kv.mod_revision)],
                         [Put(ip_key, released.to_json()), Delete(index_key)]).succeeded:
                return True
        raise StoreBusy(f"cluster IPAM: release {ip}: the record kept changing")

    def get(self, attachment: Attachment) -> list[IPAddress]:
        with self._session() as store, store_errors(f"read {attachment.container_id}"):
            kvs, _ = store.get_prefix(self._attachment_prefix(attachment))
        return [ipaddress.ip_address(kv.key.rsplit("/", 1)[1]) for kv in kvs
                if kv.key.rsplit("/", 2)[1] == attachment.ifname]

    def reservations(self) -> dict[IPAddress, Attachment]:
        """Every address held by an attachment of *this* host (GC is one runtime's view of its own)."""
        with self._session() as store, store_errors("list addresses"):
            kvs, _ = store.get_prefix(self.prefix + "ips/")
        out = {}
        for kv in kvs:
            record = read_record(kv.value, self.network)
            if record.held and record.host == self.host:
                out[ipaddress.ip_address(kv.key.rsplit("/", 1)[1])] = Attachment(record.container_id, record.ifname)
        return out

    def pool_reservations(self) -> list[IPAddress]:
        """Every address no host may take now (held, or still in quarantine), for STATUS: with borrowing, the
        network can serve an ADD while any address of the pool is free."""
        with self._session() as store, store_errors("list addresses"):
            kvs, _ = store.get_prefix(self.prefix + "ips/")
            quarantine = self.quarantine
        now = self.clock()
        return [ipaddress.ip_address(kv.key.rsplit("/", 1)[1]) for kv in kvs
                if read_record(kv.value, self.network).free_at(quarantine) > now]
