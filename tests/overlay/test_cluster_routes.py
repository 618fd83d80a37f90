"""Cluster IPAM routed by the overlay, for real: three simulated hosts running ``berth overlay``, containers added
with the real plugins (berth-overlay -> berth-bridge -> berth-ipam in cluster mode) on one shared store (the SQLite
file, or a real three-member etcd inside the simulation's underlay),
blocks of /29 so hosts own blocks of different prefixes; cross-host ping over the VXLAN (a borrowed address too),
block routes removed on peers when a block's claim goes and when its host goes, and each daemon keeping its
host's IPAM liveness key alive. Then whole hosts SIGKILLed: once their liveness lease has run out, `berth ipam
check` finds exactly their addresses and `--release` frees them, or the survivors' reclaim loops do once the
pool's releaseDepartedAfter has passed; either way the addresses wait out the pool's quarantine."""
from __future__ import annotations

import ipaddress
import json
import sys

import pytest

from cni_plugins import codes
from tests.conftest import VENV_BIN
from tests.overlay.helpers import cni, overlay_entries, ping, wait_until

pytestmark = [pytest.mark.root, pytest.mark.service]

POOL = "10.215.0.0/24"
BLOCKS = "/berth/ipam/networks/btcl/blocks/"


def host_config(tmp_path, host, store_url: str, network: str = "btcl", bridge: str = "btcl0",
                ranges: list | None = None, ipam: dict | None = None, **args) -> dict:
    """berth-overlay's config on ``host`` in cluster mode (``args``: CNI args such as ``ips``)."""
    base = tmp_path / host.label
    conf = {"cniVersion": "1.1.0", "name": network, "type": "berth-overlay", "subnetFile": str(host.subnet_file),
            "dataDir": str(base / "saved"), "delegate": {"bridge": bridge},
            "ipam": {"type": "berth-ipam", "store": store_url, "host": host.label, "blockSize": 29,
                     "ranges": ranges or [[{"subnet": POOL}]], "dataDir": str(base / "ipam"), **(ipam or {})}}
    if args:
        conf["args"] = {"cni": args}
    return conf


def block_of(ip) -> str:
    return str(ipaddress.ip_network(f"{ip}/29", strict=False))


STORE_OP = """
import json, sys
from store.api import open_store
store = open_store(sys.argv[1])
op, keys = sys.argv[2], sys.argv[3:]
if op == "leases":
    print(json.dumps({key: (kv.lease if (kv := store.get(key)) else 0) for key in keys}))
else:
    print(json.dumps({key: store.delete(key) for key in keys}))
store.close()
"""


def store_op(sim, op: str, *keys: str) -> dict:
    """``leases`` (key -> its store lease, 0: absent) or ``delete`` keys, from inside a host's namespace, where the
    store is reachable (an etcd in the underlay is reachable from nowhere else)."""
    done = sim.hosts[0].exec(sys.executable, "-c", STORE_OP, sim.store_url, op, *keys)
    return json.loads(done.stdout)


def host_leases(sim) -> dict[str, int]:
    """Each host's cluster IPAM liveness key -> the store lease it lives under (0: absent)."""
    found = store_op(sim, "leases", *(f"/berth/ipam/hosts/{h.label}" for h in sim.hosts))
    return {key.rsplit("/", 1)[1]: lease for key, lease in found.items()}


# liveness keys that run out 5 s after a host's daemon dies; reclaim passes every second
DAEMON_ARGS = ("--ipam-host-ttl", "5", "--ipam-reclaim-interval", "1")


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
def cluster(request, make_sim, sqlite_url):
    if request.param == "sqlite":
        return make_sim(sqlite_url, hosts=3, daemon_args=DAEMON_ARGS)

    def start_etcd(sim):
        from tests.etcd_harness import start_etcd
        etcd = start_etcd(3, host=str(sim.underlay_gateway), netns=sim.underlay_ns)  # as in production
        request.addfinalizer(etcd.close)
        return etcd.url

    return make_sim(start_etcd, hosts=3, daemon_args=DAEMON_ARGS)


def berth(sim, *argv: str):
    """The ``berth`` CLI from inside the first host's namespace (where the store is reachable)."""
    return sim.hosts[0].exec(str(VENV_BIN / "berth"), *argv, "--store", sim.store_url, check=False)


def ipam_check(sim, *extra: str) -> tuple[int, dict]:
    done = berth(sim, "ipam", "check", "--json", "--min-age", "0", *extra)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def held_by(doc, host) -> set[str]:
    return {x["address"] for x in doc["leaked"] if x["host"] == host}


def test_containers_on_blocks_of_different_hosts_reach_each_other(cluster, netns, tmp_path):
    h1, h2, h3 = cluster.hosts
    added = {}
    store_url = cluster.store_url
    liveness = host_leases(cluster)
    assert all(liveness.values()), liveness  # each daemon keeps its IPAM host alive before any CNI call

    def add(host, name, **args):
        ns = netns("ctr")
        rc, res = cni("ADD", host_config(tmp_path, host, store_url, **args), host=host.netns,
                      container_id=f"bt{name}", netns=netns.path(ns))
        assert rc == 0, res
        ip = ipaddress.ip_interface(res["ips"][0]["address"])
        assert ip.network == ipaddress.ip_network(POOL)
        assert str(ip.ip) != "10.215.0.1" and res["ips"][0]["gateway"] == "10.215.0.1"  # the pool's gateway
        added[name] = (host, ns, ip.ip, res)
        return ip.ip

    ip1 = add(h1, "c1")
    # a requested address outside c1's block (h1 picks its first block freely): h1 claims a second block for it
    wanted = "10.215.0.200" if block_of(ip1) != block_of("10.215.0.200") else "10.215.0.152"
    ip1b = add(h1, "c1b", ips=[wanted])
    ip2 = add(h2, "c2")
    ip3 = add(h3, "c3")
    assert ip1b == ipaddress.ip_address(wanted)
    assert host_leases(cluster) == liveness  # the CNI calls renewed the daemons' leases
    blocks = {name: block_of(ip) for name, (_h, _ns, ip, _r) in added.items()}
    assert len({blocks["c1"], blocks["c1b"], blocks["c2"], blocks["c3"]}) == 4, blocks

    vtep = {host.label: str(host.subnet().network_address) for host in cluster.hosts}

    def routes_on(host):
        return overlay_entries(host.netns)["routes"]

    def has_block_routes():
        r2, r3 = routes_on(h2), routes_on(h3)
        return (all(r2.get(blocks[n]) == vtep[added[n][0].label] for n in ("c1", "c1b", "c3"))
                and all(r3.get(blocks[n]) == vtep[added[n][0].label] for n in ("c1", "c1b", "c2")))

    wait_until(has_block_routes, what="peers routing every remote block via its owner's VTEP")
    assert blocks["c2"] not in routes_on(h2)  # a host's own blocks stay on its bridge

    ns = {name: entry[1] for name, entry in added.items()}
    assert ping(ns["c2"], ip1) and ping(ns["c2"], ip1b), "h2's container reaching both of h1's blocks"
    assert ping(ns["c3"], ip2) and ping(ns["c1b"], ip3), "h3 <-> h2 and h1"
    assert ping(ns["c1"], ip1b), "two blocks of one host, same bridge"

    # a borrowed address (h3 takes one in h1's second block, as it does when the pool is full): a /32 to h3 on the
    # peers, and on h3 a /32 onto its bridge, which beats the /29 that points back at h1
    ip3b = add(h3, "c3b", ips=["10.215.0.201"])
    wait_until(lambda: routes_on(h1).get("10.215.0.201") == vtep[h3.label]
               and routes_on(h2).get("10.215.0.201") == vtep[h3.label]
               and "10.215.0.201" in routes_on(h3), what="the borrowed address routed to its holder")
    assert routes_on(h3)["10.215.0.201"] is None  # on the bridge, no gateway
    assert ping(ns["c2"], ip3b) and ping(ns["c1"], ip3b), "the borrowed address reached from the owner and a peer"

    # a released block: peers drop its route, the host's other block stays routed
    rc, out = cni("DEL", host_config(tmp_path, h1, store_url), host=h1.netns, container_id="btc1b",
                  netns=netns.path(ns["c1b"]))
    assert rc == 0, out
    # the DEL emptied c1b's block unless h3's borrowed address is in it: an emptied block is given back by the DEL
    # itself (h1 keeps its other one), a block still holding a borrowed address keeps its claim until deleted here
    shared = ipaddress.ip_address("10.215.0.201") in ipaddress.ip_network(blocks["c1b"])
    assert list(store_op(cluster, "delete", BLOCKS + blocks["c1b"].replace("/", "_")).values()) == [int(shared)]
    wait_until(lambda: blocks["c1b"] not in routes_on(h2) and blocks["c1b"] not in routes_on(h3),
               what="the released block's route gone from peers")
    assert routes_on(h2).get(blocks["c1"]) == vtep[h1.label]
    assert routes_on(h2).get("10.215.0.201") == vtep[h3.label]  # still held: it follows its holder, not the claim
    # the DEL took a port off h1's bridge: its MAC (the gateway's, in every container's ARP cache) must not change
    assert ping(ns["c1"], ip2) and ping(ns["c2"], ip1)

    # a host gone (its daemon killed, its lease expired): its blocks' routes go on every peer, claims or not
    h3.kill()
    wait_until(lambda: all(dst not in routes_on(peer) for dst in (blocks["c3"], "10.215.0.201")
                           for peer in (h1, h2)),
               what="the departed host's block routes removed", timeout=30)
    assert routes_on(h1).get(blocks["c2"]) == vtep[h2.label]
    assert ping(ns["c1"], ip2) and ping(ns["c2"], ip1)

    # h3's processes are dead: once its liveness lease has run out it is departed, and check finds exactly its two
    # addresses (its own and the borrowed one), which no ADD elsewhere may take; --release frees them
    wait_until(lambda: host_leases(cluster)[h3.label] == 0, what="h3's IPAM liveness key expired", timeout=30)
    code, doc = ipam_check(cluster)
    assert code == 1 and {(x["address"], x["reason"]) for x in doc["leaked"]} == {
        (str(ip3), "departed"), ("10.215.0.201", "departed")}
    wait_until(lambda: {d["host"] for d in ipam_check(cluster)[1]["departed"]} == {h3.label},
               what="the survivors' reclaim pass marking h3 departed")
    rc, out = cni("ADD", host_config(tmp_path, h1, store_url, ips=[str(ip3)]), host=h1.netns,
                  container_id="btc1c", netns=netns.path(netns("ctr")))
    assert rc and out["code"] == codes.ADDRESS_UNAVAILABLE, out  # still held by the departed host
    code, doc = ipam_check(cluster, "--release", "--yes")
    assert code == 0 and {x["address"] for x in doc["released"]} == {str(ip3), "10.215.0.201"}
    assert doc["releasedBlocks"] == [f"btcl {blocks['c3'].replace('/', '_')}"]  # h3's emptied block

    # the reclaim loop: with the pool's releaseDepartedAfter set, h2's addresses are freed without anyone asking
    done = berth(cluster, "ipam", "pool", "btcl", "--release-departed-after", "1")
    assert done.returncode == 0 and json.loads(done.stdout)["releaseDepartedAfter"] == 1, done.stderr
    h2.kill()
    wait_until(lambda: host_leases(cluster)[h2.label] == 0, what="h2's IPAM liveness key expired", timeout=30)

    def h2_freed():  # read after h2 is departed: its addresses are leaked until the loop frees them
        doc = ipam_check(cluster)[1]
        return not doc["leaked"] and not doc["ownerless"] and all(h["host"] != h2.label for h in doc["hosts"])

    wait_until(h2_freed, what="h1's reclaim loop freeing departed h2", timeout=60)
    # freed addresses wait out the pool's quarantine (60 s by default), then the pool's new one (0)
    rc, out = cni("ADD", host_config(tmp_path, h1, store_url, ips=[str(ip2)]), host=h1.netns,
                  container_id="btc1d", netns=netns.path(netns("ctr")))
    assert rc and out["code"] == codes.ADDRESS_UNAVAILABLE, out
    assert berth(cluster, "ipam", "pool", "btcl", "--quarantine", "0").returncode == 0
    for name, ip in (("btc1d", ip2), ("btc1e", ip3)):
        rc, out = cni("ADD", host_config(tmp_path, h1, store_url, ips=[str(ip)]), host=h1.netns,
                      container_id=name, netns=netns.path(netns("ctr")))
        assert rc == 0, out
