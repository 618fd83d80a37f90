"""The embedded store's tables and its one kind of write: a transaction that numbers its changes.

Every write takes the next value of a global revision counter and appends its changes to the ``log`` table,
with each key's previous mod_revision, so a watch can replay from a revision and also rebuild the state as it
stood before one. Lease deadlines use the machine's boot clock, which every process shares and nobody can set.
"""
from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Iterator, Sequence

from store.api import Delete, KeyValue, LeaseNotFound, Put, StoreError, StoreUnavailable
from store.common import prefix_range_end

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compact_revision', 0);
CREATE TABLE IF NOT EXISTS kv (
    key BLOB PRIMARY KEY, value BLOB NOT NULL, create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_by_lease ON kv (lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS log (
    id INTEGER PRIMARY KEY, revision INTEGER NOT NULL, kind TEXT NOT NULL, key BLOB NOT NULL,
    value BLOB NOT NULL, prev_mod_revision INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS log_by_revision ON log (revision);
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl REAL NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS leases_by_expiry ON leases (expires_at);
CREATE TABLE IF NOT EXISTS boot (id TEXT NOT NULL);
"""

DEFAULT_HISTORY = 10_000      # revisions of change log kept for watches that fall behind
COMPACT_EVERY = 64            # revisions between automatic compactions


def lease_clock() -> float:
    """Seconds since boot: every process on the machine reads the same value, and it never jumps when the
    wall clock is set. Lease deadlines are kept in it (so a reboot is detected with :func:`boot_id`)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def forget_leases_of_earlier_boots(conn: sqlite3.Connection) -> None:
    """Inside the schema transaction: after a reboot every lease holder is gone and the clock restarted
    from zero, so every lease is due now (the next write or watch deletes their keys, visibly)."""
    current = boot_id()
    row = conn.execute("SELECT id FROM boot").fetchone()
    if row is None:
        conn.execute("INSERT INTO boot VALUES (?)", (current,))
    elif row[0] != current:
        conn.execute("UPDATE leases SET expires_at = 0")
        conn.execute("UPDATE boot SET id = ?", (current,))


@contextlib.contextmanager
def sqlite_errors(what: str) -> Iterator[None]:
    """SQLite's exceptions become Berth's: a busy or unreachable file is retryable, anything else is not."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc).lower()
        if any(word in text for word in ("locked", "busy", "unable to open", "disk i/o", "readonly")):
            raise StoreUnavailable(f"sqlite store: {what}: {exc}") from exc
        raise StoreError(f"sqlite store: {what}: {exc}") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"sqlite store: {what}: {exc}") from exc


def row_to_kv(row: Sequence) -> KeyValue:
    key, value, create_revision, mod_revision, version, lease = row
    return KeyValue(bytes(key).decode(), bytes(value), create_revision, mod_revision, version, lease)


def key_range_sql(prefix: str) -> tuple[str, tuple]:
    """A WHERE clause selecting every key under ``prefix`` through the primary-key index."""
    start = prefix.encode()
    end = prefix_range_end(start)
    if end is None:
        return "key >= ?", (start,)
    return "key >= ? AND key < ?", (start, end)


class WriteTxn:
    """One IMMEDIATE transaction: every change in it shares one new revision, allocated on first change."""

    KV_COLUMNS = "key, value, create_revision, mod_revision, version, lease"

    def __init__(self, conn: sqlite3.Connection, history: int) -> None:
        self.conn = conn
        self.history = history
        self.base = conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
        self.new_revision = 0

    @property
    def revision(self) -> int:
        return self.new_revision or self.base

    def next_revision(self) -> int:
        if not self.new_revision:
            self.new_revision = self.base + 1
            self.conn.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (self.new_revision,))
            self.compact_if_due()
        return self.new_revision

    def compact_if_due(self) -> None:
        if self.new_revision % COMPACT_EVERY == 0 and self.new_revision > self.history:
            compact_log(self.conn, self.new_revision - self.history)

    def get(self, key: str) -> KeyValue | None:
        row = self.conn.execute(f"SELECT {self.KV_COLUMNS} FROM kv WHERE key = ?", (key.encode(),)).fetchone()
        return row_to_kv(row) if row else None

    def lease_alive(self, lease: int) -> bool:
        return self.conn.execute("SELECT 1 FROM leases WHERE id = ?", (lease,)).fetchone() is not None

    def put(self, key: str, value: bytes, lease: int) -> None:
        if lease and not self.lease_alive(lease):
            raise LeaseNotFound(f"lease {lease:x} not found (expired or revoked)")
        old = self.get(key)
        revision = self.next_revision()
        create_revision, version = (old.create_revision, old.version + 1) if old else (revision, 1)
        self.conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?, ?)",
                          (key.encode(), value, create_revision, revision, version, lease))
        self.log("put", key.encode(), value, old.mod_revision if old else 0)

    def delete(self, key: str, prefix: bool = False) -> int:
        if prefix:
            where, args = key_range_sql(key)
        else:
            where, args = "key = ?", (key.encode(),)
        return self.delete_where(where, args)

    def delete_where(self, where: str, args: tuple) -> int:
        doomed = self.conn.execute(f"SELECT key, mod_revision FROM kv WHERE {where} ORDER BY key", args).fetchall()
        if not doomed:
            return 0
        self.next_revision()
        for key, mod_revision in doomed:
            self.conn.execute("DELETE FROM kv WHERE key = ?", (key,))
            self.log("delete", key, b"", mod_revision)
        return len(doomed)

    def log(self, kind: str, key: bytes, value: bytes, prev_mod_revision: int) -> None:
        self.conn.execute("INSERT INTO log (revision, kind, key, value, prev_mod_revision) VALUES (?, ?, ?, ?, ?)",
                          (self.new_revision, kind, key, value, prev_mod_revision))

    def apply(self, op: Put | Delete) -> None:
        if isinstance(op, Put):
            self.put(op.key, op.value, op.lease)
        else:
            self.delete(op.key, op.prefix)


def compact_log(conn: sqlite3.Connection, revision: int) -> None:
    conn.execute("DELETE FROM log WHERE revision <= ?", (revision,))
    conn.execute("UPDATE meta SET value = MAX(value, ?) WHERE name = 'compact_revision'", (revision,))
