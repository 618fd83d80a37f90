"""What only the embedded backend has: its URL, its file, and the bounded change log."""
from __future__ import annotations

import sqlite3
import threading

import pytest

from store.api import InvalidRequest, LeaseNotFound, StoreError, open_store
from store.sqlite import COMPACT_EVERY, SqliteStore


@pytest.mark.parametrize("url", ["sqlite://relative.db", "sqlite:relative.db", "sqlite:///x.db?history=lots",
                                 "sqlite:///x.db?history=3"])
def test_bad_url_is_refused(url):
    with pytest.raises(InvalidRequest):
        SqliteStore.from_url(url)


def test_state_and_revision_survive_reopening(scratch_dir):
    url = f"sqlite://{scratch_dir}/bt.db"
    first = open_store(url)
    revision = first.put("bt/k", b"v")
    lease = first.grant_lease(60)
    first.put("bt/leased", b"v", lease=lease.id)
    first.close()
    second = open_store(url)
    try:
        assert second.get("bt/k").mod_revision == revision
        assert second.put("bt/k", b"w") == revision + 2
        assert second.keep_alive(lease.id) == 60
    finally:
        second.close()


def test_missing_parent_directory_is_created(scratch_dir):
    store = open_store(f"sqlite://{scratch_dir}/nested/dir/bt.db")
    try:
        assert store.put("bt/k", b"v") == 1
    finally:
        store.close()


def test_change_log_stays_bounded(scratch_dir):
    path = scratch_dir / "bt.db"
    store = SqliteStore.from_url(f"sqlite://{path}?history={COMPACT_EVERY}")
    try:
        for index in range(10 * COMPACT_EVERY):
            store.put("bt/k", str(index).encode())
        with sqlite3.connect(path) as conn:
            rows = conn.execute("SELECT COUNT(*) FROM log").fetchone()[0]
        assert rows <= 2 * COMPACT_EVERY
        assert store.get("bt/k").value == str(10 * COMPACT_EVERY - 1).encode()
    finally:
        store.close()


def test_lagging_watch_resyncs_after_automatic_compaction(scratch_dir):
    store = SqliteStore.from_url(f"sqlite://{scratch_dir}/bt.db?history={COMPACT_EVERY}")
    try:
        store.put("bt/w/gone", b"x")
        watch = store.watch_prefix("bt/w/")
        store.delete("bt/w/gone")
        for index in range(4 * COMPACT_EVERY):
            store.put("bt/w/busy", str(index).encode())
        batch = watch.next_batch(10)
        assert batch.resynced
        assert [(e.kind, e.key, e.value) for e in batch.events] == [
            ("delete", "bt/w/gone", b""), ("put", "bt/w/busy", str(4 * COMPACT_EVERY - 1).encode())]
        watch.close()
    finally:
        store.close()


def test_closed_store_refuses_work(scratch_dir):
    store = open_store(f"sqlite://{scratch_dir}/bt.db")
    store.close()
    with pytest.raises(StoreError):
        store.put("bt/k", b"v")


def test_watch_falls_back_to_polling_without_inotify(scratch_dir, monkeypatch, workers):
    import store.change_signal
    monkeypatch.setattr(store.change_signal, "_inotify_on", lambda directory: None)
    url = f"sqlite://{scratch_dir}/bt.db"
    watcher = open_store(url)
    try:
        watch = watcher.watch_prefix("bt/p/")
        assert not watch._signal.live
        writer = workers.start("put", url, "bt/p/k", "one", "two")
        workers.expect(writer, "done")
        events = []
        while len(events) < 2:
            batch = watch.next_batch(10)
            assert batch is not None
            events += batch.events
        assert [e.value for e in events] == [b"one", b"two"]
    finally:
        watcher.close()


def test_short_lived_threads_leave_no_open_connections(scratch_dir):
    """A daemon serving each request on a new thread must not leak a connection (a file descriptor) per thread."""
    import os
    import threading

    from store.sqlite import MAX_IDLE_CONNECTIONS
    store = open_store(f"sqlite://{scratch_dir}/bt.db")
    try:
        store.put("bt/k", b"v")
        before = len(os.listdir("/proc/self/fd"))
        for index in range(100):
            thread = threading.Thread(target=lambda i=index: (store.put(f"bt/t/{i}", b"v"), store.get("bt/k")))
            thread.start()
            thread.join()
        assert len(os.listdir("/proc/self/fd")) <= before + 2 * MAX_IDLE_CONNECTIONS
        assert len(store.get_prefix("bt/t/")[0]) == 100
    finally:
        store.close()


def test_leases_do_not_outlive_a_reboot(scratch_dir):
    """A reboot cannot run here; the file is made to look written before one (another boot id)."""
    path = scratch_dir / "bt.db"
    before = open_store(f"sqlite://{path}")
    lease = before.grant_lease(3600)
    before.put("bt/leased", b"v", lease=lease.id)
    before.put("bt/plain", b"v")
    before.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE boot SET id = 'an earlier boot'")
    after = open_store(f"sqlite://{path}")
    try:
        assert after.get("bt/leased") is None
        assert after.get("bt/plain") is not None
        with pytest.raises(LeaseNotFound):
            after.keep_alive(lease.id)
    finally:
        after.close()


def test_default_store_url_follows_the_environment(monkeypatch):
    from store.config import DEFAULT_STORE_URL, default_store_url
    monkeypatch.delenv("BERTH_STORE", raising=False)
    assert default_store_url() == DEFAULT_STORE_URL
    assert DEFAULT_STORE_URL.startswith("sqlite:///var/lib/berth/")
    monkeypatch.setenv("BERTH_STORE", "etcd://127.0.0.1:2379")
    assert default_store_url() == "etcd://127.0.0.1:2379"


def test_many_openers_of_a_fresh_file_at_once_all_succeed(tmp_path):
    """Hosts starting together all open the same new database: switching it to WAL takes a lock SQLite does not
    wait for, so an opener that meets another's must retry rather than fail (seen as 'database is locked')."""
    for attempt in range(10):
        path = tmp_path / f"fresh{attempt}.db"
        start = threading.Barrier(24)
        failures: list[BaseException] = []

        def opener() -> None:
            start.wait()
            try:
                store = SqliteStore(path)
                try:
                    for number in range(5):
                        store.put(f"bt/{threading.get_ident()}/{number}", b"v")
                finally:
                    store.close()
            except BaseException as exc:  # reported below
                failures.append(exc)

        threads = [threading.Thread(target=opener) for _ in range(24)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures, failures[:3]


def test_a_writer_held_by_another_process_ends_at_the_callers_deadline(scratch_dir):
    """Another connection holds the write lock (as a frozen writer would); a write under call_deadline gives up
    at that deadline with a retryable error instead of waiting the whole busy timeout, and nothing is written."""
    from store.deadline import call_deadline
    from store.sqlite import BUSY_TIMEOUT
    from tests.store.conftest import outcome_within

    path = scratch_dir / "bt-locked.db"
    store = SqliteStore(path)
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        store.put("bt/warm", b"v")
        holder.execute("BEGIN IMMEDIATE")
        def write():
            with call_deadline(0.5):
                return store.put("bt/blocked", b"v")
        outcome = outcome_within(write, BUSY_TIMEOUT / 2)  # a hang guard well short of the busy timeout
        assert isinstance(outcome, StoreError) and outcome.retryable
        holder.execute("ROLLBACK")
        assert store.get("bt/blocked") is None
        store.put("bt/after", b"v")  # the connection's own busy timeout is back: later writes wait as before
    finally:
        holder.close()
        store.close()
