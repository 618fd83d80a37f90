"""X-Consul-Index and blocking queries, as Consul's clients rely on them.

The rules they follow are written down in :mod:`discovery.consul_api` (what every GET promises).

:class:`IndexBook` keeps the (digest, index) of each query, bounded; the waiting itself lives in the API module.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable

DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
MAX_QUERIES = 10_000
# parameters that do not change an answer: they do not make a query of their own
NOT_PART_OF_QUERY = frozenset({"index", "wait", "token", "stale", "consistent", "cached", "dc", "hash", "pretty"})


@dataclass(frozen=True)
class BlockingParams:
    index: int          # 0: answer at once
    wait: float         # seconds, already capped


def query_key(path: str, query: dict[str, list[str]]) -> tuple:
    return (path, tuple(sorted((k, tuple(v)) for k, v in query.items() if k not in NOT_PART_OF_QUERY)))


def digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


class IndexBook:
    """Per-query ``(digest, index)``: the index of an answer, moved only when the answer's bytes change."""

    def __init__(self, capacity: int = MAX_QUERIES) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple, tuple[bytes, int]] = OrderedDict()
        self._evicted_floor = 0  # highest index an evicted query carried: a query seen anew starts above it
        self._lock = threading.Lock()

    def index_for(self, key: tuple, answer_digest: bytes, revision: int) -> int:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == answer_digest:
                self._entries.move_to_end(key)
                return entry[1]
            if entry is not None:
                index = max(revision, entry[1] + 1)
            else:
                index = revision if revision > self._evicted_floor else self._evicted_floor + 1
            index = max(index, 1)
            self._entries[key] = (answer_digest, index)
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                _, (_, old) = self._entries.popitem(last=False)
                self._evicted_floor = max(self._evicted_floor, old)
            return index

    def __len__(self) -> int:
        return len(self._entries)


class ChangeSignal:
    """A generation counter that writers bump and blocked queries wait on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.generation = 0

    def bump(self, *_ignored: object) -> None:
        with self._cond:
            self.generation += 1
            self._cond.notify_all()

    def wait_past(self, generation: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.generation != generation, timeout)


def first(values: Iterable[str] | None, default: str = "") -> str:
    for value in values or ():
        return value
    return default
