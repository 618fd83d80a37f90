"""What only the etcd backend has: its URL, and what happens when no member answers."""
from __future__ import annotations

import pytest

from store.api import InvalidRequest, StoreUnavailable, open_store
from store.etcd import EtcdStore
from tests.ports import held_port


@pytest.mark.parametrize("url", ["etcd://", "etcd://127.0.0.1", "etcd://127.0.0.1:notaport",
                                 "etcd://127.0.0.1:70000", "etcd://127.0.0.1:2379/path",
                                 "etcd://127.0.0.1:2379?timeout=-1", "etcd://127.0.0.1:2379?timeout=soon"])
def test_bad_url_is_refused(url):
    with pytest.raises(InvalidRequest):
        EtcdStore.from_url(url)


def test_url_names_every_member():
    store = EtcdStore.from_url("etcd://127.0.0.1:1,[::1]:2,localhost:3")
    try:
        assert store.endpoints.addresses == ["127.0.0.1:1", "[::1]:2", "localhost:3"]
    finally:
        store.close()


def test_no_member_answering_is_store_unavailable():
    with held_port() as dead1, held_port() as dead2:  # held: refused for the whole test, as a dead member is
        store = open_store(f"etcd://127.0.0.1:{dead1},127.0.0.1:{dead2}?timeout=0.5")
        try:
            with pytest.raises(StoreUnavailable) as caught:
                store.put("bt/k", b"v")
            assert caught.value.retryable
        finally:
            store.close()


@pytest.mark.etcd
def test_calls_skip_a_dead_member_listed_first(etcd_server):
    with held_port() as dead:
        store = open_store(f"etcd://127.0.0.1:{dead},{etcd_server.endpoints[0]}")
        try:
            revision = store.put("bt/failover/k", b"v")
            assert store.get("bt/failover/k").mod_revision == revision
            assert store.endpoint == etcd_server.endpoints[0]
        finally:
            store.close()
