"""A strict HTTP/1.1 server for the agent's API: the standard library's parser, hardened at every edge.

Why not the stock ``ThreadingHTTPServer``: it listens with a backlog of 5 (a burst of clients gets resets), trusts
any Content-Length (non-numeric or negative drops the connection, a short body hangs the thread), answers unknown
methods and its own errors with HTML pages, and has no cap on bodies or connections. Here:

- one Content-Length, digits only; above ``max_body`` → 413; ``Transfer-Encoding`` → 411 (send a length);
- a request's head and body must arrive within ``read_deadline`` of its request line (one deadline over all
  reads, so trickling bytes does not extend it) → else 408 or a closed connection; a body cut short → 400;
- every error, ours or the parser's, is plain text with a length, never an HTML page;
- at most ``max_conns`` connections are served at once; further ones wait in the kernel's accept queue
  (listen backlog ``backlog``), so a burst is queued, never reset;
- any method reaches the application, which answers 405 with ``Allow`` for the ones a path does not take.

The application is a callable ``Request -> Response``; it never sees sockets.
"""
from __future__ import annotations

import io
import logging
import re
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Callable

from store.capped import CappedThreadingMixIn

log = logging.getLogger(__name__)

_DIGITS = re.compile(r"[0-9]{1,30}")
_READ_CHUNK = 64 * 1024
_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s\"]*", re.IGNORECASE)


@dataclass(frozen=True)
class HttpLimits:
    max_body: int = 1 << 20        # bytes; Consul's own agent refuses far smaller registrations anyway
    max_conns: int = 1024          # connections served at once; more wait in the accept queue
    backlog: int = 4096            # listen(2) backlog (the kernel clips it to net.core.somaxconn)
    read_deadline: float = 10.0    # seconds for a request's head and body to arrive once its request line has
    idle_timeout: float = 75.0     # seconds a kept-alive connection may sit between requests


@dataclass(frozen=True)
class Request:
    method: str
    raw_path: str                  # still percent-encoded: IDs may hold an encoded '/'
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    peer: tuple = ()


@dataclass(frozen=True)
class Response:
    code: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def text(code: int, message: str, **headers: str) -> Response:
    return Response(code, (message.rstrip("\n") + "\n").encode(), headers=headers)


App = Callable[[Request], Response]


class BadRequest(Exception):
    """The request cannot be read as sent; ``close`` when its body was left unread on the connection."""

    def __init__(self, code: int, message: str, close: bool = True) -> None:
        super().__init__(message)
        self.code, self.close = code, close


def body_length(headers: Message, max_body: int) -> int:
    """The declared body length, validated (pure: raises :class:`BadRequest`)."""
    if headers.get_all("Transfer-Encoding"):
        raise BadRequest(411, "Transfer-Encoding is not supported: send the body with a Content-Length")
    values = headers.get_all("Content-Length") or []
    if not values:
        return 0
    if len(values) > 1:
        raise BadRequest(400, "more than one Content-Length header")
    value = values[0].strip()
    if not _DIGITS.fullmatch(value):
        raise BadRequest(400, f"Content-Length: {value[:40]!r} is not a number of bytes")
    length = int(value)
    if length > max_body:
        raise BadRequest(413, f"request body of {length} bytes is larger than the limit of {max_body} bytes")
    return length


class _DeadlineSocket(io.RawIOBase):
    """The connection's read side with one deadline over many ``recv`` calls: a client that trickles a byte at a
    time cannot hold a thread past it (a per-call timeout would restart at every byte)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline = 0.0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("read deadline passed")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "berth-agent"
    sys_version = ""

    def setup(self) -> None:
        limits: HttpLimits = self.server.limits  # type: ignore[attr-defined]
        self.timeout = limits.read_deadline  # for writes: a client that does not read its answer is dropped
        super().setup()
        self._raw = _DeadlineSocket(self.connection)
        self.rfile = io.BufferedReader(self._raw, 64 * 1024)

    def log_message(self, fmt: str, *args) -> None:
        """Request lines go to the debug log with any ``token=`` value blanked: tokens are never logged."""
        log.debug("http %s: %s", self.address_string(), _TOKEN_IN_QUERY.sub(r"\1<hidden>", fmt % args))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The parser's own errors (bad request line, header too long...) as plain text, never HTML."""
        self.close_connection = True
        if not self.request_version.startswith("HTTP/1."):
            self.request_version = "HTTP/1.1"  # an unparsable line counts as HTTP/0.9, which has no status line
        self._send(text(code, message or HTTPStatus(code).phrase, Connection="close"))

    def handle_one_request(self) -> None:
        limits: HttpLimits = self.server.limits  # type: ignore[attr-defined]
        self.raw_requestline, self._responded = b"", False
        try:
            self._raw.deadline = time.monotonic() + limits.idle_timeout  # the next request line, kept alive
            self.raw_requestline = self.rfile.readline(65537)
            self._raw.deadline = time.monotonic() + limits.read_deadline  # then the head and body, together
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(414, "request line too long")
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            self.connection.settimeout(self.timeout)
            self._dispatch()
            self.wfile.flush()
        except TimeoutError:
            self.close_connection = True  # idle keep-alive connection, or a client that stopped sending
            if self.raw_requestline and not self._responded:
                try:
                    self.send_error(408, "request head not received within the read deadline")
                except OSError:
                    pass
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True

    def handle_expect_100(self) -> bool:
        """``Expect: 100-continue`` (curl sends it for larger bodies): invite the body only if it will be read;
        otherwise the error answer comes first and the client need not send it at all."""
        try:
            body_length(self.headers, self.server.limits.max_body)  # type: ignore[attr-defined]
        except BadRequest:
            return True
        return super().handle_expect_100()

    def _dispatch(self) -> None:
        server: StrictHttpServer = self.server  # type: ignore[assignment]
        try:
            body = self._read_body(body_length(self.headers, server.limits.max_body), server.limits.read_deadline)
        except BadRequest as exc:
            if exc.close:
                self.close_connection = True
            self._send(text(exc.code, str(exc), **({"Connection": "close"} if exc.close else {})))
            if exc.close:
                self._linger()
            return
        url = urllib.parse.urlsplit(self.path)
        request = Request(self.command, url.path, urllib.parse.parse_qs(url.query, keep_blank_values=True),
                          self.headers, body, self.client_address)
        try:
            response = server.app(request)
        except Exception:  # a bug answers 500; it must not drop the connection
            log.exception("http %s %s failed", self.command, url.path)
            response = text(500, "internal error")
        self._send(response)

    def _read_body(self, length: int, deadline_s: float) -> bytes:
        """The body, within the request's read deadline (set when its request line arrived)."""
        if not length:
            return b""
        chunks, got = [], 0
        try:
            while got < length:
                chunk = self.rfile.read1(min(_READ_CHUNK, length - got))
                if not chunk:
                    raise BadRequest(400, f"request body ended after {got} of {length} bytes")
                chunks.append(chunk)
                got += len(chunk)
        except TimeoutError:
            raise BadRequest(408, f"request not received within {deadline_s:g}s ({got} of {length} body bytes)"
                             ) from None
        finally:
            self.connection.settimeout(self.timeout)
        return b"".join(chunks)

    def _linger(self, seconds: float = 5.0, most: int = 64 << 20) -> None:
        """Close after an error with the body unread the way web servers do: stop sending, then read and drop
        what the client is still sending for a moment, so the kernel does not answer it with a reset that
        could reach the client before it has read the error."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self._raw.deadline = time.monotonic() + seconds
            buffer, dropped = bytearray(64 * 1024), 0
            while dropped < most and (n := self._raw.readinto(buffer)):
                dropped += n
        except OSError:
            pass

    def _send(self, response: Response) -> None:
        self._responded = True
        self.connection.settimeout(self.timeout)
        self.send_response(response.code)
        headers = {"Content-Type": response.content_type, **response.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)


class StrictHttpServer(CappedThreadingMixIn, HTTPServer):
    """A thread per connection, at most ``limits.max_conns`` at once; the accept loop waits for a free slot."""

    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: App, limits: HttpLimits = HttpLimits()) -> None:
        self.request_queue_size = limits.backlog
        self.limits = limits
        self.app = app
        self.cap_connections(limits.max_conns)
        self._thread: threading.Thread | None = None
        self._stopping = False
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def take_slot(self) -> bool:
        """At the cap, stop accepting (the kernel queues the rest) until a slot frees or the server stops."""
        while not self._slots.acquire(timeout=0.5):
            if self._stopping:
                return False
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="consul-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self.shutdown()
        self.server_close()
