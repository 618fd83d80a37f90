"""The operations endpoint every daemon shares: metrics in Prometheus format, health, readiness, and bounds."""
from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import Counter

from store import ops
from tests.waiting import wait_until

pytestmark = pytest.mark.service  # starts HTTP servers; seconds (idle clients wait out the read deadline)

PROBES = Counter("berth_test_probes_total", "Probes counted by the ops endpoint's own test")


@pytest.fixture
def server():
    readiness = ops.Readiness()
    running = ops.serve_ops("127.0.0.1:0", readiness)
    try:
        yield running
    finally:
        running.stop()


def get(server, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_metrics_are_prometheus_text_with_this_processes_counters(server):
    PROBES.inc(3)
    code, headers, body = get(server, "/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert "# TYPE berth_test_probes_total counter" in text and "berth_test_probes_total 3.0" in text
    assert "process_resident_memory_bytes" in text  # process metrics come with the default registry


def test_health_answers_and_readiness_reports_each_check(server):
    assert get(server, "/health")[:1] == (200,)
    server.readiness.add("store", lambda: (True, "store answered"))
    code, _, body = get(server, "/ready")
    assert code == 200 and json.loads(body) == {"ready": True, "checks": {"store": {"ok": True,
                                                                                    "detail": "store answered"}}}
    server.readiness.add("socket", lambda: (_ for _ in ()).throw(OSError("no such file")))
    code, _, body = get(server, "/ready")
    doc = json.loads(body)
    assert code == 503 and doc["ready"] is False and "no such file" in doc["checks"]["socket"]["detail"]


def test_a_hanging_check_fails_within_its_deadline(server):
    server.readiness.add("stuck", lambda: (time.sleep(60), (True, ""))[1])
    code, _, body = get(server, "/ready")
    assert code == 503 and "no answer within" in json.loads(body)["checks"]["stuck"]["detail"]


def test_other_methods_and_paths_get_plain_text_errors(server):
    code, headers, body = get(server, "/metrics", method="POST")
    assert code == 405 and headers["Allow"] == "GET, HEAD" and b"<" not in body
    code, _, body = get(server, "/nope")
    assert code == 404 and b"/metrics" in body


def test_idle_connections_cannot_lock_out_a_scraper(server):
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(ops.MAX_CONNECTIONS)]
    try:
        def scraped() -> bool:
            return get(server, "/health")[0] == 200
        # at first every slot is held: refused at once with 503, never left hanging; slots come back when
        # the idle ones reach their read deadline
        assert wait_until(scraped, timeout=ops.READ_DEADLINE * 6, what="a scrape once idle clients time out")
    finally:
        for conn in idle:
            conn.close()


def test_bad_addresses_are_refused_clearly():
    for text in ("127.0.0.1", "x:port", "1.2.3.4:70000"):
        with pytest.raises(ValueError, match="ADDR:PORT"):
            ops.parse_address(text)
    assert ops.parse_address("[::1]:9153") == ("::1", 9153)


def test_many_parallel_scrapes_are_all_answered(server):
    codes = []
    threads = [threading.Thread(target=lambda: codes.append(get(server, "/metrics")[0])) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(codes) == 40 and set(codes) <= {200, 503} and codes.count(200) >= ops.MAX_CONNECTIONS
