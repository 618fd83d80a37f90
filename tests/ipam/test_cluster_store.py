"""Cluster IPAM in process over the embedded SQLite store: berth-ipam's handlers with ``"store"`` set, and the
ClusterStore under the allocator with a clock the test moves (quarantine)."""
from __future__ import annotations

import ipaddress
import json

import pytest

from cni_plugins import codes, ipam_plugin, skel
from ipam.allocator import allocate
from ipam.cluster import ClusterStore, host_key, network_prefix
from ipam.config import parse_ipam_config
from ipam.errors import RangeExhausted
from ipam.store import Attachment
from store.api import open_store
from tests.etcd_harness import etcd_server  # noqa: F401  (fixture)
from tests.zk_harness import zk_server  # noqa: F401  (fixture)
from tests.ports import free_port


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd),
                        pytest.param("zk", marks=[pytest.mark.zk, pytest.mark.service])])
def url(request, tmp_path):
    """The embedded store, or one real etcd member or ZooKeeper server per module (tests share it: each empties
    the IPAM keys first)."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/bt-ipam.db"
    server = request.getfixturevalue("etcd_server" if request.param == "etcd" else "zk_server")
    with open_store(server.url) as store:
        store.delete("/berth/ipam/", prefix=True)  # tests share the member: each starts from an empty pool
    return server.url


def conf(url, tmp_path, host="h1", **ipam):
    ipam = {"type": "berth-ipam", "store": url, "host": host, "dataDir": str(tmp_path / host),
            "ranges": [[{"subnet": "10.8.0.0/27"}]], "blockSize": 28, **ipam}
    return {"cniVersion": "1.1.0", "name": "btnet", "type": "berth-ipam", "ipam": ipam}


def call(command, config, container="c1", ifname="eth0", **extra):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": "/run/netns/unused",
           "CNI_IFNAME": ifname, "CNI_PATH": "/usr/lib/cni"}
    reply = skel.dispatch(ipam_plugin.HANDLERS, env, json.dumps({**config, **extra}).encode())
    out = json.loads(reply.stdout) if reply.stdout.strip() else None
    return reply.exit_code, out


def added(config, container):
    code, out = call("ADD", config, container)
    assert code == 0, out
    return ipaddress.ip_interface(out["ips"][0]["address"]).ip


def owners(url):
    with open_store(url) as store:
        kvs, _ = store.get_prefix(network_prefix("btnet") + "blocks/")
    return {kv.key.rsplit("/", 1)[1]: json.loads(kv.value)["host"] for kv in kvs}


def test_add_check_del_gc_through_the_handlers(url, tmp_path):
    h1 = conf(url, tmp_path)
    code, out = call("ADD", h1, "c1")
    assert code == 0 and out["ips"][0]["gateway"] == "10.8.0.1"
    assert call("ADD", h1, "c1")[1]["code"] == codes.DUPLICATE_ALLOCATION
    assert call("CHECK", h1, "c1", prevResult=out) == (0, None)
    assert call("STATUS", h1) == (0, None)
    added(h1, "c2")
    assert call("GC", h1, **{"cni.dev/valid-attachments": [{"containerID": "c2", "ifname": "eth0"}]}) == (0, None)
    assert call("CHECK", h1, "c1")[1]["code"] == codes.UNKNOWN_CONTAINER
    assert call("DEL", h1, "c2") == (0, None) and call("DEL", h1, "c2") == (0, None)
    assert call("CHECK", h1, "c2")[1]["code"] == codes.UNKNOWN_CONTAINER


def test_a_host_fills_its_own_block_claims_free_ones_and_borrows_only_when_none_is_left(url, tmp_path):
    h1, h2 = conf(url, tmp_path, "h1"), conf(url, tmp_path, "h2")
    first = added(h1, "a0")
    added(h2, "b0")  # a block is still unclaimed: h2 claims it rather than borrow from h1
    assert sorted(owners(url).values()) == ["h1", "h2"]
    h1_block = ipaddress.ip_network(f"{first}/28", strict=False)
    usable = 14 if h1_block.network_address.packed[-1] == 0 else 15  # .0 and the gateway .1; .31 the broadcast
    h1_addresses = [first] + [added(h1, f"a{n}") for n in range(1, usable)]
    assert all(a in h1_block for a in h1_addresses)
    borrowed = added(h1, "a-borrowed")
    assert borrowed not in h1_block and sorted(owners(url).values()) == ["h1", "h2"]
    everything = h1_addresses + [borrowed] + [added(h2, f"b{n}") for n in range(1, 29 - usable - 1)]
    assert len(set(everything)) == len(everything) == 28
    assert call("ADD", h2, "b99")[1]["code"] == codes.NOT_AVAILABLE  # the pool is full


def test_a_pool_defined_otherwise_in_the_store_is_refused(url, tmp_path):
    added(conf(url, tmp_path), "c1")
    other = conf(url, tmp_path, "h2", blockSize=29)
    code, out = call("ADD", other, "c2")
    assert code and out["code"] == codes.INVALID_CONFIG and "ipam.ranges" in out["msg"]


def test_an_unreachable_store_says_try_again_later(tmp_path):
    dead = f"etcd://127.0.0.1:{free_port()}?timeout=0.5"
    code, out = call("ADD", conf(dead, tmp_path), "c1")
    assert code and out["code"] == codes.TRY_AGAIN_LATER


def test_dual_stack_takes_one_address_per_range_set(url, tmp_path):
    config = conf(url, tmp_path, ranges=[[{"subnet": "10.8.0.0/27"}], [{"subnet": "fd08::/120"}]])
    code, out = call("ADD", config, "c1")
    assert code == 0 and sorted(ipaddress.ip_interface(i["address"]).version for i in out["ips"]) == [4, 6]
    with open_store(url) as store:
        blocks = [kv.key.rsplit("/", 1)[1] for kv in store.get_prefix(network_prefix("btnet") + "blocks/")[0]]
    assert any(b.endswith("_122") for b in blocks) and any(b.endswith("_28") for b in blocks)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cluster_store(url, tmp_path, clock, host="h1", **ipam):
    config = conf(url, tmp_path, host, ranges=[[{"subnet": "10.8.0.0/29"}]], blockSize=29, **ipam)
    return ClusterStore(parse_ipam_config(config["ipam"], "btnet"), clock=clock)


def take(store, container):
    with store.lock():
        return allocate(store, [r for r in store.cfg.range_sets], Attachment(container, "eth0"))[0].address.ip


def test_a_released_address_waits_out_the_quarantine(url, tmp_path):
    clock = Clock()
    store = cluster_store(url, tmp_path, clock, quarantine=60)
    taken = {take(store, f"c{n}") for n in range(5)}  # .2-.6: the whole /29 but network, gateway, broadcast
    assert len(taken) == 5
    with store.lock():
        (freed,) = store.release(Attachment("c3", "eth0"))
    with pytest.raises(RangeExhausted):
        take(store, "new")
    clock.now += 59
    with pytest.raises(RangeExhausted):
        take(store, "new")
    clock.now += 1
    assert take(store, "new") == freed


def test_a_departed_hosts_addresses_are_not_handed_out(url, tmp_path):
    clock = Clock()
    gone = cluster_store(url, tmp_path, clock, "h1", quarantine=0)
    held = {take(gone, f"c{n}") for n in range(3)}
    with open_store(url) as raw:  # the host's lease ends: it is no longer live
        raw.revoke_lease(raw.get(host_key("h1")).lease)
        assert raw.get(host_key("h1")) is None
    other = cluster_store(url, tmp_path, clock, "h2", quarantine=0)
    got = {take(other, f"d{n}") for n in range(2)}
    assert not got & held
    with pytest.raises(RangeExhausted):
        take(other, "d9")


def test_a_requested_address_is_given_once_even_from_another_hosts_block(url, tmp_path):
    h1, h2 = conf(url, tmp_path, "h1"), conf(url, tmp_path, "h2")
    first = added(h1, "a0")
    block = ipaddress.ip_network(f"{first}/28", strict=False)
    wanted = str(next(a for a in block.hosts() if a != first and str(a) not in ("10.8.0.1", "10.8.0.31")))
    code, out = call("ADD", h2, "b0", runtimeConfig={"ips": [wanted]})
    assert code == 0 and out["ips"][0]["address"].split("/")[0] == wanted  # borrowed from h1's block
    code, out = call("ADD", h1, "a1", runtimeConfig={"ips": [wanted]})
    assert code and out["code"] == codes.ADDRESS_UNAVAILABLE
    code, out = call("ADD", h1, "a2", runtimeConfig={"ips": ["10.8.0.1"]})
    assert code and out["code"] == codes.ADDRESS_UNAVAILABLE  # the gateway


def test_status_says_not_available_only_when_no_host_could_borrow_an_address(url, tmp_path):
    h1, h2 = conf(url, tmp_path, "h1", quarantine=600), conf(url, tmp_path, "h2")
    for n in range(28):
        added(h1, f"a{n}")
    assert call("STATUS", h2) == (0, None)  # one address left, in a block h1 owns: h2 would borrow it
    added(h2, "b0")
    assert call("STATUS", h2)[1]["code"] == codes.NOT_AVAILABLE
    assert call("DEL", h1, "a0") == (0, None)
    assert call("STATUS", h2)[1]["code"] == codes.NOT_AVAILABLE  # freed, but still in quarantine
