"""The name scheme alone: records in, answers out (pure, no sockets)."""
from __future__ import annotations

import pytest

from discovery.model import EndpointRecord, Health, PortBinding
from dnsd.names import ZoneConfig, ZoneIndex
from dnsd.records import A, AAAA, ANY, NOERROR, NS, NXDOMAIN, PTR, SOA, SRV, TXT

from .conftest import sample_records

Z = "berth.internal"


@pytest.fixture(scope="module")
def index() -> ZoneIndex:
    return ZoneIndex(sample_records(), ZoneConfig(), revision=7)


def values(answer):
    return sorted(str(r.rdata) if not hasattr(r.rdata, "target") else r.rdata.target for r in answer.answer)


def test_container_name_and_alias_have_addresses(index):
    assert values(index.lookup(f"btweb1.{Z}", A)) == ["10.89.0.11"]
    assert values(index.lookup(f"btwww.{Z}", A)) == ["10.89.0.11"]
    assert values(index.lookup(f"btdb.{Z}", AAAA)) == ["fd89::20"]


def test_name_on_several_networks_answers_per_network(index):
    assert values(index.lookup(f"btdup.{Z}", A)) == ["10.89.0.31", "10.90.0.31"]
    assert values(index.lookup(f"btdup.btnet.{Z}", A)) == ["10.89.0.31"]
    assert values(index.lookup(f"btdup.btother.{Z}", A)) == ["10.90.0.31"]


def test_service_name_lists_each_healthy_endpoint_and_excludes_critical(index):
    assert values(index.lookup(f"btweb.service.{Z}", A)) == ["10.89.0.11", "10.89.0.12"]
    assert index.lookup(f"btsick.{Z}", A).rcode == NXDOMAIN
    assert index.lookup("66.0.89.10.in-addr.arpa", PTR) is None  # not ours any more: goes upstream


def test_tag_filters_the_service(index):
    assert values(index.lookup(f"primary.btweb.service.{Z}", A)) == ["10.89.0.11"]


WEB1, WEB2 = f"0a59000b.addr.{Z}", f"0a59000c.addr.{Z}"  # 10.89.0.11, 10.89.0.12


def test_rfc2782_srv_has_port_target_and_additional_addresses(index):
    answer = index.lookup(f"_btweb._tcp.service.{Z}", SRV)
    assert sorted((r.rdata.port, r.rdata.target) for r in answer.answer) == [(8080, WEB1), (8080, WEB2)]
    assert sorted((r.name, r.rdata) for r in answer.additional) == [(WEB1, "10.89.0.11"), (WEB2, "10.89.0.12")]
    udp = index.lookup(f"_btweb._udp.service.{Z}", SRV)
    assert [(r.rdata.port, r.rdata.target) for r in udp.answer] == [(5353, WEB2)]


def test_address_names_resolve_to_their_one_address(index):
    assert values(index.lookup(WEB1, A)) == ["10.89.0.11"]
    assert values(index.lookup(f"fd890000000000000000000000000020.addr.{Z}", AAAA)) == ["fd89::20"]
    assert index.lookup(WEB1, AAAA).answer == ()


def test_srv_is_one_record_per_instance_even_when_instances_share_a_name():
    """Consul registrations are named after their service; CNI containers share a service name: either way
    every instance gets its own SRV record and target."""
    consul_style = [EndpointRecord(id=f"api{i}", name="btapi", service="btapi", addresses=(f"10.93.0.{i}",),
                                   ports=(PortBinding(8000),)) for i in (1, 2, 3)]
    containers = [EndpointRecord(id=f"c{i}/eth0", name=f"btctr{i}", service="btapi", network="btnet",
                                 addresses=(f"10.93.1.{i}",), ports=(PortBinding(8000),)) for i in (1, 2)]
    index = ZoneIndex(consul_style + containers, ZoneConfig(), 1)
    answer = index.lookup(f"_btapi._tcp.service.{Z}", SRV)
    targets = sorted(r.rdata.target for r in answer.answer)
    assert len(targets) == len(set(targets)) == 5
    for target in targets:
        assert len(index.lookup(target, A).answer) == 1
    assert sorted(r.rdata for r in answer.additional) == sorted(
        [f"10.93.0.{i}" for i in (1, 2, 3)] + [f"10.93.1.{i}" for i in (1, 2)])
    assert len(index.lookup(f"btapi.service.{Z}", SRV).answer) == 5  # Consul's SRV at the service name too


def test_srv_target_of_an_ipv6_instance_has_aaaa():
    index = ZoneIndex([EndpointRecord(id="v6", name="btv6", addresses=("fd89::7",), ports=(PortBinding(80),))],
                      ZoneConfig(), 1)
    answer = index.lookup(f"_btv6._tcp.service.{Z}", SRV)
    assert [r.rtype for r in answer.additional] == [AAAA]


def test_ptr_for_v4_and_v6_points_at_the_forward_name(index):
    assert values(index.lookup("11.0.89.10.in-addr.arpa", PTR)) == [f"btweb1.{Z}"]
    v6 = "0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.9.8.d.f.ip6.arpa"
    assert values(index.lookup(v6, PTR)) == [f"btdb.{Z}"]


def test_missing_name_is_nxdomain_with_soa(index):
    answer = index.lookup(f"btnothere.{Z}", A)
    assert answer.rcode == NXDOMAIN and answer.answer == ()
    assert [r.rtype for r in answer.authority] == [SOA]
    assert answer.authority[0].rdata.minimum == 5
    assert answer.authority[0].rdata.serial == 7


def test_missing_type_is_nodata_with_soa(index):
    answer = index.lookup(f"btweb1.{Z}", AAAA)
    assert answer.rcode == NOERROR and answer.answer == () and answer.authority[0].rtype == SOA
    assert index.lookup(f"btweb1.{Z}", 99).rcode == NOERROR  # a type we know nothing of: NODATA too


@pytest.mark.parametrize("name", [f"service.{Z}", f"btnet.{Z}", f"btweb.service.{Z}", f"_tcp.service.{Z}"])
def test_empty_non_terminals_are_noerror(index, name):
    answer = index.lookup(name, A if "btweb" not in name else TXT)
    assert answer.rcode == NOERROR and answer.answer == ()


def test_apex_has_soa_and_ns(index):
    assert index.lookup(Z, SOA).answer[0].rdata.mname == f"ns.{Z}"
    assert values(index.lookup(Z, NS)) == [f"ns.{Z}"]
    assert {r.rtype for r in index.lookup(Z, ANY).answer} == {SOA, NS}


def test_txt_where_a_record_carries_text(index):
    assert index.lookup(f"btdb.{Z}", TXT).answer[0].rdata == ("role=primary",)


def test_outside_the_zone_is_not_ours(index):
    assert index.lookup("example.com", A) is None
    assert index.lookup("berth.internal.example.com", A) is None
    assert index.lookup("xberth.internal", A) is None


def test_rotation_hands_out_every_endpoint_first():
    index = ZoneIndex(sample_records(), ZoneConfig(), 1)
    firsts = {index.lookup(f"btmid.service.{Z}", A, rotation=k).answer[0].rdata for k in range(50)}
    assert len(firsts) == 50


def test_configured_zone_and_ttls():
    record = EndpointRecord(id="x", name="btapp", addresses=("10.1.0.2",))
    index = ZoneIndex([record], ZoneConfig("Corp.Example.", ttl=30, negative_ttl=60), 1)
    assert index.lookup("btapp.corp.example", A).answer[0].ttl == 30
    negative = index.lookup("btnone.corp.example", A)
    assert negative.authority[0].ttl == 60 and negative.authority[0].rdata.minimum == 60


def test_endpoint_turning_critical_leaves_every_name():
    healthy = EndpointRecord(id="x", name="btapp", addresses=("10.1.0.2",), ports=(PortBinding(80),))
    sick = EndpointRecord(id="x", name="btapp", addresses=("10.1.0.2",), ports=(PortBinding(80),),
                          health=Health.CRITICAL)
    assert ZoneIndex([healthy], ZoneConfig(), 1).lookup(f"_btapp._tcp.service.{Z}", SRV).answer
    gone = ZoneIndex([sick], ZoneConfig(), 2)
    assert gone.lookup(f"_btapp._tcp.service.{Z}", SRV).rcode == NXDOMAIN
    assert gone.lookup(f"btapp.{Z}", A).rcode == NXDOMAIN


def test_warning_endpoints_stay_in_answers():
    record = EndpointRecord(id="x", name="btapp", addresses=("10.1.0.2",), health=Health.WARNING)
    assert ZoneIndex([record], ZoneConfig(), 1).lookup(f"btapp.service.{Z}", A).answer


def test_bad_zone_is_rejected():
    with pytest.raises(ValueError, match="zone"):
        ZoneConfig("bad_zone!")
