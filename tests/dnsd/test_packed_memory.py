"""The packed-answer cache's byte bound is real memory: under churn (far more distinct answers than fit, the way
junk or a scan of many names fills it) what Python holds for the cache stays within its ``max_bytes``, measured
by tracemalloc, for small answers (where per-entry overhead dominates) and large ones."""
from __future__ import annotations

import os
import tracemalloc

import pytest

from dnsd.packed import PackedCache


@pytest.mark.parametrize("reply_bytes", [40, 60, 300, 1200])
def test_the_cache_holds_no_more_memory_than_its_byte_bound_under_churn(reply_bytes):
    bound = 1 << 20
    tracemalloc.start()
    try:
        cache = PackedCache(max_entries=100_000, max_bytes=bound)
        base = tracemalloc.get_traced_memory()[0]
        peak_held = 0
        for i in range(60_000 if reply_bytes < 300 else 15_000):
            cache.put(os.urandom(28), os.urandom(reply_bytes), reply_bytes, 1)
            if i % 1000 == 999:
                peak_held = max(peak_held, tracemalloc.get_traced_memory()[0] - base)
        assert cache.evictions > 0 and cache.bytes <= bound
        assert peak_held <= bound * 1.05, f"{peak_held} bytes held for a {bound}-byte cache ({len(cache)} entries)"
    finally:
        tracemalloc.stop()
