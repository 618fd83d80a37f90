"""The ZooKeeper backend: etcd's contract (global revisions, transactions, leases, watches from a revision)
built from ZooKeeper's znodes, versions and ``multi``.

ZooKeeper has no global revision and its watches are one-shot per node, so the store keeps its own
revision-ordered change log. Under the root (``/berth`` unless the URL names another):

* ``rev`` — the counter. Its znode *version* is the store's revision. Every write is one ``multi`` that sets
  it with ``version = the revision the writer read``, so writes are numbered 1, 2, 3... with no gap, and a
  write whose reads went stale (someone else wrote meanwhile) fails whole and is planned again.
* ``kv/<name>`` — one flat child per key, named by percent-encoding the key (``/`` and ``.`` too). Flat,
  because the contract's prefixes are string prefixes, not path segments (``a/b`` is under prefix ``a/``
  and ``a``): a prefix is listed by reading the child names once and filtering them. The data holds
  create/mod revision, version and lease, then the value. The cost: a listing reads every key's name, and
  ZooKeeper's ``jute.maxbuffer`` bounds that list (and every request), so the servers must run with
  ``-Djute.maxbuffer`` of at least 4 MiB (a 1 MiB value is written twice: in its node and in the log).
* ``log/r<revision>`` — one entry per revision, created in the same ``multi``, holding every event of that
  write with the key's full state after it and its previous mod revision. Watchers follow the log: they
  put a data watch on the counter (one-shot, re-armed on each read, and never relied on alone: a watch also
  re-reads the counter every half second) and read the entries after the last revision they delivered.
  Trimming old entries is compaction; ``compacted`` records how far it went, and a watch asked to start
  before it raises :class:`Compacted` (one that falls behind it re-lists and emits the difference).
* ``leases/<id>`` — application-level leases, not ZooKeeper sessions or TTL nodes: a session's ephemeral nodes vanish
  without passing through the log (watchers would miss the deletes), a session lives as long as its connection rather
  than until keep-alives stop, and ZooKeeper's minimum session timeout (two ticks) is longer than the TTLs Berth uses;
  TTL nodes (an extended type, off by default) are removed by the server's reaper on its own schedule, again outside
  the log. A lease node's data is its TTL; its ``mtime`` (the leader's clock when the last keep-alive set it) says
  when it was refreshed; its children name the keys it holds, kept in the same ``multi`` as the keys. Any client that
  touches the store (reads, writes, watches) sweeps at most every half second: it reads the leases, and when one is
  due by its estimate of the server's clock it sets ``clock`` to read the server's current time from its ``mtime``,
  then expires every lease whose ``mtime + TTL`` has passed with one ``multi`` that deletes its keys, logs the
  deletes, and removes the lease node only if its version is unchanged (a keep-alive in between wins). Servers' clocks
  must therefore agree to well within a TTL (NTP), as a leader change moves the clock.

Reads go to whichever server the session is on, so ``get`` is sequentially consistent, not linearizable
(etcd's default get is); writes and transactions, failed ones included, are checked at the leader.
A write whose answer was lost with the connection is resolved, not blindly retried: its log entry carries a
random token, and the writer looks for its own token at the revision it would have taken.

Trust: the store creates its nodes with ZooKeeper's open ACL, so who may write them is the deployment's
network and authentication policy; names Berth never makes (a stray node beside its own) are skipped.

Limits: every write reads the counter and the keys it touches in one round trip, then commits, so writes
cost two round trips and all of them go through one counter (as the SQLite backend's go through one lock);
a server whose ``jute.maxbuffer`` is too small for a request drops the connection, which the client sees
only as unavailability; a znode version is a signed 32-bit number, so a root takes 2**31 - 1 writes.

Files: ``zookeeper_client`` (kazoo with deadlines), ``zookeeper_codec`` (paths and encodings),
``zookeeper_txn`` (planning and committing one write, lost answers resolved), ``zookeeper_leases``, ``zookeeper_watch``.
"""
from __future__ import annotations

import logging
import math
import random
import time
from typing import Callable, Sequence
from urllib.parse import parse_qs, urlparse

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from store.api import (Compacted, Compare, Delete, InvalidRequest, KeyValue, Lease, Put, StoreError, StoreUnavailable,
                       TxnResult)
from store.common import (DerivedCalls, OpenWatches, check_compares, check_key, check_lease_id, check_ops,
                          check_revision, check_ttl, check_value, compare_holds)
from store.zookeeper_client import SESSION_TIMEOUT, Calls, connect
from store.zookeeper_codec import LogEntry, Paths, name_to_key, unpack_entry, unpack_node
from store.zookeeper_leases import ZkLeases
from store.zookeeper_txn import WriteConflict, WritePlan, commit

CALL_TIMEOUT = 5.0        # seconds one request may take
BUDGET = 15.0             # seconds a call keeps retrying through reconnects (an election takes a few seconds)
DEFAULT_ROOT = "/berth"
DEFAULT_HISTORY = 10_000  # revisions of change log kept for watches that fall behind
COMPACT_EVERY = 64        # revisions between automatic compactions
PIPELINE = 256            # requests sent together at most
log = logging.getLogger(__name__)


def parse_url(url: str) -> tuple[str, str, float, int, float]:
    """``zk://h:p[,h:p...][/root]``, optionally ``?timeout=SECONDS`` (the retry budget of one call),
    ``?history=N`` (revisions of change log kept for watches) and ``?session=SECONDS`` (the ZooKeeper session
    timeout: how long a silent client's ephemeral nodes, such as Curator instances, outlive it; the server
    bounds it to 2-20 ticks) → (hosts, root, budget, history, session)."""
    parsed = urlparse(url)
    if parsed.scheme != "zk" or not parsed.netloc:
        raise InvalidRequest(f"store URL {url!r}: expected zk://host:port[,host:port...][/root]")
    root = parsed.path.rstrip("/") or DEFAULT_ROOT
    if "//" in root or any(part in (".", "..") for part in root.split("/")[1:]):
        raise InvalidRequest(f"store URL {url!r}: the root must be a plain ZooKeeper path such as /berth")
    options = parse_qs(parsed.query)

    def seconds(name: str, default: float) -> float:
        try:
            value = float(options[name][-1]) if name in options else default
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise InvalidRequest(f"store URL {url!r}: {name} must be a positive number of seconds")
        return value

    history = DEFAULT_HISTORY
    if "history" in options:
        try:
            history = int(options["history"][-1])
        except ValueError:
            history = 0
        if history < COMPACT_EVERY:
            raise InvalidRequest(f"store URL {url!r}: history must be an integer of at least {COMPACT_EVERY}")
    return parsed.netloc, root, seconds("timeout", BUDGET), history, seconds("session", SESSION_TIMEOUT)


def _zk_watch(store, prefix: str, start_revision: int | None):
    from store.zookeeper_watch import ZkWatch  # imported with the first watch only

    return ZkWatch(store, prefix, start_revision)


class ZkStore(DerivedCalls):
    """Thread-safe: kazoo's client is shared by every thread."""

    def __init__(self, hosts: str, root: str = DEFAULT_ROOT, budget: float = BUDGET,
                 history: int = DEFAULT_HISTORY, call_timeout: float = CALL_TIMEOUT,
                 session_timeout: float = SESSION_TIMEOUT) -> None:
        self.hosts = hosts
        self.paths = Paths(root)
        self.history = history
        self.calls = Calls(connect(hosts, budget, session_timeout), hosts, call_timeout, budget)
        self._watches = OpenWatches(_zk_watch)
        self.leases = ZkLeases(self)
        try:
            self.calls.retrying("prepare layout", self._prepare_layout)
        except BaseException:
            self.calls.close()
            raise

    @classmethod
    def from_url(cls, url: str) -> "ZkStore":
        hosts, root, budget, history, session = parse_url(url)
        return cls(hosts, root, budget, history, session_timeout=session)

    @property
    def client(self):
        return self.calls.client

    def _prepare_layout(self) -> None:
        """Create the root's nodes that are missing. Every session starts here (a CNI call opens one), so the
        usual case, all of them there, costs one pipelined round of reads instead of a write per node."""
        found = self.calls.get_many([self.paths.root, *self.paths.layout()])
        missing = [path for path, hit in zip(self.paths.layout(), found[1:]) if hit is None]
        if found[0] is None:
            self.client.ensure_path(self.paths.root)
        for path in missing:
            try:
                self.calls.create(path, b"0" if path in (self.paths.counter, self.paths.compacted) else b"")
            except NodeExistsError:
                pass

    # -- reading -----------------------------------------------------------------------------------------

    def revision(self, watch: Callable | None = None) -> int:
        return self.calls.retrying("read revision", lambda: self.calls.get(self.paths.counter, watch)[1].version)

    def revision_and_keys(self, keys: list[str]) -> tuple[int, list[KeyValue | None]]:
        """The revision, then ``keys`` as they are at it or later, in one round trip (a session's requests
        are answered in order, so the key reads see at least the state the counter read saw)."""
        found = self.calls.retrying("get", lambda: self.calls.get_many(
            [self.paths.counter, *(self.paths.key(key) for key in keys)]))
        if found[0] is None:
            raise StoreError(f"zookeeper {self.hosts}: {self.paths.counter} is missing: not a Berth store root")
        return found[0][1].version, [unpack_node(key, hit[0]) if hit else None for key, hit in zip(keys, found[1:])]

    def read_keys(self, keys: list[str]) -> list[KeyValue | None]:
        results: list[KeyValue | None] = []
        for start in range(0, len(keys), PIPELINE):
            chunk = keys[start:start + PIPELINE]
            found = self.calls.retrying("get", lambda: self.calls.get_many([self.paths.key(k) for k in chunk]))
            results += [unpack_node(key, hit[0]) if hit else None for key, hit in zip(chunk, found)]
        return results

    def key_names(self) -> list[str]:
        """Every key the store holds (decoded), in no order."""
        names = self.calls.retrying("list keys", lambda: self.calls.children(self.paths.keys))
        return [key for key in map(name_to_key, names) if key is not None]

    def revision_and_names(self) -> tuple[int, list[str]]:
        """The revision, then every key's name as it is at it or later, in one round trip."""
        def attempt():
            counter = self.client.get_async(self.paths.counter)
            names = self.client.get_children_async(self.paths.keys)
            return self.calls.wait(counter, "read revision")[1].version, self.calls.wait(names, "list keys")

        revision, names = self.calls.retrying("list keys", attempt)
        return revision, [key for key in map(name_to_key, names) if key is not None]

    def keys_and_revision(self, keys: list[str]) -> tuple[list[KeyValue | None], int]:
        """``keys``, then the revision as it is after those reads, the last reads and the revision sent
        together (answered in order, so the revision is never older than what the reads saw)."""
        split = max(0, len(keys) - PIPELINE + 1)
        found = self.read_keys(keys[:split])
        last = keys[split:]
        hits = self.calls.retrying("get", lambda: self.calls.get_many([*map(self.paths.key, last), self.paths.counter]))
        if hits[-1] is None:
            raise StoreError(f"zookeeper {self.hosts}: {self.paths.counter} is missing: not a Berth store root")
        return found + [unpack_node(key, hit[0]) if hit else None for key, hit in zip(last, hits)], hits[-1][1].version

    def revision_and_entry(self, revision: int, watch: Callable) -> tuple[int, list[LogEntry] | None]:
        """The current revision (arming ``watch`` on the counter) and, in the same round trip, the log entry
        of ``revision``: a watcher woken by one write needs nothing more. None for an entry that is gone."""
        def attempt():
            counter = self.client.get_async(self.paths.counter, watch=watch)
            entry = self.client.get_async(self.paths.entry(revision))
            current = self.calls.wait(counter, "read revision")[1].version
            try:
                return current, [unpack_entry(self.calls.wait(entry, "read change log")[0])]
            except NoNodeError:
                return current, None

        return self.calls.retrying("follow change log", attempt)

    def read_entries(self, first: int, last: int) -> list[LogEntry] | None:
        """Log entries ``first..last``; None when one is gone (compacted)."""
        entries: list[LogEntry] = []
        for start in range(first, last + 1, PIPELINE):
            revisions = range(start, min(last, start + PIPELINE - 1) + 1)
            found = self.calls.retrying("read change log", lambda: self.calls.get_many(
                [self.paths.entry(revision) for revision in revisions]))
            if any(hit is None for hit in found):
                return None
            entries += [unpack_entry(hit[0]) for hit in found]
        return entries

    def compacted_revision(self) -> int:
        return int(self.calls.retrying("read compaction", lambda: self.calls.get(self.paths.compacted))[0] or 0)

    def lease_exists(self, lease_id: int) -> bool:
        return self.calls.retrying("check lease", lambda: self.client.exists_async(
            self.paths.lease(lease_id)).get(timeout=self.calls.call_timeout)) is not None

    def get(self, key: str) -> KeyValue | None:
        check_key(key)
        self.sweep_leases()
        return self.read_keys([key])[0]

    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        check_key(prefix, "prefix")
        self.sweep_leases()
        return self.snapshot(prefix)

    def snapshot(self, prefix: str) -> tuple[list[KeyValue], int]:
        """The keys under ``prefix`` exactly as they stood at the revision returned, in two round trips.

        The listing and the node reads happen between two reads of the counter; when it moved meanwhile,
        the log entries in between say what each touched key was at the later revision."""
        deadline = time.monotonic() + self.calls.budget
        while True:
            first, names = self.revision_and_names()
            found, last = self.keys_and_revision([key for key in names if key.startswith(prefix)])
            state = {kv.key: kv for kv in found if kv is not None}
            entries = self.read_entries(first + 1, last) if last > first else []
            if entries is not None:
                for entry in entries:
                    for event in entry.events:
                        if not event.key.startswith(prefix):
                            continue
                        if event.after is None:
                            state.pop(event.key, None)
                        else:
                            state[event.key] = event.after
                return [state[key] for key in sorted(state, key=str.encode)], last
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"zookeeper {self.hosts}: get prefix: history compacted under every read")

    # -- writing -----------------------------------------------------------------------------------------

    def write(self, what: str, plan_body: Callable[[WritePlan], object], sweep: bool = True,
              prefetch: Sequence[str] = ()):
        """Plan against the current revision and commit as one multi; plan again when another write came first.
        ``prefetch`` names keys the plan will read, fetched with the counter in one round trip.

        Returns ``(result of plan_body, plan)``."""
        if sweep:
            self.sweep_leases()
        deadline = time.monotonic() + self.calls.budget
        attempt = 0
        while True:
            revision, found = self.revision_and_keys(list(dict.fromkeys(prefetch)))
            plan = WritePlan(self, revision, before=dict(zip(dict.fromkeys(prefetch), found)))
            result = plan_body(plan)
            try:
                commit(self, what, plan)
            except WriteConflict:
                attempt += 1
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"zookeeper {self.hosts}: {what}: lost every race for {attempt} tries")
                time.sleep(random.uniform(0, min(0.001 * attempt, 0.05)))
                continue
            if plan.events and plan.revision % COMPACT_EVERY == 0 and plan.revision > self.history:
                self._compact_quietly(plan.revision - self.history)
            return result, plan

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        check_key(key)
        value = check_value(value)
        check_lease_id(lease)
        _, plan = self.write("put", lambda plan: plan.put(key, value, lease), prefetch=[key])
        return plan.revision

    def delete(self, key: str, prefix: bool = False) -> int:
        check_key(key, "prefix" if prefix else "key")
        deleted, _ = self.write("delete", lambda plan: plan.delete(key, prefix), prefetch=[] if prefix else [key])
        return deleted

    def txn(self, compares: Sequence[Compare], success: Sequence[Put | Delete],
            failure: Sequence[Put | Delete] = ()) -> TxnResult:
        compares = check_compares(compares)
        success_ops, failure_ops = check_ops(success), check_ops(failure)

        def body(plan: WritePlan) -> bool:
            plan.load([compare.key for compare in compares])
            succeeded = all(compare_holds(compare, plan.get(compare.key)) for compare in compares)
            for op in success_ops if succeeded else failure_ops:
                plan.apply(op)
            return succeeded

        known = [compare.key for compare in compares] + [op.key for op in (*success_ops, *failure_ops)
                                                          if isinstance(op, Put) or not op.prefix]
        succeeded, plan = self.write("txn", body, prefetch=known)
        return TxnResult(succeeded, plan.revision)

    # -- leases (store/zookeeper_leases.py) --------------------------------------------------------------

    def grant_lease(self, ttl: float) -> Lease:
        return self.leases.grant(check_ttl(ttl))

    def keep_alive(self, lease_id: int) -> float:
        return self.leases.keep_alive(check_lease_id(lease_id))

    def revoke_lease(self, lease_id: int) -> None:
        self.leases.revoke(check_lease_id(lease_id))

    def lease_time_left(self, lease_id: int) -> float | None:
        return self.leases.time_left(check_lease_id(lease_id))

    def sweep_leases(self) -> None:
        self.leases.sweep()

    # -- history and watches -----------------------------------------------------------------------------

    def compact(self, revision: int) -> None:
        """Forget the change log up to ``revision``; watches from before it must re-list."""
        check_revision(revision)
        current = self.revision()
        if revision > current:
            raise InvalidRequest(f"cannot compact to {revision}: the store is at revision {current}")
        while True:
            data, stat = self.calls.retrying("read compaction", lambda: self.calls.get(self.paths.compacted))
            done = int(data or 0)
            if revision <= done:
                raise Compacted(f"revision {revision} is already compacted (compacted up to {done})")
            try:
                self.calls.retrying("compact", lambda: self.calls.set(self.paths.compacted, str(revision).encode(),
                                                                      stat.version))
                break
            except BadVersionError:
                continue
        for start in range(done + 1, revision + 1, PIPELINE):
            stop = min(revision, start + PIPELINE - 1)
            self.calls.retrying("compact", lambda: self.calls.delete_many(
                [self.paths.entry(r) for r in range(start, stop + 1)]))

    def _compact_quietly(self, revision: int) -> None:
        try:
            self.compact(revision)
        except StoreError as exc:
            log.debug("zookeeper %s: automatic compaction to %d: %s", self.hosts, revision, exc)

    def close(self) -> None:
        self._watches.close_all()
        self.calls.close()

