"""Property (hypothesis): any sequence of endpoint adds, changes and removals, applied change by change by
dnsd/zonebuild.py, gives an index that answers every name and type as one built afresh does, and as the plain
union of every live endpoint's records says; indexes handed out earlier never change; rotation rotates.

The endpoints are drawn from a few names, addresses, services, networks and ports, so they keep colliding: records
held by several endpoints, names shared, an alias that is another's name, one endpoint going critical."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from discovery.model import EndpointRecord, Health, PortBinding
from dnsd.names import ZoneConfig, ZoneIndex, endpoint_records
from dnsd.records import A, AAAA, ANY, NS, NXDOMAIN, PTR, SOA, SRV, TXT, Record
from dnsd.zonebuild import ZoneBuilder

Z = "berth.internal"
QTYPES = (A, AAAA, TXT, PTR, SRV, NS, SOA, ANY, 99)
CONFIG = ZoneConfig(nameserver_addresses=("10.0.0.1",))  # an endpoint named "ns" can share the apex's record
KEYS = [f"k{i}" for i in range(6)]

endpoints = st.builds(
    lambda name, aliases, addresses, network, service, tags, ports, txt, health, id_: EndpointRecord(
        id=id_, name=name, aliases=tuple(aliases), addresses=tuple(addresses) or ("10.0.0.9",) * (not ports),
        network=network, service=service, tags=tuple(tags), ports=tuple(ports), txt=txt, health=health),
    name=st.sampled_from(["bta", "btb", "ns"]),
    aliases=st.lists(st.sampled_from(["btx", "bta"]), max_size=2, unique=True),
    addresses=st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "fd00::1"]), max_size=2, unique=True),
    network=st.sampled_from(["", "btn1", "btn2"]),
    service=st.sampled_from(["", "btsvc"]),
    tags=st.lists(st.sampled_from(["primary", "Primary", "not_a_label"]), max_size=2),
    ports=st.lists(st.sampled_from([PortBinding(80), PortBinding(53, "udp")]), max_size=2, unique=True),
    txt=st.sampled_from([(), ("role=a",)]),
    health=st.sampled_from([Health.PASSING, Health.PASSING, Health.WARNING, Health.CRITICAL]),
    id_=st.sampled_from(["i0", "i1", "i2", "i3"]),
)
# one update: a few puts (an add, or a change of what the key held) and removals
steps = st.lists(st.lists(st.tuples(st.sampled_from(KEYS), st.none() | endpoints), min_size=1, max_size=3),
                 min_size=1, max_size=20)


def answers(index: ZoneIndex, names: list[str]) -> dict:
    """Every question's answer, records as sorted reprs (a rebuild lists records in another order)."""
    out = {}
    for name in names:
        for qtype in QTYPES:
            answer = index.lookup(name, qtype)
            out[name, qtype] = None if answer is None else (
                answer.rcode, sorted(map(repr, answer.answer)), sorted(map(repr, answer.authority)),
                sorted(map(repr, answer.additional)), index.answer_size(name, qtype))
    return out


def union_of_records(records: dict[str, EndpointRecord]) -> dict[str, set[Record]]:
    """What the zone must hold, straight from the endpoints: every live endpoint's records, by owner name."""
    owners: dict[str, set[Record]] = {}
    for record in records.values():
        if record.health != Health.CRITICAL:
            for rr in endpoint_records(record, CONFIG.zone, CONFIG.ttl):
                owners.setdefault(rr.name, set()).add(rr)
    return owners


def questions(*indexes: ZoneIndex) -> list[str]:
    names = {n for index in indexes for n in index.names()}
    names |= {n.partition(".")[2] for n in names} | {f"btnothing.{Z}", f"service.{Z}", f"addr.{Z}", "arpa"}
    return sorted(names)


def check_against_the_union(index: ZoneIndex, records: dict[str, EndpointRecord]) -> None:
    owners = union_of_records(records)
    apex = {Z, f"ns.{Z}"}
    for name, held in owners.items():
        for qtype in (PTR,) if name.endswith(".arpa") else (A, AAAA, TXT, PTR, SRV):
            got = index.lookup(name, qtype)
            if name in apex and qtype == A:  # ns.<zone> also has the server's own address
                held = held | {Record(f"ns.{Z}", A, CONFIG.ttl, "10.0.0.1")}
            assert set(got.answer) == {r for r in held if r.rtype == qtype}, (name, qtype)
    listed = set(index.names()) - apex
    assert listed == set(owners) - apex
    for name in questions(index):
        if name not in owners and name not in apex and index.in_zone(name):
            below = any(owner.endswith("." + name) for owner in owners.keys() | apex)
            assert (index.lookup(name, A).rcode == NXDOMAIN) != below, name


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_any_sequence_of_changes_answers_as_a_fresh_build_and_as_the_records_say(sequence):
    builder = ZoneBuilder(CONFIG)
    records: dict[str, EndpointRecord] = {}
    handed_out: list[tuple[ZoneIndex, dict]] = []
    for revision, step in enumerate(sequence, start=1):
        for key, endpoint in step:
            if endpoint is None:
                records.pop(key, None)
            else:
                records[key] = endpoint
        incremental = builder.update(dict(records), revision)
        fresh = ZoneIndex(records.values(), CONFIG, revision)
        names = questions(incremental, fresh)
        assert answers(incremental, names) == answers(fresh, names)
        check_against_the_union(incremental, records)
        for name in names:
            for qtype in (A, SRV, ANY):
                first = incremental.lookup(name, qtype).answer if incremental.in_zone(name) else ()
                for rotation in range(1, len(first)):
                    k = rotation % len(first)
                    assert incremental.lookup(name, qtype, rotation).answer == first[k:] + first[:k]
        handed_out.append((incremental, answers(incremental, names)))
    for index, seen in handed_out:  # every later update left them as they were
        assert answers(index, list({name for name, _ in seen})) == seen
