"""Pure tier: config validation, subnet choice, lease records, the watcher and the reconciliation plan."""
from __future__ import annotations

import ipaddress
import json
import random
from types import SimpleNamespace

import pytest

from overlay import masq, subnetfile
from overlay.config import ConfigError, make_config, parse_config
from overlay.lease import LeaseFormatError, SubnetLease, parse_lease, subnet_from_key, subnet_key
from overlay.reconcile import FdbEntry, KernelState, LeaseWatcher, Neighbour, Route, desired_state, plan
from overlay.subnets import all_subnets, candidate_subnets

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address


def lease(subnet: str, ip: str, mac: str = "02:00:00:00:00:01") -> SubnetLease:
    return SubnetLease(N(subnet), A(ip), mac, 1)


def event(kind: str, subnet: str, value: bytes = b"") -> SimpleNamespace:
    return SimpleNamespace(kind=kind, key=subnet_key(N(subnet)), value=value)


# -- config -------------------------------------------------------------------------------------------------

def test_config_defaults_follow_flannel():
    config = make_config("10.244.0.0/16")
    assert config.subnet_len == 24
    assert config.subnet_min == N("10.244.1.0/24") and config.subnet_max == N("10.244.254.0/24")
    assert (config.vni, config.port, config.direct_routing) == (1, 8472, False)
    assert config.subnet_count() == 254
    assert parse_config(config.to_json()) == config


def test_config_reads_flannel_json():
    config = parse_config(json.dumps({"Network": "10.5.0.0/16", "SubnetLen": 26, "SubnetMin": "10.5.1.0",
                                      "Backend": {"Type": "vxlan", "VNI": 42, "Port": 4789,
                                                  "DirectRouting": True}}).encode())
    assert (config.subnet_len, config.vni, config.port, config.direct_routing) == (26, 42, 4789, True)
    assert config.subnet_min == N("10.5.1.0/26")


@pytest.mark.parametrize("doc, field", [
    ({}, "Network"),
    ({"Network": "10.244.0.1/16"}, "Network"),
    ({"Network": "fd00::/64"}, "Network"),
    ({"Network": "10.244.0.0/30"}, "Network"),
    ({"Network": "10.244.0.0/16", "SubnetLen": 16}, "SubnetLen"),
    ({"Network": "10.244.0.0/16", "SubnetLen": "24"}, "SubnetLen"),
    ({"Network": "10.244.0.0/16", "SubnetMin": "10.245.0.0"}, "SubnetMin"),
    ({"Network": "10.244.0.0/16", "SubnetMax": "10.244.3.7"}, "SubnetMax"),
    ({"Network": "10.244.0.0/16", "SubnetMin": "10.244.9.0", "SubnetMax": "10.244.3.0"}, "SubnetMin"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}, "Backend.Type"),
    ({"Network": "10.244.0.0/16", "Backend": {"VNI": 1 << 24}}, "VNI"),
    ({"Network": "10.244.0.0/16", "Backend": {"Port": 0}}, "Port"),
    ({"Network": "10.244.0.0/16", "Backend": {"DirectRouting": "yes"}}, "DirectRouting"),
    ({"Network": "10.244.0.0/16", "MTU": 100}, "MTU"),
])
def test_config_errors_name_the_field(doc, field):
    with pytest.raises(ConfigError, match=field):
        parse_config(json.dumps(doc).encode())


def test_config_rejects_non_json():
    with pytest.raises(ConfigError, match="JSON"):
        parse_config(b"{nope")


# -- subnet choice --------------------------------------------------------------------------------------------

def test_candidates_skip_taken_and_overlapping_subnets():
    config = make_config("10.244.0.0/16", subnet_min="10.244.1.0", subnet_max="10.244.4.0")
    taken = [N("10.244.2.0/24"), N("10.244.3.0/25")]  # the second: from an older config, still in use
    free = candidate_subnets(config, taken, random.Random(1))
    assert sorted(free) == [N("10.244.1.0/24"), N("10.244.4.0/24")]


def test_candidates_put_the_previous_subnet_first_only_when_free():
    config = make_config("10.244.0.0/16")
    prev = N("10.244.77.0/24")
    assert candidate_subnets(config, [], random.Random(3), preferred=prev)[0] == prev
    assert prev not in candidate_subnets(config, [prev], random.Random(3), preferred=prev)


def test_candidates_are_shuffled_so_racing_hosts_spread_out():
    config = make_config("10.244.0.0/16")
    firsts = {candidate_subnets(config, [], random.Random(seed))[0] for seed in range(16)}
    assert len(firsts) > 8
    assert len(all_subnets(config)) == 254


def test_no_candidates_when_full():
    config = make_config("10.244.0.0/16", subnet_min="10.244.1.0", subnet_max="10.244.2.0")
    assert candidate_subnets(config, all_subnets(config)) == []


# -- lease records ----------------------------------------------------------------------------------------------

def test_lease_round_trip_uses_flannel_value_shape():
    original = lease("10.244.3.0/24", "10.213.0.3", "0a:1b:2c:3d:4e:5f")
    key = subnet_key(original.subnet)
    assert key == "/berth/overlay/subnets/10.244.3.0-24"
    doc = json.loads(original.to_json())
    assert doc == {"PublicIP": "10.213.0.3", "BackendType": "vxlan",
                   "BackendData": {"VNI": 1, "VtepMAC": "0a:1b:2c:3d:4e:5f"}}
    assert parse_lease(key, original.to_json()) == original
    assert original.vtep_ip == A("10.244.3.0")


@pytest.mark.parametrize("key, value", [
    ("/berth/overlay/subnets/10.244.3.0", b'{"PublicIP": "10.0.0.1"}'),
    ("/berth/overlay/subnets/10.244.3.0-24", b"not json"),
    ("/berth/overlay/subnets/10.244.3.0-24", b'{"BackendData": {}}'),
    ("/berth/overlay/subnets/10.244.3.0-24", b'{"PublicIP": "10.0.0.1", "BackendData": {"VtepMAC": "zz"}}'),
    ("/elsewhere/10.244.3.0-24", b'{"PublicIP": "10.0.0.1"}'),
])
def test_bad_leases_are_rejected(key, value):
    with pytest.raises(LeaseFormatError):
        parse_lease(key, value)


def test_subnet_from_key():
    assert subnet_from_key("/p/subnets/10.1.2.0-24", "/p") == N("10.1.2.0/24")


# -- the watcher -------------------------------------------------------------------------------------------------

def make_watcher() -> LeaseWatcher:
    return LeaseWatcher(N("10.244.1.0/24"), A("10.213.0.1"))


def test_watcher_snapshot_excludes_self_and_garbage():
    own = lease("10.244.1.0/24", "10.213.0.1")
    b = lease("10.244.2.0/24", "10.213.0.2")
    stale_self = lease("10.244.9.0/24", "10.213.0.1")  # this host's old subnet from before a re-claim
    w = make_watcher()
    delta = w.reset([(subnet_key(own.subnet), own.to_json()), (subnet_key(b.subnet), b.to_json()),
                     (subnet_key(stale_self.subnet), stale_self.to_json()),
                     (subnet_key(N("10.244.5.0/24")), b"garbage")])
    assert w.leases == {b.subnet: b}
    assert delta.added == (b,) and delta.removed == () and not delta.own_lost


def test_watcher_reset_reports_the_difference_and_own_loss():
    b, c = lease("10.244.2.0/24", "10.213.0.2"), lease("10.244.3.0/24", "10.213.0.3")
    w = make_watcher()
    w.reset([(subnet_key(b.subnet), b.to_json())])
    delta = w.reset([(subnet_key(c.subnet), c.to_json())])
    assert delta.added == (c,) and delta.removed == (b,) and delta.own_lost


def test_watcher_deltas_add_change_remove():
    b = lease("10.244.2.0/24", "10.213.0.2", "02:00:00:00:00:02")
    b_new_mac = lease("10.244.2.0/24", "10.213.0.2", "02:00:00:00:00:22")
    c = lease("10.244.3.0/24", "10.213.0.3")
    w = make_watcher()
    d1 = w.apply([event("put", "10.244.2.0/24", b.to_json()), event("put", "10.244.3.0/24", c.to_json())])
    assert set(d1.added) == {b, c}
    assert w.apply([event("put", "10.244.2.0/24", b.to_json())]).added == ()  # a lease refresh changes nothing
    d2 = w.apply([event("put", "10.244.2.0/24", b_new_mac.to_json()), event("delete", "10.244.3.0/24")])
    assert d2.added == (b_new_mac,) and d2.removed == (c,)
    assert w.leases == {b.subnet: b_new_mac}
    d3 = w.apply([event("delete", "10.244.1.0/24")])
    assert d3.own_lost and d3.removed == ()


def test_watcher_put_then_delete_in_one_batch_is_no_peer():
    c = lease("10.244.3.0/24", "10.213.0.3")
    w = make_watcher()
    delta = w.apply([event("put", "10.244.3.0/24", c.to_json()), event("delete", "10.244.3.0/24")])
    assert w.leases == {} and delta.added == ()


# -- desired state and plan -----------------------------------------------------------------------------------

def test_desired_state_is_one_route_neighbour_fdb_per_peer():
    b, c = lease("10.244.2.0/24", "10.213.0.2", "02:00:00:00:00:02"), lease("10.244.3.0/24", "10.213.1.3")
    state = desired_state([b, c], "berth.1")
    assert state.routes == {Route(b.subnet, A("10.244.2.0"), "berth.1"), Route(c.subnet, A("10.244.3.0"), "berth.1")}
    assert state.neighbours == {Neighbour(A("10.244.2.0"), b.vtep_mac), Neighbour(A("10.244.3.0"), c.vtep_mac)}
    assert state.fdb == {FdbEntry(b.vtep_mac, A("10.213.0.2")), FdbEntry(c.vtep_mac, A("10.213.1.3"))}


def test_direct_routing_only_for_peers_on_the_same_segment():
    b, c = lease("10.244.2.0/24", "10.213.0.2"), lease("10.244.3.0/24", "10.213.1.3", "02:00:00:00:00:03")
    state = desired_state([b, c], "berth.1", "underlay0", [N("10.213.0.0/24")])
    assert state.routes == {Route(b.subnet, A("10.213.0.2"), "underlay0"),
                            Route(c.subnet, A("10.244.3.0"), "berth.1")}
    assert state.neighbours == {Neighbour(A("10.244.3.0"), c.vtep_mac)}
    assert state.fdb == {FdbEntry(c.vtep_mac, A("10.213.1.3"))}


def test_reservation_without_mac_gets_nothing_yet():
    assert desired_state([lease("10.244.2.0/24", "10.213.0.2", "")], "berth.1") == KernelState()


def test_plan_removes_stale_and_adds_missing_only():
    b, c = lease("10.244.2.0/24", "10.213.0.2", "02:00:00:00:00:02"), lease("10.244.3.0/24", "10.213.0.3")
    gone = lease("10.244.9.0/24", "10.213.0.9", "02:00:00:00:00:09")
    actual = desired_state([b, gone], "berth.1")
    changes = plan(desired_state([b, c], "berth.1"), actual)
    assert changes.remove_routes == (Route(gone.subnet, gone.vtep_ip, "berth.1"),)
    assert changes.remove_neighbours == (Neighbour(gone.vtep_ip, gone.vtep_mac),)
    assert changes.remove_fdb == (FdbEntry(gone.vtep_mac, gone.public_ip),)
    assert changes.add_routes == (Route(c.subnet, c.vtep_ip, "berth.1"),)
    assert changes.add_fdb == (FdbEntry(c.vtep_mac, c.public_ip),)
    assert plan(actual, actual).empty()


def test_plan_replaces_a_changed_mac():
    old = lease("10.244.2.0/24", "10.213.0.2", "02:00:00:00:00:02")
    new = lease("10.244.2.0/24", "10.213.0.2", "02:00:00:00:00:12")
    changes = plan(desired_state([new], "berth.1"), desired_state([old], "berth.1"))
    assert changes.remove_routes == () and changes.add_routes == ()
    assert changes.remove_neighbours == (Neighbour(old.vtep_ip, old.vtep_mac),)
    assert changes.add_neighbours == (Neighbour(new.vtep_ip, new.vtep_mac),)
    assert changes.remove_fdb and changes.add_fdb


# -- subnet file and masquerade ---------------------------------------------------------------------------------

def test_subnet_file_round_trip_in_flannel_format(tmp_path):
    content = subnetfile.for_lease(N("10.244.0.0/16"), N("10.244.7.0/24"), 1450, True, "02:aa:bb:cc:dd:ee")
    path = tmp_path / "run" / "subnet.env"
    subnetfile.write(path, content)
    text = path.read_text()
    assert text.splitlines()[:4] == ["FLANNEL_NETWORK=10.244.0.0/16", "FLANNEL_SUBNET=10.244.7.1/24",
                                     "FLANNEL_MTU=1450", "FLANNEL_IPMASQ=true"]
    assert subnetfile.read(path) == content
    assert list(tmp_path.joinpath("run").iterdir()) == [path]  # no temporary file left behind


def test_subnet_file_parses_flannels_own_output():
    parsed = subnetfile.parse("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n"
                              "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n")
    assert parsed.subnet.network == N("10.1.17.0/24") and parsed.mtu == 1472 and not parsed.ipmasq


@pytest.mark.parametrize("text", ["FLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1\n", "garbage line\n",
                                  "FLANNEL_NETWORK=x\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1\n"])
def test_bad_subnet_files(text, tmp_path):
    with pytest.raises(subnetfile.SubnetFileError):
        subnetfile.parse(text)
    (tmp_path / "s.env").write_text(text)
    assert subnetfile.read_if_present(tmp_path / "s.env") is None


def test_masquerade_rules_leave_container_to_container_traffic_alone():
    script = masq.render(N("10.244.0.0/16"), N("10.244.7.0/24"))
    assert "table ip berth-overlay" in script
    lines = [line.strip() for line in script.splitlines()]
    first_rule = lines.index("ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return")
    assert first_rule < lines.index("ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random")
