"""The ordered chain of handlers a question passes through (CoreDNS's lesson): zone → gate → cache → forward.

Each handler either answers (returns a result) or passes (returns None). None of them does I/O: forwarding ends
in a :class:`Forward` that the socket shell carries out and hands back to the responder.
"""
from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from dnslib import DNSHeader, DNSQuestion, DNSRecord, EDNS0, RR

from .acl import RecursionPolicy
from .names import ZoneIndex
from .records import AXFR, IXFR, NOERROR, NOTIMP, NXDOMAIN, OPT, REFUSED, SOA, Answer
from .wire import Query

UPSTREAM_UDP_SIZE = 1232
PARSED_FACTOR = 8  # a message parsed by dnslib takes several times its wire size in memory
IN_CLASSES = (1, 255)  # IN, ANY


@dataclass(frozen=True)
class Context:
    client: str
    index: ZoneIndex
    now: float


@dataclass(frozen=True)
class ZoneAnswer:
    """An authoritative answer; deterministic for its question, so its packed bytes may be cached."""

    answer: Answer


@dataclass(frozen=True)
class ErrorAnswer:
    rcode: int
    recursion_available: bool = False


@dataclass(frozen=True)
class UpstreamAnswer:
    message: DNSRecord
    age: int = 0


@dataclass
class Forward:
    """Work for the shell: send ``packet`` upstream, give the reply to ``Responder.complete``."""

    query: Query
    packet: bytes
    tcp: bool
    client: str = ""
    upstream_id: int = field(init=False)

    def __post_init__(self) -> None:
        self.upstream_id = int.from_bytes(self.packet[:2], "big")


Result = ZoneAnswer | ErrorAnswer | UpstreamAnswer | Forward


class Handler(Protocol):
    def handle(self, query: Query, ctx: Context) -> Result | None: ...


class ZoneHandler:
    """Answers everything inside the zone and PTR questions for known addresses."""

    def handle(self, query: Query, ctx: Context) -> Result | None:
        if query.qtype in (AXFR, IXFR):
            return ErrorAnswer(NOTIMP) if ctx.index.is_authoritative_for(query.name, query.qtype) else None
        if query.qclass not in IN_CLASSES:
            return ErrorAnswer(REFUSED) if ctx.index.in_zone(query.name) else None
        answer = ctx.index.lookup(query.name, query.qtype)
        return None if answer is None else ZoneAnswer(answer)


class RecursionGate:
    """Everything past this point is recursion: only allowed clients get it (BCP 140), others REFUSED."""

    def __init__(self, policy: RecursionPolicy, enabled: bool) -> None:
        self.policy = policy
        self.enabled = enabled

    def handle(self, query: Query, ctx: Context) -> Result | None:
        if not self.enabled or not self.policy.allows(ctx.client):
            return ErrorAnswer(REFUSED)
        return None


class UpstreamCache:
    """Upstream answers kept for their TTL (the smallest in the message, capped; for a negative answer also no
    longer than its SOA's minimum, RFC 2308 §5), served with aged TTLs; bounded by entries and by the answers'
    wire bytes, oldest out first. The clock comes in with each call."""

    def __init__(self, max_ttl: int = 300, max_entries: int = 10_000, max_bytes: int = 4 << 20) -> None:
        self.max_ttl = max_ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple[str, int, int], tuple[float, float, DNSRecord, int]] = OrderedDict()
        self._lock = threading.Lock()  # forward threads store while the loops read
        self.hits = self.misses = self.evictions = 0  # for the metrics (stats.py)

    def __len__(self) -> int:
        return len(self._entries)

    def handle(self, query: Query, ctx: Context) -> Result | None:
        key = (query.name, query.qtype, query.qclass)
        entry = self._entries.get(key)
        if entry is not None and ctx.now < entry[1]:
            with self._lock:
                self.hits += 1
            return UpstreamAnswer(entry[2], int(ctx.now - entry[0]))
        with self._lock:
            self.misses += 1
            if entry is not None:
                self._drop(key)  # expired
        return None

    def store(self, query: Query, message: DNSRecord, now: float, size: int = 512) -> None:
        rcode = message.header.rcode
        records = [rr for rr in (*message.rr, *message.auth, *message.ar) if rr.rtype != OPT]
        if rcode not in (NOERROR, NXDOMAIN) or not records:
            return
        ttl = min(min(rr.ttl for rr in records), self.max_ttl)
        if not message.rr:
            ttl = min([ttl] + [rr.rdata.times[4] for rr in message.auth if rr.rtype == SOA])
        if ttl <= 0:
            return
        cost = size * PARSED_FACTOR
        key = (query.name, query.qtype, query.qclass)
        with self._lock:
            self._drop(key)
            while self._entries and (self.bytes + cost > self.max_bytes or len(self._entries) >= self.max_entries):
                self._drop(next(iter(self._entries)))
                self.evictions += 1
            if cost <= self.max_bytes:
                self._entries[key] = (now, now + ttl, message, cost)
                self.bytes += cost

    def _drop(self, key: tuple[str, int, int]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry[3]


class ForwardHandler:
    """The end of the chain: ask upstream (through the shell)."""

    def handle(self, query: Query, ctx: Context) -> Result | None:
        message = DNSRecord(DNSHeader(id=secrets.randbits(16), rd=1),
                            q=DNSQuestion(query.name + "." if query.name else ".", query.qtype, query.qclass))
        message.add_ar(EDNS0(udp_len=UPSTREAM_UDP_SIZE))
        return Forward(query, bytes(message.pack()), tcp=False, client=ctx.client)


def aged(records: list[RR], age: int) -> list[RR]:
    if not age:
        return list(records)
    return [RR(rr.rname, rr.rtype, rr.rclass, max(0, rr.ttl - age), rr.rdata) for rr in records]


def run_chain(handlers: list[Handler], query: Query, ctx: Context) -> Result:
    for handler in handlers:
        result = handler.handle(query, ctx)
        if result is not None:
            return result
    return ErrorAnswer(REFUSED)

