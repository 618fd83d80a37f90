"""Cluster IPAM's IPv6 blocks routed by the overlay, for real: the three simulated hosts of test_cluster_routes
(IPv4 underlay, one VXLAN device each), a dual-stack pool, containers added with the real plugins. IPv6 blocks
get routes on peers via the owner VTEP's link-local address, containers on different hosts ping each other over
IPv6, drift is repaired, a borrowed IPv6 address is reached at its holder, and a released IPv6 block's route and a
departed host's routes leave the peers.
SQLite only: the etcd variant of the IPv4 module already covers the store side, which is the same for both
families."""
from __future__ import annotations

import ipaddress
import subprocess

import pytest

from overlay.blocks import vtep_link_local
from tests.overlay.helpers import cni, ip_json, wait_until
from tests.overlay import test_cluster_routes as routes_v4
from tests.overlay.test_cluster_routes import store_op

pytestmark = [pytest.mark.root, pytest.mark.service]

POOL4, POOL6 = "10.216.0.0/24", "fd00:216::/64"
BLOCKS = "/berth/ipam/networks/btcl6/blocks/"


def host_config(tmp_path, host, store_url: str, **args) -> dict:
    return routes_v4.host_config(tmp_path, host, store_url, "btcl6", "btcl6",
                                 [[{"subnet": POOL4}], [{"subnet": POOL6}]], {"blockSizeV6": 125}, **args)


def block6_of(ip) -> str:
    return str(ipaddress.ip_network(f"{ip}/125", strict=False))


def ping6(netns: str, address) -> bool:
    done = subprocess.run(["ip", "netns", "exec", netns, "busybox", "ping", "-6", "-c", "1", "-W", "1",
                           str(address)], capture_output=True, text=True)
    return done.returncode == 0


def routes6_on(host) -> dict[str, str | None]:
    """The daemon's IPv6 routes on ``host`` (proto 77): destination -> gateway (None: on a local device)."""
    return {r["dst"]: r.get("gateway") for r in ip_json(host.netns, "-6", "route", "show", "proto", "77")}


def vtep_hop(host) -> str:
    """The IPv6 next hop peers use for ``host``: its VTEP's link-local address, from the VXLAN device's MAC."""
    return str(vtep_link_local(ip_json(host.netns, "link", "show", "berth.1")[0]["address"]))


def neighbours6_on(host) -> dict[str, str]:
    """The permanent IPv6 neighbours on ``host``'s VXLAN device: next hop -> VTEP MAC."""
    return {n["dst"]: n.get("lladdr") for n in ip_json(host.netns, "-6", "neigh", "show", "dev", "berth.1")
            if "PERMANENT" in n.get("state", [])}


def ip_in(host, *argv: str) -> None:
    subprocess.run(["ip", "-n", host.netns, *argv], check=True, capture_output=True)


@pytest.fixture
def cluster(make_sim, sqlite_url):
    return make_sim(sqlite_url, hosts=3, daemon_args=("--resync-interval", "1"))


def test_containers_on_ipv6_blocks_of_different_hosts_reach_each_other(cluster, netns, tmp_path):
    h1, h2, h3 = cluster.hosts
    hop = {host.label: vtep_hop(host) for host in cluster.hosts}
    added, results = {}, {}

    def add(host, name, **args):
        ns = netns("ctr")
        rc, res = cni("ADD", host_config(tmp_path, host, cluster.store_url, **args), host=host.netns,
                      container_id=f"bt{name}", netns=netns.path(ns))
        assert rc == 0, res
        by_version = {ipaddress.ip_interface(ip["address"]).version: ip for ip in res["ips"]}
        v6 = ipaddress.ip_interface(by_version[6]["address"])
        assert v6.network == ipaddress.ip_network(POOL6) and by_version[6]["gateway"] == "fd00:216::1"
        # the routes that make the rest of the /64 reachable through the bridge (no proxy NDP for a prefix)
        assert res["routes"][:2] == [{"dst": "fd00:216::1/128", "scope": 253},
                                     {"dst": POOL6, "gw": "fd00:216::1", "priority": 128}]
        added[name] = (host, ns, v6.ip)
        results[name] = res
        return v6.ip

    # a VXLAN device without IPv6 (a host whose default disables it) carries none: the daemon turns it on once a
    # pool is dual-stack, or h2 could neither send nor receive IPv6 below
    subprocess.run(["ip", "netns", "exec", h2.netns, "sysctl", "-qw", "net.ipv6.conf.berth/1.disable_ipv6=1"],
                   check=True)
    ip1, ip2, ip3 = add(h1, "c1"), add(h2, "c2"), add(h3, "c3")
    blocks = {name: block6_of(ip) for name, (_h, _ns, ip) in added.items()}
    assert len(set(blocks.values())) == 3, blocks

    def routed_everywhere():
        return all(routes6_on(peer).get(blocks[name]) == hop[owner.label]
                   for name, (owner, _ns, _ip) in added.items() for peer in cluster.hosts if peer is not owner)

    wait_until(routed_everywhere, what="peers routing every remote IPv6 block via its owner VTEP's link-local")
    assert blocks["c2"] not in routes6_on(h2)  # a host's own block stays on its bridge
    assert set(neighbours6_on(h2)) == {hop[h1.label], hop[h3.label]}

    ns = {name: entry[1] for name, entry in added.items()}
    assert ping6(ns["c2"], ip1) and ping6(ns["c2"], ip3), "h2's container reaching h1's and h3's over VXLAN"
    assert ping6(ns["c3"], ip1), "h3 -> h1"
    check = {**host_config(tmp_path, h2, cluster.store_url), "prevResult": results["c2"]}
    rc, out = cni("CHECK", check, host=h2.netns, container_id="btc2", netns=netns.path(ns["c2"]))
    assert rc == 0, out  # CHECK finds the on-link gateway route and the subnet route it expects

    # drift: what someone removed comes back and what someone added goes, at the next kernel check
    routes, neighbours = routes6_on(h2), neighbours6_on(h2)
    ip_in(h2, "-6", "route", "del", blocks["c1"])
    ip_in(h2, "-6", "neigh", "del", hop[h1.label], "dev", "berth.1")
    ip_in(h2, "-6", "route", "add", "fd00:216::dead:0/125", "via", "fe80::1", "dev", "berth.1", "proto", "77")
    wait_until(lambda: routes6_on(h2) == routes and neighbours6_on(h2) == neighbours,
               what="h2's IPv6 block route and next hop repaired, the foreign route removed")
    assert ping6(ns["c2"], ip1)

    # a borrowed IPv6 address (h3 takes one in h1's block): a /128 to h3 on the peers, on h3 a /128 onto its bridge
    block1 = ipaddress.ip_network(blocks["c1"])
    borrowed = next(block1.network_address + n for n in (6, 5) if block1.network_address + n != ip1)
    ip3b = add(h3, "c3b", ips=[str(borrowed)])
    assert ip3b == borrowed
    host_route = f"{borrowed}"  # ip -j prints a /128 without its length
    wait_until(lambda: routes6_on(h1).get(host_route) == hop[h3.label]
               and routes6_on(h2).get(host_route) == hop[h3.label] and host_route in routes6_on(h3),
               what="the borrowed IPv6 address routed to its holder")
    assert routes6_on(h3)[host_route] is None  # on the bridge, no gateway
    assert ping6(ns["c2"], ip3b) and ping6(ns["c1"], ip3b), "the borrowed address reached from a peer and the owner"

    # a second IPv6 block of h1 (a requested address far from its first), then released: peers drop its route
    far = ipaddress.ip_address("fd00:216::ffff:0:12")
    assert add(h1, "c1b", ips=[str(far)]) == far
    wait_until(lambda: all(routes6_on(peer).get(block6_of(far)) == hop[h1.label] for peer in (h2, h3)),
               what="h1's second IPv6 block routed on the peers")
    assert ping6(ns["c2"], far) and ping6(ns["c1"], far), "h1's second block from h2, and from h1's first block"
    rc, out = cni("DEL", host_config(tmp_path, h1, cluster.store_url), host=h1.netns, container_id="btc1b",
                  netns=netns.path(added["c1b"][1]))
    assert rc == 0, out
    # the DEL emptied h1's second block: it gave it back itself (h1 keeps its first), and peers drop its route
    assert list(store_op(cluster, "delete", BLOCKS + block6_of(far).replace("/", "_")).values()) == [0]
    wait_until(lambda: all(block6_of(far) not in routes6_on(peer) for peer in (h2, h3)),
               what="the released IPv6 block's route gone from peers")
    assert routes6_on(h2).get(blocks["c1"]) == hop[h1.label]  # h1's other block stays routed
    assert routes6_on(h2).get(host_route) == hop[h3.label]  # the borrowed one follows its holder
    assert ping6(ns["c2"], ip1) and ping6(ns["c1"], ip2)

    # a host gone (its daemon killed, its lease expired): its IPv6 block, the address it borrowed and its next hop
    # leave every peer
    h3.kill()
    wait_until(lambda: all(dst not in routes6_on(peer) and hop[h3.label] not in neighbours6_on(peer)
                           for dst in (blocks["c3"], host_route) for peer in (h1, h2)),
               what="the departed host's IPv6 routes and next hop removed", timeout=30)
    assert routes6_on(h1).get(blocks["c2"]) == hop[h2.label]
    assert ping6(ns["c1"], ip2) and ping6(ns["c2"], ip1)
