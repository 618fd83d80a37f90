"""The sans-IO core without sockets: the packed-answer cache, its invalidation, and the wire edge."""
from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.rcode
import pytest

from discovery.model import EndpointRecord
from dnsd.cli import networks_of, parse_listen
from dnsd.responder import Responder
from dnsd.view import StaticView
from dnsd.wire import parse_query

from .conftest import sample_records

Z = "berth.internal"


def wire(name: str, rdtype: str = "A", qid: int = 1, **kwargs) -> bytes:
    query = dns.message.make_query(name, rdtype, **kwargs)
    query.id = qid
    return query.to_wire()


@pytest.fixture
def responder():
    return Responder(StaticView(sample_records()))


def test_cache_hit_changes_only_the_id(responder):
    first = responder.respond(wire(f"btweb1.{Z}", qid=100), "127.0.0.1")
    assert wire(f"btweb1.{Z}", qid=100)[2:] in responder.packed_udp  # lower case: its own key
    second = responder.respond(wire(f"btweb1.{Z}", qid=200), "127.0.0.1")
    assert second[:2] == struct.pack("!H", 200) and second[2:] == first[2:]


def test_each_spelling_of_a_name_keeps_its_own_case(responder):
    for spelling in (f"BTWEB1.{Z}", f"btweb1.{Z}", f"bTwEb1.{Z}", f"BTWEB1.{Z}"):
        reply = dns.message.from_wire(responder.respond(wire(spelling), "127.0.0.1"))
        assert reply.question[0].name.to_text() == spelling + "."
        assert reply.answer[0].name.to_text() == spelling + "."


def test_view_change_drops_every_packed_answer(responder):
    view = responder.view
    responder.respond(wire(f"btweb1.{Z}"), "127.0.0.1")
    view.put(EndpointRecord(id="c1/eth0", name="btweb1", addresses=("10.89.5.5",)))
    reply = dns.message.from_wire(responder.respond(wire(f"btweb1.{Z}"), "127.0.0.1"))
    assert reply.answer[0][0].address == "10.89.5.5"


def test_edns_size_is_part_of_the_cache_key(responder):
    small = dns.message.from_wire(responder.respond(wire(f"btmid.service.{Z}", use_edns=False), "127.0.0.1"))
    large = dns.message.from_wire(responder.respond(wire(f"btmid.service.{Z}", use_edns=0, payload=1232),
                                                    "127.0.0.1"))
    assert small.flags & dns.flags.TC and not large.flags & dns.flags.TC and len(large.answer[0]) == 50


def test_truncated_replies_are_valid_messages(responder):
    reply = dns.message.from_wire(responder.respond(wire(f"btbig.service.{Z}", use_edns=0, payload=1232),
                                                    "127.0.0.1"))
    assert reply.flags & dns.flags.TC and reply.flags & dns.flags.AA and reply.edns == 0


@pytest.mark.parametrize("packet, expected", [
    (b"", None),
    (b"\x12\x34", None),
    (struct.pack("!HHHHHH", 7, 0x8000, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01", None),  # a response: silence
    (struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x05abc", dns.rcode.FORMERR),
    (struct.pack("!HHHHHH", 7, 0x0100, 0, 0, 0, 0), dns.rcode.FORMERR),  # no question
    (struct.pack("!HHHHHH", 7, 0x2100, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01", dns.rcode.NOTIMP),  # UPDATE
])
def test_wire_edge(packet, expected):
    result = parse_query(packet, 1232)
    if expected is None:
        assert result is None
    else:
        assert isinstance(result, bytes) and result[:2] == packet[:2] and result[3] & 0xF == expected


def test_bad_version_is_badvers_with_our_version():
    query = dns.message.make_query(f"btweb1.{Z}", "A", use_edns=1)
    reply = dns.message.from_wire(parse_query(query.to_wire(), 1232))
    assert reply.rcode() == dns.rcode.BADVERS and reply.edns == 0


def test_listen_addresses_and_their_networks():
    assert parse_listen("10.88.0.1:53") == ("10.88.0.1", 53)
    assert parse_listen("[fd00::1]:5353") == ("fd00::1", 5353)
    assert parse_listen("127.0.0.1") == ("127.0.0.1", 53)
    links = [{"ifname": "btbr0", "addr_info": [{"family": "inet", "local": "10.88.0.1", "prefixlen": 16},
                                               {"family": "inet6", "local": "fd00::1", "prefixlen": 64}]},
             {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]}]
    assert networks_of(["10.88.0.1", "fd00::1"], links) == ["10.88.0.0/16", "fd00::/64"]
    with pytest.raises(SystemExit):
        parse_listen("nonsense:port")


def test_randomised_case_is_answered_from_the_cache_with_its_own_case(responder, monkeypatch):
    """0x20: after one query, every other spelling of the name is answered without parsing, echoing its case."""
    import random

    import dnsd.responder
    responder.respond(wire(f"btweb1.{Z}"), "127.0.0.1")

    def no_parsing(*_):
        raise AssertionError("parsed a query the cache should have answered")
    monkeypatch.setattr(dnsd.responder, "parse_query", no_parsing)
    rng = random.Random(4343)
    for qid in range(20):
        spelling = "".join(c.upper() if rng.random() < 0.5 else c for c in f"btweb1.{Z}")
        reply = dns.message.from_wire(responder.respond(wire(spelling, qid=qid), "127.0.0.1"))
        assert reply.id == qid and reply.question[0].name.to_text() == spelling + "."
        assert reply.answer[0].name.to_text() == spelling + "." and reply.answer[0][0].address == "10.89.0.11"


def test_first_spelling_does_not_leak_into_later_answers(responder):
    responder.respond(wire(f"BtWeB1.{Z}"), "127.0.0.1")
    reply = dns.message.from_wire(responder.respond(wire(f"btweb1.{Z}"), "127.0.0.1"))
    assert reply.question[0].name.to_text() == f"btweb1.{Z}." and reply.answer[0].name.to_text() == f"btweb1.{Z}."
