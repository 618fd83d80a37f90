"""The sans-IO core: request bytes in, reply bytes (or a :class:`Forward` to carry out) out.

The fast path is a dict lookup: packed replies keyed by the normalised question (``scan``: RD/CD, lower-cased
name, type, class, clamped EDNS size, DO). Most clients' requests are byte for byte that key after the ID, so a hit
only patches the ID — no parsing. Others (another case, 0x20 randomisation; EDNS options such as cookies; another
EDNS size) find their entry through the scanned key and get their own spelling patched back over the question,
which the answers' owner names point at (RFC 4343). Junk never becomes a key: requests with trailing bytes may be
answered from the cache but never fill it. The cache holds authoritative answers only (the same for every client), is bounded by
entries and bytes (``packed``), and is dropped whenever the view's revision moves.
"""
from __future__ import annotations

import itertools
import threading
import time
from typing import Callable

from dnslib import DNSRecord

from .acl import RecursionPolicy
from .chain import (Context, ErrorAnswer, Forward, ForwardHandler, RecursionGate, UpstreamAnswer, UpstreamCache,
                    ZoneAnswer, ZoneHandler, aged, run_chain)
from .names import ZoneConfig, ZoneIndex
from .packed import PackedCache
from .records import OPT, SERVFAIL
from .view import RecordView
from .scan import Scanned, has_opt, scan
from .stats import ResponderStats
from .wire import Query, owner_for, pack_reply, pack_reply_sized, parse_query, simple_reply, to_rr
from .zonebuild import ZoneBuilder

TC_BIT = 0x02
MAX_ROTATIONS = 8  # multi-record answers are handed out in up to this many rotated orders


class Responder:
    def __init__(self, view: RecordView, zone: ZoneConfig = ZoneConfig(),
                 policy: RecursionPolicy = RecursionPolicy(), forwarding: bool = False,
                 clock: Callable[[], float] = time.monotonic, server_udp_size: int = 1232,
                 max_packed: int = 100_000, cache_bytes: int = 4 << 20) -> None:
        self.view = view
        self.zone = zone
        self.clock = clock
        self.server_udp_size = server_udp_size
        self.forwarding = forwarding
        self.packed_udp = PackedCache(max_packed, cache_bytes)  # each transport its own bounds
        self.packed_tcp = PackedCache(max_packed, cache_bytes)
        self.upstream_cache = UpstreamCache(max_bytes=cache_bytes)
        self.stats = ResponderStats()
        self._hits = {False: self.packed_udp.new_hit_counter(), True: self.packed_tcp.new_hit_counter()}
        self.chain = [ZoneHandler(), RecursionGate(policy, forwarding), self.upstream_cache, ForwardHandler()]
        self.revision: int | None = None
        self.index: ZoneIndex
        self._builder = ZoneBuilder(zone)  # each revision's index made from the last, changed endpoints only
        self._lock = threading.Lock()  # orders rebuilds against cache fills from other threads
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the zone when the view moved on; drop every packed answer made from the old one."""
        with self._lock:
            revision = self.view.revision
            if revision == self.revision:
                return
            self.index = self._builder.update(self.view.records(), revision)
            self.revision = revision
            self.packed_udp.clear()
            self.packed_tcp.clear()

    def respond(self, data: bytes, client: str, tcp: bool = False) -> bytes | Forward | None:
        if self.view.revision != self.revision:
            self.refresh()
        packed = self.packed_tcp if tcp else self.packed_udp
        key = data[2:]
        hit = packed.get(key)
        if hit is not None:
            self._hits[tcp][packed.kinds.get(key, 0)] += 1  # one thread per transport calls this (the TCP loop)
            return data[:2] + (hit if hit.__class__ is bytes else next(hit))
        return self.respond_slowly(data, client, tcp)

    def respond_slowly(self, data: bytes, client: str, tcp: bool) -> bytes | Forward | None:
        scanned = scan(data, self.server_udp_size, tcp)
        key = scanned.key if scanned.__class__ is Scanned else None
        packed = self.packed_tcp if tcp else self.packed_udp
        sized = key is not None and not tcp and has_opt(key)
        if key is not None:
            if sized:
                key = packed.size_class(key, self.server_udp_size)
            if key != data[2:]:
                hit = packed.get(key)
                if hit is not None:
                    self._count_hit(packed, key, tcp)
                    reply = hit if hit.__class__ is bytes else next(hit)
                    end = scanned.name_end
                    return data[:2] + reply[:10] + data[12:end] + reply[end - 2:]
        self.stats.packed_lookup("tcp" if tcp else "udp", False)
        query = parse_query(data, self.server_udp_size, scanned)
        if not isinstance(query, Query):
            return self._counted(None, query)
        return self._counted(query.qtype, self._answer(query, scanned, key, packed, sized, tcp, client))

    def _count_hit(self, packed: PackedCache, key: bytes, tcp: bool) -> None:
        self.stats.packed_lookup("tcp" if tcp else "udp", True)
        self.stats.reply(*packed.kinds_table.labels[packed.kinds.get(key, 0)])

    def _counted(self, qtype: int | None, reply):
        """Count a reply made off the fast path by its type and rcode (a Forward is counted when it completes)."""
        if reply.__class__ is bytes and len(reply) >= 4:
            self.stats.reply(qtype, reply[3] & 0xF)
        return reply

    def _answer(self, query: Query, scanned, key, packed: PackedCache, sized: bool, tcp: bool,
                client: str) -> bytes | Forward | None:
        index = self.index
        result = run_chain(self.chain, query, Context(client, index, self.clock()))
        limit = 65535 if tcp else query.udp_limit(self.server_udp_size)
        if isinstance(result, Forward):
            result.tcp = tcp
            return result
        if isinstance(result, ErrorAnswer):
            return simple_reply(query, result.rcode, result.recursion_available, self.server_udp_size)
        if isinstance(result, UpstreamAnswer):
            return self._pack_upstream(query, result.message, result.age, limit)
        reply, full = self._pack_zone(query, index, result, limit)
        if key is not None and not scanned.trailing:
            if sized:
                packed.learn_length(key, full)
                key = packed.size_class(key, self.server_udp_size)
            self._remember(key, scanned.name_end, tcp, query, index, result, limit, reply)
        return reply

    def _pack_zone(self, query: Query, index: ZoneIndex, result: ZoneAnswer, limit: int) -> tuple[bytes, int]:
        a = result.answer
        sections = ([to_rr(r, owner_for(r, query)) for r in a.answer],
                    [to_rr(r, owner_for(r, query)) for r in a.authority],
                    [to_rr(r, owner_for(r, query)) for r in a.additional])
        return pack_reply_sized(query, a.rcode, a.authoritative, self.forwarding, sections, limit,
                                self.server_udp_size)

    def _remember(self, key: bytes, end: int, tcp: bool, query: Query, index: ZoneIndex,
                  result: ZoneAnswer, limit: int, reply: bytes) -> None:
        lowered = key[10:end - 2]

        def stored(packed: bytes) -> bytes | None:
            if packed[12:end].lower() != lowered:
                return None  # the name was not packed back as it came: keep it out of the cache
            return packed[2:12] + lowered + packed[end:]

        count = len(result.answer.answer)
        if count < 2 or reply[2] & TC_BIT:  # one order only; a truncated reply is the same for every order
            entry: object = stored(reply)
            if entry is None:
                return
            size = len(entry)
        else:
            variants = [stored(reply)]
            for rotation in range(1, min(count, MAX_ROTATIONS)):
                rotated = ZoneAnswer(index.lookup(query.name, query.qtype, rotation))
                variants.append(stored(self._pack_zone(query, index, rotated, limit)[0]))
            if None in variants:
                return
            size = sum(map(len, variants))
            entry = itertools.cycle(variants)
            next(entry)  # the caller is sending variant 0 now
        packed = self.packed_tcp if tcp else self.packed_udp
        with self._lock:
            if index.revision != self.revision:
                return  # made from a view that has moved on
            packed.put(key, entry, size, packed.kinds_table.slot(query.qtype, reply[3] & 0xF))

    def _pack_upstream(self, query: Query, message: DNSRecord, age: int, limit: int) -> bytes:
        sections = (aged(message.rr, age), aged(message.auth, age),
                    aged([rr for rr in message.ar if rr.rtype != OPT], age))
        return pack_reply(query, message.header.rcode, False, True, sections, limit, self.server_udp_size)

    def complete(self, forward: Forward, reply: bytes | None) -> bytes:
        """The client's reply once the shell has asked upstream (``reply`` None: every upstream failed)."""
        query = forward.query
        limit = 65535 if forward.tcp else query.udp_limit(self.server_udp_size)
        message = _matching_reply(reply, forward)
        if message is None:
            return self._counted(query.qtype, simple_reply(query, SERVFAIL, True, self.server_udp_size))
        self.upstream_cache.store(query, message, self.clock(), len(reply))
        return self._counted(query.qtype, self._pack_upstream(query, message, 0, limit))


def _matching_reply(reply: bytes | None, forward: Forward) -> DNSRecord | None:
    if reply is None:
        return None
    try:
        message = DNSRecord.parse(reply)
    except Exception:
        return None
    if message.header.id != forward.upstream_id or len(message.questions) != 1:
        return None
    question = message.questions[0]
    if str(question.qname).rstrip(".").lower() != forward.query.name or question.qtype != forward.query.qtype:
        return None
    return message
