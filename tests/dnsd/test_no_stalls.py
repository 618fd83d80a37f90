"""No stalls (issue 13, point 4): honest queries sent in the middle of a burst of bad packets are answered. The
bound on what a bad packet costs is structural (``scan`` rejects before dnslib parses; see test_scan_cache.py);
here a running server shows it: no timed assert, only that every honest query gets its answer."""
from __future__ import annotations

import socket
import struct

import dns.message
import dns.rcode
import pytest

pytestmark = pytest.mark.service

Z = "berth.internal"
HEADER = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
BAD = [
    HEADER + b"\x01a" * 1900 + b"\x00\x00\x01\x00\x01",                        # thousands of labels
    HEADER[:10] + b"\x00\x04" + b"\x00\x00\x01\x00\x01" + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00" * 300,
    struct.pack("!HHHHHH", 0x4242, 0x0100, 400, 0, 0, 0) + b"\x01a\x00\x00\x01\x00\x01" * 400,  # many questions
]


def test_honest_queries_interleaved_with_a_burst_of_bad_packets_are_answered(start_dns, records_file):
    server = start_dns("--records", str(records_file), "--no-forward")
    target = ("127.0.0.1", server.port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as honest:
        honest.settimeout(10)  # a hang guard, not a speed target
        answered = []
        for round_ in range(20):
            for i in range(150):
                attacker.sendto(BAD[i % len(BAD)], target)
            query = dns.message.make_query(f"btweb{round_ % 2 + 1}.{Z}", "A")
            honest.sendto(query.to_wire(), target)
            reply = dns.message.from_wire(honest.recv(4096))
            assert reply.id == query.id
            answered.append(reply.answer[0][0].address)
        assert answered == ["10.89.0.11", "10.89.0.12"] * 10
        attacker.settimeout(10)
        formerr = dns.message.from_wire(attacker.recv(4096), ignore_trailing=True, question_only=True)
        assert formerr.rcode() == dns.rcode.FORMERR
