"""The packed-answer cache: reply bytes (without their ID) by normalised question key, bounded by entries and by
bytes, oldest entry out first.

A plain ``dict`` underneath, so the UDP loop's hit costs one C-level ``get``; writes go through :meth:`put`, which
keeps the byte count. Entries are ``bytes`` or an iterator of rotated variants (multi-record answers).
"""
from __future__ import annotations

from collections import OrderedDict

from .scan import CLASSIC_UDP_LIMIT, udp_size_of, with_udp_size
from .stats import HitCounter, Kinds

ENTRY_OVERHEAD = 480  # per entry beyond its key and reply bytes, measured under churn: three dict slots, the
# objects' headers, the order list's node, and the slack of tables sized for the peak with deleted slots in them
# (tests/dnsd/test_packed_memory.py holds the cache to its byte bound by tracemalloc)


class PackedCache(dict):
    def __init__(self, max_entries: int = 100_000, max_bytes: int = 4 << 20) -> None:
        super().__init__()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._order: OrderedDict[bytes, int] = OrderedDict()  # key -> its accounted size, oldest first
        self.full_lengths: dict[bytes, int] = {}  # EDNS key at size 0 -> length of its untruncated reply
        # for the metrics (stats.py): each entry's (qtype, rcode) slot, the loops' hit counters, evictions
        self.kinds: dict[bytes, int] = {}
        self.kinds_table = Kinds()
        self.hit_counters: list[HitCounter] = []
        self.evictions = 0

    def new_hit_counter(self) -> HitCounter:
        """A counter for one serving thread: ``counter[kinds.get(key, 0)] += 1`` on each hit."""
        counter = HitCounter()
        self.hit_counters.append(counter)
        return counter

    def size_class(self, key: bytes, server_udp_size: int) -> bytes:
        """For an EDNS key: the key of the reply class its size falls in once the full reply's length is known
        (the server's size when the reply fits, 512 when it is truncated: the same bytes for every size in the
        class); else the key as it is."""
        full = self.full_lengths.get(with_udp_size(key, 0))
        if full is None:
            return key
        return with_udp_size(key, server_udp_size if udp_size_of(key) >= full else CLASSIC_UDP_LIMIT)

    def learn_length(self, key: bytes, full: int) -> None:
        if len(self.full_lengths) >= self.max_entries:
            self.full_lengths.clear()
        self.full_lengths[with_udp_size(key, 0)] = full

    def put(self, key: bytes, entry: object, size: int, kind: int = 0) -> None:
        """Store ``entry`` (``size``: its reply bytes; ``kind``: its slot in ``kinds_table``), evicting the oldest
        entries until both bounds hold."""
        cost = len(key) + size + ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        old = self._order.pop(key, None)
        if old is not None:
            self.bytes -= old
        while self._order and (self.bytes + cost > self.max_bytes or len(self._order) >= self.max_entries):
            evicted, evicted_cost = self._order.popitem(last=False)
            dict.pop(self, evicted, None)
            self.kinds.pop(evicted, None)
            self.bytes -= evicted_cost
            self.evictions += 1
        self.kinds[key] = kind
        dict.__setitem__(self, key, entry)
        self._order[key] = cost
        self.bytes += cost

    def clear(self) -> None:
        dict.clear(self)
        self._order.clear()
        self.kinds.clear()
        self.full_lengths.clear()
        self.bytes = 0
