"""A three-member etcd cluster on loopback loses a member mid-test: writes and watches carry on (leases and a
returning member's watch: ``test_member_loss.py``)."""
from __future__ import annotations

import threading
import time

import pytest

from store.api import open_store
from tests.store.conftest import WAIT, collect

pytestmark = [pytest.mark.etcd, pytest.mark.slow]

WRITES = 60


def collect_until(watch, done, timeout: float = WAIT) -> list:
    """Events until ``done(events)`` (the count is not known in advance: a retried put may show twice)."""
    events: list = []
    deadline = time.monotonic() + timeout
    while not done(events):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out after {timeout:.0f}s; seen {[e.key for e in events][-5:]}"
        batch = watch.next_batch(remaining)
        if batch is not None:
            events.extend(batch.events)
    return events


def write_all(store, prefix: str, errors: list, killed: threading.Event, kill_after: int) -> None:
    try:
        for index in range(WRITES):
            if index == kill_after:
                killed.wait(WAIT)
            store.put(f"{prefix}{index:03d}", str(index).encode())
    except Exception as exc:  # reported by the test, not lost in a thread
        errors.append(exc)


@pytest.mark.parametrize("victim", ["in-use", "leader"])
def test_writes_and_watches_continue_when_a_member_dies(etcd_cluster, prefix, victim):
    writer, watcher = open_store(etcd_cluster.url), open_store(etcd_cluster.url)
    try:
        watch = watcher.watch_prefix(prefix)
        assert watch.next_batch(0.05) is None  # starts the stream before anything is killed
        errors: list = []
        killed = threading.Event()
        thread = threading.Thread(target=write_all, args=(writer, prefix, errors, killed, WRITES // 2))
        thread.start()
        seen = collect(watch, WRITES // 2)
        if victim == "in-use":
            index = etcd_cluster.endpoints.index(writer.endpoint)
            assert watch.endpoint == writer.endpoint
        else:
            index = etcd_cluster.leader_index()
        etcd_cluster.kill(index)
        killed.set()
        thread.join(WAIT)
        seen += collect_until(watch, lambda events: events and events[-1].key.endswith(f"{WRITES - 1:03d}"))
        assert not errors
        revisions = [event.mod_revision for event in seen]
        assert revisions == sorted(set(revisions))  # in order, none delivered twice
        # A put whose answer was lost with the dying member is sent again, and etcd applies it again: the same
        # key and value at a later revision. Every write is there, in order; a retried one may show twice.
        writes = [(event.key, event.value) for event in seen]
        once = [w for i, w in enumerate(writes) if i == 0 or w != writes[i - 1]]
        assert [value for _, value in once] == [str(i).encode() for i in range(WRITES)]
        assert len(writer.get_prefix(prefix)[0]) == WRITES
        if victim == "in-use":
            gone = etcd_cluster.members[index].endpoint
            assert watch.endpoint != gone and writer.endpoint != gone  # both failed over
        watch.close()
    finally:
        writer.close()
        watcher.close()



def test_restarted_member_catches_up(etcd_cluster, prefix):
    store = open_store(etcd_cluster.url)
    try:
        etcd_cluster.kill(2)
        revision = store.put(prefix + "while-away", b"v")
        etcd_cluster.restart(2)
        only_that_member = open_store(etcd_cluster.member_url(2))
        try:
            kv = only_that_member.get(prefix + "while-away")
            assert kv is not None and kv.mod_revision == revision
        finally:
            only_that_member.close()
    finally:
        store.close()
