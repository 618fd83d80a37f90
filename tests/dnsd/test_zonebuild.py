"""The zone kept current change by change (dnsd/zonebuild.py) answers exactly as one built afresh, and never
alters an index already handed out."""
from __future__ import annotations

import dataclasses
import random

from discovery.model import EndpointRecord, Health, PortBinding
from dnsd.names import ZoneConfig, ZoneIndex
from dnsd.records import A, ANY, PTR, SRV
from dnsd.zonebuild import ZoneBuilder

from .conftest import sample_records

Z = "berth.internal"


def answers(index: ZoneIndex, names: list[str]) -> dict:
    out = {}
    for name in names:
        for qtype in (A, SRV, ANY, PTR):
            answer = index.lookup(name, qtype)
            out[name, qtype] = None if answer is None else (
                answer.rcode, sorted(map(repr, answer.answer)), sorted(map(repr, answer.additional)))
    return out


def every_name(*indexes: ZoneIndex) -> list[str]:
    names = {n for index in indexes for n in index.names()}
    names |= {n.partition(".")[2] for n in names} | {f"btnothing.{Z}", f"service.{Z}", f"addr.{Z}"}
    return sorted(names)


def test_changes_applied_one_by_one_answer_as_a_fresh_build():
    rng = random.Random(13)
    records = {f"k{i}": r for i, r in enumerate(sample_records()[:40])}
    builder = ZoneBuilder(ZoneConfig())
    revision = 1
    builder.update(records, revision)
    for step in range(60):
        key = rng.choice(sorted(records))
        action = rng.choice(["move", "sick", "drop", "add", "share"])
        if action == "move":
            records[key] = dataclasses.replace(records[key], addresses=(f"10.77.{step}.1",))
        elif action == "sick":
            records[key] = dataclasses.replace(records[key], health=Health.CRITICAL)
        elif action == "drop" and len(records) > 5:
            del records[key]
        elif action == "share":  # a second instance on another one's address and port
            other = records[key]
            records[f"s{step}"] = dataclasses.replace(other, id=f"share{step}", name=f"btshare{step}")
        else:
            records[f"n{step}"] = EndpointRecord(id=f"new{step}", name=f"btnew{step}", service="btweb",
                                                 addresses=(f"10.78.0.{step + 1}",), ports=(PortBinding(8080),))
        revision += 1
        incremental = builder.update(dict(records), revision)
        fresh = ZoneIndex(records.values(), ZoneConfig(), revision)
        names = every_name(incremental, fresh)
        assert answers(incremental, names) == answers(fresh, names), f"step {step}: {action} {key}"


def test_an_index_handed_out_is_never_changed_by_later_updates():
    records = {f"k{i}": r for i, r in enumerate(sample_records())}
    builder = ZoneBuilder(ZoneConfig())
    first = builder.update(records, 1)
    before = answers(first, every_name(first))
    changed = dict(records)
    changed["k0"] = dataclasses.replace(records["k0"], addresses=("10.99.0.1",))
    del changed["k1"]
    second = builder.update(changed, 2)
    assert answers(first, every_name(first)) == before
    assert first.lookup(f"btweb1.{Z}", A).answer[0].rdata == "10.89.0.11"
    assert second.lookup(f"btweb1.{Z}", A).answer[0].rdata == "10.99.0.1"
    assert first.soa.rdata.serial == 1 and second.soa.rdata.serial == 2


def test_an_update_that_fails_half_way_leaves_the_next_one_whole():
    records = {f"k{i}": r for i, r in enumerate(sample_records())}
    builder = ZoneBuilder(ZoneConfig())
    builder.update(records, 1)
    broken = dataclasses.replace(records["k1"], addresses=("10.89.0.99",))
    object.__setattr__(broken, "addresses", ("not an address",))  # past the record's own validation
    changed = dict(records, k0=dataclasses.replace(records["k0"], addresses=("10.99.0.1",)), k1=broken)
    try:
        builder.update(changed, 2)
    except ValueError:
        pass
    else:
        raise AssertionError("an address that is none was indexed")
    del changed["k1"]
    after = builder.update(changed, 3)
    fresh = ZoneIndex(changed.values(), ZoneConfig(), 3)
    names = every_name(after, fresh)
    assert answers(after, names) == answers(fresh, names)
