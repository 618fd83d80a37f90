"""A bounded first look at a request, before any full parse: the structural limits that make a packet cheap to
reject, and the normalised cache key of a cacheable one.

Whatever a packet holds, this walks at most the question name (255 bytes, 127 labels, no pointers: the first name
of a message has nothing before it to point at) and a handful of further records, skipping their names without
following pointers. dnslib parses only what passed, so a burst of packets with thousands of labels or records
costs a few microseconds each (issue 13: such a burst used to take 2.5 ms a packet in dnslib and stalled answers).

The key is the question as it matters to the answer, never the raw bytes: the RD and CD flags (echoed), the name
lowered (its case is patched back from the request, RFC 4343), type and class, and for EDNS the UDP size clamped
to what the reply can use (over TCP, where it does not matter, always the server's own) plus the DO bit. Over UDP
the responder narrows the size further to the two classes that give different replies, fits or truncated
(``PackedCache.size_class``), so asking one big answer at 700 sizes packs it once. A request whose bytes already are that key (most clients' are) hits the
responder's dict without even this scan. Requests with other records or an OPT that is not plain get no key; those
with trailing bytes are answered from the cache when their question is there, and never put in it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .records import FORMERR, NOTIMP, OPT

MAX_NAME_WIRE = 255      # RFC 1035 §2.3.4
MAX_OTHER_RECORDS = 4    # answer + authority + additional in a query: OPT, a TSIG/SIG(0), a little slack
CLASSIC_UDP_LIMIT = 512
QR_BIT = 0x80


@dataclass(frozen=True, slots=True)
class Scanned:
    name_end: int            # just past the question name's root label
    key: bytes | None        # the normalised cache key; None: answer, but never cache
    trailing: bool = False   # bytes after the last record: the answer may come from the cache, never go in


def scan(data: bytes, server_udp_size: int, tcp: bool = False) -> Scanned | int | None:
    """:class:`Scanned`; an rcode (NOTIMP for other opcodes, FORMERR when the structure is wrong) for a header-only
    error reply; None for what gets no reply at all (runts, responses)."""
    size = len(data)
    if size < 12 or data[2] & QR_BIT:
        return None
    if data[2] & 0x78:
        return NOTIMP  # only QUERY; other opcodes give their sections other meanings
    if data[4:6] != b"\x00\x01":
        return FORMERR
    others = (data[6] << 8 | data[7]) + (data[8] << 8 | data[9]) + (data[10] << 8 | data[11])
    if others > MAX_OTHER_RECORDS:
        return FORMERR
    end = 12
    while True:
        if end >= size:
            return FORMERR
        length = data[end]
        if length == 0:
            break
        if length > 63:  # a pointer or an extended label type: neither belongs in the first name
            return FORMERR
        end += 1 + length
        if end - 12 >= MAX_NAME_WIRE:
            return FORMERR
    name_end = end + 1
    offset = name_end + 4
    if offset > size:
        return FORMERR
    opt = None
    for _ in range(others):
        owner = offset
        offset = _skip_name(data, offset)
        if offset < 0 or offset + 10 > size:
            return FORMERR
        rtype = data[offset] << 8 | data[offset + 1]
        rdlength = data[offset + 8] << 8 | data[offset + 9]
        if rtype == OPT:
            opt = (owner, offset)
        offset += 10 + rdlength
        if offset > size:
            return FORMERR
    trailing = offset < size
    key = None
    if (others == 0 or (others == 1 and opt is not None and data[6:10] == b"\x00\x00\x00\x00")):
        key = _key(data, name_end, opt, server_udp_size, tcp)
    return Scanned(name_end, key, trailing)


def has_opt(key: bytes) -> bool:
    return key[8] == 0 and key[9] == 1


def udp_size_of(key: bytes) -> int:
    return key[-8] << 8 | key[-7]


def with_udp_size(key: bytes, size: int) -> bytes:
    """The key of the same question with another EDNS UDP size (a key with an OPT only)."""
    return key[:-8] + size.to_bytes(2, "big") + key[-6:]


def _skip_name(data: bytes, offset: int) -> int:
    """Past a name without following its pointer; -1 when it runs off the end or over 255 bytes."""
    start, size = offset, len(data)
    while offset < size:
        length = data[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2 if offset + 2 <= size else -1
        if length > 63:
            return -1
        offset += 1 + length
        if offset - start >= MAX_NAME_WIRE:
            return -1
    return -1


def _key(data: bytes, name_end: int, opt: tuple[int, int] | None, server_udp_size: int,
         tcp: bool) -> bytes | None:
    flags = bytes((data[2] & 0x01, data[3] & 0x10))  # RD; CD (the opcode is QUERY, checked above)
    question = data[12:name_end].lower() + data[name_end:name_end + 4]
    if opt is None:
        return flags + b"\x00\x01\x00\x00\x00\x00\x00\x00" + question
    owner, fixed = opt
    if data[owner] != 0 or data[fixed + 4] != 0 or data[fixed + 5] != 0:
        return None  # an OPT not owned by the root, an extended rcode, or a version we answer with BADVERS
    requested = data[fixed + 2] << 8 | data[fixed + 3]
    clamped = server_udp_size if tcp else max(CLASSIC_UDP_LIMIT, min(requested, server_udp_size))
    do = data[fixed + 6] & 0x80
    return (flags + b"\x00\x01\x00\x00\x00\x00\x00\x01" + question + b"\x00\x00\x29"
            + clamped.to_bytes(2, "big") + b"\x00\x00" + bytes((do, 0)) + b"\x00\x00")
