"""The datastore contract, run unchanged against every backend (``store_url`` is parametrized in conftest)."""
from __future__ import annotations

import threading
import time

import pytest

from store.api import (Compacted, Compare, Delete, InvalidRequest, LeaseNotFound, Put, StoreError, WatchEvent,
                       open_store)
from tests.store.conftest import WAIT, collect

LEASE_TTL = 1.0


def wait_until_gone(store, key: str, timeout: float = WAIT) -> None:
    """A liveness bound (hang guard): the key must disappear eventually, not by a speed target."""
    deadline = time.monotonic() + timeout
    while store.get(key) is not None:
        assert time.monotonic() < deadline, f"{key} still present after {timeout}s"
        time.sleep(0.05)


# -- keys -----------------------------------------------------------------------------------------------

def test_get_missing_key_is_none(store, prefix):
    assert store.get(prefix + "absent") is None


def test_put_then_get_tracks_revisions_and_version(store, prefix):
    first = store.put(prefix + "a", b"one")
    kv = store.get(prefix + "a")
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == \
        (prefix + "a", b"one", first, first, 1, 0)
    second = store.put(prefix + "a", b"two")
    assert second > first
    kv = store.get(prefix + "a")
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"two", first, second, 2)


def test_every_write_gets_the_next_revision(store, prefix):
    revisions = [store.put(prefix + str(index), b"v") for index in range(5)]
    assert revisions == list(range(revisions[0], revisions[0] + 5))


def test_get_prefix_is_sorted_and_excludes_neighbours(store, prefix):
    for key in ("b", "a", "c/d"):
        store.put(prefix + key, key.encode())
    store.put(prefix[:-1] + "x", b"neighbour")  # shares the text but not the "/"
    last = store.put(prefix[:-1] + "/", b"")  # equal to the prefix itself: included, as in etcd
    kvs, revision = store.get_prefix(prefix)
    assert [kv.key for kv in kvs] == [prefix, prefix + "a", prefix + "b", prefix + "c/d"]
    assert revision >= last
    assert store.get_prefix(prefix + "zz") == ([], revision)


def test_values_up_to_the_size_limit_are_stored(store, prefix):
    big = bytes(range(256)) * 4096  # 1 MiB, the most one value may hold
    store.put(prefix + "big", big)
    assert store.get(prefix + "big").value == big


def test_values_are_bytes_unchanged(store, prefix):
    value = bytes(range(256)) + b"\x00tail"
    store.put(prefix + "bin", value)
    assert store.get(prefix + "bin").value == value
    store.put(prefix + "empty", b"")
    assert store.get(prefix + "empty").value == b""


def test_delete_one_key_and_missing_key(store, prefix):
    store.put(prefix + "a", b"1")
    store.put(prefix + "ab", b"2")
    assert store.delete(prefix + "a") == 1
    assert store.get(prefix + "a") is None
    assert store.get(prefix + "ab").value == b"2"
    assert store.delete(prefix + "a") == 0


def test_delete_prefix(store, prefix):
    for key in ("x/1", "x/2", "x/3/4", "y"):
        store.put(prefix + key, b"v")
    assert store.delete(prefix + "x/", prefix=True) == 3
    assert [kv.key for kv in store.get_prefix(prefix)[0]] == [prefix + "y"]


def test_recreated_key_starts_a_new_life(store, prefix):
    store.put(prefix + "k", b"1")
    store.put(prefix + "k", b"2")
    store.delete(prefix + "k")
    revision = store.put(prefix + "k", b"3")
    kv = store.get(prefix + "k")
    assert (kv.create_revision, kv.version) == (revision, 1)


# -- transactions -------------------------------------------------------------------------------------

@pytest.mark.parametrize("op, operand, holds", [
    ("=", b"m", True), ("=", b"n", False), ("!=", b"n", True), ("!=", b"m", False),
    ("<", b"n", True), ("<", b"m", False), (">", b"l", True), (">", b"mm", False),
])
def test_txn_compares_value(store, prefix, op, operand, holds):
    store.put(prefix + "k", b"m")
    result = store.txn([Compare(prefix + "k", "value", op, operand)],
                       [Put(prefix + "then", b"1")], [Put(prefix + "else", b"1")])
    assert result.succeeded is holds
    assert (store.get(prefix + "then") is not None) is holds
    assert (store.get(prefix + "else") is not None) is (not holds)


def test_txn_compares_version_and_revisions(store, prefix):
    created = store.put(prefix + "k", b"1")
    modified = store.put(prefix + "k", b"2")
    key = prefix + "k"
    assert store.txn([Compare(key, "version", "=", 2)], []).succeeded
    assert not store.txn([Compare(key, "version", "=", 1)], []).succeeded
    assert store.txn([Compare(key, "version", ">", 1)], []).succeeded
    assert store.txn([Compare(key, "mod_revision", "=", modified)], []).succeeded
    assert not store.txn([Compare(key, "mod_revision", "=", created)], []).succeeded
    assert store.txn([Compare(key, "mod_revision", "<", modified + 1)], []).succeeded
    assert store.txn([Compare(key, "create_revision", "=", created)], []).succeeded
    assert store.txn([Compare(key, "create_revision", "!=", modified)], []).succeeded


def test_txn_on_missing_key_reads_zero_and_value_compare_fails(store, prefix):
    missing = prefix + "missing"
    assert store.txn([Compare(missing, "version", "=", 0)], []).succeeded
    assert store.txn([Compare(missing, "mod_revision", "=", 0)], []).succeeded
    assert not store.txn([Compare(missing, "value", "=", b"")], []).succeeded
    assert not store.txn([Compare(missing, "value", "!=", b"x")], []).succeeded


def test_txn_needs_every_compare_to_hold(store, prefix):
    store.put(prefix + "a", b"1")
    store.put(prefix + "b", b"2")
    both = [Compare(prefix + "a", "value", "=", b"1"), Compare(prefix + "b", "value", "=", b"2")]
    one_wrong = [Compare(prefix + "a", "value", "=", b"1"), Compare(prefix + "b", "value", "=", b"9")]
    assert store.txn(both, []).succeeded
    assert not store.txn(one_wrong, []).succeeded


def test_txn_writes_all_operations_at_one_revision(store, prefix):
    store.put(prefix + "old/1", b"x")
    store.put(prefix + "old/2", b"x")
    result = store.txn([], [Put(prefix + "new/1", b"a"), Put(prefix + "new/2", b"b"),
                            Delete(prefix + "old/", prefix=True)])
    assert result.succeeded
    kvs, _ = store.get_prefix(prefix)
    assert [(kv.key, kv.mod_revision) for kv in kvs] == [(prefix + "new/1", result.revision),
                                                         (prefix + "new/2", result.revision)]


def test_a_listing_taken_during_writes_is_the_state_at_its_revision(store_url, store, prefix):
    """Every write sets both keys to its own number in one transaction: a listing that mixed two revisions
    (read part before a write, part after) would show them apart."""
    writes = 150
    done = threading.Event()

    def write() -> None:
        with open_store(store_url) as writer:
            for n in range(1, writes + 1):
                writer.txn([], [Put(prefix + "a", str(n).encode()), Put(prefix + "b", str(n).encode())])
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    listings = []
    try:
        while not done.is_set() or not listings:
            listings.append(store.get_prefix(prefix))
    finally:
        thread.join(WAIT)
    for kvs, revision in listings:
        assert len({kv.value for kv in kvs}) <= 1 and all(kv.mod_revision <= revision for kv in kvs), (kvs, revision)
    final, _ = store.get_prefix(prefix)
    assert [kv.value for kv in final] == [str(writes).encode()] * 2


def test_txn_takes_up_to_128_operations(store, prefix):
    result = store.txn([], [Put(f"{prefix}{index:03d}", b"v") for index in range(128)])
    assert result.succeeded
    assert len(store.get_prefix(prefix)[0]) == 128


def test_failed_txn_changes_nothing(store, prefix):
    before = store.put(prefix + "k", b"v")
    result = store.txn([Compare(prefix + "k", "value", "=", b"other")], [Put(prefix + "k", b"new")])
    assert not result.succeeded
    assert result.revision >= before
    assert store.get(prefix + "k").mod_revision == before


def test_create_if_absent(store, prefix):
    assert store.create(prefix + "k", b"first")
    assert not store.create(prefix + "k", b"second")
    assert store.get(prefix + "k").value == b"first"
    store.delete(prefix + "k")
    assert store.create(prefix + "k", b"third")


def test_update_if_unchanged(store, prefix):
    revision = store.put(prefix + "k", b"1")
    assert store.compare_and_swap(prefix + "k", b"2", revision)
    assert not store.compare_and_swap(prefix + "k", b"3", revision)  # stale: someone changed it since
    assert store.get(prefix + "k").value == b"2"
    assert not store.compare_and_swap(prefix + "absent", b"x", revision)
    assert store.get(prefix + "absent") is None


def test_create_race_between_threads_has_one_winner(store_url, prefix):
    stores = [open_store(store_url) for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    results: dict[int, bool] = {}

    def contend(client, index):
        barrier.wait()
        results[index] = client.create(prefix + "lock", str(index).encode())

    threads = [threading.Thread(target=contend, args=(client, index)) for index, client in enumerate(stores)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        winners = [index for index, won in results.items() if won]
        assert len(results) == 8 and len(winners) == 1
        kv = stores[0].get(prefix + "lock")
        assert (kv.value, kv.version) == (str(winners[0]).encode(), 1)
    finally:
        for client in stores:
            client.close()


def test_create_race_between_processes_has_one_winner(store_url, store, prefix, workers):
    results = workers.race([("create", store_url, prefix + "lock", f"p{index}") for index in range(6)])
    assert sorted(results) == ["lost"] * 5 + ["won"]
    kv = store.get(prefix + "lock")
    assert (kv.value, kv.version) == (f"p{results.index('won')}".encode(), 1)


def test_compare_and_swap_loses_no_update_across_processes(store_url, store, prefix, workers):
    store.put(prefix + "counter", b"0")
    results = workers.race([("increment", store_url, prefix + "counter", "15") for _ in range(4)])
    assert results == ["done"] * 4
    assert store.get(prefix + "counter").value == b"60"


# -- leases -------------------------------------------------------------------------------------------

def test_lease_keys_vanish_on_expiry(store, prefix):
    lease = store.grant_lease(LEASE_TTL)
    assert lease.id > 0 and lease.ttl >= LEASE_TTL
    store.put(prefix + "leased", b"v", lease=lease.id)
    store.put(prefix + "plain", b"v")
    assert store.get(prefix + "leased").lease == lease.id
    wait_until_gone(store, prefix + "leased")
    assert store.get(prefix + "plain") is not None
    with pytest.raises(LeaseNotFound):
        store.keep_alive(lease.id)


def test_lease_time_left_counts_down_and_ends_with_the_lease(store, prefix):
    lease = store.grant_lease(30)
    left = store.lease_time_left(lease.id)
    assert left is not None and 20 <= left <= 30
    store.revoke_lease(lease.id)
    assert store.lease_time_left(lease.id) is None
    assert store.lease_time_left(123456789) is None  # never granted


def test_lease_keys_vanish_on_revoke(store, prefix):
    lease = store.grant_lease(30)
    other = store.grant_lease(30)
    store.put(prefix + "a", b"v", lease=lease.id)
    store.put(prefix + "b", b"v", lease=lease.id)
    store.put(prefix + "c", b"v", lease=other.id)
    store.revoke_lease(lease.id)
    assert [kv.key for kv in store.get_prefix(prefix)[0]] == [prefix + "c"]
    with pytest.raises(LeaseNotFound):
        store.put(prefix + "a", b"again", lease=lease.id)
    with pytest.raises(LeaseNotFound):
        store.revoke_lease(lease.id)
    store.revoke_lease(other.id)


def test_keep_alive_keeps_keys_past_the_ttl(store, prefix):
    ttl = 2 * LEASE_TTL  # room for a slow keep-alive on a loaded machine
    lease = store.grant_lease(ttl)
    store.put(prefix + "k", b"v", lease=lease.id)
    stop_at = time.monotonic() + 1.5 * ttl
    while time.monotonic() < stop_at:
        assert store.keep_alive(lease.id) >= ttl
        time.sleep(ttl / 8)
    assert store.get(prefix + "k") is not None
    store.revoke_lease(lease.id)


def test_put_without_lease_detaches_the_key(store, prefix):
    lease = store.grant_lease(30)
    store.put(prefix + "k", b"v", lease=lease.id)
    store.put(prefix + "k", b"w")
    store.revoke_lease(lease.id)
    assert store.get(prefix + "k").value == b"w"


def test_unknown_lease_is_lease_not_found(store, prefix):
    with pytest.raises(LeaseNotFound):
        store.keep_alive(424242)
    with pytest.raises(LeaseNotFound):
        store.put(prefix + "k", b"v", lease=424242)
    assert store.get(prefix + "k") is None


def test_txn_with_a_dead_lease_writes_nothing(store, prefix):
    result_before = store.put(prefix + "first", b"keep")
    with pytest.raises(LeaseNotFound):
        store.txn([], [Delete(prefix + "first"), Put(prefix + "second", b"v", lease=424242)])
    assert store.get(prefix + "first").mod_revision == result_before
    assert store.get(prefix + "second") is None


def test_expiry_is_seen_by_a_watcher_when_the_owner_dies(store_url, store, prefix, workers):
    """The owner process is killed; nobody else writes. The watcher alone must see the keys go."""
    _, revision = store.get_prefix(prefix)
    watch = store.watch_prefix(prefix, revision + 1)
    try:
        owner = workers.start("lease-put", store_url, prefix + "owned", str(LEASE_TTL))
        workers.expect(owner, "done")
        owner.kill()
        events = collect(watch, 2)
        assert [(event.kind, event.key) for event in events] == [("put", prefix + "owned"),
                                                                 ("delete", prefix + "owned")]
    finally:
        watch.close()


# -- watches ------------------------------------------------------------------------------------------

def test_watch_from_now_sees_later_changes_in_order(store, prefix):
    store.put(prefix + "before", b"old")
    watch = store.watch_prefix(prefix)
    try:
        first = store.put(prefix + "a", b"1")
        store.put(prefix[:-1] + "-other", b"not under the prefix")
        second = store.put(prefix + "a", b"2")
        third = store.put(prefix + "b", b"3")
        store.delete(prefix + "a")
        events = collect(watch, 4)
        assert [(e.kind, e.key, e.value) for e in events] == [
            ("put", prefix + "a", b"1"), ("put", prefix + "a", b"2"), ("put", prefix + "b", b"3"),
            ("delete", prefix + "a", b"")]
        assert [e.mod_revision for e in events[:3]] == [first, second, third]
        assert events[3].mod_revision > third
    finally:
        watch.close()


def test_snapshot_then_deltas_rebuild_the_state(store, prefix):
    store.put(prefix + "a", b"1")
    store.put(prefix + "b", b"2")
    snapshot, revision = store.get_prefix(prefix)
    store.put(prefix + "c", b"3")  # made after the snapshot, before the watch: must not be missed
    watch = store.watch_prefix(prefix, revision + 1)
    try:
        store.delete(prefix + "a")
        store.put(prefix + "b", b"22")
        state = {kv.key: kv.value for kv in snapshot}
        for event in collect(watch, 3):
            if event.kind == "put":
                state[event.key] = event.value
            else:
                state.pop(event.key)
        assert state == {kv.key: kv.value for kv in store.get_prefix(prefix)[0]}
    finally:
        watch.close()


def test_watch_replays_from_an_old_revision(store, prefix):
    start = store.put(prefix + "k", b"1")
    store.put(prefix + "k", b"2")
    store.delete(prefix + "k")
    watch = store.watch_prefix(prefix, start)
    try:
        assert [(e.kind, e.value) for e in collect(watch, 3)] == [("put", b"1"), ("put", b"2"), ("delete", b"")]
    finally:
        watch.close()


def test_watch_sees_a_transaction_at_one_revision(store, prefix):
    watch = store.watch_prefix(prefix)
    try:
        result = store.txn([], [Put(prefix + "x", b"1"), Put(prefix + "y", b"2")])
        events = collect(watch, 2)
        assert {(e.key, e.mod_revision) for e in events} == {(prefix + "x", result.revision),
                                                            (prefix + "y", result.revision)}
    finally:
        watch.close()


def test_watch_sees_writes_from_another_process(store_url, store, prefix, workers):
    watch = store.watch_prefix(prefix)
    try:
        writer = workers.start("put", store_url, prefix + "k", "one", "two", "three")
        workers.expect(writer, "done")
        assert [e.value for e in collect(watch, 3)] == [b"one", b"two", b"three"]
    finally:
        watch.close()


def test_watch_overtaken_by_compaction_emits_the_difference(store, prefix):
    store.put(prefix + "kept", b"same")
    store.put(prefix + "changed", b"old")
    store.put(prefix + "removed", b"x")
    _, revision = store.get_prefix(prefix)
    watch = store.watch_prefix(prefix, revision + 1)
    try:
        store.put(prefix + "changed", b"new")
        store.delete(prefix + "removed")
        store.put(prefix + "added", b"a")
        store.put(prefix + "brief", b"b")
        store.delete(prefix + "brief")
        store.compact(store.put(prefix[:-1] + "-elsewhere", b"moves the revision on"))
        batch = watch.next_batch(WAIT)
        assert batch is not None and batch.resynced
        assert {(e.kind, e.key, e.value) for e in batch.events} == {
            ("put", prefix + "changed", b"new"), ("delete", prefix + "removed", b""),
            ("put", prefix + "added", b"a")}
        later = store.put(prefix + "after", b"z")
        batch = watch.next_batch(WAIT)
        assert not batch.resynced
        assert batch.events == (WatchEvent("put", prefix + "after", b"z", later),)
    finally:
        watch.close()


def test_watch_from_a_compacted_revision_is_refused(store, prefix):
    old = store.put(prefix + "k", b"1")
    store.compact(store.put(prefix + "k", b"2"))
    with pytest.raises(Compacted):
        store.watch_prefix(prefix, old)


def test_compacting_twice_or_ahead_is_refused(store, prefix):
    revision = store.put(prefix + "k", b"1")
    store.compact(revision)
    with pytest.raises(Compacted):
        store.compact(revision)
    with pytest.raises(InvalidRequest):
        store.compact(revision + 1000)


def test_closed_watch_ends_iteration(store, prefix):
    watch = store.watch_prefix(prefix)
    closer = threading.Timer(0.2, watch.close)
    closer.start()
    try:
        assert list(watch) == []
    finally:
        closer.cancel()
        watch.close()


# -- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda s, p: s.put("", b"v"),
    lambda s, p: s.put(p + "k", "text, not bytes"),
    lambda s, p: s.put(p + "k", b"v", lease=-1),
    lambda s, p: s.get(""),
    lambda s, p: s.grant_lease(0),
    lambda s, p: s.grant_lease(-5),
    lambda s, p: s.grant_lease(float("nan")),
    lambda s, p: s.txn([Compare(p + "k", "colour", "=", 1)], [Put(p + "k", b"v")]),
    lambda s, p: s.txn([Compare(p + "k", "version", "~", 1)], [Put(p + "k", b"v")]),
    lambda s, p: s.txn([Compare(p + "k", "version", "=", b"1")], [Put(p + "k", b"v")]),
    lambda s, p: s.txn([], [Put(p + "k", b"v"), Put(p + "k", b"w")]),
    lambda s, p: s.txn([], [Put(p + "k", b"v"), "delete everything"]),
    lambda s, p: s.watch_prefix(p, 0),
    lambda s, p: s.txn([], [Put(f"{p}{i}", b"v") for i in range(129)]),
    lambda s, p: s.put(p + "k", bytes(1024 * 1024 + 1)),
    lambda s, p: s.txn([], [Put(p + "a", bytes(600_000)), Put(p + "b", bytes(600_000))]),
], ids=["empty-key", "str-value", "negative-lease", "get-empty-key", "ttl-zero", "ttl-negative", "ttl-nan",
        "compare-target", "compare-op", "compare-type", "duplicate-put", "not-an-op", "revision-zero",
        "too-many-ops", "value-too-big", "txn-too-big"])
def test_bad_input_is_refused_and_writes_nothing(store, prefix, call):
    _, before = store.get_prefix(prefix)
    with pytest.raises(InvalidRequest) as caught:
        call(store, prefix)
    assert isinstance(caught.value, StoreError) and isinstance(caught.value, ValueError)
    assert not caught.value.retryable
    assert store.get_prefix(prefix) == ([], before)


def test_unknown_url_scheme_is_refused():
    with pytest.raises(ValueError):
        open_store("zookeeper://127.0.0.1:2181")


def test_a_batch_too_large_for_one_transaction_goes_through_in_chunks(store, prefix):
    from store.common import MAX_TXN_OPS, txn_chunks

    ops = [Put(f"{prefix}k{index:04d}", b"x" * 2048) for index in range(3 * MAX_TXN_OPS + 5)]
    with pytest.raises(InvalidRequest):
        store.txn([], ops)  # refused whole, nothing written
    assert store.get_prefix(prefix)[0] == []
    chunks = txn_chunks(ops)
    assert [op for chunk in chunks for op in chunk] == ops and all(len(chunk) <= MAX_TXN_OPS for chunk in chunks)
    for chunk in chunks:
        store.txn([], chunk)
    assert len(store.get_prefix(prefix)[0]) == len(ops)
