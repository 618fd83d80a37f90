"""Result conversion between every supported spec version (pure)."""
import ipaddress
import json

import pytest

from cni_plugins.types import (DNS, SUPPORTED_VERSIONS, Interface, IPConfig, Result, ResultError, Route,
                               at_least)

FULL_RESULT = Result(
    cni_version="1.1.0",
    interfaces=(Interface("cni0", mac="0a:58:0a:01:00:01"),
                Interface("eth0", mac="0a:58:0a:01:00:05", sandbox="/run/netns/x", mtu=1450,
                          socket_path="/run/sock", pci_id="0000:00:1f.6")),
    ips=(IPConfig(ipaddress.ip_interface("10.1.0.5/24"), ipaddress.ip_address("10.1.0.1"), 1),
         IPConfig(ipaddress.ip_interface("fd00::5/64"), ipaddress.ip_address("fd00::1"), 1)),
    routes=(Route(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("10.1.0.1"), mtu=1400, advmss=1360,
                  priority=10, table=100, scope=0),),
    dns=DNS(nameservers=("10.1.0.1",), domain="berth.internal", search=("berth.internal",), options=("ndots:2",)),
)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_ips_carry_version_only_before_1_0(version):
    rendered = FULL_RESULT.to_dict(version)
    assert rendered["cniVersion"] == version
    families = [ip.get("version") for ip in rendered["ips"]]
    if at_least(version, "1.0.0"):
        assert families == [None, None]
    else:
        assert families == ["4", "6"]
    assert [ip["address"] for ip in rendered["ips"]] == ["10.1.0.5/24", "fd00::5/64"]
    assert [ip["interface"] for ip in rendered["ips"]] == [1, 1]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_fields_new_in_1_1_appear_only_in_1_1(version):
    rendered = FULL_RESULT.to_dict(version)
    eth0, route = rendered["interfaces"][1], rendered["routes"][0]
    newer = version == "1.1.0"
    assert ("mtu" in eth0) is newer and ("socketPath" in eth0) is newer and ("pciID" in eth0) is newer
    assert all((key in route) is newer for key in ("mtu", "advmss", "priority", "table", "scope"))
    assert route["dst"] == "0.0.0.0/0" and route["gw"] == "10.1.0.1"
    assert rendered["dns"] == {"nameservers": ["10.1.0.1"], "domain": "berth.internal",
                               "search": ["berth.internal"], "options": ["ndots:2"]}


@pytest.mark.parametrize("source", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("target", SUPPORTED_VERSIONS)
def test_round_trip_between_any_two_versions_keeps_addresses(source, target):
    parsed = Result.from_dict(json.loads(json.dumps(FULL_RESULT.to_dict(source))))
    again = parsed.to_dict(target)
    assert [ip["address"] for ip in again["ips"]] == ["10.1.0.5/24", "fd00::5/64"]
    assert [i["name"] for i in again["interfaces"]] == ["cni0", "eth0"]
    assert again["cniVersion"] == target


def test_empty_result_still_has_dns_object_like_the_reference():
    assert Result("1.0.0").to_dict() == {"cniVersion": "1.0.0", "dns": {}}


@pytest.mark.parametrize("bad, field", [
    ({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5"}]}, "ips.address"),
    ({"cniVersion": "1.0.0", "ips": [{"address": "nonsense/24"}]}, "ips.address"),
    ({"cniVersion": "0.4.0", "ips": [{"version": "6", "address": "10.1.0.5/24"}]}, "ips.version"),
    ({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24", "interface": 3}]}, "ips.interface"),
    ({"cniVersion": "1.0.0", "routes": [{"dst": "bogus"}]}, "routes.dst"),
    ({"cniVersion": "1.0.0", "routes": [{"dst": "0.0.0.0/0", "gw": "x"}]}, "routes.gw"),
    ({"cniVersion": "1.0.0", "interfaces": [{"mac": "aa"}]}, "interfaces"),
    ({"cniVersion": "1.0.0", "dns": {"nameservers": "1.1.1.1"}}, "dns.nameservers"),
    ({"cniVersion": "0.2.0"}, "cniVersion"),
])
def test_malformed_results_are_rejected_naming_the_field(bad, field):
    with pytest.raises(ResultError, match=field.replace(".", r"\.")):
        Result.from_dict(bad)


def test_cannot_render_for_unsupported_version():
    with pytest.raises(ResultError):
        FULL_RESULT.to_dict("0.2.0")
