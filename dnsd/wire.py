"""The wire format at the edge: bytes → a checked query, answers → bytes (with dnslib), truncation, EDNS0.

Only the slow path comes here, and only past ``scan``'s bounded checks; a repeated question is answered from
packed bytes without parsing (see ``packed.py``). Every way a packet can be wrong ends as FORMERR, NOTIMP, BADVERS or silence, never an exception.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable

from dnslib import AAAA as DnsAAAA
from dnslib import A as DnsA
from dnslib import DNSHeader, DNSLabel, DNSQuestion, DNSRecord, EDNS0, NS as DnsNS, PTR as DnsPTR, RR
from dnslib import SOA as DnsSOA, SRV as DnsSRV, TXT as DnsTXT

from .records import A, AAAA, BADVERS, FORMERR, NS, OPT, PTR, SOA, SRV, TXT, Record
from .scan import Scanned, scan

CLASSIC_UDP_LIMIT = 512  # RFC 1035 §4.2.1, when the query carries no EDNS
QR_BIT = 0x80


@dataclass(frozen=True)
class Query:
    """A query that passed every check: one question, known opcode, EDNS (if any) understood."""

    id: int
    rd: bool
    cd: bool
    qname: DNSLabel          # as received: its case is echoed (RFC 4343)
    name: str                # normalised: lower-case, no trailing dot
    qtype: int
    qclass: int
    edns_size: int | None    # the client's EDNS UDP payload size, None without EDNS
    do: bool = False

    def udp_limit(self, server_max: int) -> int:
        if self.edns_size is None:
            return CLASSIC_UDP_LIMIT
        return max(CLASSIC_UDP_LIMIT, min(self.edns_size, server_max))


def header_only(data: bytes, rcode: int) -> bytes | None:
    """A header-only error reply for a packet we cannot (or will not) parse; None when it was not a query."""
    if len(data) < 12 or data[2] & QR_BIT:
        return None
    flags = QR_BIT | (data[2] & 0x79)  # keep opcode and RD
    return struct.pack("!HBBHHHH", int.from_bytes(data[:2], "big"), flags, rcode & 0xF, 0, 0, 0, 0)


def parse_query(data: bytes, server_udp_size: int, scanned: Scanned | int | None = None) -> Query | bytes | None:
    """A checked query; or the bytes of an error reply; or None to stay silent (responses, runts). The bounded
    ``scan`` (done here unless the caller has) comes first: dnslib sees only packets that passed it."""
    if scanned is None:
        scanned = scan(data, server_udp_size)
    if scanned is None:
        return None
    if scanned.__class__ is not Scanned:
        return header_only(data, scanned)
    try:
        message = DNSRecord.parse(data)
    except Exception:  # dnslib raises several kinds on garbage; all mean the same here
        return header_only(data, FORMERR)
    if len(message.questions) != 1:
        return header_only(data, FORMERR)
    question = message.questions[0]
    opts = [rr for rr in message.ar if rr.rtype == OPT]
    if len(opts) > 1 or any(rr.rtype == OPT for rr in (*message.rr, *message.auth)):
        return header_only(data, FORMERR)
    if question.qtype == OPT:
        return header_only(data, FORMERR)
    edns_size = None
    do = False
    if opts:
        opt = opts[0]
        if opt.rname.label != ():
            return header_only(data, FORMERR)
        version = (opt.ttl >> 16) & 0xFF
        if version != 0:
            return bad_version(message, server_udp_size)
        edns_size = opt.rclass
        do = bool(opt.ttl & 0x8000)
    h = message.header
    try:
        name = str(question.qname).rstrip(".").lower()
    except Exception:
        return header_only(data, FORMERR)
    return Query(id=h.id, rd=bool(h.rd), cd=bool(h.bitmap & 0x0010), qname=question.qname, name=name,
                 qtype=question.qtype, qclass=question.qclass, edns_size=edns_size, do=do)


def bad_version(message: DNSRecord, server_udp_size: int) -> bytes:
    """RFC 6891 §6.1.3: an unknown EDNS version gets BADVERS and an OPT with the version we speak (0)."""
    reply = DNSRecord(DNSHeader(id=message.header.id, qr=1, rd=message.header.rd, rcode=BADVERS & 0xF))
    reply.add_ar(EDNS0(udp_len=server_udp_size, ext_rcode=BADVERS >> 4, version=0))
    return bytes(reply.pack())


def to_rr(record: Record, owner: DNSLabel | str) -> RR:
    rtype, data = record.rtype, record.rdata
    if rtype == A:
        rdata = DnsA(data)
    elif rtype == AAAA:
        rdata = DnsAAAA(data)
    elif rtype == PTR:
        rdata = DnsPTR(data + ".")
    elif rtype == NS:
        rdata = DnsNS(data + ".")
    elif rtype == SRV:
        rdata = DnsSRV(data.priority, data.weight, data.port, data.target + ".")
    elif rtype == SOA:
        rdata = DnsSOA(data.mname + ".", data.rname + ".",
                       (data.serial, data.refresh, data.retry, data.expire, data.minimum))
    elif rtype == TXT:
        rdata = DnsTXT([chunk for text in data for chunk in _txt_chunks(text)])
    else:  # pragma: no cover - the name scheme makes no other types
        raise ValueError(f"cannot encode type {rtype}")
    return RR(owner, rtype, ttl=record.ttl, rdata=rdata)


def _txt_chunks(text: str) -> Iterable[bytes]:
    raw = text.encode()
    return [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]


def owner_for(record: Record, query: Query) -> DNSLabel | str:
    """The question's own spelling for records owned by the question name; the canonical name otherwise."""
    return query.qname if record.name == query.name else record.name + "."


def reply_header(query: Query, rcode: int, aa: bool, ra: bool, tc: bool = False) -> DNSHeader:
    header = DNSHeader(id=query.id, qr=1, aa=int(aa), tc=int(tc), rd=int(query.rd), ra=int(ra), rcode=rcode & 0xF)
    if query.cd:
        header.bitmap |= 0x0010
    return header


def pack_reply(query: Query, rcode: int, aa: bool, ra: bool, sections: tuple[list, list, list],
               limit: int, server_udp_size: int) -> bytes:
    """Pack a reply; if it exceeds ``limit`` send TC with the question only (never a silently trimmed answer)."""
    return pack_reply_sized(query, rcode, aa, ra, sections, limit, server_udp_size)[0]


def pack_reply_sized(query: Query, rcode: int, aa: bool, ra: bool, sections: tuple[list, list, list],
                     limit: int, server_udp_size: int) -> tuple[bytes, int]:
    """:func:`pack_reply`, and the length of the full reply (what decides truncation at any other limit)."""
    reply = DNSRecord(reply_header(query, rcode, aa, ra), q=DNSQuestion(query.qname, query.qtype, query.qclass))
    answer, authority, additional = sections
    reply.rr.extend(answer)
    reply.auth.extend(authority)
    reply.ar.extend(additional)
    if query.edns_size is not None:
        reply.add_ar(EDNS0(udp_len=server_udp_size))
    packed = bytes(reply.pack())
    if len(packed) <= limit:
        return packed, len(packed)
    return truncated(query, rcode, aa, ra, server_udp_size), len(packed)


def truncated(query: Query, rcode: int, aa: bool, ra: bool, server_udp_size: int) -> bytes:
    reply = DNSRecord(reply_header(query, rcode, aa, ra, tc=True),
                      q=DNSQuestion(query.qname, query.qtype, query.qclass))
    if query.edns_size is not None:
        reply.add_ar(EDNS0(udp_len=server_udp_size))
    return bytes(reply.pack())


def simple_reply(query: Query, rcode: int, ra: bool, server_udp_size: int) -> bytes:
    """An error reply that echoes the question (REFUSED, NOTIMP, SERVFAIL)."""
    return pack_reply(query, rcode, False, ra, ([], [], []), 65535, server_udp_size)
