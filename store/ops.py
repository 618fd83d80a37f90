"""The operations face every Berth daemon serves with ``--metrics ADDR``: ``/metrics`` (Prometheus text format,
prometheus_client's default registry), ``/health`` (the process answers) and ``/ready`` (its own checks pass: the
store reachable, its sockets listening).

In ``store/`` because every daemon already imports this room and readiness is mostly "can I reach the store";
the metrics themselves are defined by each room next to what it counts. The server is bounded like the others:
GET only, a small request head, a read deadline, a cap on connections served at once (the rest get 503).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import stat
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Callable

from store.capped import CappedThreadingMixIn

log = logging.getLogger("berth.ops")

MAX_CONNECTIONS = 16
READ_DEADLINE = 5.0  # seconds for a client to send its request head
CHECK_DEADLINE = 2.0  # seconds a readiness check may take before it counts as failed

ReadinessCheck = Callable[[], tuple[bool, str]]  # -> (ready, what it saw)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` (port 0: any free one)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--metrics: {text!r} is not ADDR:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


@dataclass
class Readiness:
    """Named checks, run (each under a deadline) when ``/ready`` is asked."""

    checks: dict[str, ReadinessCheck] = field(default_factory=dict)

    def add(self, name: str, check: ReadinessCheck) -> None:
        self.checks[name] = check

    def run(self) -> tuple[bool, dict[str, dict[str, object]]]:
        results: dict[str, dict[str, object]] = {}
        for name, check in self.checks.items():
            outcome: list[tuple[bool, str]] = []

            def call(check=check) -> None:
                try:
                    outcome.append(check())
                except Exception as exc:  # noqa: BLE001 - a failing check is an answer, not a crash
                    outcome.append((False, f"{type(exc).__name__}: {exc}"))

            worker = threading.Thread(target=call, name=f"ready-{name}", daemon=True)
            worker.start()
            worker.join(CHECK_DEADLINE)
            ok, detail = outcome[0] if outcome else (False, f"no answer within {CHECK_DEADLINE:.0f} s")
            results[name] = {"ok": bool(ok), "detail": detail}
        return all(r["ok"] for r in results.values()), results


def store_check(store) -> ReadinessCheck:
    """Ready when a read of the store succeeds (its own deadline bounds it)."""
    def check() -> tuple[bool, str]:
        store.get("/berth/ready-probe")
        return True, "store answered"
    return check


def listening_check(sockets: Callable[[], list], path: str | None = None) -> ReadinessCheck:
    """Ready when each of the daemon's own sockets is open (a stream socket still listening), and its Unix
    socket file, when it has one, is still in place: a file someone removed answers no launcher or runtime."""
    def check() -> tuple[bool, str]:
        held = [s for s in sockets() if s is not None]
        if not held:
            return False, "no socket open"
        for sock in held:
            if sock.fileno() < 0:
                return False, "a socket was closed"
            if sock.type == socket.SOCK_STREAM and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                return False, f"{_name(sock)} is not listening"
        if path is not None:
            try:
                if not stat.S_ISSOCK(os.stat(path).st_mode):
                    return False, f"{path} is not a socket"
            except OSError as exc:
                return False, f"{path}: {exc.strerror}"
        return True, f"{len(held)} listening: " + ", ".join(_name(s) for s in held)
    return check


def _name(sock: socket.socket) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        return "?"
    kind = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}.get(sock.type, "")
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    return f"{kind}:{name[0]}:{name[1]}"


def add_metrics_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics", metavar="ADDR:PORT", default=None,
                        help="serve /metrics (Prometheus), /health and /ready here, e.g. 127.0.0.1:9153 "
                             "(default: not served)")


def start_from_args(args: argparse.Namespace, readiness: Readiness | None = None,
                    serve: bool = True) -> "OpsServer | None":
    """The operations endpoint when ``--metrics`` was given; a bad address or a port in use is a SystemExit
    naming it, before the daemon has changed anything. ``serve`` False: bound only, ``start()`` it later (a
    daemon that forks workers starts its threads after the forks)."""
    address = getattr(args, "metrics", None)
    if not address:
        return None
    try:
        server = OpsServer(parse_address(address), readiness)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"--metrics {address}: {exc}") from None
    return server.start() if serve else server


class _Handler(BaseHTTPRequestHandler):
    server: "OpsServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args) -> None:
        log.debug("ops %s: " + fmt, self.client_address[0], *args)

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(READ_DEADLINE)

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
              extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client import REGISTRY, exposition, generate_latest

            # the 0.0.4 text format: what every Prometheus release (Debian's 2.42 included) parses
            content_type = getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", exposition.CONTENT_TYPE_LATEST)
            self._send(200, generate_latest(REGISTRY), content_type)
        elif path == "/health":
            self._send(200, b"ok\n")
        elif path == "/ready":
            ready, results = self.server.readiness.run()
            body = json.dumps({"ready": ready, "checks": results}, sort_keys=True).encode() + b"\n"
            self._send(200 if ready else 503, body, "application/json")
        else:
            self._send(404, b"not found: /metrics, /health and /ready are served here\n")

    do_HEAD = do_GET

    def _refuse(self) -> None:
        self._send(405, b"method not allowed\n", extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Plain text instead of the standard library's HTML page."""
        self.close_connection = True
        self._send(code, f"{message or self.responses.get(code, ('error',))[0]}\n".encode(),
                   extra={"Connection": "close"})


class OpsServer(CappedThreadingMixIn, HTTPServer):
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], readiness: Readiness | None = None) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.readiness = readiness or Readiness()
        self.cap_connections(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def refuse(self, request) -> None:
        request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy\n")

    def start(self) -> "OpsServer":
        threading.Thread(target=self.serve_forever, name="ops-http", daemon=True).start()
        log.info("metrics, health and readiness on http://%s:%d/", self.server_address[0], self.port)
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def serve_ops(address: str, readiness: Readiness | None = None) -> OpsServer:
    """Start the operations endpoint on ``address`` (``HOST:PORT``) in a background thread."""
    return OpsServer(parse_address(address), readiness).start()
