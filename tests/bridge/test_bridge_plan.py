"""The bridge's config parsing and pure planning: every decision checked without root."""
import ipaddress

import pytest

from cni_plugins import errors
from cni_plugins.bridge_config import parse, parse_mac
from cni_plugins.bridge_plan import build_result, check_problems, kernel_routes, plan_add
from cni_plugins.types import IPConfig, Result, Route
from datapath.specs import Observed, ObservedLink

IP = ipaddress.ip_interface
ADDR = ipaddress.ip_address
NET = ipaddress.ip_network


def cfg(**extra):
    return parse({"name": "n1", "type": "berth-bridge", **extra}, "1.0.0")


def ipam_result(*addresses, routes=(), gateway=None):
    return Result("1.0.0", ips=[IPConfig(IP(a), ADDR(gateway) if gateway else None) for a in addresses],
                  routes=list(routes))


def test_defaults_follow_the_reference_plugin():
    c = cfg()
    assert (c.bridge, c.is_gateway, c.ip_masq, c.mtu, c.preserve_default_vlan, c.ip_masq_backend) == \
        ("cni0", False, False, 0, True, "nftables")
    assert c.ipam is None


def test_default_gateway_implies_gateway():
    assert cfg(isDefaultGateway=True).is_gateway


def test_empty_ipam_means_layer_two_only():
    assert cfg(ipam={}).ipam is None


@pytest.mark.parametrize("extra, field", [
    ({"vlan": 5000}, "vlan"),
    ({"vlan": -1}, "vlan"),
    ({"hairpinMode": True, "promiscMode": True}, "hairpinMode"),
    ({"bridge": "b" * 16}, "bridge"),
    ({"mtu": "1500"}, "mtu"),
    ({"isGateway": "yes"}, "isGateway"),
    ({"ipMasqBackend": "pf"}, "ipMasqBackend"),
    ({"vlanTrunk": [{"id": 0}]}, "vlanTrunk.id"),
    ({"vlanTrunk": [{"minID": 20, "maxID": 10}]}, "vlanTrunk"),
    ({"vlan": 3, "vlanTrunk": [{"id": 5}]}, "vlan and vlanTrunk"),
    ({"ipam": {"subnet": "10.0.0.0/24"}}, "ipam.type"),
    ({"dns": {"nameservers": "1.1.1.1"}}, "dns.nameservers"),
])
def test_bad_config_names_the_field(extra, field):
    with pytest.raises(errors.InvalidConfig) as info:
        cfg(**extra)
    assert info.value.code == 7
    assert field in info.value.msg


def test_vlan_trunk_expands_ranges_and_ids():
    assert cfg(vlanTrunk=[{"minID": 10, "maxID": 12}, {"id": 5}, {"id": 11}]).vlan_trunk == (5, 10, 11, 12)


def test_mac_is_normalised_and_checked():
    assert parse_mac("02-AA-bb-cc-dd-ee", "mac") == "02:aa:bb:cc:dd:ee"
    with pytest.raises(errors.InvalidConfig):
        parse_mac("02:aa:bb", "mac")


def test_gateway_bridge_gets_first_address_when_ipam_names_none():
    plan = plan_add(cfg(isGateway=True), "eth0", "veth1", None, ipam_result("10.231.0.7/24"))
    assert plan.bridge.gateway_addresses == (IP("10.231.0.1/24"),)
    assert plan.ips[0].gateway == ADDR("10.231.0.1")
    assert plan.ips[0].interface == 2


def test_non_gateway_bridge_keeps_ipam_gateway_but_no_bridge_address():
    plan = plan_add(cfg(), "eth0", "veth1", None, ipam_result("10.231.0.7/24", gateway="10.231.0.254"))
    assert plan.bridge.gateway_addresses == ()
    assert plan.ips[0].gateway == ADDR("10.231.0.254")
    assert plan.host_sysctls == ()


def test_default_gateway_adds_default_route_per_family_once():
    result = ipam_result("10.231.0.7/24", "fd00:231::7/64",
                         routes=[Route(NET("0.0.0.0/0"), ADDR("10.231.0.9"))])
    plan = plan_add(cfg(isDefaultGateway=True), "eth0", "veth1", None, result)
    defaults = [r for r in plan.routes if r.dst.prefixlen == 0]
    assert defaults == [Route(NET("0.0.0.0/0"), ADDR("10.231.0.9")), Route(NET("::/0"), ADDR("fd00:231::1"))]
    assert ("net/ipv4/ip_forward", "1") in plan.host_sysctls
    assert ("net/ipv6/conf/all/forwarding", "1") in plan.host_sysctls


def test_routes_without_gateway_go_via_the_family_gateway():
    ips = (IPConfig(IP("10.231.0.7/24"), ADDR("10.231.0.1")), IPConfig(IP("fd00::7/64"), ADDR("fd00::1")))
    routes = (Route(NET("10.99.0.0/16")), Route(NET("fd99::/48")), Route(NET("10.98.0.0/16"), ADDR("10.231.0.5")))
    assert [r.gw for r in kernel_routes(routes, ips)] == [ADDR("10.231.0.1"), ADDR("fd00::1"), ADDR("10.231.0.5")]


def test_ipv6_sysctls_disable_dad_unless_enabled():
    plan = plan_add(cfg(), "eth0", "veth1", None, ipam_result("fd00:231::7/64"))
    assert ("net/ipv6/conf/eth0/accept_dad", "0") in plan.container.sysctls
    assert plan.container.nodad
    plan = plan_add(cfg(enabledad=True), "eth0", "veth1", None, ipam_result("fd00:231::7/64"))
    assert ("net/ipv6/conf/eth0/accept_dad", "0") not in plan.container.sysctls
    assert not plan.container.nodad


def test_disabled_container_interface_is_left_down_and_bare():
    plan = plan_add(cfg(disableContainerInterface=True, isGateway=True), "eth0", "veth1", None,
                    ipam_result("10.231.0.7/24"))
    assert not plan.container.up and plan.container.addresses == () and plan.container.routes == ()
    assert plan.ips  # the result still reports the address


def test_masquerade_only_when_asked():
    assert plan_add(cfg(), "eth0", "v", None, ipam_result("10.231.0.7/24")).masquerade == ()
    plan = plan_add(cfg(ipMasq=True), "eth0", "v", None, ipam_result("10.231.0.7/24"))
    assert plan.masquerade == (IP("10.231.0.7/24"),)


def test_layer_two_plan_has_no_addresses():
    plan = plan_add(cfg(), "eth0", "veth1", "02:00:00:00:00:01", None)
    assert plan.ips == () and plan.container.addresses == () and plan.port.mac == "02:00:00:00:00:01"


def test_result_lists_bridge_host_veth_container_and_dns():
    c = cfg(isGateway=True, mtu=1400, dns={"nameservers": ["10.231.0.53"], "search": ["svc.test"]})
    plan = plan_add(c, "eth0", "veth1", None, ipam_result("10.231.0.7/24"))
    result = build_result(c, plan, "02:00:00:00:00:aa", "02:00:00:00:00:bb", "02:00:00:00:00:cc", "/run/netns/x")
    out = result.to_dict("1.1.0")
    assert [i["name"] for i in out["interfaces"]] == ["cni0", "veth1", "eth0"]
    assert out["interfaces"][2] == {"name": "eth0", "mac": "02:00:00:00:00:cc", "mtu": 1400,
                                    "sandbox": "/run/netns/x"}
    assert out["ips"] == [{"interface": 2, "address": "10.231.0.7/24", "gateway": "10.231.0.1"}]
    assert out["dns"] == {"nameservers": ["10.231.0.53"], "search": ["svc.test"]}


def _intact(c, plan):
    result = build_result(c, plan, "02:00:00:00:00:aa", "02:00:00:00:00:bb", "02:00:00:00:00:cc", "/run/netns/x")
    observed = Observed(
        host_links={"cni0": ObservedLink("cni0", "bridge", "02:00:00:00:00:aa"),
                    "veth1": ObservedLink("veth1", "veth", "02:00:00:00:00:bb", master="cni0")},
        host_indexes={"cni0": 4, "veth1": 5},
        container=ObservedLink("eth0", "veth", "02:00:00:00:00:cc", peer_index=5),
        container_addresses=frozenset({IP("10.231.0.7/24")}),
        container_routes=frozenset({(NET("10.231.0.0/24"), None), (NET("0.0.0.0/0"), ADDR("10.231.0.1"))}))
    return result, observed


def test_check_passes_an_intact_attachment_and_names_each_difference():
    c = cfg(isDefaultGateway=True)
    plan = plan_add(c, "eth0", "veth1", None, ipam_result("10.231.0.7/24"))
    result, observed = _intact(c, plan)
    assert check_problems(c, result, "eth0", "/run/netns/x", observed) == []

    no_route = Observed(**{**observed.__dict__, "container_routes": frozenset()})
    assert check_problems(c, result, "eth0", "/run/netns/x", no_route) == [
        "route to 0.0.0.0/0 via 10.231.0.1 is missing in /run/netns/x"]
    wrong_peer = Observed(**{**observed.__dict__,
                             "container": ObservedLink("eth0", "veth", "02:00:00:00:00:cc", peer_index=9)})
    assert check_problems(c, result, "eth0", "/run/netns/x", wrong_peer) == ["interface eth0 is not the peer of veth1"]
    detached = Observed(**{**observed.__dict__, "host_links": {**observed.host_links,
                                                               "veth1": ObservedLink("veth1", "veth", "x")}})
    assert check_problems(c, result, "eth0", "/run/netns/x", detached) == ["host veth veth1 is not a port of cni0"]
    gone = Observed(**{**observed.__dict__, "container": None})
    assert check_problems(c, result, "eth0", "/run/netns/x", gone) == ["interface eth0 is missing in /run/netns/x"]


def test_ipv6_subnet_via_gateway_routes_the_subnet_through_an_on_link_gateway():
    result = ipam_result("10.231.0.7/24", "fd00:231::7/64")
    plan = plan_add(cfg(isDefaultGateway=True, ipv6SubnetViaGateway=True), "eth0", "veth1", None, result)
    on_link = Route(NET("fd00:231::1/128"), scope=253)
    via = Route(NET("fd00:231::/64"), ADDR("fd00:231::1"), priority=128)
    # first, so every later route via the gateway (the default one too) finds it on the link
    assert plan.routes[:2] == (on_link, via) and Route(NET("::/0"), ADDR("fd00:231::1")) in plan.routes
    assert not any(r.dst.version == 4 and r.dst.prefixlen for r in plan.routes)  # IPv4 has proxy ARP
    assert plan.container.routes[:2] == (on_link, via)  # the gateway route installed without a gateway
    assert plan_add(cfg(isDefaultGateway=True), "eth0", "veth1", None, result).routes == (
        Route(NET("0.0.0.0/0"), ADDR("10.231.0.1")), Route(NET("::/0"), ADDR("fd00:231::1")))
    with pytest.raises(errors.InvalidConfig, match="ipv6SubnetViaGateway"):
        cfg(ipv6SubnetViaGateway="yes")


def test_a_route_to_the_gateway_itself_stays_on_the_link_even_without_its_scope():
    """A result older than 1.1.0 drops the scope: CHECK still expects the route without a gateway."""
    ips = (IPConfig(IP("fd00::7/64"), ADDR("fd00::1")),)
    assert kernel_routes((Route(NET("fd00::1/128")),), ips) == (Route(NET("fd00::1/128"), scope=253),)
    c = cfg(isDefaultGateway=True, ipv6SubnetViaGateway=True)
    plan = plan_add(c, "eth0", "veth1", None, ipam_result("fd00:231::7/64"))
    old = Result.from_dict(build_result(c, plan, "02:00:00:00:00:aa", "02:00:00:00:00:bb", "02:00:00:00:00:cc",
                                        "/run/netns/x").to_dict("1.0.0"))
    assert {(r.dst, r.gw) for r in kernel_routes(old.routes, old.ips)} == {
        (NET("fd00:231::1/128"), None), (NET("fd00:231::/64"), ADDR("fd00:231::1")), (NET("::/0"), ADDR("fd00:231::1"))}
