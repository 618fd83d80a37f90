"""How the ZooKeeper backend lays its state out in znodes: the paths, node names for keys, key nodes, and
change-log entries (the layout itself is explained in ``store.zookeeper``).

Everything is packed with ``struct`` (never pickle: the bytes come from a shared server anyone with access
could write). A key node holds its etcd metadata and its value; a change-log entry holds every event of one
revision with enough metadata (create revision, version, lease, previous mod revision) that a reader can
rebuild a key's full state from the log alone, and the state just before any logged revision.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from urllib.parse import quote, unquote

from store.api import KeyValue, StoreError, WatchEvent

NODE_HEADER = struct.Struct(">QQQQ")          # create_revision, mod_revision, version, lease
ENTRY_HEADER = struct.Struct(">BQQI")         # format, txn token, revision, event count
EVENT_HEADER = struct.Struct(">BQQQQII")      # kind, create_revision, version, lease, prev_mod_revision, key, value
ENTRY_FORMAT = 1
KINDS = {"put": 0, "delete": 1}
KIND_NAMES = {number: name for name, number in KINDS.items()}


def key_to_name(key: str) -> str:
    """One flat znode name per key: percent-encoded UTF-8, with '/' and '.' escaped too (ZooKeeper refuses
    '.' and '..' as names and gives '/' its own meaning), so decoding is exact and every key is one child."""
    return quote(key, safe="").replace(".", "%2E")


def name_to_key(name: str) -> str | None:
    """The key a node name stands for; None for a name this encoding never makes (a node someone else put)."""
    try:
        key = unquote(name, errors="strict")
    except UnicodeDecodeError:
        return None
    return key if key_to_name(key) == name else None


def lease_id_of(name: str) -> int | None:
    """The lease a ``leases/`` child stands for; None for a name Berth never makes."""
    if len(name) != 16 or name.strip("0123456789abcdef"):
        return None
    return int(name, 16) or None


def entry_name(revision: int) -> str:
    """Log entries are named by revision, zero-padded so names sort as revisions do."""
    return f"r{revision:020d}"


def pack_node(kv: KeyValue) -> bytes:
    return NODE_HEADER.pack(kv.create_revision, kv.mod_revision, kv.version, kv.lease) + kv.value


def unpack_node(key: str, data: bytes) -> KeyValue:
    if len(data) < NODE_HEADER.size:
        raise StoreError(f"zookeeper store: node of key {key!r} is not one of Berth's ({len(data)} bytes)")
    create_revision, mod_revision, version, lease = NODE_HEADER.unpack_from(data)
    return KeyValue(key, bytes(data[NODE_HEADER.size:]), create_revision, mod_revision, version, lease)


@dataclass(frozen=True)
class Paths:
    root: str

    @property
    def counter(self) -> str:
        return f"{self.root}/rev"

    @property
    def compacted(self) -> str:
        return f"{self.root}/compacted"

    @property
    def clock(self) -> str:
        return f"{self.root}/clock"

    @property
    def keys(self) -> str:
        return f"{self.root}/kv"

    @property
    def log(self) -> str:
        return f"{self.root}/log"

    @property
    def leases(self) -> str:
        return f"{self.root}/leases"

    def key(self, key: str) -> str:
        return f"{self.keys}/{key_to_name(key)}"

    def entry(self, revision: int) -> str:
        return f"{self.log}/{entry_name(revision)}"

    def lease(self, lease_id: int) -> str:
        return f"{self.leases}/{lease_id:016x}"

    def lease_key(self, lease_id: int, key: str) -> str:
        return f"{self.lease(lease_id)}/{key_to_name(key)}"

    def layout(self) -> list[str]:
        return [self.counter, self.compacted, self.clock, self.keys, self.log, self.leases]


@dataclass(frozen=True)
class LoggedEvent:
    """One change as the log keeps it: the key's state after it (``after`` is None for a delete)."""

    kind: str
    key: str
    revision: int
    after: KeyValue | None
    prev_mod_revision: int

    def watch_event(self) -> WatchEvent:
        return WatchEvent(self.kind, self.key, self.after.value if self.after else b"", self.revision)


@dataclass(frozen=True)
class LogEntry:
    token: int
    revision: int
    events: tuple[LoggedEvent, ...]


def pack_entry(token: int, revision: int, events: list[LoggedEvent]) -> bytes:
    parts = [ENTRY_HEADER.pack(ENTRY_FORMAT, token, revision, len(events))]
    for event in events:
        key = event.key.encode()
        after = event.after
        value = after.value if after else b""
        parts.append(EVENT_HEADER.pack(KINDS[event.kind], after.create_revision if after else 0,
                                       after.version if after else 0, after.lease if after else 0,
                                       event.prev_mod_revision, len(key), len(value)))
        parts += [key, value]
    return b"".join(parts)


def unpack_entry(data: bytes) -> LogEntry:
    try:
        form, token, revision, count = ENTRY_HEADER.unpack_from(data)
        if form != ENTRY_FORMAT:
            raise StoreError(f"zookeeper store: change-log entry format {form} is not one this Berth reads")
        offset = ENTRY_HEADER.size
        events = []
        for _ in range(count):
            kind, create_revision, version, lease, prev, key_len, value_len = EVENT_HEADER.unpack_from(data, offset)
            offset += EVENT_HEADER.size
            key = data[offset:offset + key_len].decode()
            offset += key_len
            value = bytes(data[offset:offset + value_len])
            offset += value_len
            name = KIND_NAMES[kind]
            after = KeyValue(key, value, create_revision, revision, version, lease) if name == "put" else None
            events.append(LoggedEvent(name, key, revision, after, prev))
        return LogEntry(token, revision, tuple(events))
    except (struct.error, KeyError, UnicodeDecodeError) as exc:
        raise StoreError(f"zookeeper store: a change-log entry is damaged: {exc}") from exc
