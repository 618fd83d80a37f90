"""The Docker face's decisions without root or Docker: request parsing, names, ``-p`` plans, and the IPAM driver
on a state directory in tmp (real files, real allocator; only the kernel is left out)."""
from __future__ import annotations

import pytest

from datapath import errors as datapath_errors
from docker_plugin import agreement, network_plan
from docker_plugin.errors import DriverError, from_datapath
from docker_plugin.ipam_driver import GATEWAY_REQUEST, IpamDriver
from docker_plugin.state import StateDir

NID = "ab" * 32
EID = "cd" * 32


def _network_request(**generic):
    return {"NetworkID": NID, "Options": {network_plan.GENERIC: generic},
            "IPv4Data": [{"AddressSpace": "berth-local", "Pool": "10.231.9.0/24", "Gateway": "10.231.9.1/24"}]}


def test_a_network_gets_a_prefixed_bridge_named_after_its_id_and_masquerades_by_default():
    record = network_plan.plan_network(_network_request(), "bt-")
    assert record["bridge"] == "bt-" + NID[:12] and len(record["bridge"]) == 15
    assert record["masquerade"] is True and record["mtu"] == 0
    assert record["subnets"] == [{"pool": "10.231.9.0/24", "gateway": "10.231.9.1/24"}]


@pytest.mark.parametrize("generic, message", [
    ({"berth.bridge": "a-name-far-too-long"}, "too long"),
    ({"berth.mtu": "9"}, "between 68 and 65535"),
    ({"berth.masquerade": "perhaps"}, "expected true or false"),
    ({"berth.colour": "red"}, "unknown option -o berth.colour"),
])
def test_bad_network_options_are_refused_naming_the_option(generic, message):
    with pytest.raises(DriverError, match=message):
        network_plan.plan_network(_network_request(**generic), "bt-")


def test_ids_that_could_name_a_path_are_refused():
    for bad in ("../../etc/passwd", "ABCDEF123456", "", "a" * 65):
        with pytest.raises(DriverError):
            network_plan.docker_id({"NetworkID": bad}, "NetworkID")


def test_an_endpoint_address_must_lie_in_its_network():
    network = network_plan.plan_network(_network_request(), "bt-")
    endpoint = network_plan.plan_endpoint({"EndpointID": EID, "Interface": {"Address": "10.231.9.7/24"}}, network)
    assert endpoint["addresses"] == ["10.231.9.7/24"]
    assert endpoint["host"] == "vb" + EID[:11] and endpoint["peer"] == "vc" + EID[:11]
    with pytest.raises(DriverError, match="in none of network"):
        network_plan.plan_endpoint({"EndpointID": EID, "Interface": {"Address": "10.9.9.7/24"}}, network)


def test_published_ports_become_the_cni_portmap_rules_and_see_each_others_claims():
    endpoint = {"id": EID, "network": NID, "addresses": ["10.231.9.7/24"]}
    mappings = network_plan.port_mappings({network_plan.PORTMAP: [
        {"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}]})
    assert mappings == [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]
    rules, claims = network_plan.plan_ports(endpoint, mappings)
    assert any(getattr(r, "host_port", None) == 8080 for r in rules)
    other = "berth 12345678 somecontainer eth0 dnat tcp/8080/*"
    assert claims([other]) and "tcp host port 8080 is already mapped" in claims([other])[0]
    assert claims([]) == []


@pytest.mark.parametrize("binding, message", [
    ({"Proto": 6, "Port": 80, "HostPort": 0}, "only explicit host ports"),
    ({"Proto": 6, "Port": 80, "HostPort": 8080, "HostPortEnd": 8090}, "not ranges"),
])
def test_ports_berth_cannot_publish_are_refused_clearly(binding, message):
    with pytest.raises(DriverError, match=message):
        network_plan.port_mappings({network_plan.PORTMAP: [binding]})


@pytest.fixture
def ipam(tmp_path):
    return IpamDriver(StateDir(str(tmp_path / "state")), default_pool="10.231.0.0/22")


def test_ipam_pool_gateway_addresses_and_release(ipam):
    pool = ipam.request_pool({"Pool": "10.231.9.0/24"})
    assert pool == {"PoolID": "10.231.9.0_24", "Pool": "10.231.9.0/24", "Data": {}}
    gateway = ipam.request_address({"PoolID": pool["PoolID"], "Options": {"RequestAddressType": GATEWAY_REQUEST}})
    assert gateway["Address"] == "10.231.9.1/24"
    first = ipam.request_address({"PoolID": pool["PoolID"]})["Address"]
    fixed = ipam.request_address({"PoolID": pool["PoolID"], "Address": "10.231.9.50"})["Address"]
    assert first == "10.231.9.2/24" and fixed == "10.231.9.50/24"
    with pytest.raises(DriverError, match="not available"):
        ipam.request_address({"PoolID": pool["PoolID"], "Address": "10.231.9.50"})
    ipam.release_address({"PoolID": pool["PoolID"], "Address": "10.231.9.50"})
    ipam.release_address({"PoolID": pool["PoolID"], "Address": "10.231.9.50"})  # idempotent
    assert [str(ip) for ip in ipam.reserved(pool["PoolID"])] == ["10.231.9.2"]
    ipam.release_pool({"PoolID": pool["PoolID"]})
    assert ipam.reserved(pool["PoolID"]) == {}
    with pytest.raises(DriverError, match="no such Berth pool"):
        ipam.request_address({"PoolID": pool["PoolID"]})


def test_ipam_a_chosen_gateway_is_never_handed_out_and_the_default_one_then_is(ipam):
    pool = ipam.request_pool({"Pool": "10.231.9.0/30"})["PoolID"]
    ipam.request_address({"PoolID": pool, "Address": "10.231.9.2", "Options": {"RequestAddressType": GATEWAY_REQUEST}})
    assert ipam.request_address({"PoolID": pool})["Address"] == "10.231.9.1/30"
    with pytest.raises(DriverError, match="no IP addresses available"):
        ipam.request_address({"PoolID": pool})


def test_ipam_refuses_overlaps_and_picks_free_default_pools(ipam):
    ipam.request_pool({"Pool": "10.231.1.0/24"})
    with pytest.raises(DriverError, match="overlaps pool 10.231.1.0/24"):
        ipam.request_pool({"Pool": "10.231.0.0/16"})
    picked = [ipam.request_pool({})["Pool"] for _ in range(3)]
    assert picked == ["10.231.0.0/24", "10.231.2.0/24", "10.231.3.0/24"]
    with pytest.raises(DriverError, match="give --subnet"):
        ipam.request_pool({})
    with pytest.raises(DriverError, match="give --subnet for IPv6"):
        ipam.request_pool({"V6": True})


def test_ipam_sub_pool_limits_the_range(ipam):
    pool = ipam.request_pool({"Pool": "10.231.9.0/24", "SubPool": "10.231.9.128/25"})["PoolID"]
    assert ipam.request_address({"PoolID": pool})["Address"] == "10.231.9.128/24"
    with pytest.raises(DriverError):
        ipam.request_pool({"Pool": "10.231.20.0/24", "SubPool": "10.231.21.0/25"})


def test_start_up_releases_pools_no_record_and_no_docker_network_names_and_keeps_the_rest(ipam):
    used, orphan, forgotten = (ipam.request_pool({"Pool": f"10.231.{n}.0/24"})["PoolID"] for n in (1, 2, 3))
    for pool in (used, orphan, forgotten):
        ipam.request_address({"PoolID": pool})
    ipam.state.put("networks", NID, {"id": NID, "subnets": [{"pool": "10.231.3.0/24"}]})
    held = agreement.Held({NID: ("10.231.3.0/24",)}, {}, ipam.held())
    verdict = agreement.judge(held, [], {"10.231.1.0/24"})  # Docker forgot NID; a network of its uses pool 1
    assert verdict.networks == (NID,) and verdict.pools == (orphan, forgotten)
    assert not ipam.release_orphan(forgotten, held.pools[forgotten], spare=set())  # its record still names it
    for pool in verdict.pools:
        assert ipam.release_orphan(pool, held.pools[pool], spare={NID})
    assert [p for p, _ in ipam.state.all("pools")] == [used] and ipam.reserved(orphan) == {}


def test_start_up_never_releases_a_pool_requested_again_since_it_was_judged(ipam):
    pool = ipam.request_pool({"Pool": "10.231.9.0/24"})["PoolID"]
    held = ipam.held()
    ipam.release_pool({"PoolID": pool})
    ipam.request_pool({"Pool": "10.231.9.0/24"})  # the same id, another pool
    address = ipam.request_address({"PoolID": pool})["Address"]
    assert not ipam.release_orphan(pool, held[pool], spare=set())
    ipam.release_held_addresses([address], held)  # was not held at start: stays
    assert [str(ip) for ip in ipam.reserved(pool)] == [address.split("/")[0]]


def test_state_records_refuse_ids_that_escape_the_directory(tmp_path):
    state = StateDir(str(tmp_path / "s"))
    with pytest.raises(ValueError):
        state.put("networks", "../x", {})
    state.put("networks", NID, {"a": 1})
    assert dict(state.all("networks")) == {NID: {"a": 1}}


def test_an_overlay_network_takes_the_overlay_mtu_and_masquerades_only_out_of_the_overlay():
    from overlay import subnetfile
    import ipaddress
    lease = subnetfile.for_lease(ipaddress.ip_network("10.214.0.0/16"), ipaddress.ip_network("10.214.3.0/24"),
                                 1450, ipmasq=False)
    request = _network_request(**{"berth.overlay": "true"})
    network = network_plan.plan_network(request, "bt-")
    joined = network_plan.join_overlay(network, [{"pool": "10.231.9.0/24", "overlay": True}], lease)
    assert joined["mtu"] == 1450 and joined["masquerade"] is True and joined["masquerade_scope"] == "10.214.0.0/16"
    daemon_masq = subnetfile.for_lease(lease.network, ipaddress.ip_network("10.214.3.0/24"), 1450, ipmasq=True)
    assert network_plan.join_overlay(network, [{"pool": "x", "overlay": True}], daemon_masq)["masquerade"] is False
    with pytest.raises(DriverError, match="--ipam-opt berth.overlay=true"):
        network_plan.join_overlay(network, [{"pool": "10.231.9.0/24", "overlay": False}], lease)


def test_ipam_overlay_pool_is_the_hosts_subnet(tmp_path):
    from overlay import subnetfile
    import ipaddress
    path = tmp_path / "subnet.env"
    driver = IpamDriver(StateDir(str(tmp_path / "state")), subnet_file=str(path))
    with pytest.raises(DriverError, match="is berth overlay running"):
        driver.request_pool({"Options": {"berth.overlay": "true"}})
    subnetfile.write(path, subnetfile.for_lease(ipaddress.ip_network("10.214.0.0/16"),
                                                ipaddress.ip_network("10.214.3.0/24"), 1450, ipmasq=False))
    with pytest.raises(DriverError, match="leave --subnet out"):
        driver.request_pool({"Pool": "10.214.9.0/24", "Options": {"berth.overlay": "true"}})
    assert driver.request_pool({"Options": {"berth.overlay": "true"}})["Pool"] == "10.214.3.0/24"


def test_an_endpoint_mac_follows_its_ipv4_address_unless_docker_gives_one():
    network = network_plan.plan_network(_network_request(), "bt-")
    endpoint = network_plan.plan_endpoint({"EndpointID": EID, "Interface": {"Address": "10.231.9.7/24"}}, network)
    assert endpoint["mac"] == "02:be:0a:e7:09:07" and not endpoint["mac_given"]
    chosen = network_plan.plan_endpoint({"EndpointID": EID, "Interface": {"Address": "10.231.9.7/24",
                                                                          "MacAddress": "02:00:00:00:00:01"}}, network)
    assert chosen["mac"] == "02:00:00:00:00:01" and chosen["mac_given"]


def test_a_port_held_by_another_docker_endpoint_names_that_endpoint():
    endpoint = {"id": EID, "network": NID, "addresses": ["10.231.9.7/24"]}
    _, claims = network_plan.plan_ports(endpoint, [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp",
                                                    "hostIP": ""}])
    other = network_plan.tag({"id": "ef" * 32, "network": NID}) + " dnat tcp/8080/*"
    assert claims([other]) == ["tcp host port 8080 is already mapped by the container of Docker endpoint "
                               + "ef" * 12]


@pytest.mark.parametrize("error, status", [
    (datapath_errors.InvalidInput("runtimeConfig.portMappings[0].hostPort: must be a port"), 400),
    (datapath_errors.HostConflict("br-x already exists but is not a bridge", "vxlan"), 409),
    (datapath_errors.PortConflict("tcp host port 8080 is already mapped", "each host port ..."), 409),
    (datapath_errors.LinkError("add veth: File exists"), 500),
    (datapath_errors.FirewallError("nftables refused the rules"), 500),
])
def test_datapath_errors_become_the_drivers_with_their_status_and_message(error, status):
    answer = from_datapath(error)
    assert answer.status == status and str(answer).startswith(error.msg)
    assert (error.details in str(answer)) if error.details else str(answer) == error.msg
