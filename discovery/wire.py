"""How berth-register talks to the local agent: one JSON line each way over a Unix socket, and a disk spool
for when the agent is not running. Standard library only: it is on every container start's path.

Requests: ``{"op": "add", "endpoint": {...record...}, "netns": path}``, ``{"op": "del", "id": id}``,
``{"op": "check", "id": id}``, ``{"op": "gc", "network": name, "valid": [[container id, ifname], ...]}``.
``add`` and ``gc`` may carry ``"face": "cni"`` (the default: berth-register) or ``"docker"`` (the Docker plugin): a
GC removes only registrations of its own face, as a CNI and a Docker network may share a name.
Replies: ``{"ok": true, ...}`` or ``{"ok": false, "code": <CNI code>, "error": message}``.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

DEFAULT_SOCKET = "/run/berth/agent.sock"
DEFAULT_STATE_DIR = "/var/lib/berth/agent"
DEFAULT_SPOOL_DIR = DEFAULT_STATE_DIR + "/spool"
MAX_LINE = 1 << 20


class AgentUnreachable(OSError):
    """No agent is listening (not started, or restarting)."""


def call(socket_path: str, request: dict, timeout: float = 5.0) -> dict:
    """Send one request and return the reply; :class:`AgentUnreachable` when nobody listens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(socket_path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AgentUnreachable(f"agent socket {socket_path}: {exc.strerror}") from None
        sock.sendall(json.dumps(request, separators=(",", ":")).encode() + b"\n")
        buf = bytearray()
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > MAX_LINE:
                raise OSError("agent reply too long")
    finally:
        sock.close()
    if not buf:
        raise AgentUnreachable(f"agent socket {socket_path}: closed without a reply")
    return json.loads(buf)


def spool(spool_dir: str, request: dict) -> Path:
    """Keep a request on disk for the agent to apply when it starts; names sort in arrival order."""
    directory = Path(spool_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = f"{time.time_ns():020d}-{os.getpid()}.json"
    tmp = directory / f".{name}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(json.dumps(request).encode())
        fh.flush()
        os.fsync(fh.fileno())
    final = directory / name
    os.replace(tmp, final)
    return final


def spooled(spool_dir: str) -> list[tuple[Path, dict | None]]:
    """Spooled requests in arrival order (``None`` for an unreadable file, which the reader should discard).

    A spooled request becomes a container endpoint, which only the CNI chain may write: a file that another
    user owns, or any file in a directory that other users may write, counts as unreadable."""
    directory = Path(spool_dir)
    if not directory.is_dir():
        return []
    me = os.geteuid()
    dir_stat = directory.stat()
    dir_trusted = dir_stat.st_uid == me and not dir_stat.st_mode & 0o022
    out: list[tuple[Path, dict | None]] = []
    for path in sorted(directory.glob("[0-9]*.json")):
        try:
            with open(path, "rb") as fh:
                if not dir_trusted or os.fstat(fh.fileno()).st_uid != me:
                    raise ValueError("not written by the agent's user")
                out.append((path, json.loads(fh.read())))
        except (OSError, ValueError):
            out.append((path, None))
    return out
