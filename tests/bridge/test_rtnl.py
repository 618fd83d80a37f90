"""The lean rtnetlink socket against real namespaces: what it reads matches ``ip``, and what it sends does what
pyroute2's ``IPRoute`` would (the bridge's ADD and DEL run on it)."""
from __future__ import annotations

import errno
import ipaddress
import os

import pytest

from datapath import rtnl
from tests.bridge.cni_call import ns_json
from tests.conftest import run

pytestmark = pytest.mark.root


def test_link_reads_what_ip_shows_and_none_for_a_missing_link(netns):
    ns = netns("a")
    run("ip", "-n", ns, "link", "add", "btbr0", "mtu", "1400", "type", "bridge")
    run("ip", "-n", ns, "link", "set", "btbr0", "up")
    shown = ns_json(ns, "link", "show", "btbr0")[0]
    with rtnl.Rtnl(netns.path(ns)) as nl:
        by_name = nl.link("btbr0")
        assert nl.link(index=by_name.index) == by_name
        assert nl.link("btnothere") is None
        assert nl.links([("btnothere", 0), ("lo", 0)])[0] is None
    assert (by_name.index, by_name.name, by_name.mac, by_name.mtu) == (shown["ifindex"], "btbr0", shown["address"],
                                                                         1400)
    assert by_name.kind == "bridge" and not by_name.br_vlan_filtering and by_name.up and by_name.master == 0


def test_veth_request_makes_a_port_that_is_up_with_its_peer_in_another_namespace(netns):
    host, ctr = netns("host"), netns("ctr")
    run("ip", "-n", host, "link", "add", "btbr0", "type", "bridge")
    fd = os.open(netns.path(ctr), os.O_RDONLY)
    try:
        with rtnl.Rtnl(netns.path(host)) as nl:
            bridge = nl.link("btbr0")
            nl.call(*rtnl.veth_request("btveth0", "eth0", fd, 1300, "0a:58:0a:00:00:07", bridge.index, up=True))
            port = nl.link("btveth0")
            assert nl.batch([rtnl.veth_request("btveth0", "eth1", fd, 0, None, 0, up=False)]) == [errno.EEXIST]
    finally:
        os.close(fd)
    assert port.kind == "veth" and port.master == bridge.index and port.up and port.mtu == 1300
    peer = ns_json(ctr, "link", "show", "eth0")[0]
    assert (peer["ifindex"], peer["address"], peer["mtu"]) == (port.peer_index, "0a:58:0a:00:00:07", 1300)


def test_a_batch_runs_in_order_and_reports_each_error(netns):
    ctr = netns("ctr")
    run("ip", "-n", ctr, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    with rtnl.Rtnl(netns.path(ctr)) as nl:
        index = nl.link("eth0").index
        address = ipaddress.ip_interface("10.232.0.5/24")
        codes = nl.batch([rtnl.address_request(index, address), rtnl.address_request(index, address),
                          rtnl.set_up_request(index),
                          rtnl.route_request(index, ipaddress.ip_network("0.0.0.0/0"),
                                             ipaddress.ip_address("10.232.0.1")),
                          rtnl.address_request(index, ipaddress.ip_interface("fd00:232::5/64"), 0x02)])
        assert codes == [0, errno.EEXIST, 0, 0, 0]
        assert nl.delete_link(name="eth0") is True
        assert nl.delete_link(name="eth0") is False
    assert ns_json(ctr, "link", "show", "type", "veth") == []


def test_routes_and_addresses_are_what_pyroute2_would_have_made(netns):
    ns = netns("a")
    run("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    run("ip", "-n", ns, "link", "set", "eth1", "up")
    with rtnl.Rtnl(netns.path(ns)) as nl:
        index = nl.link("eth0").index
        assert nl.batch([rtnl.address_request(index, ipaddress.ip_interface("10.232.1.5/24")),
                         rtnl.set_up_request(index),
                         rtnl.route_request(index, ipaddress.ip_network("10.99.0.0/16"),
                                            ipaddress.ip_address("10.232.1.1"))]) == [0, 0, 0]
    addr = [a for a in ns_json(ns, "addr", "show", "eth0")[0]["addr_info"] if a["family"] == "inet"]
    assert [(a["local"], a["prefixlen"], a["scope"], a.get("broadcast")) for a in addr] == \
        [("10.232.1.5", 24, "global", None)]
    route = ns_json(ns, "route", "show", "10.99.0.0/16")[0]
    assert (route["gateway"], route["protocol"], route["dev"]) == ("10.232.1.1", "static", "eth0")


def test_ipv6_subnet_via_an_on_link_gateway_with_a_metric_below_the_prefix_route(netns):
    """What ``ipv6SubnetViaGateway`` installs, in its order: the gateway on the link, then the subnet via it."""
    ns = netns("a")
    run("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    run("ip", "-n", ns, "link", "set", "eth1", "up")
    with rtnl.Rtnl(netns.path(ns)) as nl:
        index = nl.link("eth0").index
        gateway = ipaddress.ip_address("fd00:233::1")
        assert nl.batch([rtnl.address_request(index, ipaddress.ip_interface("fd00:233::5/64"), 0x02),
                         rtnl.set_up_request(index),
                         rtnl.route_request(index, ipaddress.ip_network("fd00:233::1/128"), None, scope=253),
                         rtnl.route_request(index, ipaddress.ip_network("fd00:233::/64"), gateway, priority=128),
                         rtnl.route_request(index, ipaddress.ip_network("::/0"), gateway)]) == [0, 0, 0, 0, 0]
    routes = {(r["dst"], r.get("gateway"), r.get("metric")) for r in ns_json(ns, "-6", "route", "show", "dev", "eth0")}
    assert {("fd00:233::1", None, 1024), ("fd00:233::/64", "fd00:233::1", 128), ("fd00:233::/64", None, 256),
            ("default", "fd00:233::1", 1024)} <= routes
    chosen = ns_json(ns, "-6", "route", "get", "fd00:233::77")[0]
    assert chosen.get("gateway") == "fd00:233::1"  # the rest of the subnet goes through the gateway


def test_delete_container_link_returns_with_both_ends_gone_and_the_name_free(netns):
    from datapath import link_ops

    host, ctr = netns("host"), netns("ctr")
    for _ in range(3):  # the same names again right away: nothing of the last pair is left in the way
        run("ip", "-n", host, "link", "add", "btveth0", "type", "veth", "peer", "name", "eth0", "netns", ctr)
        assert link_ops.delete_container_link(netns.path(ctr), "eth0") is True
        assert ns_json(ctr, "link", "show", "type", "veth") == []
        assert ns_json(host, "link", "show", "type", "veth") == []
    assert link_ops.delete_container_link(netns.path(ctr), "eth0") is False
    assert link_ops.delete_container_link("/run/netns/bt-no-such-namespace", "eth0") is False
