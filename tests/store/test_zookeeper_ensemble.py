"""A three-member ZooKeeper ensemble on loopback loses a member during writes: nothing acknowledged is lost,
the watch sees every change once and in order, leases carry on."""
from __future__ import annotations

import threading

import pytest

from store.api import open_store
from tests.store.conftest import WAIT, collect

pytestmark = [pytest.mark.zk, pytest.mark.slow, pytest.mark.service]

BEFORE_KILL = 30   # writes the watch must have seen before the member is killed
AFTER_KILL = 30    # writes made after the kill, so the test ends with the ensemble serving without it


def connected_member(store, ensemble) -> int:
    """Which member the store's session is on (kazoo keeps its socket private; a test may look)."""
    port = store.client._connection._socket.getpeername()[1]
    return [member.client_port for member in ensemble.members].index(port)


def write_until(store, prefix: str, acknowledged: dict, errors: list, killed: threading.Event) -> None:
    """Write without pausing, so the kill lands on a write in flight; go on for AFTER_KILL writes after it."""
    try:
        index, stop_at = 0, None
        while stop_at is None or index < stop_at:
            if stop_at is None and killed.is_set():
                stop_at = index + AFTER_KILL
            key = f"{prefix}{index:04d}"
            acknowledged[key] = store.put(key, str(index).encode())
            index += 1
    except Exception as exc:  # reported by the test, not lost in a thread
        errors.append(exc)


@pytest.mark.parametrize("victim", ["in-use", "leader"])
def test_no_acknowledged_write_is_lost_when_a_member_dies(zk_ensemble, prefix, victim):
    writer, watcher = open_store(zk_ensemble.url), open_store(zk_ensemble.url)
    try:
        watch = watcher.watch_prefix(prefix)
        acknowledged: dict[str, int] = {}
        errors: list = []
        killed = threading.Event()
        thread = threading.Thread(target=write_until, args=(writer, prefix, acknowledged, errors, killed))
        thread.start()
        seen = collect(watch, BEFORE_KILL)
        index = connected_member(writer, zk_ensemble) if victim == "in-use" else zk_ensemble.leader_index()
        zk_ensemble.kill(index)
        killed.set()
        thread.join(3 * WAIT)
        assert not thread.is_alive() and not errors
        seen += collect(watch, len(acknowledged) - len(seen))
        assert [event.value for event in seen] == [str(i).encode() for i in range(len(acknowledged))]
        revisions = [event.mod_revision for event in seen]
        assert revisions == list(range(revisions[0], revisions[0] + len(seen)))  # no write applied twice
        with open_store(zk_ensemble.url) as reader:
            kvs, _ = reader.get_prefix(prefix)
        assert {kv.key: kv.mod_revision for kv in kvs} == acknowledged
        watch.close()
    finally:
        writer.close()
        watcher.close()


def test_lease_survives_losing_the_leader(zk_ensemble, prefix):
    store = open_store(zk_ensemble.url)
    try:
        lease = store.grant_lease(5)
        store.put(prefix + "owned", b"v", lease=lease.id)
        zk_ensemble.kill(zk_ensemble.leader_index())
        for _ in range(3):
            assert store.keep_alive(lease.id) == 5
        assert store.get(prefix + "owned").lease == lease.id
        store.revoke_lease(lease.id)
        assert store.get(prefix + "owned") is None
    finally:
        store.close()


def test_watch_on_a_restarted_member_catches_up_exactly(zk_ensemble, prefix):
    """The watch's only member is down while keys change and history is compacted; back up, the watch must
    bring its reader to exactly the store's state (by replay or by a resynced difference)."""
    writer, reader = open_store(zk_ensemble.url), open_store(zk_ensemble.member_url(0))
    try:
        for name in ("kept", "changed", "removed"):
            writer.put(prefix + name, b"before")
        snapshot, revision = reader.get_prefix(prefix)
        state = {kv.key: kv.value for kv in snapshot}
        watch = reader.watch_prefix(prefix, revision + 1)
        assert watch.next_batch(0.05) is None
        zk_ensemble.kill(0)
        writer.put(prefix + "changed", b"after")
        writer.delete(prefix + "removed")
        writer.put(prefix + "added", b"after")
        writer.compact(writer.put(prefix + "added", b"final"))
        zk_ensemble.restart(0)
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
