"""The store's shared follower and lease keeper, on every backend (``store_url`` is parametrized in conftest)."""
from __future__ import annotations

import threading

import pytest

from store.api import KeyValue, LeaseNotFound, WatchBatch, open_store
from store.follower import Follower
from store.keeper import LeaseKeeper
from tests.store.conftest import WAIT
from tests.waiting import wait_until

# whole seconds (etcd's unit); the keeper renews every third of it, so only three failed renewals in a row (not
# one slow one on a loaded machine) could let a key lapse
KEEPER_TTL = 3.0


class KeysReducer:
    """A reducer as an owner writes one: the keys' values, and every step it was given, in order."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.steps: list[tuple[str, int]] = []

    def reset(self, items: list[KeyValue], revision: int) -> dict[str, bytes]:
        self.keys = {kv.key: kv.value for kv in items}
        self.steps.append(("reset", revision))
        return dict(self.keys)

    def apply(self, batch: WatchBatch) -> dict[str, bytes]:
        for event in batch.events:
            if event.kind == "put":
                self.keys[event.key] = event.value
            else:
                self.keys.pop(event.key, None)
        self.steps.append(("resync" if batch.resynced else "apply", batch.revision))
        return dict(self.keys)


def stored(store, prefix: str) -> dict[str, bytes]:
    return {kv.key: kv.value for kv in store.get_prefix(prefix)[0]}


@pytest.fixture
def follow(store):
    made: list[Follower] = []

    def _follow(prefix: str, reducer, on_change=lambda change: None) -> Follower:
        follower = Follower(store, prefix, reducer, on_change)
        made.append(follower)
        return follower.start()
    yield _follow
    for follower in made:
        follower.stop()


# -- the follower ----------------------------------------------------------------------------------------

def test_follower_lists_then_applies_every_change_in_order(store, prefix, follow):
    store.put(prefix + "a", b"1")
    store.put(prefix[:-1] + "-neighbour", b"not under the prefix")
    reducer = KeysReducer()
    changes: list[dict] = []
    follower = follow(prefix, reducer, changes.append)
    assert reducer.keys == {prefix + "a": b"1"}  # the listing is applied before start returns
    store.put(prefix + "b", b"2")
    store.delete(prefix + "a")
    last = store.put(prefix + "b", b"3")
    wait_until(lambda: follower.revision >= last, timeout=WAIT, what="the follower reaching the last write")
    assert reducer.keys == stored(store, prefix) == {prefix + "b": b"3"}
    assert changes[-1] == reducer.keys
    revisions = [revision for _kind, revision in reducer.steps]
    assert revisions == sorted(revisions) and reducer.steps[0][0] == "reset"


def test_follower_resumes_an_ended_watch_without_re_listing_or_missing_a_change(store, prefix, follow):
    reducer = KeysReducer()
    follower = follow(prefix, reducer)
    first = store.put(prefix + "a", b"1")
    wait_until(lambda: follower.revision >= first, timeout=WAIT, what="the first write")
    follower._close_watch()  # as when its member went away: the watch ends under the follower
    store.put(prefix + "b", b"2")
    last = store.delete(prefix + "a") and store.put(prefix + "c", b"3")
    wait_until(lambda: follower.revision >= last, timeout=WAIT, what="the writes after the watch ended")
    assert reducer.keys == stored(store, prefix)
    assert follower.relists == 0 and [kind for kind, _ in reducer.steps].count("reset") == 1


def test_follower_re_lists_when_history_was_compacted_past_it(store, prefix, follow):
    """The follower is held inside a step while its watch ends, a key is deleted and the history compacted:
    it cannot resume from its revision, so it must re-list and still see the deletion."""
    if not hasattr(store, "compact"):
        pytest.skip("backend without compaction")
    store.put(prefix + "doomed", b"x")
    held, release = threading.Event(), threading.Event()

    def on_change(change):
        if prefix + "held" in change and not held.is_set():
            held.set()
            release.wait(WAIT)
    reducer = KeysReducer()
    follower = follow(prefix, reducer, on_change)
    store.put(prefix + "held", b"1")
    assert held.wait(WAIT)
    try:
        follower._close_watch()
        store.delete(prefix + "doomed")
        store.put(prefix + "new", b"2")
        _items, revision = store.get_prefix(prefix)
        store.compact(revision)
    finally:
        release.set()
    wait_until(lambda: follower.relists >= 1 and follower.revision >= revision, timeout=WAIT,
               what="the follower re-listing after compaction")
    assert reducer.keys == stored(store, prefix) == {prefix + "held": b"1", prefix + "new": b"2"}


def test_follower_re_lists_after_a_failed_step_and_ends_exact(store, prefix, follow):
    failures = []

    def on_change(change):
        if prefix + "poison" in change and not failures:
            failures.append(change)
            raise RuntimeError("the owner could not apply this step")
    reducer = KeysReducer()
    follower = follow(prefix, reducer, on_change)
    store.put(prefix + "poison", b"1")
    last = store.put(prefix + "after", b"2")
    wait_until(lambda: follower.relists >= 1 and follower.revision >= last, timeout=WAIT,
               what="a re-listing after the failed step")
    assert failures and reducer.keys == stored(store, prefix)


def test_follower_stop_ends_its_thread(store, prefix):
    follower = Follower(store, prefix, KeysReducer()).start()
    thread = follower._thread
    follower.stop()
    assert not thread.is_alive()


# -- the keeper ------------------------------------------------------------------------------------------

@pytest.fixture
def keepers(store):
    made: list[LeaseKeeper] = []

    def _keeper(on_new_lease=lambda lease_id: None) -> LeaseKeeper:
        keeper = LeaseKeeper(store, KEEPER_TTL, on_new_lease)
        made.append(keeper)
        return keeper
    yield _keeper
    for keeper in made:
        keeper.stop(revoke=True)


def test_keeper_keeps_its_keys_past_the_ttl(store, prefix, keepers):
    keeper = keepers()
    lease_id = keeper.acquire()
    keeper.start()
    store.put(prefix + "kept", b"v", lease=lease_id)
    stop = threading.Event()
    stop.wait(2 * KEEPER_TTL)  # two lifetimes of the lease: only renewal can keep the key
    assert store.get(prefix + "kept") is not None and keeper.lease_id == lease_id and keeper.granted == 0


def test_keeper_replaces_a_lost_lease_and_the_owner_rewrites_under_it(store, prefix, keepers):
    def rewrite(lease_id):
        store.put(prefix + "mine", b"v", lease=lease_id)
    keeper = keepers(rewrite)
    first = keeper.acquire()
    rewrite(first)
    keeper.start()
    store.revoke_lease(first)  # as if it had expired while the store was out of reach: the key goes too
    kv = wait_until(lambda: (kv := store.get(prefix + "mine")) and kv.lease != first and kv, timeout=WAIT,
                    what="the key back under a new lease")
    assert kv.lease == keeper.lease_id and keeper.granted == 1


def test_keeper_calls_a_failing_owner_again_until_its_rewrite_succeeds(store, prefix, keepers):
    calls = []

    def rewrite(lease_id):
        calls.append(lease_id)
        if len(calls) < 3:
            raise RuntimeError("the owner's rewrite failed")
        store.put(prefix + "mine", b"v", lease=lease_id)
    keeper = keepers(rewrite)
    first = keeper.acquire()
    keeper.start()
    store.revoke_lease(first)
    wait_until(lambda: store.get(prefix + "mine"), timeout=WAIT, what="the third rewrite")
    assert len(calls) == 3 and len(set(calls)) == 1 and calls[0] != first


def test_keeper_replaces_at_once_a_lease_its_owner_saw_refused(store, prefix, keepers):
    new_leases = []
    keeper = keepers(new_leases.append)
    first = keeper.acquire()
    keeper.start()
    store.revoke_lease(first)
    with pytest.raises(LeaseNotFound):
        store.put(prefix + "k", b"v", lease=first)
    keeper.lost(first)
    wait_until(lambda: new_leases, timeout=WAIT, what="a new lease")
    assert keeper.lease_id == new_leases[0] != first
    store.put(prefix + "k", b"v", lease=keeper.lease_id)


def test_keeper_acquire_reuses_a_live_lease_and_replaces_a_dead_one(store, prefix, keepers):
    live = store.grant_lease(30).id
    store.put(prefix + "kept", b"v", lease=live)
    assert keepers().acquire(reuse=live) == live
    assert store.get(prefix + "kept").lease == live
    store.revoke_lease(live)
    assert keepers().acquire(reuse=live) not in (0, live)


def test_keeper_with_no_lease_grants_one_on_its_thread_and_tells_the_owner(store, keepers):
    new_leases = []
    keeper = keepers(new_leases.append).start()  # as after an acquire that met an unreachable store
    wait_until(lambda: new_leases, timeout=WAIT, what="the keeper granting a lease")
    assert new_leases == [keeper.lease_id]
    store.keep_alive(keeper.lease_id)


def test_keeper_refuses_a_ttl_that_is_not_positive(store_url):
    store = open_store(store_url)
    try:
        for ttl in (0, -1, float("nan"), True):
            with pytest.raises(ValueError, match="ttl"):
                LeaseKeeper(store, ttl)
    finally:
        store.close()
