"""host-local's IPAM config: defaults as its Canonicalize fills them, and every case it refuses (pure)."""
from ipaddress import ip_address as ip, ip_network as net

import pytest

from ipam.config import DEFAULT_DATA_DIR, parse_ipam_config, parse_requested
from ipam.errors import ConfigError


def parse(**ipam):
    return parse_ipam_config({"type": "berth-ipam", **ipam}, "net1")


def test_ipv4_defaults_skip_network_and_broadcast_and_claim_first_host_as_gateway():
    cfg = parse(subnet="10.1.0.0/24")
    (r,) = cfg.range_sets[0].ranges
    assert (r.subnet, r.range_start, r.range_end, r.gateway) == (
        net("10.1.0.0/24"), ip("10.1.0.1"), ip("10.1.0.254"), ip("10.1.0.1"))
    assert cfg.data_dir == DEFAULT_DATA_DIR and cfg.resolv_conf is None and cfg.routes == ()


def test_ipv6_default_end_is_the_last_address():
    (r,) = parse(ranges=[[{"subnet": "fd00:1::/64"}]]).range_sets[0].ranges
    assert (r.range_start, r.range_end, r.gateway) == (ip("fd00:1::1"), ip("fd00:1::ffff:ffff:ffff:ffff"),
                                                       ip("fd00:1::1"))


def test_explicit_start_end_gateway_and_other_keys_are_kept():
    cfg = parse(subnet="10.1.0.0/24", rangeStart="10.1.0.10", rangeEnd="10.1.0.20", gateway="10.1.0.254",
                routes=[{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.0.1"}],
                dataDir="/tmp/x", resolvConf="/tmp/resolv")
    (r,) = cfg.range_sets[0].ranges
    assert (r.range_start, r.range_end, r.gateway) == (ip("10.1.0.10"), ip("10.1.0.20"), ip("10.1.0.254"))
    assert [(str(x.dst), x.gw) for x in cfg.routes] == [("0.0.0.0/0", None), ("192.168.0.0/16", ip("10.1.0.1"))]
    assert (cfg.data_dir, cfg.resolv_conf) == ("/tmp/x", "/tmp/resolv")


def test_old_single_range_form_comes_before_ranges_and_runtime_ip_ranges_before_both():
    cfg = parse_ipam_config({"subnet": "10.1.0.0/24", "ranges": [[{"subnet": "fd00::/64"}]]}, "n",
                            ip_ranges=[[{"subnet": "10.2.0.0/24"}]])
    assert [str(rs.ranges[0].subnet) for rs in cfg.range_sets] == ["10.2.0.0/24", "10.1.0.0/24", "fd00::/64"]


def test_a_gateway_outside_the_subnet_is_accepted_as_host_local_does():
    (r,) = parse(subnet="10.1.0.0/24", gateway="10.9.9.9").range_sets[0].ranges
    assert r.gateway == ip("10.9.9.9")


@pytest.mark.parametrize("ipam, message", [
    ({"subnet": "10.1.0.1/24"}, "Network has host bits set. For a subnet mask of length 24 the network address is 10.1.0.0"),
    ({"subnet": "10.1.0.0/31"}, "Network 10.1.0.0/31 too small to allocate from"),
    ({"subnet": "10.1.0.0/32"}, "Network 10.1.0.0/32 too small to allocate from"),
    ({"subnet": "fd00::/127"}, "Network fd00::/127 too small to allocate from"),
    ({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "fd00::/64"}]]}, "mixed address families"),
    ({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.0/25"}]]}, "range set 0 overlaps with 1"),
    ({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "10.1.0.0/25"}]]},
     "subnets 10.1.0.1-10.1.0.254 and 10.1.0.1-10.1.0.126 overlap"),
    ({"ranges": []}, "no IP ranges specified"),
    ({}, "no IP ranges specified"),
    ({"ranges": [[]]}, "empty range set"),
    ({"ranges": [[{}]]}, "IP <nil> not v4 nor v6"),
    ({"subnet": "10.1.0.0/33"}, "invalid CIDR address: 10.1.0.0/33"),
    ({"subnet": "10.1.0.0"}, "invalid CIDR address: 10.1.0.0"),
    ({"subnet": "10.1.0.0/24", "rangeStart": "10.2.0.1"}, "RangeStart 10.2.0.1 not in network 10.1.0.0/24"),
    ({"subnet": "10.1.0.0/24", "rangeEnd": "10.2.0.1"}, "RangeEnd 10.2.0.1 not in network 10.1.0.0/24"),
    ({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.50", "rangeEnd": "10.1.0.10"},
     "RangeStart 10.1.0.50 not in network 10.1.0.0/24"),
    ({"subnet": "10.1.0.0/24", "rangeStart": "fd00::1"}, "RangeStart fd00::1 not in network 10.1.0.0/24"),
    ({"subnet": "10.1.0.0/24", "gateway": "10.1.0.300"}, "invalid IP address: 10.1.0.300"),
    ({"subnet": "10.1.0.0/24", "routes": [{"gw": "10.1.0.1"}]}, "expected an object with 'dst'"),
    ({"subnet": "10.1.0.0/24", "routes": [{"dst": "nowhere"}]}, "invalid CIDR address: nowhere"),
    ({"subnet": "10.1.0.0/24", "dataDir": 5}, "ipam.dataDir: must be a non-empty absolute path"),
    # falsy values are mistakes, not "the default directory"
    ({"subnet": "10.1.0.0/24", "dataDir": ""}, "ipam.dataDir: must be a non-empty absolute path"),
    ({"subnet": "10.1.0.0/24", "dataDir": 0}, "ipam.dataDir: must be a non-empty absolute path"),
    ({"subnet": "10.1.0.0/24", "dataDir": False}, "ipam.dataDir: must be a non-empty absolute path"),
    ({"subnet": "10.1.0.0/24", "dataDir": "/var/lib/../../etc"}, "ipam.dataDir: must be a normalised path"),
    ({"subnet": "10.1.0.0/24", "dataDir": "/var/lib/cni/"}, "ipam.dataDir: must be a normalised path"),
    ({"subnet": "10.1.0.0/24", "dataDir": "/x" * 2000}, "ipam.dataDir: more than 64 components"),
    ({"subnet": "10.1.0.0/24", "dataDir": "/" + "x" * 300}, "ipam.dataDir: a component is longer than 255"),
    ({"subnet": "10.1.0.0/24", "resolvConf": ""}, "ipam.resolvConf: must be a non-empty absolute path"),
    ({"subnet": "10.1.0.0/24", "routes": [{"dst": 5}]}, "ipam.routes[0]: expected an object with 'dst'"),
    ({"subnet": "10.1.0.0/24", "routes": -1}, "ipam.routes: expected a list"),
    ({"subnet": "10.1.0.0/24", "dataDir": "var/lib/cni"}, "ipam.dataDir: must be an absolute path"),
    ({"subnet": "10.1.0.0/24", "resolvConf": "resolv.conf"}, "ipam.resolvConf: must be an absolute path"),
])
def test_invalid_configs_are_refused_with_host_locals_words(ipam, message):
    with pytest.raises(ConfigError) as err:
        parse(**ipam)
    assert message in str(err.value)


@pytest.mark.parametrize("ipam, field", [
    ({"subnet": "10.1.0.1/24"}, "ipam.subnet"),
    ({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "10.2.0.0/24", "rangeEnd": "10.3.0.1"}]]},
     "ipam.ranges[0][1].rangeEnd"),
    ({"subnet": "10.1.0.0/24", "routes": [{"dst": "0.0.0.0/0"}, {"dst": "x"}]}, "ipam.routes[1].dst"),
])
def test_errors_name_the_field(ipam, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        parse(**ipam)


def test_missing_ipam_object_is_refused():
    with pytest.raises(ConfigError, match="IPAM config missing 'ipam' key"):
        parse_ipam_config(None, "n")


def test_requested_addresses_accept_a_prefix_and_drop_duplicates_but_refuse_garbage():
    assert parse_requested(["10.1.0.5/24", "10.1.0.5", "fd00::5"]) == (ip("10.1.0.5"), ip("fd00::5"))
    with pytest.raises(ConfigError, match=r"ips\[1\]: invalid IP address: nope"):
        parse_requested(["10.1.0.5", "nope"])
