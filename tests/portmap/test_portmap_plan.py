"""Portmap config parsing (the CNI face), rule planning and host-port conflicts (datapath.ports), pure."""
import ipaddress

import pytest

from cni_plugins import errors
from cni_plugins.portmap_plan import container_ips, parse, rules_for
from cni_plugins.types import IPConfig, Interface, Result
from datapath.errors import InvalidInput
from datapath.firewall import Dnat, SnatToContainer, attachment_tag, comment_for
from datapath.ports import conflicts, parse_mappings, plan_rules

ADDR = ipaddress.ip_address


def cfg(mappings, **keys):
    return parse({"name": "n1", "type": "berth-portmap", **keys}, "1.0.0", mappings)


def held_by(mappings):
    return parse_mappings(mappings)


@pytest.mark.parametrize("mapping, field", [
    ({"hostPort": 0, "containerPort": 80}, "hostPort"),
    ({"hostPort": 70000, "containerPort": 80}, "hostPort"),
    ({"hostPort": 8080, "containerPort": 0}, "containerPort"),
    ({"hostPort": 8080, "containerPort": "80"}, "containerPort"),
    ({"hostPort": 8080, "containerPort": 80, "protocol": "icmp"}, "protocol"),
    ({"hostPort": 8080, "containerPort": 80, "hostIP": "nope"}, "hostIP"),
])
def test_bad_mappings_name_the_field(mapping, field):
    with pytest.raises(InvalidInput) as datapath_info:
        parse_mappings([mapping])
    with pytest.raises(errors.InvalidConfig) as info:
        cfg([mapping])
    assert info.value.code == 7 and f"portMappings[0].{field}" in info.value.msg
    assert info.value.msg == datapath_info.value.msg


def test_defaults_and_wildcard_host_ip():
    c = cfg([{"hostPort": 8080, "containerPort": 80, "hostIP": "0.0.0.0"}])
    assert (c.snat, c.masq_all, c.backend) == (True, False, "nftables")
    assert c.mappings[0].protocol == "tcp" and c.mappings[0].host_ip is None


def test_container_ips_skip_host_side_interfaces():
    prev = Result("1.0.0", interfaces=[Interface("br"), Interface("eth0", sandbox="/run/netns/x")],
                  ips=[IPConfig(ipaddress.ip_interface("10.1.0.1/24"), interface=0),
                       IPConfig(ipaddress.ip_interface("10.1.0.5/24"), interface=1),
                       IPConfig(ipaddress.ip_interface("fd00::5/64"))])
    assert container_ips(prev, "eth0") == (ADDR("10.1.0.5"), ADDR("fd00::5"))


def test_plan_has_dnat_and_localhost_and_hairpin_snat_per_family():
    c = cfg([{"hostPort": 8080, "containerPort": 80}])
    rules = rules_for(c, [ADDR("10.1.0.5"), ADDR("fd00::5")])
    assert rules == [
        Dnat("tcp", 8080, None, ADDR("10.1.0.5"), 80),
        SnatToContainer("localhost", "tcp", ADDR("10.1.0.5"), 80),
        SnatToContainer("hairpin", "tcp", ADDR("10.1.0.5"), 80),
        Dnat("tcp", 8080, None, ADDR("fd00::5"), 80),
        SnatToContainer("hairpin", "tcp", ADDR("fd00::5"), 80),
    ]


def test_host_ip_limits_the_family_and_snat_false_drops_masquerade():
    c = cfg([{"hostPort": 8080, "containerPort": 80, "hostIP": "127.0.0.1"}], snat=False, masqAll=True)
    rules = rules_for(c, [ADDR("10.1.0.5"), ADDR("fd00::5")])
    assert rules == [Dnat("tcp", 8080, ADDR("127.0.0.1"), ADDR("10.1.0.5"), 80),
                     SnatToContainer("all", "tcp", ADDR("10.1.0.5"), 80)]


def _held(container_id, host_port, protocol="tcp", host_ip=None):
    tag = attachment_tag("n1", container_id, "eth0")
    return comment_for(tag, Dnat(protocol, host_port, ADDR(host_ip) if host_ip else None, ADDR("10.1.0.9"), 80))


def test_conflicts_same_port_and_overlapping_host_ip_only():
    mine = attachment_tag("n1", "me", "eth0")
    existing = [_held("other", 8080), _held("other2", 9090, host_ip="127.0.0.1"), _held("other3", 7070, "udp")]
    assert conflicts(held_by([{"hostPort": 8080, "containerPort": 80}]), mine, existing) == [
        "tcp host port 8080 is already mapped by container other"]
    assert conflicts(held_by([{"hostPort": 9090, "containerPort": 80, "hostIP": "127.0.0.2"}]), mine, existing) == []
    assert conflicts(held_by([{"hostPort": 9090, "containerPort": 80}]), mine, existing) != []
    assert conflicts(held_by([{"hostPort": 7070, "containerPort": 80}]), mine, existing) == []  # udp vs tcp
    assert conflicts(held_by([{"hostPort": 8080, "containerPort": 80}]), mine, [_held("me", 8080)]) == []


def test_the_datapath_plan_is_the_cni_plan():
    c = cfg([{"hostPort": 8080, "containerPort": 80}], masqAll=True)
    addresses = [ADDR("10.1.0.5")]
    assert rules_for(c, addresses) == plan_rules(c.mappings, addresses, snat=True, masq_all=True)
