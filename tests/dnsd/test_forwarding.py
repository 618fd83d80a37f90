"""Names outside the zone go upstream — here always a tiny DNS server the test runs on loopback."""
from __future__ import annotations

import socket

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from dnsd.upstream import Upstream, parse_resolv_conf
from dnsd.view import StaticView

from .conftest import InProcessServer, sample_records

Z = "berth.internal"


def ask(port: int, name: str, rdtype: str = "A", tcp: bool = False, **make_args) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **make_args)
    if tcp:
        return dns.query.tcp(query, "127.0.0.1", port=port, timeout=5)
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=5)


def test_forwarded_answer_and_recursion_available(start_dns, records_file, tiny_upstream):
    tiny_upstream.answers[("btfar.example", "A")] = ["btfar.example. 60 IN A 192.0.2.7"]
    server = start_dns("--records", str(records_file), "--upstream", tiny_upstream.address)
    reply = ask(server.port, "BtFar.Example")
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.RA and not reply.flags & dns.flags.AA
    assert reply.question[0].name.to_text() == "BtFar.Example."
    assert [r.address for r in reply.answer[0]] == ["192.0.2.7"]
    missing = ask(server.port, "btnowhere.example")
    assert missing.rcode() == dns.rcode.NXDOMAIN and missing.authority
    # zone names never leave the server
    assert ask(server.port, f"btweb1.{Z}").answer and f"btweb1.{Z}" not in tiny_upstream.udp_queries


def test_upstream_answers_are_cached_with_their_ttl(start_dns, records_file, tiny_upstream):
    tiny_upstream.answers[("btcached.example", "A")] = ["btcached.example. 300 IN A 192.0.2.8"]
    server = start_dns("--records", str(records_file), "--upstream", tiny_upstream.address)
    first, second = ask(server.port, "btcached.example"), ask(server.port, "btcached.example")
    assert first.answer[0][0].address == second.answer[0][0].address == "192.0.2.8"
    assert tiny_upstream.udp_queries.count("btcached.example") == 1
    assert 0 < second.answer[0].ttl <= 300


def test_truncated_upstream_answer_is_retried_over_tcp(start_dns, records_file, tiny_upstream):
    lines = [f"btmany.example. 60 IN A 192.0.2.{i}" for i in range(1, 41)]
    tiny_upstream.answers[("btmany.example", "A")] = lines
    tiny_upstream.truncate_udp.add("btmany.example")
    server = start_dns("--records", str(records_file), "--upstream", tiny_upstream.address)
    reply = ask(server.port, "btmany.example", use_edns=0, payload=1232)
    assert len(reply.answer[0]) == 40 and not reply.flags & dns.flags.TC
    assert "btmany.example" in tiny_upstream.tcp_queries
    small = ask(server.port, "btmany.example", use_edns=False)  # 40 A records do not fit 512 bytes
    assert small.flags & dns.flags.TC


def test_failover_past_a_silent_upstream(start_dns, records_file, tiny_upstream, silent_port):
    tiny_upstream.answers[("btfail.example", "A")] = ["btfail.example. 60 IN A 192.0.2.9"]
    server = start_dns("--records", str(records_file), "--upstream-timeout", "0.5",
                       "--upstream", f"127.0.0.1:{silent_port}", "--upstream", tiny_upstream.address)
    assert ask(server.port, "btfail.example").answer[0][0].address == "192.0.2.9"


def test_every_upstream_down_is_servfail(start_dns, records_file, silent_port):
    server = start_dns("--records", str(records_file), "--upstream-timeout", "0.3",
                       "--upstream", f"127.0.0.1:{silent_port}")
    assert ask(server.port, "btdown.example").rcode() == dns.rcode.SERVFAIL


def test_disallowed_clients_are_refused_recursion_but_get_zone_answers(start_dns, records_file, tiny_upstream):
    tiny_upstream.answers[("btfar.example", "A")] = ["btfar.example. 60 IN A 192.0.2.7"]
    server = start_dns("--records", str(records_file), "--upstream", tiny_upstream.address,
                       "--no-default-recursion", "--allow-recursion", "192.0.2.0/24")
    refused = ask(server.port, "btfar.example")
    assert refused.rcode() == dns.rcode.REFUSED and not refused.answer and not refused.flags & dns.flags.RA
    assert tiny_upstream.udp_queries == []
    assert ask(server.port, "btfar.example", tcp=True).rcode() == dns.rcode.REFUSED
    assert ask(server.port, f"btweb1.{Z}").answer[0][0].address == "10.89.0.11"


def test_unknown_reverse_names_go_upstream_known_ones_do_not(tiny_upstream):
    tiny_upstream.answers[("7.2.0.192.in-addr.arpa", "PTR")] = ["7.2.0.192.in-addr.arpa. 60 IN PTR bthost.example."]
    server = InProcessServer(StaticView(sample_records()), upstreams=(Upstream.parse(tiny_upstream.address),))
    try:
        assert ask(server.port, "7.2.0.192.in-addr.arpa", "PTR").answer[0][0].target.to_text() == "bthost.example."
        known = ask(server.port, "11.0.89.10.in-addr.arpa", "PTR")
        assert known.flags & dns.flags.AA and known.answer[0][0].target.to_text() == f"btweb1.{Z}."
        assert tiny_upstream.udp_queries == ["7.2.0.192.in-addr.arpa"]
    finally:
        server.stop()


def test_too_many_waiting_forwards_get_servfail_at_once(silent_port):
    server = InProcessServer(StaticView(sample_records()), upstreams=(Upstream("127.0.0.1", silent_port),),
                             upstream_timeout=3.0, max_pending_forwards=1)
    try:
        waiting = dns.message.make_query("btslow.example", "A")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(waiting.to_wire(), ("127.0.0.1", server.port))  # holds the only slot for 3 s
            shed = ask(server.port, "btshed.example")
            assert shed.rcode() == dns.rcode.SERVFAIL
            sock.settimeout(10)
            assert dns.message.from_wire(sock.recv(512)).rcode() == dns.rcode.SERVFAIL  # its upstream timed out
    finally:
        server.stop()


@pytest.mark.parametrize("text, expected", [
    ("nameserver 192.0.2.53\nsearch x\n# nameserver 192.0.2.1\nnameserver fe80::1%eth0\n",
     [Upstream("192.0.2.53"), Upstream("fe80::1")]),
    ("options ndots:5\nnameserver bogus\n", []),
])
def test_resolv_conf_nameservers(text, expected):
    assert parse_resolv_conf(text) == expected


def test_upstream_address_forms():
    assert Upstream.parse("192.0.2.1:5353") == Upstream("192.0.2.1", 5353)
    assert Upstream.parse("[2001:db8::1]:5353") == Upstream("2001:db8::1", 5353)
    assert Upstream.parse("2001:db8::1") == Upstream("2001:db8::1", 53)


def _upstream_reply(name: str, zone_lines: list[str], rcode: int = 0, authority: list[str] = ()):
    from dnslib import RR, DNSRecord
    message = DNSRecord.question(name, "A").reply()
    message.header.rcode = rcode
    for line in zone_lines:
        message.add_answer(*RR.fromZone(line))
    for line in authority:
        message.add_auth(*RR.fromZone(line))
    return message


def test_upstream_cache_keeps_answers_for_their_ttl_and_negatives_for_the_soa_minimum():
    from dnsd.chain import Context, UpstreamCache
    from dnsd.names import ZoneConfig, ZoneIndex
    from dnsd.wire import parse_query

    cache = UpstreamCache()
    index = ZoneIndex([], ZoneConfig(), 1)
    positive = parse_query(dns.message.make_query("btpos.example", "A").to_wire(), 1232)
    negative = parse_query(dns.message.make_query("btneg.example", "A").to_wire(), 1232)
    cache.store(positive, _upstream_reply("btpos.example", ["btpos.example. 40 IN A 192.0.2.1"]), now=100.0)
    cache.store(negative, _upstream_reply("btneg.example", [], rcode=3,
                                          authority=["example. 60 IN SOA ns.example. h.example. 1 2 3 4 30"]),
                now=100.0)
    assert cache.handle(positive, Context("127.0.0.1", index, 139.0)).age == 39
    assert cache.handle(positive, Context("127.0.0.1", index, 140.0)) is None
    assert cache.handle(negative, Context("127.0.0.1", index, 129.0)) is not None
    assert cache.handle(negative, Context("127.0.0.1", index, 130.0)) is None
