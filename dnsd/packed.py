"""The packed-answer cache: reply bytes (without their ID) by normalised question key, bounded by entries and by
bytes, oldest entry out first.

A plain ``dict`` underneath, so the UDP loop's hit costs one C-level ``get``; writes go through :meth:`put`, which
keeps the byte count. Entries are ``bytes`` or an iterator of rotated variants (multi-record answers).
"""
from __future__ import annotations

from collections import OrderedDict

ENTRY_OVERHEAD = 240  # dict slot, the key and value objects' headers, the order record: measured order of size


class PackedCache(dict):
    def __init__(self, max_entries: int = 100_000, max_bytes: int = 4 << 20) -> None:
        super().__init__()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._order: OrderedDict[bytes, int] = OrderedDict()  # key -> its accounted size, oldest first

    def put(self, key: bytes, entry: object, size: int) -> None:
        """Store ``entry`` (``size``: its reply bytes), evicting the oldest entries until both bounds hold."""
        cost = len(key) + size + ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        old = self._order.pop(key, None)
        if old is not None:
            self.bytes -= old
        while self._order and (self.bytes + cost > self.max_bytes or len(self._order) >= self.max_entries):
            evicted, evicted_cost = self._order.popitem(last=False)
            dict.pop(self, evicted, None)
            self.bytes -= evicted_cost
        dict.__setitem__(self, key, entry)
        self._order[key] = cost
        self.bytes += cost

    def clear(self) -> None:
        dict.clear(self)
        self._order.clear()
        self.bytes = 0
