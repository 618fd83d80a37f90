"""The embedded datastore: etcd's semantics over one SQLite file, as kine does for k3s.

Several processes (and network namespaces, which share the file system) open the same file: WAL mode lets
readers run beside the one writer, every write is an ``IMMEDIATE`` transaction, and a busy timeout makes
writers queue instead of failing. A global revision counter numbers the writes; the ``log`` table keeps
recent changes so a watch can replay from a revision; old log rows are compacted away. There is no server,
so leases expire whenever anybody touches the store — writers, readers and watchers all run the sweep.
"""
from __future__ import annotations

import contextlib
import random
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import parse_qs, urlparse

from store.api import (Compacted, Compare, Delete, InvalidRequest, KeyValue, Lease, LeaseNotFound, Put,
                       StoreError, TxnResult)
from store.change_signal import ChangeSignal
from store.deadline import time_left
from store.common import (DerivedCalls, OpenWatches, check_compares, check_key, check_lease_id, check_ops,
                          check_revision, check_ttl, check_value, compare_holds)
from store.sqlite_txn import (COMPACT_EVERY, DEFAULT_HISTORY, SCHEMA, WriteTxn, compact_log,
                              forget_leases_of_earlier_boots, key_range_sql, lease_clock, row_to_kv, sqlite_errors)
from store.sqlite_watch import SqliteWatch

BUSY_TIMEOUT = 10.0           # seconds a writer waits for another process's transaction
MAX_IDLE_CONNECTIONS = 8


class SqliteStore(DerivedCalls):
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
        self._watches = OpenWatches(SqliteWatch)
        self._signal: ChangeSignal | None = None
        with sqlite_errors(f"open {self.path}"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._prepare_file()

    def _prepare_file(self) -> None:
        """WAL mode, the schema, and leases of earlier boots dropped.

        Several processes may open a new file at once (hosts starting together). Switching to WAL needs a lock
        SQLite's busy timeout does not wait for, so an opener that meets another one tries again (for as long
        as a writer would wait) instead of failing with 'database is locked'."""
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                with self.connection() as conn:
                    if conn.execute("PRAGMA journal_mode").fetchall()[0][0].lower() != "wal":
                        conn.execute("PRAGMA journal_mode = WAL").fetchall()
                    with self._rollback_on_error(conn):
                        conn.executescript("BEGIN IMMEDIATE;" + SCHEMA)
                        forget_leases_of_earlier_boots(conn)
                        conn.execute("COMMIT")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.005, 0.05))

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
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL: a power cut may lose the last commits, never the file
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
            with self._lock_wait(conn):
                conn.execute("BEGIN IMMEDIATE")
            if sweep:
                self._expire_leases(conn)
            result = body(WriteTxn(conn, self.history))
            conn.execute("COMMIT")
        if self._signal is not None:
            self._signal.notify()
        return result

    @staticmethod
    @contextlib.contextmanager
    def _lock_wait(conn: sqlite3.Connection) -> Iterator[None]:
        """Wait for the write lock no longer than the caller's :func:`store.deadline.call_deadline` allows
        (the busy timeout otherwise), so a process holding the lock cannot hold a caller past its deadline."""
        wait = time_left(BUSY_TIMEOUT)
        if wait >= BUSY_TIMEOUT:
            yield
            return
        conn.execute(f"PRAGMA busy_timeout = {max(1, int(wait * 1000))}")
        try:
            yield
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")

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
        now = lease_clock()
        expired = conn.execute("SELECT id FROM leases WHERE expires_at <= ? ORDER BY expires_at", (now,)).fetchall()
        for (lease_id,) in expired:
            WriteTxn(conn, self.history).delete_where("lease = ?", (lease_id,))
            conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,))

    def expire_due_leases(self, conn: sqlite3.Connection | None = None) -> None:
        """Cheap check any reader or watcher runs; takes the write lock only when a lease has expired."""
        with sqlite_errors("check lease expiry"), contextlib.ExitStack() as stack:
            conn = conn or stack.enter_context(self.connection())
            due = conn.execute("SELECT 1 FROM leases WHERE expires_at <= ? LIMIT 1", (lease_clock(),)).fetchone()
        if due:
            self._write("expire leases", lambda txn: None)

    def grant_lease(self, ttl: float) -> Lease:
        ttl = check_ttl(ttl)

        def body(txn: WriteTxn) -> Lease:
            while True:
                lease_id = secrets.randbits(62) or 1
                if not txn.lease_alive(lease_id):
                    break
            txn.conn.execute("INSERT INTO leases VALUES (?, ?, ?)", (lease_id, ttl, lease_clock() + ttl))
            return Lease(lease_id, ttl)

        return self._write("grant lease", body)

    def keep_alive(self, lease_id: int) -> float:
        check_lease_id(lease_id)

        def body(txn: WriteTxn) -> float:
            row = txn.conn.execute("SELECT ttl FROM leases WHERE id = ?", (lease_id,)).fetchone()
            if row is None:
                raise LeaseNotFound(f"lease {lease_id:x} not found (expired or revoked)")
            txn.conn.execute("UPDATE leases SET expires_at = ? WHERE id = ?", (lease_clock() + row[0], lease_id))
            return row[0]

        return self._write("keep lease alive", body)

    def lease_time_left(self, lease_id: int) -> float | None:
        check_lease_id(lease_id)
        with sqlite_errors("read lease"), self.connection() as conn:
            row = conn.execute("SELECT expires_at FROM leases WHERE id = ?", (lease_id,)).fetchone()
        left = None if row is None else row[0] - lease_clock()
        return left if left is not None and left > 0 else None

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
        compares = check_compares(compares)
        success_ops, failure_ops = check_ops(success), check_ops(failure)

        def body(txn: WriteTxn) -> TxnResult:
            succeeded = all(compare_holds(compare, txn.get(compare.key)) for compare in compares)
            for op in success_ops if succeeded else failure_ops:
                txn.apply(op)
            return TxnResult(succeeded, txn.revision)

        return self._write("txn", body)

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

    def close(self) -> None:
        self._watches.close_all()
        self._closed = True
        with self._lock:
            connections, self._connections, self._idle = self._connections, [], []
            signal, self._signal = self._signal, None
        if signal is not None:
            signal.close()
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

