"""The embedded datastore: etcd's semantics over one SQLite file, as kine does for k3s.

Several processes (and network namespaces, which share the file system) open the same file: WAL mode lets
readers run beside the one writer, every write is an ``IMMEDIATE`` transaction, and a busy timeout makes
writers queue instead of failing. A global revision counter numbers the writes; the ``log`` table keeps
recent changes so a watch can replay from a revision; old log rows are compacted away. There is no server,
so leases expire whenever anybody touches the store — writers, readers and watchers all run the sweep.
"""
from __future__ import annotations

import contextlib
import secrets
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import parse_qs, urlparse

from store.api import (Compacted, Compare, Delete, InvalidRequest, KeyValue, Lease, LeaseNotFound, Put,
                       StoreError, StoreUnavailable, TxnResult)
from store.common import (check_compare, check_key, check_lease_id, check_ops, check_revision, check_ttl,
                          check_value, compare_holds, prefix_range_end)
from store.change_signal import ChangeSignal
from store.sqlite_watch import SqliteWatch

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
"""

DEFAULT_HISTORY = 10_000      # revisions of change log kept for watches that fall behind
COMPACT_EVERY = 64            # revisions between automatic compactions
BUSY_TIMEOUT = 10.0           # seconds a writer waits for another process's transaction
MAX_IDLE_CONNECTIONS = 8


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


class SqliteStore:
    """The embedded backend. Thread-safe: each call borrows a pooled connection to the shared file."""

    def __init__(self, path: str | Path, history: int = DEFAULT_HISTORY) -> None:
        if history < COMPACT_EVERY:
            raise InvalidRequest(f"history must keep at least {COMPACT_EVERY} revisions, got {history}")
        self.path = Path(path)
        self.history = history
        self._idle: list[sqlite3.Connection] = []           # pooled, free for any thread
        self._connections: list[sqlite3.Connection] = []    # every open one, closed with the store
        self._lock = threading.Lock()
        self._closed = False
        self._watches: weakref.WeakSet[SqliteWatch] = weakref.WeakSet()
        self._signal: ChangeSignal | None = None
        with sqlite_errors(f"open {self.path}"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.connection() as conn:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                with self._rollback_on_error(conn):
                    conn.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;")

    @classmethod
    def from_url(cls, url: str) -> "SqliteStore":
        """``sqlite:///abs/path.db`` (optionally ``?history=N`` revisions of change log kept for watches)."""
        parsed = urlparse(url)
        if parsed.scheme != "sqlite" or parsed.netloc or not parsed.path.startswith("/"):
            raise InvalidRequest(f"store URL {url!r}: expected sqlite:///absolute/path.db")
        options = parse_qs(parsed.query)
        history = DEFAULT_HISTORY
        if "history" in options:
            try:
                history = int(options["history"][-1])
            except ValueError:
                raise InvalidRequest(f"store URL {url!r}: history must be an integer") from None
        return cls(parsed.path, history=history)

    # -- connections and transactions ------------------------------------------------------------------

    def new_connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("sqlite store is closed")
        with sqlite_errors(f"open {self.path}"):
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA synchronous = NORMAL")
        with self._lock:
            self._connections.append(conn)
        return conn

    def forget_connection(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        conn.close()

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A pooled connection for one operation: threads share a few, none is left behind by a dead thread."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self.new_connection()
        try:
            yield conn
        finally:
            with self._lock:
                keep = not self._closed and len(self._idle) < MAX_IDLE_CONNECTIONS and not conn.in_transaction
                if keep:
                    self._idle.append(conn)
            if not keep:
                self.forget_connection(conn)

    @contextlib.contextmanager
    def _rollback_on_error(self, conn: sqlite3.Connection) -> Iterator[None]:
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _write(self, what: str, body, sweep: bool = True):
        """Run ``body(txn)`` in one IMMEDIATE transaction, after deleting the keys of expired leases."""
        with self.connection() as conn, sqlite_errors(what), self._rollback_on_error(conn):
            conn.execute("BEGIN IMMEDIATE")
            if sweep:
                self._expire_leases(conn)
            result = body(WriteTxn(conn, self.history))
            conn.execute("COMMIT")
        if self._signal is not None:
            self._signal.notify()
        return result

    @contextlib.contextmanager
    def read_txn(self, conn: sqlite3.Connection, what: str) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot (WAL readers see one committed state for the whole transaction)."""
        with sqlite_errors(what), self._rollback_on_error(conn):
            conn.execute("BEGIN")
            yield conn
            conn.execute("COMMIT")

    # -- leases ------------------------------------------------------------------------------------------

    def _expire_leases(self, conn: sqlite3.Connection) -> None:
        """Inside a write transaction: each expired lease's keys become deletes at a revision of their own."""
        now = time.time()
        expired = conn.execute("SELECT id FROM leases WHERE expires_at <= ? ORDER BY expires_at", (now,)).fetchall()
        for (lease_id,) in expired:
            WriteTxn(conn, self.history).delete_where("lease = ?", (lease_id,))
            conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,))

    def expire_due_leases(self, conn: sqlite3.Connection | None = None) -> None:
        """Cheap check any reader or watcher runs; takes the write lock only when a lease has expired."""
        with sqlite_errors("check lease expiry"), contextlib.ExitStack() as stack:
            conn = conn or stack.enter_context(self.connection())
            due = conn.execute("SELECT 1 FROM leases WHERE expires_at <= ? LIMIT 1", (time.time(),)).fetchone()
        if due:
            self._write("expire leases", lambda txn: None)

    def grant_lease(self, ttl: float) -> Lease:
        ttl = check_ttl(ttl)

        def body(txn: WriteTxn) -> Lease:
            while True:
                lease_id = secrets.randbits(62) or 1
                if not txn.lease_alive(lease_id):
                    break
            txn.conn.execute("INSERT INTO leases VALUES (?, ?, ?)", (lease_id, ttl, time.time() + ttl))
            return Lease(lease_id, ttl)

        return self._write("grant lease", body)

    def keep_alive(self, lease_id: int) -> float:
        check_lease_id(lease_id)

        def body(txn: WriteTxn) -> float:
            row = txn.conn.execute("SELECT ttl FROM leases WHERE id = ?", (lease_id,)).fetchone()
            if row is None:
                raise LeaseNotFound(f"lease {lease_id:x} not found (expired or revoked)")
            txn.conn.execute("UPDATE leases SET expires_at = ? WHERE id = ?", (time.time() + row[0], lease_id))
            return row[0]

        return self._write("keep lease alive", body)

    def revoke_lease(self, lease_id: int) -> None:
        check_lease_id(lease_id)

        def body(txn: WriteTxn) -> None:
            if not txn.lease_alive(lease_id):
                raise LeaseNotFound(f"lease {lease_id:x} not found (expired or revoked)")
            txn.delete_where("lease = ?", (lease_id,))
            txn.conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,))

        self._write("revoke lease", body)

    # -- keys --------------------------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        check_key(key)
        self.expire_due_leases()
        with sqlite_errors("get"), self.connection() as conn:
            row = conn.execute(f"SELECT {WriteTxn.KV_COLUMNS} FROM kv WHERE key = ?",
                                       (key.encode(),)).fetchone()
        return row_to_kv(row) if row else None

    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        check_key(prefix, "prefix")
        self.expire_due_leases()
        with self.connection() as pooled, self.read_txn(pooled, "get prefix") as conn:
            return self.list_prefix(conn, prefix)

    @staticmethod
    def list_prefix(conn: sqlite3.Connection, prefix: str) -> tuple[list[KeyValue], int]:
        """Inside a read transaction: the keys under ``prefix`` and the revision they were read at."""
        where, args = key_range_sql(prefix)
        rows = conn.execute(f"SELECT {WriteTxn.KV_COLUMNS} FROM kv WHERE {where} ORDER BY key", args).fetchall()
        revision = conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
        return [row_to_kv(row) for row in rows], revision

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        check_key(key)
        value = check_value(value)
        check_lease_id(lease)

        def body(txn: WriteTxn) -> int:
            txn.put(key, value, lease)
            return txn.revision

        return self._write("put", body)

    def delete(self, key: str, prefix: bool = False) -> int:
        check_key(key, "prefix" if prefix else "key")
        return self._write("delete", lambda txn: txn.delete(key, prefix))

    def txn(self, compares: Sequence[Compare], success: Sequence[Put | Delete],
            failure: Sequence[Put | Delete] = ()) -> TxnResult:
        compares = [check_compare(compare) for compare in compares]
        success_ops, failure_ops = check_ops(success), check_ops(failure)

        def body(txn: WriteTxn) -> TxnResult:
            succeeded = all(compare_holds(compare, txn.get(compare.key)) for compare in compares)
            for op in success_ops if succeeded else failure_ops:
                txn.apply(op)
            return TxnResult(succeeded, txn.revision)

        return self._write("txn", body)

    def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        return self.txn([Compare(key, "create_revision", "=", 0)], [Put(key, value, lease)]).succeeded

    def compare_and_swap(self, key: str, value: bytes, expected_mod_revision: int, lease: int = 0) -> bool:
        compare = Compare(key, "mod_revision", "=", expected_mod_revision)
        return self.txn([compare], [Put(key, value, lease)]).succeeded

    # -- history and watches -----------------------------------------------------------------------------

    def compact(self, revision: int) -> None:
        """Forget the change log up to ``revision``; watches from before it must re-list."""
        check_revision(revision)

        def body(txn: WriteTxn) -> None:
            if revision > txn.revision:
                raise InvalidRequest(f"cannot compact to {revision}: the store is at revision {txn.revision}")
            done = txn.conn.execute("SELECT value FROM meta WHERE name = 'compact_revision'").fetchone()[0]
            if revision <= done:
                raise Compacted(f"revision {revision} is already compacted (compacted up to {done})")
            compact_log(txn.conn, revision)

        self._write("compact", body, sweep=False)

    def change_signal(self) -> ChangeSignal:
        """The wake-up shared by this object's watches (made on first use: a store nobody watches needs none)."""
        with self._lock:
            if self._signal is None:
                self._signal = ChangeSignal(self.path)
            return self._signal

    def watch_prefix(self, prefix: str, start_revision: int | None = None) -> SqliteWatch:
        check_key(prefix, "prefix")
        if start_revision is not None:
            check_revision(start_revision, "start revision")
        watch = SqliteWatch(self, prefix, start_revision)
        self._watches.add(watch)
        return watch

    def close(self) -> None:
        for watch in list(self._watches):
            watch.close()
        self._closed = True
        with self._lock:
            connections, self._connections, self._idle = self._connections, [], []
            signal, self._signal = self._signal, None
        if signal is not None:
            signal.close()
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def __enter__(self) -> "SqliteStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
