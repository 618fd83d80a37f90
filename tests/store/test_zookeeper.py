"""What the ZooKeeper backend adds beyond the contract: its layout, awkward keys, and surviving session loss.

One server per module (``zk_server``); tests keep apart by key prefix, or by store root where they look at
the layout itself."""
from __future__ import annotations

import time

import pytest
from kazoo.client import KazooClient

from store.api import InvalidRequest, LeaseNotFound, open_store
from store.zookeeper_codec import entry_name, key_to_name
from tests.conftest import unique_name
from tests.store.conftest import WAIT, collect

pytestmark = [pytest.mark.zk, pytest.mark.service]


@pytest.fixture
def store(zk_server):
    opened = open_store(zk_server.url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def raw(zk_server):
    """A plain kazoo client on the same server, to look at what the store wrote."""
    client = KazooClient(hosts=zk_server.members[0].endpoint)
    client.start(timeout=WAIT)
    try:
        yield client
    finally:
        client.stop()
        client.close()


def expire_session(store, endpoint: str) -> None:
    """End the store's ZooKeeper session from outside, as a server does to a client it lost for too long:
    a second client that joins the same session and closes it."""
    session_id, password = store.client.client_id
    intruder = KazooClient(hosts=endpoint, client_id=(session_id, password))
    intruder.start(timeout=WAIT)
    intruder.stop()
    intruder.close()


@pytest.mark.parametrize("url", ["zk://", "zk:///berth", "etcd://127.0.0.1:1", "zk://127.0.0.1:1/a//b",
                                 "zk://127.0.0.1:1/a/../b", "zk://127.0.0.1:1?timeout=0",
                                 "zk://127.0.0.1:1?timeout=soon", "zk://127.0.0.1:1?history=10",
                                 "zk://127.0.0.1:1?history=many", "zk://127.0.0.1:1?session=0",
                                 "zk://127.0.0.1:1?session=nan"])
def test_bad_url_is_refused_before_connecting(url):
    from store.zookeeper import ZkStore

    with pytest.raises(InvalidRequest):
        ZkStore.from_url(url)


def test_the_url_names_the_session_timeout():
    from store.zookeeper import parse_url

    assert parse_url("zk://127.0.0.1:1/r?session=4&timeout=2")[1:] == ("/r", 2.0, 10_000, 4.0)
    assert parse_url("zk://127.0.0.1:1")[4] == 10.0


def test_unreachable_server_is_store_unavailable_within_the_timeout():
    from store.api import StoreUnavailable
    from tests.ports import held_port

    with held_port() as port:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            open_store(f"zk://127.0.0.1:{port}?timeout=1")
        assert time.monotonic() - started < WAIT  # bounded, not a speed claim: it must not hang


def test_revision_is_the_counter_version_and_the_log_has_one_entry_per_write(zk_server, raw):
    root = "/" + unique_name("root")
    with open_store(zk_server.url + root) as store:
        first = store.put("k", b"1")
        second = store.txn([], [])  # changes nothing: no revision, no entry
        third = store.delete("k")
        assert (first, second.revision, third) == (1, 1, 1)
        assert raw.exists(root + "/rev").version == 2
        assert sorted(raw.get_children(root + "/log")) == [entry_name(1), entry_name(2)]
        assert raw.get_children(root + "/kv") == []
        store.compact(2)
        assert raw.get_children(root + "/log") == []
        raw.delete(root, recursive=True)


def test_stores_under_different_roots_are_apart(zk_server, prefix):
    with open_store(f"{zk_server.url}/{unique_name('a')}") as one, \
            open_store(f"{zk_server.url}/{unique_name('b')}") as two:
        one.put(prefix + "k", b"one")
        assert two.get(prefix + "k") is None
        assert two.put(prefix + "k", b"two") == 1


@pytest.mark.parametrize("suffix", [".", "..", "a/b/", "/", "%2F", "é/日本", "sp ace", "a%", "\u007f"])
def test_awkward_keys_round_trip_and_list_by_string_prefix(store, prefix, suffix, raw):
    key = prefix + suffix
    revision = store.put(key, suffix.encode())
    assert store.get(key).value == suffix.encode()
    kvs, _ = store.get_prefix(prefix)
    assert [(kv.key, kv.mod_revision) for kv in kvs] == [(key, revision)]
    assert raw.exists("/berth/kv/" + key_to_name(key)) is not None
    assert store.delete(prefix, prefix=True) == 1


def test_session_loss_keeps_leases_watches_and_writes(zk_server, store, prefix):
    """Leases are the store's, not the session's: a session the server ends takes nothing with it, the
    client gets a new one, and the watch goes on from where it was without missing a change."""
    lease = store.grant_lease(30)
    store.put(prefix + "owned", b"v", lease=lease.id)
    watch = store.watch_prefix(prefix)
    try:
        before = store.client.client_id[0]
        expire_session(store, zk_server.members[0].endpoint)
        with open_store(zk_server.url) as other:
            other.put(prefix + "while-away", b"1")  # may land before this store's client has noticed
        store.put(prefix + "after", b"2")
        assert store.client.client_id[0] != before
        events = collect(watch, 2)
        assert [(e.key, e.value) for e in events] == [(prefix + "while-away", b"1"), (prefix + "after", b"2")]
        assert store.keep_alive(lease.id) == 30
        assert store.get(prefix + "owned").lease == lease.id
    finally:
        watch.close()
        store.revoke_lease(lease.id)


def test_a_keep_alive_after_the_ttl_expires_the_lease_instead_of_reviving_it(zk_server, prefix):
    """Nobody else touches this root, so no sweep runs before the late keep-alive: the keep-alive itself
    must find the lease past its TTL by the server's clock, delete its keys and refuse."""
    root = "/" + unique_name("root")
    with open_store(zk_server.url + root) as store:
        lease = store.grant_lease(0.5)
        store.put(prefix + "owned", b"v", lease=lease.id)
        watch = store.watch_prefix(prefix)
        time.sleep(1.0)  # the condition under test is the passing of time itself (TTL 0.5 s)
        with pytest.raises(LeaseNotFound):
            store.keep_alive(lease.id)
        assert [(e.kind, e.key) for e in collect(watch, 1)] == [("delete", prefix + "owned")]
        watch.close()


def test_the_change_log_stays_bounded_by_the_history_kept(zk_server, raw):
    """Writers trim the log as they go: old revisions are refused to new watches, the newest are replayed."""
    from store.api import Compacted

    root = "/" + unique_name("root")
    with open_store(f"{zk_server.url}{root}?history=64") as store:
        revisions = [store.put(f"k{index % 5}", str(index).encode()) for index in range(300)]
        entries = raw.get_children(root + "/log")
        assert 64 <= len(entries) <= 128
        with pytest.raises(Compacted):
            store.watch_prefix("k", revisions[0])
        watch = store.watch_prefix("k", revisions[-10])
        assert [e.value for e in collect(watch, 10)] == [str(index).encode() for index in range(290, 300)]
        watch.close()
    raw.delete(root, recursive=True)


def test_nodes_berth_never_makes_are_ignored_not_fatal(zk_server, raw, prefix):
    """Someone else's nodes beside Berth's (a stray name in kv/, junk in leases/) neither break a listing
    nor stop the sweep from expiring real leases."""
    root = "/" + unique_name("root")
    with open_store(zk_server.url + root) as store:
        raw.create(root + "/kv/%ff%fe-not-utf8")
        raw.create(root + "/kv/lower%2fcase")
        raw.create(root + "/leases/not-a-lease", b"1")
        raw.create(root + "/leases/00000000000000aa", b"no ttl here")
        lease = store.grant_lease(0.5)
        store.put(prefix + "owned", b"v", lease=lease.id)
        store.put(prefix + "plain", b"v")
        assert [kv.key for kv in store.get_prefix("")[0]] == [prefix + "owned", prefix + "plain"]
        deadline = time.monotonic() + WAIT
        while store.get(prefix + "owned") is not None:
            assert time.monotonic() < deadline, "the leased key outlived its lease"
            time.sleep(0.05)
    raw.delete(root, recursive=True)


def test_a_watch_read_keeps_its_timeout_while_the_server_is_down(prefix):
    """A next_batch(timeout) on a store whose only server died returns None near its timeout instead of
    blocking for the store's whole retry budget; once a server is back it delivers again."""
    from tests.zk_harness import start_zookeeper

    with start_zookeeper(1) as ensemble, open_store(ensemble.url + "?timeout=30") as store:
        watch = store.watch_prefix(prefix)
        ensemble.kill(0)
        started = time.monotonic()
        assert watch.next_batch(1.0) is None
        assert time.monotonic() - started < 20  # a hang guard: bounded by its timeout, not the 30 s budget
        ensemble.restart(0)
        store.put(prefix + "k", b"back")
        assert [e.value for e in collect(watch, 1)] == [b"back"]
        watch.close()


def test_a_callers_deadline_bounds_its_calls_while_the_server_is_down(prefix):
    """store.deadline.call_deadline (the agent's keep-alives and writes carry one) cuts the retry budget short."""
    from store.api import StoreUnavailable
    from store.deadline import call_deadline
    from tests.zk_harness import start_zookeeper

    with start_zookeeper(1) as ensemble, open_store(ensemble.url + "?timeout=30") as store:
        store.put(prefix + "k", b"v")
        ensemble.kill(0)
        started = time.monotonic()
        with call_deadline(1.0), pytest.raises(StoreUnavailable):
            store.get(prefix + "k")
        assert time.monotonic() - started < 20  # a hang guard: bounded by the deadline, not the 30 s budget


def test_a_closed_store_refuses_at_once(zk_server, prefix):
    from store.api import StoreError

    store = open_store(zk_server.url)
    store.close()
    started = time.monotonic()
    with pytest.raises(StoreError):
        store.put(prefix + "k", b"v")
    with pytest.raises(StoreError):
        store.get(prefix + "k")
    assert time.monotonic() - started < 5  # a hang guard: no retrying a client that was stopped
