"""A stalled etcd (SIGSTOP, then SIGCONT): calls end at their deadline, the follower and the keeper come back."""
from __future__ import annotations

import signal
import threading

import pytest

from store.api import StoreUnavailable, open_store
from store.deadline import call_deadline
from store.follower import Follower
from store.keeper import LeaseKeeper
from tests.conftest import unique_name
from tests.etcd_harness import start_etcd
from tests.store.conftest import outcome_within
from tests.store.test_follower_keeper import KeysReducer, stored
from tests.waiting import wait_until

pytestmark = pytest.mark.etcd
WAIT = 30.0


@pytest.fixture
def stalled():
    """A one-member etcd and a function that stops it (SIGSTOP); it is always continued at teardown."""
    with start_etcd(1) as cluster:
        process = cluster.members[0].process
        stopped = []

        def stall():
            process.send_signal(signal.SIGSTOP)
            stopped.append(True)

        def resume():
            if stopped:
                process.send_signal(signal.SIGCONT)
                stopped.clear()
        cluster.stall, cluster.resume = stall, resume
        try:
            yield cluster
        finally:
            resume()


def test_a_call_to_a_stalled_etcd_ends_at_its_deadline(stalled):
    store = open_store(stalled.url)  # the default budget: 15 s
    try:
        store.put("bt/warm", b"v")
        stalled.stall()

        def call():
            with call_deadline(1.0):
                return store.put("bt/stalled", b"v")
        # well short of the 15 s budget, far past the 1 s deadline
        assert isinstance(outcome_within(call, 10), StoreUnavailable)
    finally:
        stalled.resume()
        store.close()


def test_follower_and_keeper_come_back_after_a_stall_longer_than_the_lease(stalled):
    store = open_store(stalled.url)
    prefix = unique_name("st") + "/"
    follower = keeper = None
    try:
        reducer = KeysReducer()
        follower = Follower(store, prefix, reducer).start()
        keeper = LeaseKeeper(store, 2.0, lambda lease_id: store.put(prefix + "mine", b"v", lease=lease_id))
        first = keeper.acquire()
        store.put(prefix + "mine", b"v", lease=first)
        keeper.start()
        stalled.stall()
        threading.Event().wait(3 * keeper.ttl)  # the stall's length is the condition: the lease runs out in it
        stalled.resume()
        last = store.put(prefix + "after", b"1")
        wait_until(lambda: follower.revision >= last and prefix + "after" in reducer.keys, timeout=WAIT,
                   what="the follower past the stall")
        kv = wait_until(lambda: (kv := store.get(prefix + "mine")) and kv.lease == keeper.lease_id and kv,
                        timeout=WAIT, what="the keeper's owner rewriting under a live lease")
        store.keep_alive(kv.lease)
        wait_until(lambda: reducer.keys == stored(store, prefix), timeout=WAIT, what="the follower exact")
    finally:
        stalled.resume()
        if follower is not None:
            follower.stop()
        if keeper is not None:
            keeper.stop(revoke=True)
        store.close()
