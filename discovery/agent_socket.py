"""The agent's Unix socket for berth-register: root only (mode 0600 and the peer's uid checked)."""
from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import struct
import threading
from typing import Callable

from cni_plugins import codes
from discovery.wire import MAX_LINE

log = logging.getLogger(__name__)


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        server: AgentSocket = self.server  # type: ignore[assignment]
        uid = peer_uid(self.request)
        if uid not in (0, os.geteuid()):
            self._reply({"ok": False, "code": codes.IO_FAILURE, "error": "the agent socket accepts only root"})
            return
        line = self.rfile.readline(MAX_LINE)
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            self._reply({"ok": False, "code": codes.DECODE_FAILURE, "error": f"request: not a JSON object ({exc})"})
            return
        self._reply(server.handler(request))

    def _reply(self, reply: dict) -> None:
        self.wfile.write(json.dumps(reply, separators=(",", ":")).encode() + b"\n")


class AgentSocket(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, handler: Callable[[dict], dict]) -> None:
        self.path = path
        self.handler = handler
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # left by a dead agent
            else:
                raise OSError(f"{path}: another agent is already listening")
            finally:
                probe.close()
        old_umask = os.umask(0o177)
        try:
            super().__init__(path, _Handler)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="agent-socket", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
