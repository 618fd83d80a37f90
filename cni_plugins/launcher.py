"""The thin CNI launcher: forward a plugin call to the local CNI daemon, or run the plugin in process.

``berth install-cni`` copies this file as each plugin's executable, with the constants below filled in, and a
``#!<python> -IS`` line (isolated, no site): no site import, no third-party import, only built-in modules until a fallback — so a
runtime pays the interpreter's bare start-up plus one Unix-socket round trip instead of importing pyroute2.

Wire format (both directions are length-prefixed fields, so no JSON parser is needed here):
  request  = MAGIC, version byte, then fields: build id, plugin type, environment (``k=v\\0``...), stdin
  reply    = one status byte: ``A`` accepted (the daemon now runs it), ``S`` skew (other build: run it yourself),
             ``B`` busy (run it yourself); after ``A``: exit code, stdout, stderr as fields.
A launcher whose build differs from the daemon's never gets an answer computed by other code: it falls back.
The daemon runs a call only after its ``A`` was sent, so "no ``A`` in time" means "not started", and the launcher
may safely run the call itself.
"""
# --- filled in by `berth install-cni` ------------------------------------------------------------------------------
PLUGIN = ""
MODULE = ""
BUILD_ID = ""
SITE_DIRS: list = []
VERSION_REPLY = b""
# ---------------------------------------------------------------------------------------------------------------------
DEFAULT_SOCKET = "/run/berth/cni.sock"
MAGIC = b"BERTHCNI"
PROTOCOL_VERSION = 1
CONNECT_TIMEOUT = 1.0
ACCEPT_TIMEOUT = 2.0
REPLY_TIMEOUT = 300.0
STATUS_ACCEPTED, STATUS_SKEW, STATUS_BUSY = b"A", b"S", b"B"


def pack_fields(*fields: bytes) -> bytes:
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def encode_env(env) -> bytes:
    return b"".join(f"{k}={v}".encode("utf-8", "surrogateescape") + b"\0" for k, v in env.items())


def decode_env(block: bytes) -> dict:
    env = {}
    for item in block.split(b"\0"):
        if item:
            key, _, value = item.partition(b"=")
            env[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    return env


def encode_request(build_id: str, plugin: str, env, stdin: bytes) -> bytes:
    return MAGIC + bytes([PROTOCOL_VERSION]) + pack_fields(build_id.encode(), plugin.encode(), encode_env(env), stdin)


def recv_exact(sock, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv_field(sock) -> bytes:
    return recv_exact(sock, int.from_bytes(recv_exact(sock, 4), "big"))


def try_daemon(socket_path: str, env, stdin: bytes):
    """``(exit code, stdout, stderr)`` from the daemon, or None when the call must run here instead."""
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(socket_path)
            sock.sendall(encode_request(BUILD_ID, PLUGIN, env, stdin))
            sock.settimeout(ACCEPT_TIMEOUT)
            status = recv_exact(sock, 1)
        except (OSError, EOFError):
            return None  # no daemon, stale socket, refused, or not accepted in time: nothing ran there
        if status != STATUS_ACCEPTED:
            return None
        sock.settimeout(REPLY_TIMEOUT)
        try:
            code = int.from_bytes(recv_field(sock), "big")
            return code, recv_field(sock), recv_field(sock)
        except (OSError, EOFError):
            return lost_in_flight(env)
    finally:
        sock.close()


def lost_in_flight(env):
    """The daemon accepted the call and died: ADD may be half done, so say "try again" (the runtime's DEL or
    retry cleans up); every other command is idempotent, so it runs here."""
    if env.get("CNI_COMMAND") != "ADD":
        return None
    body = ('{"cniVersion": "1.1.0", "code": 11, "msg": "the Berth CNI daemon stopped during ADD; try again",'
            ' "details": "the runtime\'s DEL or retry cleans up anything it left"}')
    return 1, body.encode(), b""


def run_in_process(stdin: bytes) -> int:
    import importlib
    import io
    import site
    import sys

    for directory in SITE_DIRS:
        site.addsitedir(directory)
    try:
        skel = importlib.import_module("cni_plugins.skel")
        handlers = importlib.import_module(MODULE).HANDLERS
    except Exception as exc:  # noqa: BLE001 - a broken installation still answers in the spec's format
        message = f"{PLUGIN} cannot load {MODULE}: {type(exc).__name__}: {exc}".replace('"', "'")
        sys.stdout.write('{"cniVersion": "1.1.0", "code": 999, "msg": "%s"}' % message)
        return 1
    return skel.main(handlers, about=PLUGIN, stdin=io.BytesIO(stdin))


def launch() -> int:
    import os
    import sys

    env = os.environ
    if env.get("CNI_COMMAND") == "VERSION" and VERSION_REPLY and len(sys.argv) == 1:
        sys.stdout.buffer.write(VERSION_REPLY)
        return 0
    if len(sys.argv) > 1 or not env.get("CNI_COMMAND"):
        return run_in_process(b"")
    stdin = sys.stdin.buffer.read()
    if env.get("BERTH_CNI_DAEMON", "") != "off":
        reply = try_daemon(env.get("BERTH_CNI_SOCKET") or DEFAULT_SOCKET, env, stdin)
        if reply is not None:
            code, out, err = reply
            sys.stdout.buffer.write(out)
            sys.stdout.buffer.flush()
            if err:
                sys.stderr.buffer.write(err)
            return code
    return run_in_process(stdin)


if __name__ == "__main__":
    raise SystemExit(launch())
