"""The bounded first look (``scan``) and the bounded cache (issue 13, points 3 and 4), without sockets."""
from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import pytest

from dnsd import wire
from dnsd.packed import PackedCache
from dnsd.records import FORMERR, NOTIMP
from dnsd.responder import Responder
from dnsd.scan import Scanned, scan
from dnsd.view import StaticView

from .conftest import sample_records

Z = "berth.internal"


def wire_query(name: str, rdtype: str = "A", **kwargs) -> bytes:
    return dns.message.make_query(name, rdtype, **kwargs).to_wire()


def key(data: bytes) -> bytes | None:
    scanned = scan(data, 1232)
    assert isinstance(scanned, Scanned)
    return scanned.key


def test_key_is_the_normalised_question():
    base = key(wire_query(f"btweb1.{Z}", use_edns=0, payload=1232))
    assert base == wire_query(f"btweb1.{Z}", use_edns=0, payload=1232)[2:]  # most clients send the key itself
    assert key(wire_query(f"BtWeB1.{Z}", use_edns=0, payload=1232)) == base          # 0x20 case
    assert key(wire_query(f"btweb1.{Z}", use_edns=0, payload=4096)) == base          # clamped to what we send
    cookie = dns.edns.GenericOption(dns.edns.COOKIE, b"\x01" * 8)
    assert key(wire_query(f"btweb1.{Z}", use_edns=0, payload=1232, options=[cookie])) == base
    ad = dns.message.make_query(f"btweb1.{Z}", "A", use_edns=0, payload=1232)
    ad.flags |= dns.flags.AD
    assert key(ad.to_wire()) == base
    different = [wire_query(f"btweb1.{Z}", "AAAA", use_edns=0, payload=1232),
                 wire_query(f"btweb1.{Z}", use_edns=0, payload=1232, want_dnssec=True),
                 wire_query(f"btweb1.{Z}", use_edns=0, payload=800),
                 wire_query(f"btweb1.{Z}"),
                 wire_query(f"btweb1.{Z}", use_edns=0, payload=1232, flags=0)]
    assert len({key(d) for d in different} | {base}) == len(different) + 1


def test_trailing_bytes_are_seen_and_left_out_of_the_key():
    data = wire_query(f"btweb1.{Z}") + b"junk" * 10
    scanned = scan(data, 1232)
    assert scanned.trailing and scanned.key == key(wire_query(f"btweb1.{Z}"))


def test_structural_limits_are_checked_before_dnslib(monkeypatch):
    def no_dnslib(*args, **kwargs):
        raise AssertionError("dnslib was asked to parse a packet scan should have rejected")
    monkeypatch.setattr(wire.DNSRecord, "parse", no_dnslib)
    header = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0)
    too_many_labels = header + b"\x01a" * 2000 + b"\x00\x00\x01\x00\x01"
    too_long = header + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01"
    pointer_loop = header + b"\xc0\x0c\x00\x01\x00\x01"
    many_records = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 500) + b"\x00\x00\x01\x00\x01" + b"\x00" * 5500
    many_questions = struct.pack("!HHHHHH", 7, 0x0100, 300, 0, 0, 0) + b"\x00\x00\x01\x00\x01" * 300
    runaway_rdata = header[:10] + b"\x00\x01" + b"\x00\x00\x01\x00\x01" + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\xff\xff"
    for packet in (too_many_labels, too_long, pointer_loop, many_records, many_questions, runaway_rdata):
        assert scan(packet, 1232) == FORMERR
        reply = wire.parse_query(packet, 1232)
        assert reply[:2] == b"\x00\x07" and reply[3] & 0xF == FORMERR
    update = struct.pack("!HHHHHH", 7, 0x2800, 1, 0, 40, 0)  # opcode UPDATE: NOTIMP, whatever its sections
    assert scan(update, 1232) == NOTIMP


def test_scan_is_quiet_for_responses_and_runts():
    assert scan(b"\x00" * 11, 1232) is None
    response = bytearray(wire_query(f"btweb1.{Z}"))
    response[2] |= 0x80
    assert scan(bytes(response), 1232) is None


def test_packed_cache_is_bounded_by_bytes_and_entries_oldest_first():
    cache = PackedCache(max_entries=1000, max_bytes=10_000)
    for i in range(200):
        cache.put(b"k%03d" % i, b"x" * 100, 100)
    assert cache.bytes <= 10_000 and len(cache) < 200
    assert b"k199" in cache and b"k000" not in cache
    few = PackedCache(max_entries=3, max_bytes=1 << 20)
    for i in range(5):
        few.put(b"%d" % i, b"v", 1)
    assert sorted(few) == [b"2", b"3", b"4"]
    few.clear()
    assert few.bytes == 0 and not few
    few.put(b"huge", b"v" * 2_000_000, 2_000_000)  # larger than the whole budget: not kept
    assert not few


def test_packed_cache_counts_evictions_and_forgets_the_kind_of_what_it_dropped():
    few = PackedCache(max_entries=3, max_bytes=1 << 20)
    a_noerror = few.kinds_table.slot(1, 0)
    for i in range(5):
        few.put(b"%d" % i, b"v", 1, a_noerror)
    assert few.evictions == 2 and set(few.kinds) == {b"2", b"3", b"4"} and few.kinds[b"4"] == a_noerror
    assert few.kinds_table.slot(1, 0) == a_noerror and few.kinds_table.slot(28, 3) != a_noerror
    few.clear()
    assert not few.kinds and few.evictions == 2  # a counter: clearing on a view change is not an eviction


def test_responder_counts_hits_misses_and_replies_by_type_and_rcode():
    from dnsd.stats import snapshot
    responder = Responder(StaticView(sample_records()))
    for _ in range(3):
        responder.respond(wire_query(f"btweb1.{Z}"), "127.0.0.1")
    responder.respond(wire_query(f"btnothing.{Z}"), "127.0.0.1")
    snap = snapshot(responder, responder.stats)
    assert snap["queries"] == {"A NOERROR": 3, "A NXDOMAIN": 1}
    assert snap["caches"]["answers_udp"]["hits"] == 2 and snap["caches"]["answers_udp"]["misses"] == 2
    assert snap["caches"]["answers_udp"]["entries"] == 2


@pytest.fixture
def responder():
    return Responder(StaticView(sample_records()))


def test_junk_never_reaches_the_cache_but_is_answered(responder):
    for i in range(500):
        data = wire_query(f"btweb1.{Z}") + b"junk%d" % i
        reply = dns.message.from_wire(responder.respond(data, "127.0.0.1"), ignore_trailing=True)
        assert reply.answer[0][0].address == "10.89.0.11"
    assert len(responder.packed_udp) == 0 and responder.packed_udp.bytes == 0
    responder.respond(wire_query(f"btweb1.{Z}"), "127.0.0.1")  # the clean question fills the cache...
    assert len(responder.packed_udp) == 1
    junk = wire_query(f"btweb1.{Z}") + b"junk!"  # ...and junk behind it is answered from there
    assert dns.message.from_wire(responder.respond(junk, "127.0.0.1"), ignore_trailing=True).answer
    assert len(responder.packed_udp) == 1


def test_a_cached_answer_echoes_each_askers_spelling(responder):
    responder.respond(wire_query(f"btweb1.{Z}", use_edns=0, payload=1232), "127.0.0.1")
    assert len(responder.packed_udp) == 1
    mixed = dns.message.make_query(f"BTweb1.{Z}", "A", use_edns=0, payload=4096,
                                   options=[dns.edns.GenericOption(dns.edns.COOKIE, b"\x02" * 8)])
    reply = dns.message.from_wire(responder.respond(mixed.to_wire(), "127.0.0.1"))
    assert reply.id == mixed.id and reply.question[0].name.to_text() == f"BTweb1.{Z}."
    assert reply.answer[0].name.to_text() == f"BTweb1.{Z}." and reply.answer[0][0].address == "10.89.0.11"
    assert len(responder.packed_udp) == 1  # served from the one entry


def test_distinct_names_are_held_to_the_byte_budget():
    responder = Responder(StaticView(sample_records()), cache_bytes=64 << 10)
    for i in range(3000):
        responder.respond(wire_query(f"btnothing{i}.{Z}"), "127.0.0.1")
    assert 0 < responder.packed_udp.bytes <= 64 << 10 and len(responder.packed_udp) < 3000


def test_one_big_answer_asked_at_every_size_is_packed_once_per_reply_class(responder):
    """The UDP size only decides fits-or-truncated, so 721 sizes give two cache entries, not 721 packings."""
    name = f"_btbig._tcp.service.{Z}"
    replies = set()
    for size in range(512, 1233):
        query = dns.message.make_query(name, "SRV", use_edns=0, payload=size)
        reply = responder.respond(query.to_wire(), "127.0.0.1")
        replies.add(reply[2:])
    assert len(responder.packed_udp) <= 2 and len(responder.packed_udp.full_lengths) == 1
    assert all(dns.message.from_wire(b"\x00\x00" + r).flags & dns.flags.TC for r in replies)  # 100 SRV: too big
    small = dns.message.make_query(f"btweb.service.{Z}", "A", use_edns=0, payload=600)
    fits = dns.message.from_wire(responder.respond(small.to_wire(), "127.0.0.1"))
    assert not fits.flags & dns.flags.TC and len(fits.answer[0]) == 2
