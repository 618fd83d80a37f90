"""The agent's HTTP face under bad input and load: raw sockets for what no client library would send, py-consul
for IDs and checks. Every bad request gets a 4xx that says what is wrong, as plain text, and changes nothing."""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import threading
import time

import consul
import consul.exceptions
import pytest

from tests.waiting import wait_until

pytestmark = pytest.mark.service


@pytest.fixture
def agent(store_url, agents):
    return agents(store_url, extra=("--http-read-deadline", "1"))


def exchange(port: int, raw: bytes, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` as is; the status, headers and body of the one answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without an answer: {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = 0 if raw.startswith(b"HEAD ") else int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, headers, body


def put_register(port: int, body: bytes, extra: str = "") -> bytes:
    return (f"PUT /v1/agent/service/register HTTP/1.1\r\nHost: x\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _no_services(port):
    return consul.Consul(host="127.0.0.1", port=port).agent.services() == {}


@pytest.mark.parametrize("header,code,words", [
    ("Content-Length: abc\r\n", 400, b"Content-Length"),
    ("Content-Length: -5\r\n", 400, b"Content-Length"),
    ("Content-Length: 99999999999999999999\r\n", 413, b"limit"),
    ("Content-Length: 2\r\nContent-Length: 2\r\n", 400, b"more than one Content-Length"),
    ("Transfer-Encoding: chunked\r\n", 411, b"Content-Length"),
])
def test_bad_content_length_is_a_plain_4xx(agent, header, code, words):
    raw = f"PUT /v1/agent/service/register HTTP/1.1\r\nHost: x\r\n{header}\r\n".encode() + b"{}"
    status, headers, body = exchange(agent.http_port, raw)
    assert status == code and words in body
    assert headers["content-type"].startswith("text/plain") and b"<html" not in body.lower()
    assert _no_services(agent.http_port)


def test_a_body_over_the_limit_is_413_and_nothing_is_stored(agent):
    meta = {"k": "v" * 600}
    big = json.dumps({"Name": "web", "Meta": {f"k{i}": "x" * 500 for i in range(2200)}, "X": meta}).encode()
    assert len(big) > 1 << 20
    status, _, body = exchange(agent.http_port, put_register(agent.http_port, big))
    assert status == 413 and b"1048576" in body
    assert _no_services(agent.http_port)


def test_a_client_that_sends_a_20_mb_body_before_reading_still_gets_its_413(agent):
    """As most HTTP clients do: send the whole request, then read. The agent refuses the body after the head,
    but reads and drops the rest for a moment, so the client's send completes and it reads the 413 instead
    of meeting a reset."""
    body = b"{" + b" " * (20 << 20) + b"}"
    with socket.create_connection(("127.0.0.1", agent.http_port), timeout=60) as sock:
        sock.sendall(put_register(agent.http_port, body))
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            assert chunk, f"closed without an answer: {answer!r}"
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413")


def test_curl_with_expect_100_continue_gets_the_413_without_sending_the_body(agent, tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b"{" + b" " * (2 << 20) + b"}")
    proc = subprocess.run(["curl", "-sSv", "-o", "/dev/null", "-w", "%{http_code} %{size_upload}", "-X", "PUT",
                           "-H", "Expect: 100-continue", "--data-binary", f"@{big}", "--max-time", "60",
                           f"http://127.0.0.1:{agent.http_port}/v1/agent/service/register"],
                          capture_output=True, text=True, timeout=90)
    code, uploaded = proc.stdout.split()
    assert code == "413" and float(uploaded) < 2 << 20, proc.stdout + proc.stderr
    assert "< HTTP/1.1 100" not in proc.stderr  # the body was never invited


def test_a_short_body_is_408_after_the_read_deadline(agent):
    raw = b"PUT /v1/agent/service/register HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"Name\":"
    status, _, body = exchange(agent.http_port, raw)  # the agent runs with a 1 s read deadline
    assert status == 408 and b"8 of 100 body bytes" in body
    assert _no_services(agent.http_port)


def test_a_head_trickled_byte_by_byte_is_cut_off_at_the_read_deadline(agent):
    """One deadline for the whole request: a byte every 0.2 s does not keep renewing it."""
    with socket.create_connection(("127.0.0.1", agent.http_port), timeout=30) as sock:
        sock.sendall(b"PUT /v1/agent/service/register HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        answer = b""
        for _ in range(150):  # 30 s of trickling against the agent's 1 s deadline
            try:
                sock.sendall(b"a")
            except OSError:
                break
            sock.settimeout(0.2)
            try:
                answer += sock.recv(4096)
                if answer:
                    break
            except TimeoutError:
                continue
        sock.settimeout(30)
        while answer and b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_deeply_nested_json_is_400(agent):
    deep = b"[" * 5000 + b"]" * 5000
    for body in (deep, b'{"Name": "web", "Meta": ' + b'{"a":' * 40 + b'"x"' + b"}" * 40 + b"}"):
        status, _, text = exchange(agent.http_port, put_register(agent.http_port, body))
        assert status == 400 and b"nested deeper" in text
    assert _no_services(agent.http_port)


@pytest.mark.parametrize("method", ["DELETE", "PATCH", "OPTIONS", "HEAD", "BREW"])
def test_unsupported_methods_are_405_with_allow(agent, method):
    status, headers, body = exchange(agent.http_port, f"{method} /v1/agent/services HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 405 and headers["allow"] == "GET"
    status, headers, _ = exchange(agent.http_port,
                                  f"{method} /v1/agent/service/register HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 405 and headers["allow"] == "POST, PUT"


def test_the_parsers_own_errors_are_plain_text(agent):
    for raw, code in ((b"NONSENSE\r\n\r\n", 400), (b"GET /v1/agent/services HTTP/9.9\r\n\r\n", 505),
                      (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414)):
        status, headers, body = exchange(agent.http_port, raw)
        assert status == code and b"<html" not in body.lower() and b"<!doctype" not in body.lower()
        assert headers["content-type"].startswith("text/plain")


def test_meta_beyond_consuls_limits_is_refused(agent):
    c = consul.Consul(host="127.0.0.1", port=agent.http_port)
    with pytest.raises(consul.exceptions.BadRequest, match="Meta"):
        c.agent.service.register("web", meta={f"k{i}": "v" for i in range(65)})
    with pytest.raises(consul.exceptions.BadRequest, match="Meta"):
        c.agent.service.register("web", meta={"k": "v" * 513})
    assert _no_services(agent.http_port)


def test_ids_with_slashes_and_long_ids_are_served_and_deregistered(agent):
    c = consul.Consul(host="127.0.0.1", port=agent.http_port)
    long_id = "L" * 512
    for sid in ("a/b", "team/web/1", long_id):
        assert c.agent.service.register("web", service_id=sid, address="10.7.0.1", port=80)
    assert set(c.agent.services()) == {"a/b", "team/web/1", long_id}
    assert c.agent.service_definition("a/b")["ID"] == "a/b"  # py-consul sends the '/' as is
    status, _, body = exchange(agent.http_port, b"GET /v1/agent/service/team%2Fweb%2F1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and json.loads(body)["ID"] == "team/web/1"  # and percent-encoded, as Consul
    files = os.listdir(os.path.join(agent.state_dir, "endpoints"))
    assert len(files) == 3 and all(len(name) <= 255 and "/" not in name for name in files)
    assert c.agent.service.deregister("a/b") and c.agent.service.deregister(long_id)
    status, _, _ = exchange(agent.http_port, b"PUT /v1/agent/service/deregister/team%2Fweb%2F1 HTTP/1.1\r\n"
                                             b"Host: x\r\nContent-Length: 0\r\n\r\n")
    assert status == 200 and _no_services(agent.http_port)
    assert os.listdir(os.path.join(agent.state_dir, "endpoints")) == []


@pytest.mark.parametrize("sid,words", [("../x", "segment"), ("a//b", "segment"), ("x/..", "segment"),
                                       ("L" * 513, "longer than 512"), ("a\nb", "control")])
def test_ids_that_could_not_be_served_back_are_refused(agent, sid, words):
    c = consul.Consul(host="127.0.0.1", port=agent.http_port)
    with pytest.raises(consul.exceptions.BadRequest, match=f"ID: .*{words}"):
        c.agent.service.register("web", service_id=sid, address="10.7.0.1")
    assert _no_services(agent.http_port)


@pytest.mark.parametrize("check,field", [
    ({"HTTP": "http://127.0.0.1:99999/health", "Interval": "1s"}, "Check.HTTP"),
    ({"HTTP": "https://127.0.0.1/health", "Interval": "1s"}, "Check.HTTP"),
    ({"HTTP": "http://127.0.0.1:8080/", "Interval": "1s", "Timeout": "1000000h"}, "Check.Timeout"),
    ({"TCP": "127.0.0.1:0", "Interval": "1s"}, "Check.TCP"),
    ({"TCP": "127.0.0.1:70000", "Interval": "1s"}, "Check.TCP"),
    ({"TCP": "127.0.0.1:80"}, "Check.Interval"),
    ({"TCP": "127.0.0.1:80", "Interval": "100000h"}, "Check.Interval"),
])
def test_unusable_checks_are_refused_naming_the_field(agent, check, field):
    c = consul.Consul(host="127.0.0.1", port=agent.http_port)
    with pytest.raises(consul.exceptions.BadRequest, match=field):
        c.agent.service.register("web", service_id="web1", address="10.7.0.1", check=check)
    assert _no_services(agent.http_port)


def test_a_check_whose_probe_hangs_leaves_its_initial_state_after_one_interval(agent):
    """A target that accepts connections and never answers, a long timeout, Status passing: the check must
    not stay passing on a promise; after its first interval it is critical."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    try:
        c = consul.Consul(host="127.0.0.1", port=agent.http_port)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/health"
        c.agent.service.register("web", service_id="web1", address="10.7.0.1",
                                 check={"HTTP": url, "Interval": "1s", "Timeout": "5m", "Status": "passing"})
        assert wait_until(lambda: c.agent.checks()["service:web1"]["Status"] == "critical")
        assert "first interval" in c.agent.checks()["service:web1"]["Output"]
    finally:
        silent.close()


@pytest.mark.slow
@pytest.mark.parametrize("cap", [(), ("--http-max-conns", "64")], ids=["default-cap", "cap-64"])
def test_a_thousand_concurrent_registrations_are_all_answered(store_url, agents, cap):
    """Beyond the connection cap, connections wait in the listen queue: answered late, never reset."""
    agent = agents(store_url, ttl=15.0, extra=cap)
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    start = threading.Barrier(200)

    def register(i: int) -> None:
        if i < 200:
            start.wait(timeout=60)
        body = json.dumps({"Name": "load", "ID": f"load{i}", "Address": "10.8.0.1", "Port": 1000 + i})
        began = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", agent.http_port, timeout=300)
        try:
            conn.request("PUT", "/v1/agent/service/register", body=body)
            status = conn.getresponse().status
        except OSError as exc:
            status = -1
            print(f"registration {i}: {exc!r}")
        finally:
            conn.close()
        with lock:
            results.append((status, time.monotonic() - began))

    threads = [threading.Thread(target=register, args=(i,)) for i in range(1000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    statuses = [s for s, _ in results]
    assert len(statuses) == 1000 and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert len(consul.Consul(host="127.0.0.1", port=agent.http_port).agent.services()) == 1000
    latencies = sorted(t for _, t in results)
    print(f"1000 concurrent registrations: p50 {latencies[500]:.3f}s p99 {latencies[990]:.3f}s")
