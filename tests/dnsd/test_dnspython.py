"""The running ``berth dns`` as a resolver library (dnspython) and raw sockets see it."""
from __future__ import annotations

import random
import socket
import struct

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

Z = "berth.internal"


def ask(server, name: str, rdtype: str = "A", tcp: bool = False, **make_args) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **make_args)
    if tcp:
        return dns.query.tcp(query, server.host, port=server.port, timeout=3)
    return dns.query.udp(query, server.host, port=server.port, timeout=3)


def test_answer_is_authoritative_and_echoes_the_question(dns_module_server):
    reply = ask(dns_module_server, f"bTwEb2.{Z}")
    assert reply.flags & dns.flags.AA and reply.rcode() == dns.rcode.NOERROR
    assert reply.question[0].name.to_text() == f"bTwEb2.{Z}."
    assert [r.address for r in reply.answer[0]] == ["10.89.0.12"]
    assert reply.answer[0].ttl == 5


def test_negative_answers_carry_soa(dns_module_server):
    nx = ask(dns_module_server, f"btnothere.{Z}")
    nodata = ask(dns_module_server, f"btdb.{Z}", "MX")
    for reply, rcode in ((nx, dns.rcode.NXDOMAIN), (nodata, dns.rcode.NOERROR)):
        assert reply.rcode() == rcode and not reply.answer
        assert reply.authority[0].rdtype == dns.rdatatype.SOA and reply.authority[0].ttl == 5
        assert reply.authority[0][0].minimum == 5


def test_udp_without_edns_stays_within_512_bytes(dns_module_server):
    query = dns.message.make_query(f"btbig.service.{Z}", "A", use_edns=False)
    wire = dns.query.udp(query, dns_module_server.host, port=dns_module_server.port, timeout=3)
    assert wire.flags & dns.flags.TC and len(wire.to_wire()) <= 512


def test_too_big_even_for_edns_is_truncated_and_whole_over_tcp(dns_module_server):
    udp = ask(dns_module_server, f"btbig.service.{Z}", use_edns=0, payload=1232)
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = ask(dns_module_server, f"btbig.service.{Z}", tcp=True)
    assert not tcp.flags & dns.flags.TC and len(tcp.answer[0]) == 100


def test_small_edns_size_is_treated_as_512(dns_module_server):
    reply = ask(dns_module_server, f"btmid.service.{Z}", use_edns=0, payload=100)
    assert reply.flags & dns.flags.TC


def test_srv_and_txt_and_any(dns_module_server):
    srv = ask(dns_module_server, f"_btdb._tcp.service.{Z}", "SRV")
    assert [(r.port, r.target.to_text()) for r in srv.answer[0]] == [(5432, f"0a590014.addr.{Z}.")]
    assert [rrset.rdtype for rrset in srv.additional] == [dns.rdatatype.A]  # the target is one address
    txt = ask(dns_module_server, f"btdb.{Z}", "TXT")
    assert txt.answer[0][0].strings == (b"role=primary",)
    both = ask(dns_module_server, f"btdb.{Z}", "ANY")
    assert {rrset.rdtype for rrset in both.answer} == {dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.TXT}


def test_service_answers_rotate(dns_module_server):
    firsts = {ask(dns_module_server, f"btweb.service.{Z}").answer[0][0].address for _ in range(6)}
    assert firsts == {"10.89.0.11", "10.89.0.12"}


def test_zone_transfer_and_other_classes_are_not_served(dns_module_server):
    assert ask(dns_module_server, Z, "AXFR", tcp=True).rcode() == dns.rcode.NOTIMP
    query = dns.message.make_query(f"btweb1.{Z}", "A", rdclass="CH")
    reply = dns.query.udp(query, dns_module_server.host, port=dns_module_server.port, timeout=3)
    assert reply.rcode() == dns.rcode.REFUSED


def _framed(message: dns.message.Message) -> bytes:
    wire = message.to_wire()
    return struct.pack("!H", len(wire)) + wire


def _read_framed(sock: socket.socket) -> dns.message.Message:
    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            assert chunk, "server closed the connection early"
            data += chunk
        return data
    return dns.message.from_wire(exactly(struct.unpack("!H", exactly(2))[0]))


def test_tcp_serves_several_pipelined_queries_on_one_connection(dns_module_server):
    names = [f"btweb1.{Z}", f"btbig.service.{Z}", f"btnothere.{Z}", f"btdb.{Z}"]
    queries = [dns.message.make_query(name, "A") for name in names]
    with socket.create_connection((dns_module_server.host, dns_module_server.port), timeout=5) as sock:
        sock.sendall(b"".join(_framed(q) for q in queries))
        replies = {r.id: r for r in (_read_framed(sock) for _ in queries)}
        again = dns.message.make_query(f"btweb2.{Z}", "A")
        sock.sendall(_framed(again))
        later = _read_framed(sock)
    assert set(replies) == {q.id for q in queries}
    assert len(replies[queries[1].id].answer[0]) == 100
    assert replies[queries[2].id].rcode() == dns.rcode.NXDOMAIN
    assert later.id == again.id and later.answer[0][0].address == "10.89.0.12"


def test_idle_tcp_connection_is_closed_by_the_server(start_dns, records_file):
    server = start_dns("--records", str(records_file), "--no-forward", "--tcp-idle-timeout", "0.3")
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(_framed(dns.message.make_query(f"btweb1.{Z}", "A")))
        assert _read_framed(sock).answer
        assert sock.recv(10) == b""  # closed by the server once idle (the socket's own timeout is far longer)


def test_garbage_gets_formerr_or_silence(dns_module_server):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(10)  # the FORMERR must come (a hang guard, not a speed target)
    try:
        header = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0)
        sock.sendto(header + b"\x07broken", (dns_module_server.host, dns_module_server.port))
        reply = sock.recv(512)
        assert reply[:2] == b"\xbe\xef" and reply[3] & 0xF == dns.rcode.FORMERR
        sock.settimeout(1)  # for the silence below
        sock.sendto(b"\x00", (dns_module_server.host, dns_module_server.port))  # a runt: silence
        sock.sendto(struct.pack("!HHHHHH", 1, 0x8000, 1, 0, 0, 0), (dns_module_server.host,
                                                                    dns_module_server.port))  # a response
        with pytest.raises(socket.timeout):
            sock.recv(512)
    finally:
        sock.close()


def test_two_questions_get_formerr(dns_module_server):
    query = dns.message.make_query(f"btweb1.{Z}", "A")
    query.question.append(dns.message.make_query(f"btweb2.{Z}", "A").question[0])
    reply = dns.query.udp(query, dns_module_server.host, port=dns_module_server.port, timeout=3)
    assert reply.rcode() == dns.rcode.FORMERR


@pytest.mark.slow
def test_fuzzed_packets_never_stop_the_server(start_dns, records_file):
    """Thousands of random and mutated packets; afterwards the same process still answers correctly."""
    server = start_dns("--records", str(records_file), "--no-forward")
    rng = random.Random(20261123)
    seeds = [dns.message.make_query(name, rdtype, use_edns=edns).to_wire()
             for name in (f"btweb1.{Z}", f"_btweb._tcp.service.{Z}", f"btbig.service.{Z}", "example.com")
             for rdtype in ("A", "SRV", "ANY") for edns in (False, 0)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(4000):
            if i % 4 == 0:
                packet = rng.randbytes(rng.randrange(0, 80))
            else:
                packet = bytearray(rng.choice(seeds))
                for _ in range(rng.randrange(1, 6)):
                    packet[rng.randrange(len(packet))] = rng.randrange(256)
                if rng.random() < 0.3:
                    packet = packet[:rng.randrange(len(packet))]
                packet = bytes(packet)
            sock.sendto(packet, (server.host, server.port))
        with socket.create_connection((server.host, server.port), timeout=5) as tcp:
            probe = dns.message.make_query(f"btdb.{Z}", "A")
            tcp.sendall(b"".join(struct.pack("!H", 40) + rng.randbytes(40) for _ in range(50)) + _framed(probe))
            # FORMERR for some frames, silence for others; the probe's answer must come after them
            while (reply := _read_framed(tcp)).id != probe.id:
                pass
            assert reply.answer[0][0].address == "10.89.0.20"
    finally:
        sock.close()
    assert server.proc.poll() is None
    reply = None
    for _ in range(10):  # the server may still be working through the fuzz backlog
        try:
            reply = ask(server, f"btweb1.{Z}")
            break
        except dns.exception.Timeout:
            continue
    assert reply.answer[0][0].address == "10.89.0.11"
    assert "Traceback" not in _drain_stderr(server)


def _drain_stderr(server) -> str:
    import os
    os.set_blocking(server.proc.stderr.fileno(), False)
    try:
        return server.proc.stderr.read() or ""
    except (OSError, TypeError):
        return ""


QUESTIONS = [(f"btweb1.{Z}", "A"), (f"BTWEB1.{Z}", "A"), (f"btnothere.{Z}", "A"), (f"btdb.{Z}", "AAAA"),
             (f"_btdb._tcp.service.{Z}", "SRV"), (f"btbig.service.{Z}", "A"), ("example.com", "A"),
             ("11.0.89.10.in-addr.arpa", "PTR")]


def test_plain_and_batched_udp_loops_answer_alike(start_dns, records_file):
    """The recvmmsg loop is the default; the recvfrom loop is its fallback. Both, on misses and on hits."""
    batched = start_dns("--records", str(records_file), "--no-forward")
    plain = start_dns("--records", str(records_file), "--no-forward", "--no-batch")
    for _ in range(2):  # the first round fills the caches, the second is answered from them
        for name, rdtype in QUESTIONS:  # (none of them rotates: a rotating answer differs by design)
            one, other = ask(batched, name, rdtype), ask(plain, name, rdtype)
            one.id = other.id = 0
            assert one.to_wire() == other.to_wire(), name


def test_several_listeners_including_ipv6(start_dns, records_file):
    server = start_dns("--records", str(records_file), "--no-forward", "--listen", "[::1]:0")
    query = dns.message.make_query(f"BtDb.{Z}", "AAAA")
    for _ in range(2):
        reply = dns.query.udp(query, "::1", port=server.ports["::1"], timeout=3)
        assert [r.address for r in reply.answer[0]] == ["fd89::20"]
        assert reply.question[0].name.to_text() == f"BtDb.{Z}."
    tcp = dns.query.tcp(query, "::1", port=server.ports["::1"], timeout=3)
    assert [r.address for r in tcp.answer[0]] == ["fd89::20"]
    assert ask(server, f"btdb.{Z}", "AAAA").answer


def test_zone_and_ttls_are_configurable(start_dns, records_file):
    server = start_dns("--records", str(records_file), "--no-forward", "--zone", "BtCorp.Example.",
                       "--ttl", "30", "--negative-ttl", "60")
    found = ask(server, "btweb1.btcorp.example")
    assert found.answer[0].ttl == 30 and found.answer[0][0].address == "10.89.0.11"
    missing = ask(server, "btnothere.btcorp.example")
    assert missing.rcode() == dns.rcode.NXDOMAIN and missing.authority[0][0].minimum == 60
    assert missing.authority[0].name.to_text() == "btcorp.example."
    assert ask(server, f"btweb1.{Z}").rcode() == dns.rcode.REFUSED  # the default zone is not served any more
