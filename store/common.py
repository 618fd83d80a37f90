"""What every backend shares: argument checks, etcd's compare rules, and the watch's view of a prefix.

Checks run before anything is written, so a bad request fails whole and leaves the store as it was.
The view lets a watch that lost its place (compaction, reconnect) re-list and emit only the difference.
"""
from __future__ import annotations

import math
import weakref
from typing import Callable, Iterable, Iterator, Optional, Sequence

from store.api import Compare, Delete, InvalidRequest, KeyValue, Put, WatchBatch, WatchEvent

COMPARE_TARGETS = ("value", "version", "create_revision", "mod_revision")
COMPARE_OPS = ("=", "!=", "<", ">")
# etcd's defaults (--max-txn-ops, --max-request-bytes); every backend keeps them so code moves between backends
MAX_TXN_OPS = 128
MAX_REQUEST_BYTES = 1024 * 1024


def check_key(key: object, what: str = "key") -> str:
    if not isinstance(key, str):
        raise InvalidRequest(f"{what} must be a str, got {type(key).__name__}")
    if key == "" and what == "key":
        raise InvalidRequest("key must not be empty")
    return key


def check_value(value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidRequest(f"value must be bytes, got {type(value).__name__}")
    if len(value) > MAX_REQUEST_BYTES:
        raise InvalidRequest(f"value of {len(value)} bytes: at most {MAX_REQUEST_BYTES} are stored")
    return bytes(value)


def check_lease_id(lease: object) -> int:
    if isinstance(lease, bool) or not isinstance(lease, int) or lease < 0:
        raise InvalidRequest(f"lease must be a lease id (int >= 0, 0 for none), got {lease!r}")
    return lease


def check_ttl(ttl: object) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl <= 0:
        raise InvalidRequest(f"lease TTL must be a positive number of seconds, got {ttl!r}")
    return float(ttl)


def check_revision(revision: object, what: str = "revision") -> int:
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
        raise InvalidRequest(f"{what} must be an int >= 1, got {revision!r}")
    return revision


def check_compares(compares: Iterable[object]) -> list[Compare]:
    compares = list(compares)
    if len(compares) > MAX_TXN_OPS:
        raise InvalidRequest(f"a transaction may hold at most {MAX_TXN_OPS} compares, got {len(compares)}")
    return [check_compare(compare) for compare in compares]


def check_compare(compare: object) -> Compare:
    if not isinstance(compare, Compare):
        raise InvalidRequest(f"compare must be a store.api.Compare, got {type(compare).__name__}")
    check_key(compare.key, "compare key")
    if compare.target not in COMPARE_TARGETS:
        raise InvalidRequest(f"compare target {compare.target!r}: use one of {', '.join(COMPARE_TARGETS)}")
    if compare.op not in COMPARE_OPS:
        raise InvalidRequest(f"compare op {compare.op!r}: use one of {' '.join(COMPARE_OPS)}")
    if compare.target == "value":
        check_value(compare.value)
    elif isinstance(compare.value, bool) or not isinstance(compare.value, int) or compare.value < 0:
        raise InvalidRequest(f"compare on {compare.target} needs an int >= 0, got {compare.value!r}")
    return compare


def check_ops(ops: Iterable[object]) -> list[Put | Delete]:
    """Validate one branch of a transaction; like etcd, a key may be written only once per branch."""
    checked: list[Put | Delete] = []
    written: set[str] = set()
    ops = list(ops)
    if len(ops) > MAX_TXN_OPS:
        raise InvalidRequest(f"a transaction branch may hold at most {MAX_TXN_OPS} operations, got {len(ops)}")
    for op in ops:
        if isinstance(op, Put):
            check_key(op.key)
            check_value(op.value)
            check_lease_id(op.lease)
            if op.key in written:
                raise InvalidRequest(f"key {op.key!r} written twice in one transaction")
            written.add(op.key)
        elif isinstance(op, Delete):
            check_key(op.key, "delete key" if op.prefix else "key")
        else:
            raise InvalidRequest(f"transaction operation must be Put or Delete, got {type(op).__name__}")
        checked.append(op)
    size = sum(len(op.key.encode()) + len(op.value) for op in checked if isinstance(op, Put))
    if size > MAX_REQUEST_BYTES:
        raise InvalidRequest(f"transaction writes {size} bytes: at most {MAX_REQUEST_BYTES} in one request")
    return checked


def compare_holds(compare: Compare, kv: KeyValue | None) -> bool:
    """etcd's rule: a value compare on a missing key fails; other targets read 0 for a missing key."""
    if compare.target == "value":
        if kv is None:
            return False
        actual: bytes | int = kv.value
        expected: bytes | int = bytes(compare.value)  # type: ignore[arg-type]
    else:
        actual = 0 if kv is None else getattr(kv, compare.target)
        expected = compare.value
    if compare.op == "=":
        return actual == expected
    if compare.op == "!=":
        return actual != expected
    if compare.op == "<":
        return actual < expected  # type: ignore[operator]
    return actual > expected  # type: ignore[operator]


def prefix_range_end(prefix: bytes) -> bytes | None:
    """The first key after every key starting with ``prefix`` (etcd's rule); None means "to the end"."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return None


class BatchIteration:
    """``for batch in watch``: the batches :meth:`next_batch` returns, until the watch ends (both backends)."""

    def next_batch(self, timeout: Optional[float] = None) -> Optional[WatchBatch]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[WatchBatch]:
        while True:
            batch = self.next_batch()
            if batch is None:
                return
            yield batch


class PrefixView:
    """What a watcher has been told about a prefix: key → mod_revision. Updated by every event it emits,
    so after losing its place a watch can re-list and emit exactly the difference."""

    def __init__(self, prefix: str, known: dict[str, int]) -> None:
        self.prefix = prefix
        self.known = known

    def apply(self, events: Sequence[WatchEvent]) -> None:
        for event in events:
            if event.kind == "put":
                self.known[event.key] = event.mod_revision
            else:
                self.known.pop(event.key, None)

    def difference(self, current: Sequence[KeyValue], revision: int) -> list[WatchEvent]:
        """Events that turn the known state into ``current`` (read at ``revision``): deletes, then puts."""
        now = {kv.key: kv for kv in current}
        events = [WatchEvent("delete", key, b"", revision) for key in sorted(self.known) if key not in now]
        changed = [kv for kv in current if self.known.get(kv.key) != kv.mod_revision]
        changed.sort(key=lambda kv: (kv.mod_revision, kv.key))
        events += [WatchEvent("put", kv.key, kv.value, kv.mod_revision) for kv in changed]
        self.apply(events)
        return events


def txn_chunks(ops: Sequence[Put | Delete], max_ops: int = MAX_TXN_OPS,
               max_bytes: int = MAX_REQUEST_BYTES // 2) -> list[list[Put | Delete]]:
    """Split ``ops`` into transactions every backend accepts (at most ``max_ops`` operations and about
    ``max_bytes`` of keys and values each), in order. For writers whose batches grow with the data (an agent
    rewriting thousands of endpoints), where one transaction per batch would be refused whole."""
    chunks: list[list[Put | Delete]] = []
    current: list[Put | Delete] = []
    size = 0
    for op in ops:
        weight = len(op.key.encode()) + (len(op.value) if isinstance(op, Put) else 0)
        if current and (len(current) >= max_ops or size + weight > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(op)
        size += weight
    if current:
        chunks.append(current)
    return chunks


class OpenWatches:
    """The watches a store handed out, so that closing the store closes them; held weakly, so a watch its reader
    dropped is not kept alive. One place checks a watch's arguments for every backend."""

    def __init__(self, make: Callable[[object, str, Optional[int]], object]) -> None:
        self._make = make
        self._watches: weakref.WeakSet = weakref.WeakSet()

    def open(self, store: object, prefix: str, start_revision: Optional[int]):
        check_key(prefix, "prefix")
        if start_revision is not None:
            check_revision(start_revision, "start revision")
        watch = self._make(store, prefix, start_revision)
        self._watches.add(watch)
        return watch

    def close_all(self) -> None:
        for watch in list(self._watches):
            watch.close()


class DerivedCalls:
    """The contract's calls every backend derives the same way from its own ``txn`` and watches: create and
    compare-and-swap as one-compare transactions, ``watch_prefix`` through :class:`OpenWatches` (``_watches``),
    and use as a context manager that closes the store."""

    _watches: OpenWatches

    def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        return self.txn([Compare(key, "create_revision", "=", 0)], [Put(key, value, lease)]).succeeded

    def compare_and_swap(self, key: str, value: bytes, expected_mod_revision: int, lease: int = 0) -> bool:
        compare = Compare(key, "mod_revision", "=", expected_mod_revision)
        return self.txn([compare], [Put(key, value, lease)]).succeeded

    def watch_prefix(self, prefix: str, start_revision: Optional[int] = None):
        return self._watches.open(self, prefix, start_revision)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
