"""One write to the ZooKeeper store, planned against the state at one revision and turned into one ``multi``.

A :class:`WritePlan` reads key nodes as it goes (all reads happen after the counter was read at ``base``),
applies the operations in order to an in-memory overlay, and records each change as a logged event. The
multi it yields first sets the counter *if its version is still* ``base``: when that holds at commit, no
other write came in between, so every read the plan made saw exactly revision ``base``. A plan that changed
nothing only checks the counter, which still proves its reads (compares that failed) were current.
:func:`commit` sends it; a multi whose answer was lost is settled by finding its log entry's token.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from kazoo.exceptions import (BadVersionError, KazooException, NodeExistsError, NoNodeError, RolledBackError,
                              RuntimeInconsistency)

from store.api import Delete, KeyValue, LeaseNotFound, OutcomeUnknown, Put, StoreError
from store.zookeeper_client import TRANSIENT
from store.zookeeper_codec import LoggedEvent, pack_entry, pack_node, unpack_entry

if TYPE_CHECKING:
    from store.zookeeper import ZkStore


class WriteConflict(Exception):
    """The counter moved since the plan read it: plan again."""


@dataclass
class Op:
    """One request of the multi, and what its failure would mean."""

    kind: str                # "set", "check", "create", "delete"
    path: str
    data: bytes = b""
    version: int = -1
    meaning: str = "conflict"   # "counter", "lease" (a lease is gone), "conflict" (the plan's reads are stale)


@dataclass
class WritePlan:
    store: "ZkStore"
    base: int                                       # the counter's version (the revision) the plan read
    before: dict[str, KeyValue | None] = field(default_factory=dict)
    after: dict[str, KeyValue | None] = field(default_factory=dict)
    events: list[LoggedEvent] = field(default_factory=list)
    leases_used: set[int] = field(default_factory=set)
    extra: list[Op] = field(default_factory=list)   # requests after the key changes (a lease node's removal)

    @property
    def revision(self) -> int:
        """The revision this plan's changes get (the current one when it changes nothing)."""
        return self.base + 1 if self.events else self.base

    # -- reads --------------------------------------------------------------------------------------------

    def load(self, keys: list[str]) -> None:
        missing = [key for key in dict.fromkeys(keys) if key not in self.before]
        if missing:
            self.before.update(zip(missing, self.store.read_keys(missing)))

    def get(self, key: str) -> KeyValue | None:
        if key in self.after:
            return self.after[key]
        self.load([key])
        return self.before[key]

    # -- changes ------------------------------------------------------------------------------------------

    def put(self, key: str, value: bytes, lease: int) -> None:
        if lease and lease not in self.leases_used:
            if not self.store.lease_exists(lease):
                raise LeaseNotFound(f"lease {lease:x} not found (expired or revoked)")
            self.leases_used.add(lease)
        old = self.get(key)
        revision = self.base + 1
        new = KeyValue(key, value, old.create_revision if old else revision, revision,
                       old.version + 1 if old else 1, lease)
        self.after[key] = new
        self.events.append(LoggedEvent("put", key, revision, new, old.mod_revision if old else 0))

    def delete_keys(self, keys: list[str], keep: Callable[[KeyValue], bool] = lambda kv: False) -> int:
        self.load([key for key in keys if key not in self.after])
        deleted = 0
        for key in sorted(set(keys)):
            old = self.get(key)
            if old is None or keep(old):
                continue
            self.after[key] = None
            self.events.append(LoggedEvent("delete", key, self.base + 1, None, old.mod_revision))
            deleted += 1
        return deleted

    def delete(self, key: str, prefix: bool = False) -> int:
        if not prefix:
            return self.delete_keys([key])
        keys = [name for name in self.store.key_names() if name.startswith(key)]
        keys += [k for k, kv in self.after.items() if kv is not None and k.startswith(key)]
        return self.delete_keys(keys)

    def apply(self, op: Put | Delete) -> None:
        if isinstance(op, Put):
            self.put(op.key, op.value, op.lease)
        else:
            self.delete(op.key, op.prefix)

    # -- the multi ----------------------------------------------------------------------------------------

    def requests(self, log_entry: bytes) -> list[Op]:
        paths = self.store.paths
        if not self.events:
            return [Op("check", paths.counter, version=self.base, meaning="counter"), *self.extra]
        ops = [Op("set", paths.counter, str(self.revision).encode(), self.base, "counter")]
        ops += [Op("check", paths.lease(lease), meaning="lease") for lease in sorted(self.leases_used)]
        for key, new in self.after.items():
            old = self.before.get(key)
            node = paths.key(key)
            if new is None and old is None:
                continue
            if new is None:
                ops.append(Op("delete", node))
            elif old is None:
                ops.append(Op("create", node, pack_node(new)))
            else:
                ops.append(Op("set", node, pack_node(new)))
            old_lease, new_lease = (old.lease if old else 0), (new.lease if new else 0)
            if old_lease != new_lease:
                if old_lease:
                    ops.append(Op("delete", paths.lease_key(old_lease, key)))
                if new_lease:
                    ops.append(Op("create", paths.lease_key(new_lease, key), meaning="lease"))
        ops += self.extra
        ops.append(Op("create", paths.entry(self.revision), log_entry))
        return ops


def commit(store: "ZkStore", what: str, plan: WritePlan) -> None:
    """Commit ``plan`` as one multi; :class:`WriteConflict` when it must be planned again (another write came
    first, or the answer was lost and the write did not take its revision)."""
    if store.calls.closed:
        raise StoreError(f"zookeeper {store.hosts}: {what}: the store is closed")
    token = secrets.randbits(63)
    ops = plan.requests(pack_entry(token, plan.revision, plan.events))
    try:
        results = store.calls.wait(_transaction(store.client, ops).commit_async(), what)
    except TRANSIENT as exc:
        if not plan.events:
            raise WriteConflict() from exc  # nothing written either way: plan again
        if _committed(store, plan.revision, token, what):
            return
        raise WriteConflict() from exc
    except KazooException as exc:  # the client was closed, or an error no retry cures
        raise StoreError(f"zookeeper {store.hosts}: {what}: {type(exc).__name__}: {exc}") from exc
    failure = next(((op, result) for op, result in zip(ops, results)
                    if isinstance(result, Exception)
                    and not isinstance(result, (RolledBackError, RuntimeInconsistency))), None)
    if failure is None:
        return
    op, error = failure
    if op.meaning == "counter" and isinstance(error, BadVersionError):
        raise WriteConflict()
    if op.meaning == "lease" and isinstance(error, (NoNodeError, BadVersionError)):
        raise LeaseNotFound(f"zookeeper: {what}: a lease this write needs is gone (expired or revoked)")
    if isinstance(error, (NoNodeError, NodeExistsError, BadVersionError)):
        raise WriteConflict()
    raise StoreError(f"zookeeper {store.hosts}: {what}: {op.kind} {op.path}: {type(error).__name__}")


def _transaction(client, ops: list[Op]):
    transaction = client.transaction()
    for op in ops:
        if op.kind == "set":
            transaction.set_data(op.path, op.data, version=op.version)
        elif op.kind == "check":
            transaction.check(op.path, op.version)
        elif op.kind == "create":
            transaction.create(op.path, op.data)
        else:
            transaction.delete(op.path, version=op.version)
    return transaction


def _committed(store: "ZkStore", revision: int, token: int, what: str) -> bool:
    """After a lost answer: did our multi take ``revision``? Its log entry carries our token if so.

    A ``sync`` goes first, in the same pipelined round: the session may now be on a server that has not
    yet applied what the leader committed (it never saw our write's answer, so ZooKeeper lets it reconnect
    to one behind that write), and an entry missing only there would be taken for a write that failed: the
    write would be planned again, meet its own result and report a lost race."""
    def read_after_sync() -> tuple[bytes | None, int]:
        synced = store.client.sync_async(store.paths.counter)
        entry = store.client.get_async(store.paths.entry(revision))
        counter = store.client.get_async(store.paths.counter)
        store.calls.wait(synced, "sync")
        try:
            data = store.calls.wait(entry, "read change log")[0]
        except NoNodeError:
            data = None
        return data, store.calls.wait(counter, "read revision")[1].version

    data, current = store.calls.retrying(f"{what} (resolving a lost answer)", read_after_sync)
    if data is not None:
        return unpack_entry(data).token == token
    if current >= revision:  # taken and already compacted: nobody can say whose it was
        raise OutcomeUnknown(f"zookeeper {store.hosts}: {what}: outcome unknown (connection lost)")
    return False
