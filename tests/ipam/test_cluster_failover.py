"""Cluster IPAM on a three-member etcd or ZooKeeper ensemble whose leader is SIGKILLed while hosts allocate:
answers get lost in the election, yet no address is ever given twice, every ADD that reported an address holds
exactly it in the store, and whatever a failed ADD may have left is a whole record that ``berth ipam check`` can
see. (A kill rarely lands inside a transaction's round trip; the lost answer itself is reproduced
deterministically in tests/store/test_etcd_lost_answer.py and tests/store/test_zk_lost_answer.py.)"""
from __future__ import annotations

import ipaddress
import threading

import pytest

from ipam.allocator import allocate
from ipam.blocks import AddressRecord
from ipam.cluster import ClusterStore, network_prefix
from ipam.config import parse_ipam_config
from ipam.errors import IpamError
from ipam.store import Attachment
from store.api import open_store
from tests.etcd_harness import etcd_cluster  # noqa: F401  (fixture)
from tests.zk_harness import zk_ensemble  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slow]

HOSTS, PER_HOST = 6, 12


def host_config(url, tmp_path, host):
    ipam = {"store": url + "?timeout=8", "host": host, "dataDir": str(tmp_path / host), "blockSize": 28,
            "ranges": [[{"subnet": "10.203.0.0/24"}]]}
    return parse_ipam_config(ipam, "btfail")


def run_host(cfg, results, errors, halfway: threading.Barrier) -> None:
    for n in range(PER_HOST):
        if n == PER_HOST // 2:
            halfway.wait(60)
        container = f"{cfg.cluster.host}-{n}"
        store = ClusterStore(cfg)
        try:
            with store.lock():
                got = allocate(store, list(cfg.range_sets), Attachment(container, "eth0"))
            results[container] = got[0].address.ip
        except IpamError as exc:  # the store was electing a leader for longer than the budget
            errors[container] = exc


@pytest.fixture(params=[pytest.param("etcd_cluster", marks=pytest.mark.etcd),
                        pytest.param("zk_ensemble", marks=pytest.mark.zk)])
def cluster(request):
    """Three real members of either datastore, started for the test."""
    return request.getfixturevalue(request.param)


def test_no_duplicate_when_the_leader_dies_mid_allocation(cluster, tmp_path):
    results: dict = {}
    errors: dict = {}
    halfway = threading.Barrier(HOSTS + 1)
    threads = [threading.Thread(target=run_host, args=(host_config(cluster.url, tmp_path, f"bf{i}"), results,
                                                       errors, halfway)) for i in range(HOSTS)]
    for thread in threads:
        thread.start()
    halfway.wait(60)
    cluster.kill(cluster.leader_index())
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert len(results) + len(errors) == HOSTS * PER_HOST

    with open_store(cluster.url) as store:
        kvs, _ = store.get_prefix(network_prefix("btfail") + "ips/")
    held = {ipaddress.ip_address(kv.key.rsplit("/", 1)[1]): AddressRecord.from_json(kv.value) for kv in kvs}
    holders = {ip: r.container_id for ip, r in held.items() if r.held}
    assert len(set(results.values())) == len(results)
    assert all(holders.get(ip) == container for container, ip in results.items())
    assert set(holders.values()) - set(results) <= set(errors)  # anything else held belongs to a failed ADD
