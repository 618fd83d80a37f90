"""The datastore contract: what every backend provides, with etcd v3's semantics.

Revisions are one global, strictly increasing counter per store; every write gets the next one. Keys under a
lease vanish (as deletes, visible to watchers) when the lease expires or is revoked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Literal, Protocol, Sequence


class StoreError(Exception):
    """A datastore failure; ``retryable`` says whether trying again later may succeed (CNI code 11)."""

    retryable = True


class StoreUnavailable(StoreError):
    """The backend cannot be reached."""


class OutcomeUnknown(StoreUnavailable):
    """A conditional write may or may not have been applied (its answer was lost): read to find out.

    Raised only when the backend could not settle it itself by reading its own write back."""


class LeaseNotFound(StoreError):
    """The lease expired or was revoked; its keys are gone. Grant a new one and write them again."""

    retryable = False


class InvalidRequest(StoreError, ValueError):
    """The request itself is wrong (empty key, value not bytes, TTL <= 0, ...); nothing was written."""

    retryable = False


class Compacted(StoreError):
    """A watch asked for a revision older than the store keeps; the watcher must re-list."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int = 1
    lease: int = 0


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: float


@dataclass(frozen=True)
class Compare:
    """One condition of a transaction, as etcd's Compare: ``target`` of ``key`` ``op`` ``value``.

    ``mod_revision == 0`` / ``version == 0`` means "the key does not exist"."""

    key: str
    target: Literal["value", "version", "create_revision", "mod_revision"]
    op: Literal["=", "!=", "<", ">"]
    value: bytes | int


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str
    prefix: bool = False


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int


@dataclass(frozen=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    key: str
    value: bytes  # empty for deletes
    mod_revision: int


@dataclass(frozen=True)
class WatchBatch:
    """Changes up to ``revision``, in order. ``resynced`` marks a batch computed by re-listing after the watch
    lost its place (compaction, reconnect): it holds the difference, so applying it keeps the watcher exact."""

    revision: int
    events: tuple[WatchEvent, ...] = field(default_factory=tuple)
    resynced: bool = False


class Watch(Protocol):
    def __iter__(self) -> Iterator[WatchBatch]: ...
    def next_batch(self, timeout: float | None = None) -> WatchBatch | None:
        """The next batch; None when ``timeout`` seconds pass first or the watch is closed."""
    def close(self) -> None: ...


class Store(Protocol):
    """Every backend implements exactly this; the contract suite in ``tests/store`` runs against each."""

    def get(self, key: str) -> KeyValue | None: ...
    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under ``prefix`` sorted by key, and the store revision they were read at."""
    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write; returns the new revision."""
    def delete(self, key: str, prefix: bool = False) -> int:
        """Delete one key (or all under a prefix); returns how many were deleted."""
    def txn(self, compares: Sequence[Compare], success: Sequence[Put | Delete],
            failure: Sequence[Put | Delete] = ()) -> TxnResult: ...
    def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        """Create only if absent (compare-and-swap on existence); True when this call created it."""
    def compare_and_swap(self, key: str, value: bytes, expected_mod_revision: int, lease: int = 0) -> bool:
        """Update only if unchanged since ``expected_mod_revision``."""
    def grant_lease(self, ttl: float) -> Lease: ...
    def keep_alive(self, lease_id: int) -> float:
        """Refresh once; returns the TTL granted. Raises :class:`LeaseNotFound` when it already expired."""
    def revoke_lease(self, lease_id: int) -> None: ...
    def lease_time_left(self, lease_id: int) -> float | None:
        """Seconds until the lease expires unless kept alive; None when it has expired or never existed."""
    def watch_prefix(self, prefix: str, start_revision: int | None = None) -> Watch:
        """Changes under ``prefix`` after ``start_revision`` (default: from now). For snapshot-then-deltas,
        call :meth:`get_prefix` and watch from its revision + 1. Raises :class:`Compacted` when the state
        before ``start_revision`` is no longer kept; a watch that falls behind later resyncs instead."""
    def close(self) -> None: ...


def open_store(url: str) -> Store:
    """A backend by URL: ``sqlite:///abs/path.db``, ``etcd://h:p[,h:p...]``, ``zk://h:p[,h:p...][/root]``."""
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        from store.sqlite import SqliteStore
        return SqliteStore.from_url(url)
    if scheme == "etcd":
        from store.etcd import EtcdStore
        return EtcdStore.from_url(url)
    if scheme == "zk":
        from store.zookeeper import ZkStore
        return ZkStore.from_url(url)
    raise ValueError(f"store URL {url!r}: unknown scheme {scheme!r} (use sqlite:///, etcd:// or zk://)")
