"""A three-member ZooKeeper ensemble on loopback loses a member during writes: nothing acknowledged is lost,
the watch sees every change once and in order (leases and a returning member: ``test_member_loss.py``)."""
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
