"""The datastore side of a subnet lease, on the real embedded store (no root needed)."""
from __future__ import annotations

import ipaddress
import threading

import pytest

from ipam.cluster import host_key, host_record
from store.machine import machine_id
from overlay import claim
from overlay.ipam_host import IpamHostKeeper
from overlay.config import make_config
from overlay.lease import SubnetLease, parse_lease, subnet_key
from store.api import open_store
from tests.waiting import wait_until

PREFIX = "/berth/overlay"
A = ipaddress.IPv4Address


@pytest.fixture
def store(sqlite_url):
    s = open_store(sqlite_url)
    yield s
    s.close()


def test_concurrent_claims_never_share_a_subnet(sqlite_url):
    config = make_config("10.214.0.0/20", subnet_min="10.214.0.0", subnet_max="10.214.15.0")  # exactly 16
    held, failures = [], []

    def host(index: int) -> None:
        s = open_store(sqlite_url)
        try:
            held.append(claim.acquire(s, PREFIX, config, A(f"10.213.0.{index + 1}"), "02:00:00:00:00:01", 30))
        except Exception as exc:  # reported below
            failures.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=host, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert len({h.lease.subnet for h in held}) == 16
    s = open_store(sqlite_url)
    try:
        with pytest.raises(claim.ClaimError, match="no free subnet"):
            claim.acquire(s, PREFIX, config, A("10.213.0.99"), "02:00:00:00:00:99", 30)
    finally:
        s.close()


def test_restart_reuses_the_lease_and_its_mac(store):
    config = make_config("10.214.0.0/16")
    first = claim.acquire(store, PREFIX, config, A("10.213.0.1"), "02:00:00:00:00:01", 30)
    again = claim.acquire(store, PREFIX, config, A("10.213.0.1"), "02:ff:ff:ff:ff:ff", 30)
    assert again.lease == first.lease  # same subnet, and the MAC peers already know
    kv = store.get(subnet_key(first.lease.subnet, PREFIX))
    assert kv.lease == again.store_lease != first.store_lease  # moved under the new run's store lease


def test_the_ipam_host_name_is_published_and_a_restart_may_change_it(store):
    config = make_config("10.214.0.0/16")
    first = claim.acquire(store, PREFIX, config, A("10.213.0.1"), "02:00:00:00:00:01", 30, ipam_host="node-a")
    kv = store.get(subnet_key(first.lease.subnet, PREFIX))
    assert parse_lease(kv.key, kv.value, PREFIX).ipam_host == "node-a"
    kept = claim.acquire(store, PREFIX, config, A("10.213.0.1"), "02:00:00:00:00:01", 30)
    assert kept.lease.ipam_host == "node-a"  # a daemon that names none keeps what peers know
    renamed = claim.acquire(store, PREFIX, config, A("10.213.0.1"), "02:00:00:00:00:01", 30, ipam_host="node-b")
    kv = store.get(subnet_key(first.lease.subnet, PREFIX))
    assert renamed.lease.subnet == first.lease.subnet and parse_lease(kv.key, kv.value, PREFIX).ipam_host == "node-b"


def test_preferred_subnet_is_taken_again_after_expiry(store):
    config = make_config("10.214.0.0/16")
    wanted = ipaddress.IPv4Network("10.214.42.0/24")
    held = claim.acquire(store, PREFIX, config, A("10.213.0.1"), "02:00:00:00:00:01", 30, preferred=wanted)
    assert held.lease.subnet == wanted
    store.revoke_lease(held.store_lease)
    assert store.get(subnet_key(wanted, PREFIX)) is None
    again = claim.acquire(store, PREFIX, config, A("10.213.0.1"), "02:00:00:00:00:01", 30, preferred=wanted)
    assert again.lease.subnet == wanted


def test_reservation_is_used_without_a_store_lease(store):
    config = make_config("10.214.0.0/16")
    claim.reserve(store, PREFIX, config, ipaddress.IPv4Network("10.214.9.0/24"), A("10.213.0.7"))
    held = claim.acquire(store, PREFIX, config, A("10.213.0.7"), "02:00:00:00:00:07", 30)
    assert held.lease.subnet == ipaddress.IPv4Network("10.214.9.0/24") and held.store_lease == 0
    kv = store.get(subnet_key(held.lease.subnet, PREFIX))
    assert kv.lease == 0 and parse_lease(kv.key, kv.value, PREFIX).vtep_mac == "02:00:00:00:00:07"
    other = claim.acquire(store, PREFIX, config, A("10.213.0.8"), "02:00:00:00:00:08", 30)
    assert other.lease.subnet != held.lease.subnet
    with pytest.raises(claim.ClaimError, match="overlaps"):
        claim.reserve(store, PREFIX, config, other.lease.subnet, A("10.213.0.9"))


def test_reclaim_after_the_store_lease_was_lost(store):
    config = make_config("10.214.0.0/16")
    held = claim.acquire(store, PREFIX, config, A("10.213.0.1"), "02:00:00:00:00:01", 30)
    store.revoke_lease(held.store_lease)
    back = claim.reclaim(store, PREFIX, held)
    assert back.lease == held.lease and back.store_lease != held.store_lease
    store.revoke_lease(back.store_lease)
    thief = SubnetLease(held.lease.subnet, A("10.213.0.66"), "02:00:00:00:00:66", 1)
    store.put(subnet_key(held.lease.subnet, PREFIX), thief.to_json())
    with pytest.raises(claim.ClaimError, match="taken by another host"):
        claim.reclaim(store, PREFIX, back)


def test_write_config_refuses_to_change_silently(store):
    assert claim.write_config(store, PREFIX, make_config("10.214.0.0/16"))
    assert claim.write_config(store, PREFIX, make_config("10.214.0.0/16"))
    assert not claim.write_config(store, PREFIX, make_config("10.215.0.0/16"))
    assert claim.load_config(store, PREFIX).network == ipaddress.IPv4Network("10.214.0.0/16")
    with pytest.raises(claim.ClaimError, match="berth overlay init"):
        claim.load_config(store, "/elsewhere")


def test_reclaim_under_the_keepers_new_lease_is_idempotent(store):
    config = make_config("10.215.0.0/16")
    held = claim.acquire(store, PREFIX, config, A("10.213.0.2"), "02:00:00:00:00:02", 30)
    store.revoke_lease(held.store_lease)
    new_lease = store.grant_lease(30).id
    back = claim.reclaim(store, PREFIX, held, new_lease)
    again = claim.reclaim(store, PREFIX, back, new_lease)  # the keeper may call its owner twice
    kv = store.get(subnet_key(held.lease.subnet, PREFIX))
    assert back == again and back.store_lease == new_lease and kv.lease == new_lease
    store.revoke_lease(new_lease)


def test_the_daemon_keeps_the_ipam_hosts_liveness_key_under_one_shared_lease(store):
    cni_lease = store.grant_lease(60).id  # a CNI call came first
    store.put(host_key("node-a"), host_record("node-a", 0, machine_id()), lease=cni_lease)
    keeper = IpamHostKeeper(store, "node-a", 60).start()
    try:
        assert store.get(host_key("node-a")).lease == cni_lease == keeper.keeper.lease_id  # taken over, not doubled
        store.revoke_lease(cni_lease)  # lost (revoked, or expired while the store was away)
        assert store.get(host_key("node-a")) is None
        keeper.keeper.lost(cni_lease)
        kv = wait_until(lambda: store.get(host_key("node-a")), what="the key written again under a new lease")
        assert kv.lease not in (0, cni_lease)
    finally:
        keeper.stop()
    fresh = IpamHostKeeper(store, "node-b", 60).start()  # no CNI call yet: the daemon writes the key itself
    try:
        assert store.get(host_key("node-b")).lease == fresh.keeper.lease_id != 0
    finally:
        fresh.stop()
