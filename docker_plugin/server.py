"""HTTP over a Unix socket, the way Docker talks to a v1 plugin: ``POST /<Interface>.<Method>`` with a JSON body.

A small dispatcher: it checks who is calling (root only: the socket is 0600 and the peer's uid is checked too),
bounds every request (body size, read and write deadline, number of connections at once), decodes the JSON,
calls one handler and encodes its answer. A :class:`DriverError` becomes ``{"Err": message}`` with its status,
which Docker shows the user; anything unexpected is logged and answered 500 without the traceback.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
from http.server import BaseHTTPRequestHandler
from typing import Callable

from discovery.agent_socket import peer_uid
from docker_plugin.errors import DriverError
from store.capped import CappedThreadingMixIn

log = logging.getLogger(__name__)
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
MAX_BODY = 1 << 20
IO_TIMEOUT = 30.0  # seconds a client may take to send a request or read the answer
MAX_CONNECTIONS = 64

Handler = Callable[[dict], dict]


class _Request(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "PluginServer"

    def setup(self) -> None:
        self.request.settimeout(IO_TIMEOUT)
        super().setup()

    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
        uid = peer_uid(self.request)
        if uid != 0 and uid != os.geteuid():
            self._answer(403, {"Err": "the Berth plugin socket accepts only root"})
            return
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or length is None:
            self._answer(411, {"Err": "a request needs a Content-Length"}, close=True)
            return
        try:
            size = int(length)
        except ValueError:
            size = -1
        if not 0 <= size <= MAX_BODY:
            self._answer(413, {"Err": f"request body must be 0 to {MAX_BODY} bytes"}, close=True)
            return
        body = self.rfile.read(size)
        handler = self.server.routes.get(self.path.lstrip("/"))
        if handler is None:
            self._answer(404, {"Err": f"{self.path.lstrip('/')}: not a method Berth implements"})
            return
        try:
            request = json.loads(body) if body.strip() else {}
            if request is None:
                request = {}
            if not isinstance(request, dict):
                raise ValueError("expected a JSON object")
        except ValueError as exc:
            self._answer(400, {"Err": f"request body: {exc}"})
            return
        try:
            self._answer(200, handler(request))
        except DriverError as exc:
            log.info("%s refused: %s", self.path, exc)
            self._answer(exc.status, {"Err": str(exc)})
        except Exception:  # noqa: BLE001 - the edge: log it, answer without internals
            log.exception("%s failed", self.path)
            self._answer(500, {"Err": f"{self.path.lstrip('/')}: internal error in the Berth plugin (see its log)"})

    def do_GET(self) -> None:  # noqa: N802
        self._answer(405, {"Err": "plugin methods are called with POST"})

    def _answer(self, status: int, payload: dict, close: bool = False) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args) -> None:
        log.debug("plugin request: " + fmt, *args)


class PluginServer(CappedThreadingMixIn, socketserver.UnixStreamServer):
    def __init__(self, path: str, routes: dict[str, Handler], max_connections: int = MAX_CONNECTIONS) -> None:
        self.path = path
        self.routes = routes
        self.cap_connections(max_connections)
        _claim_socket_path(path)
        old_umask = os.umask(0o177)
        try:
            super().__init__(path, _Request)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)

    def refuse(self, request) -> None:  # full: refuse at once rather than queue without bound
        log.warning("plugin socket: %d connections open, refusing another", self.connection_limit)

    def close(self) -> None:
        self.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _claim_socket_path(path: str) -> None:
    """Remove a dead plugin's socket; refuse when a live one answers there."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, mode=0o755, exist_ok=True)
    info = os.stat(folder)
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:  # another user could swap our socket for theirs
        raise OSError(f"{folder}: must belong to uid {os.geteuid()} and be writable by it alone")
    if not os.path.lexists(path):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    else:
        raise OSError(f"{path}: another plugin is already listening")
    finally:
        probe.close()
