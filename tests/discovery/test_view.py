"""The discovery view over real stores: snapshot, then deltas, callbacks, and no stale record after churn."""
from __future__ import annotations

import subprocess
import sys
import threading

from discovery.model import ENDPOINTS_PREFIX, EndpointRecord, endpoint_key
from discovery.view import DiscoveryView


def put(store, host: str, id_: str, name: str, address: str = "10.0.0.2", lease: int = 0) -> str:
    key = endpoint_key(host, id_)
    store.put(key, EndpointRecord(id=id_, name=name, addresses=(address,), host=host).to_json().encode(), lease)
    return key


def test_view_lists_then_follows_changes(store_url, open_url):
    store = open_url(store_url)
    k1 = put(store, "h1", "a", "alpha")
    store.put("/berth/other/x", b"not a record, and outside the prefix")
    changes = []
    seen = threading.Event()
    with DiscoveryView(store) as view:
        assert set(view.records()) == {k1} and view.records()[k1].name == "alpha"
        assert view.revision >= 1
        view.subscribe(lambda change: (changes.append(change), seen.set()))
        k2 = put(store, "h2", "b", "beta")
        assert view.wait_until(lambda recs: k2 in recs, timeout=30)
        put(store, "h1", "a", "alpha", address="10.0.0.7")
        assert view.wait_until(lambda recs: recs[k1].addresses == ("10.0.0.7",), timeout=30)
        store.delete(k2)
        assert view.wait_until(lambda recs: k2 not in recs, timeout=30)
        assert seen.wait(10)
    assert any(k2 in c.added for c in changes) and any(k2 in c.removed for c in changes)
    assert any(k1 in c.updated for c in changes)
    assert changes == sorted(changes, key=lambda c: c.revision)


def test_view_sees_lease_expiry_as_removal(store_url, open_url):
    store = open_url(store_url)
    lease = store.grant_lease(1)
    key = put(store, "h1", "leased", "gone-soon", lease=lease.id)
    with DiscoveryView(store) as view:
        assert key in view.records()
        assert view.wait_until(lambda recs: key not in recs, timeout=30)


def test_view_follows_writes_from_another_process(store_url, open_url):
    store = open_url(store_url)
    with DiscoveryView(store, prefix=ENDPOINTS_PREFIX) as view:
        script = (
            "import sys\nfrom store.api import open_store\nfrom discovery.model import EndpointRecord, endpoint_key\n"
            "s = open_store(sys.argv[1])\n"
            "for i in range(20):\n"
            "    r = EndpointRecord(id=f'c{i}', name=f'n{i}', addresses=(f'10.1.0.{i + 1}',), host='hx')\n"
            "    s.put(endpoint_key('hx', r.id), r.to_json().encode())\n"
            "s.delete(endpoint_key('hx', 'c3'))\ns.close()\n")
        subprocess.run([sys.executable, "-c", script, store_url], check=True, timeout=60)
        assert view.wait_until(lambda recs: len(recs) == 19, timeout=30)
        assert endpoint_key("hx", "c3") not in view.records()
        listed, revision = store.get_prefix(ENDPOINTS_PREFIX)
        assert view.wait_until(lambda recs: view.revision >= revision, timeout=30)
        assert {kv.key for kv in listed} == set(view.records())


def test_view_behind_a_compaction_catches_up_exactly(tmp_path, open_url):
    store = open_url(f"sqlite:///{tmp_path / 'c.db'}")
    keep, gone = put(store, "h1", "keep", "keep"), put(store, "h1", "gone", "gone")
    release = threading.Event()
    removed = set()

    def slow_reader(change):
        removed.update(change.removed)
        release.wait(30)  # hold the view's thread: it falls behind while the store moves on
    with DiscoveryView(store) as view:
        view.subscribe(slow_reader)
        first = put(store, "h1", "first", "first")  # its change blocks the view in slow_reader
        store.delete(gone)
        for i in range(50):
            put(store, "h1", "keep", "keep", address=f"10.0.1.{i + 1}")
        late = put(store, "h1", "late", "late")
        _, revision = store.get_prefix(ENDPOINTS_PREFIX)
        store.compact(revision)  # the view's next revision is no longer in the change log
        release.set()
        assert view.wait_until(lambda recs: view.revision >= revision, timeout=30)
        listed = {kv.key: EndpointRecord.from_json(kv.value) for kv in store.get_prefix(ENDPOINTS_PREFIX)[0]}
        assert dict(view.records()) == listed
        assert set(listed) == {keep, first, late} and listed[keep].addresses == ("10.0.1.50",)
        assert gone in removed
