"""What a three-member cluster of either distributed backend must keep when it loses a member: the lease under
its keep-alives, and a watch whose only member was away while history moved on. (Writes during the loss differ by
backend — etcd may apply a resent put twice, ZooKeeper never — and are tested in each backend's own module.)"""
from __future__ import annotations

import pytest

from store.api import open_store
from tests.store.conftest import WAIT
from tests.etcd_harness import start_etcd
from tests.zk_harness import start_zookeeper

pytestmark = [pytest.mark.slow, pytest.mark.service]


@pytest.fixture(params=[pytest.param(start_etcd, id="etcd", marks=pytest.mark.etcd),
                        pytest.param(start_zookeeper, id="zk", marks=pytest.mark.zk)])
def cluster(request):
    """A fresh three-member etcd cluster or ZooKeeper ensemble on loopback; ``kill(i)`` / ``restart(i)``."""
    members = request.param(3)
    try:
        yield members
    finally:
        members.close()


def test_lease_survives_losing_the_leader(cluster, prefix):
    store = open_store(cluster.url)
    try:
        lease = store.grant_lease(5)
        store.put(prefix + "owned", b"v", lease=lease.id)
        cluster.kill(cluster.leader_index())
        for _ in range(3):
            assert store.keep_alive(lease.id) == 5
        assert store.get(prefix + "owned").lease == lease.id
        store.revoke_lease(lease.id)
        assert store.get(prefix + "owned") is None
    finally:
        store.close()


def test_watch_on_a_restarted_member_catches_up_exactly(cluster, prefix):
    """The watch's only member is down while keys change and history is compacted; back up, the watch must
    bring its reader to exactly the store's state (by replay or by a resynced difference)."""
    writer, reader = open_store(cluster.url), open_store(cluster.member_url(0))
    try:
        for name in ("kept", "changed", "removed"):
            writer.put(prefix + name, b"before")
        snapshot, revision = reader.get_prefix(prefix)
        state = {kv.key: kv.value for kv in snapshot}
        watch = reader.watch_prefix(prefix, revision + 1)
        assert watch.next_batch(0.05) is None  # the stream is up before the member goes
        cluster.kill(0)
        writer.put(prefix + "changed", b"after")
        writer.delete(prefix + "removed")
        writer.put(prefix + "added", b"after")
        writer.compact(writer.put(prefix + "added", b"final"))
        cluster.restart(0)
        expected = {kv.key: kv.value for kv in writer.get_prefix(prefix)[0]}
        while state != expected:
            batch = watch.next_batch(WAIT)
            assert batch is not None, f"watch stuck at {state}, store has {expected}"
            for event in batch.events:
                if event.kind == "put":
                    state[event.key] = event.value
                else:
                    state.pop(event.key, None)
        watch.close()
    finally:
        writer.close()
        reader.close()
