"""SRV per instance (issue 13, point 5), as a real SRV consumer uses it: HAProxy 2.6's ``resolvers`` +
``server-template`` over ``_btapi._tcp.service.berth.internal`` balances real HTTP across three instances
registered through the agent's Consul API, and follows a deregistration and a re-registration."""
from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import consul
import pytest

from tests.waiting import stop_process, wait_listening, wait_until

from .conftest import agent_process  # noqa: F401  (fixture)

pytestmark = [pytest.mark.service, pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy")]

Z = "berth.internal"
BACKENDS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")


class NamedHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.server.server_address[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_backends() -> list[ThreadingHTTPServer]:
    """One HTTP server per backend address, all on the same port (retrying when that port is taken somewhere)."""
    for _ in range(20):
        servers: list[ThreadingHTTPServer] = []
        port = free_port()
        try:
            for address in BACKENDS:
                servers.append(ThreadingHTTPServer((address, port), NamedHandler))
        except OSError:
            for server in servers:
                server.server_close()
            continue
        for server in servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return servers
    raise RuntimeError("no port free on every backend address")


HAPROXY_CONFIG = """
global
    maxconn 200
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
resolvers berthdns
    nameserver dnsd 127.0.0.1:{dns_port}
    accepted_payload_size 1232
    resolve_retries 3
    timeout resolve 200ms
    timeout retry 200ms
    hold valid 200ms
    hold obsolete 0s
    hold nx 200ms
    hold other 200ms
frontend fe
    bind 127.0.0.1:{front_port}
    default_backend be
backend be
    balance roundrobin
    server-template api 5 _btapi._tcp.service.{zone} resolvers berthdns init-addr none
"""


@pytest.fixture
def haproxy(tmp_path):
    """``haproxy(dns_port)`` → the frontend port of a haproxy child process with its own config; stopped after."""
    started: list[subprocess.Popen] = []

    def start(dns_port: int) -> int:
        front = free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(dns_port=dns_port, front_port=front, zone=Z))
        subprocess.run(["haproxy", "-c", "-f", str(config)], check=True, capture_output=True, timeout=30)
        log = open(tmp_path / "haproxy.log", "wb")
        proc = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        started.append(proc)
        wait_listening(front, process=proc)
        return front

    yield start
    for proc in started:
        stop_process(proc, grace=5)


def served_by(front: int, rounds: int = 15) -> set[str]:
    """Which backends answer ``rounds`` requests through HAProxy (each its own connection)."""
    seen = set()
    for _ in range(rounds):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{front}/", timeout=5) as reply:
                seen.add(reply.read().decode())
        except (urllib.error.URLError, OSError):  # 503 while no slot has an address yet
            seen.add("none")
    return seen


def test_haproxy_server_template_balances_across_every_instance(agent_process, start_dns, haproxy):
    backends = start_backends()
    try:
        port = backends[0].server_address[1]
        api = consul.Consul(host="127.0.0.1", port=agent_process.http_port)
        for i, address in enumerate(BACKENDS, 1):
            assert api.agent.service.register("btapi", service_id=f"btapi{i}", address=address, port=port)
        server = start_dns("--store", agent_process.store_url, "--no-forward", "--ttl", "1")
        front = haproxy(server.port)
        everyone = set(BACKENDS)
        wait_until(lambda: served_by(front) == everyone, what="traffic reaching all three instances")

        assert api.agent.service.deregister("btapi2")
        wait_until(lambda: served_by(front) == everyone - {"127.0.0.12"}, what="traffic leaving btapi2")
        assert served_by(front, 30) == everyone - {"127.0.0.12"}  # and it stays away

        assert api.agent.service.register("btapi", service_id="btapi2", address="127.0.0.12", port=port)
        wait_until(lambda: served_by(front) == everyone, what="traffic back on btapi2")
    finally:
        for backend in backends:
            backend.shutdown()
            backend.server_close()
