"""dnsd's counts summed over worker processes (dnsd/stats.py): a slow worker is skipped, never misread."""
from __future__ import annotations

import json
import threading
import time

from dnsd import stats


def worker(sock, answers: list[dict], delays: list[float]) -> threading.Thread:
    """A stand-in for a worker process's snapshot thread (a thread here) that may answer late."""
    def loop() -> None:
        with sock:
            for answer, delay in zip(answers, delays):
                request = sock.recv(16)
                if not request:
                    return
                time.sleep(delay)
                sock.send(request[:4] + json.dumps(answer).encode())
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def snap(queries: int) -> dict:
    return {"queries": {"A NOERROR": queries}, "caches": {}, "forward": {
        "buckets": [0] * (len(stats.FORWARD_BUCKETS) + 1), "sum": 0.0, "failures": 0, "overflow": 0}, "workers": 1}


def test_workers_are_summed_and_a_late_reply_is_never_taken_for_the_next_one(monkeypatch):
    monkeypatch.setattr(stats, "SNAPSHOT_DEADLINE", 0.3)
    hub = stats.Hub()
    hub.expected = 2
    fast_ours, fast_theirs = stats.snapshot_channel()
    slow_ours, slow_theirs = stats.snapshot_channel()
    hub.remote += [fast_ours, slow_ours]
    worker(fast_theirs, [snap(1), snap(2)], [0, 0])
    worker(slow_theirs, [snap(100), snap(200)], [0.6, 0])  # misses the first deadline
    first = hub.total()
    assert first["workers"] == 1 and first["queries"] == {"A NOERROR": 1}
    time.sleep(0.4)  # the slow worker's late answer to the first scrape is waiting now
    second = hub.total()
    assert second["workers"] == 2 and second["queries"] == {"A NOERROR": 2 + 200}  # not 100: that one was late
    slow_theirs.close()
    fast_theirs.close()
    time.sleep(0.1)
    assert hub.total()["workers"] == 0 and hub.remote == []  # gone workers are not asked again


def test_merge_adds_every_field():
    one, two = snap(3), snap(4)
    one["caches"] = {"upstream": {"hits": 1, "misses": 2, "evictions": 0, "entries": 5, "bytes": 10}}
    two["caches"] = {"upstream": {"hits": 2, "misses": 0, "evictions": 1, "entries": 1, "bytes": 7}}
    two["forward"]["buckets"][0] = 2
    merged = stats.merge([one, two])
    assert merged["queries"] == {"A NOERROR": 7} and merged["workers"] == 2
    assert merged["caches"]["upstream"] == {"hits": 3, "misses": 2, "evictions": 1, "entries": 6, "bytes": 17}
    assert merged["forward"]["buckets"][0] == 2
