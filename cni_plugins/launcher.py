"""The thin CNI launcher: forward a plugin call to the local CNI daemon, or run the plugin in process.

``berth install-cni`` copies this file once into the install's Python directory as ``berth_launcher.py``, with the
constants below filled in, and compiles it there; each plugin's executable is a stub of a few lines run as
``#!<python> -IS`` (isolated, no site) that imports it and calls :func:`main` with the plugin's type and module.
No site import, no third-party import, only built-in modules until a fallback — so a runtime pays the
interpreter's bare start-up plus one Unix-socket round trip instead of importing pyroute2, and no call compiles
this file's source again. When it runs the plugin itself, it puts the installation's import roots on
``sys.path`` as plain entries: processing their ``.pth`` files (``site.addsitedir``) would import an editable
install's finder and setuptools' distutils shim, ~10-25 ms here, on every call.

Wire format (length-prefixed fields, so no JSON parser is needed here):
  greeting = the daemon speaks first: MAGIC, version byte, then one field: its build id
  request  = MAGIC, version byte, then fields: build id, plugin type, environment (``k=v\\0``...), stdin
  reply    = one status byte: ``A`` accepted (the daemon now runs it), ``S`` skew (other build: run it yourself),
             ``B`` busy (run it yourself); after ``A``: exit code, stdout, stderr as fields.
Whom it trusts: only a daemon it has checked before sending anything — the socket's directories (each one up to
``/``) owned by root (or this launcher's own user) and writable by nobody else, the peer's credentials
(SO_PEERCRED) root or its own user, and the greeting naming this very build. Otherwise it runs the call itself.
The daemon runs a call only after its ``A`` was sent, so "no ``A`` in time" means "not started", and the launcher
may safely run the call itself; after ``A`` it waits at most REPLY_TIMEOUT, then answers code 11 (try again later)
rather than running a call a second time beside one that may still be running.
"""
# --- filled in by `berth install-cni` ------------------------------------------------------------------------------
BUILD_ID = ""
IMPORT_PATHS: list = []       # where the plugins and their libraries are imported from, in order
VERSION_REPLY = b""
# ---------------------------------------------------------------------------------------------------------------------
DEFAULT_SOCKET = "/run/berth/cni.sock"
MAGIC = b"BERTHCNI"
PROTOCOL_VERSION = 2
CONNECT_TIMEOUT = 1.0
ACCEPT_TIMEOUT = 2.0
REPLY_TIMEOUT = 60.0          # after ``A``; BERTH_CNI_REPLY_TIMEOUT (seconds) overrides it
MAX_STDIN = 16 << 20          # frame caps, the same on both sides
MAX_ENV = 1 << 20
MAX_NAME = 256                # build id, plugin type
MAX_OUTPUT = 16 << 20         # a reply's stdout or stderr
STATUS_ACCEPTED, STATUS_SKEW, STATUS_BUSY = b"A", b"S", b"B"
TRY_AGAIN_LATER = 11          # cni_plugins.codes.TRY_AGAIN_LATER (not importable before a fallback)


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


def encode_greeting(build_id: str) -> bytes:
    return MAGIC + bytes([PROTOCOL_VERSION]) + pack_fields(build_id.encode())


def _monotonic() -> float:
    import time

    return time.monotonic()


def recv_exact(sock, size: int, deadline: float = 0.0) -> bytes:
    """``size`` bytes, or EOFError / TimeoutError; with ``deadline`` (a monotonic time) the whole read is bounded,
    not each chunk, so a peer that trickles a byte at a time cannot hold the reader."""
    chunks = []
    while size:
        if deadline:
            remaining = deadline - _monotonic()
            if remaining <= 0:
                raise TimeoutError("deadline passed")
            sock.settimeout(remaining)
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv_field(sock, limit: int = MAX_STDIN, deadline: float = 0.0) -> bytes:
    size = int.from_bytes(recv_exact(sock, 4, deadline), "big")
    if size > limit:
        raise ValueError(f"a field of {size} bytes is over the cap of {limit}")
    return recv_exact(sock, size, deadline)


def peer_uid(sock) -> int:
    import _socket
    import sys

    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int.from_bytes(creds[4:8], sys.byteorder)


def trusted_uids() -> tuple:
    import os

    return (0, os.geteuid())


def untrusted_reason(socket_path: str, uids=None, own_dir_only: bool = False):
    """Why the socket at ``socket_path`` could be someone else's (None when it cannot).

    Every directory from ``/`` down to the socket's — on the path as given and as resolved — must be owned by one
    of ``uids`` and writable by no one else; a sticky directory (``/tmp``) is allowed above the last one, since
    there nobody can rename what another user made. With ``own_dir_only`` the socket file itself is not checked
    (the daemon, before it binds)."""
    import os
    import stat

    uids = trusted_uids() if uids is None else uids
    for path in (socket_path, os.path.realpath(socket_path)):
        directory = os.path.dirname(path) or "."
        chain = []
        current = os.path.abspath(directory)
        while True:
            chain.append(current)
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
        for depth, entry in enumerate(chain):
            try:
                st = os.stat(entry)
            except OSError as exc:
                return f"{entry}: {exc.strerror}"
            if st.st_uid not in uids:
                return f"{entry} is owned by uid {st.st_uid}"
            loose = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            if loose and (depth == 0 or not st.st_mode & stat.S_ISVTX):
                return f"{entry} is writable by others (mode {oct(st.st_mode & 0o7777)})"
    if own_dir_only:
        return None
    try:
        st = os.lstat(socket_path)
    except OSError as exc:
        return f"{socket_path}: {exc.strerror}"
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid not in uids:
        return f"{socket_path} is not a socket of a trusted user"
    return None


def reply_timeout(env) -> float:
    try:
        value = float(env.get("BERTH_CNI_REPLY_TIMEOUT", "") or REPLY_TIMEOUT)
    except ValueError:
        return REPLY_TIMEOUT
    return value if 0 < value <= 3600 else REPLY_TIMEOUT


def try_daemon(plugin: str, socket_path: str, env, stdin: bytes):
    """``(exit code, stdout, stderr)`` from the daemon, or None when the call must run here instead."""
    import _socket

    env_block = encode_env(env)
    if len(stdin) > MAX_STDIN or len(env_block) > MAX_ENV or untrusted_reason(socket_path) is not None:
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(socket_path)
            if peer_uid(sock) not in trusted_uids():
                return None  # a listener of another user: never send it the call, never read its answer
            accept_by = _monotonic() + ACCEPT_TIMEOUT
            greeting = recv_exact(sock, len(MAGIC) + 1, accept_by)
            theirs = recv_field(sock, MAX_NAME, accept_by) if greeting == MAGIC + bytes([PROTOCOL_VERSION]) else b""
            if theirs != BUILD_ID.encode():
                return None  # another protocol or another build: its code must not answer for ours
            sock.settimeout(ACCEPT_TIMEOUT)
            sock.sendall(MAGIC + bytes([PROTOCOL_VERSION]) +
                         pack_fields(BUILD_ID.encode(), plugin.encode(), env_block, stdin))
            status = recv_exact(sock, 1, accept_by)
        except (OSError, EOFError, ValueError):
            return None  # no daemon, stale socket, refused, or not accepted in time: nothing ran there
        if status != STATUS_ACCEPTED:
            return None
        reply_by = _monotonic() + reply_timeout(env)
        try:
            code = int.from_bytes(recv_field(sock, 4, reply_by), "big")
            return code, recv_field(sock, MAX_OUTPUT, reply_by), recv_field(sock, MAX_OUTPUT, reply_by)
        except TimeoutError:
            return stalled(env)
        except (OSError, EOFError, ValueError):
            return lost_in_flight(env)
    finally:
        sock.close()


def _try_again(message: str) -> tuple:
    body = ('{"cniVersion": "1.1.0", "code": %d, "msg": "%s", '
            '"details": "the runtime\'s DEL or retry cleans up anything it left"}' % (TRY_AGAIN_LATER, message))
    return 1, body.encode(), b""


def stalled(env):
    """The daemon accepted the call and has not answered by the deadline: it may still be running it, so the call
    is not run a second time here; the runtime retries later."""
    return _try_again(f"the Berth CNI daemon did not answer {env.get('CNI_COMMAND', '')} in time; try again later")


def lost_in_flight(env):
    """The daemon accepted the call and died: ADD may be half done, so say "try again" (the runtime's DEL or
    retry cleans up); every other command is idempotent, so it runs here."""
    if env.get("CNI_COMMAND") != "ADD":
        return None
    return _try_again("the Berth CNI daemon stopped during ADD; try again")


def run_in_process(plugin: str, module: str, stdin: bytes) -> int:
    import gc
    import io
    import sys

    gc.disable()  # one call, then exit frees everything: collecting cycles on the way is only cost (~1-2 ms)
    sys.path.extend(p for p in IMPORT_PATHS if p not in sys.path)
    try:
        skel = __import__("cni_plugins.skel", fromlist=["main"])
        handlers = __import__(module, fromlist=["HANDLERS"]).HANDLERS
    except Exception as exc:  # noqa: BLE001 - a broken installation still answers in the spec's format
        message = f"{plugin} cannot load {module}: {type(exc).__name__}: {exc}".replace('"', "'")
        sys.stdout.write('{"cniVersion": "1.1.0", "code": 999, "msg": "%s"}' % message)
        return 1
    return skel.main(handlers, about=plugin, stdin=io.BytesIO(stdin))


def launch(plugin: str, module: str) -> int:
    """Run one call of ``plugin`` (whose handlers are ``module``'s ``HANDLERS``): the process's exit code."""
    import os
    import sys

    env = os.environ
    if env.get("CNI_COMMAND") == "VERSION" and VERSION_REPLY and len(sys.argv) == 1:
        sys.stdout.buffer.write(VERSION_REPLY)
        return 0
    if len(sys.argv) > 1 or not env.get("CNI_COMMAND"):
        return run_in_process(plugin, module, b"")
    stdin = sys.stdin.buffer.read(MAX_STDIN + 1)
    if env.get("BERTH_CNI_DAEMON", "") != "off":
        reply = try_daemon(plugin, env.get("BERTH_CNI_SOCKET") or DEFAULT_SOCKET, env, stdin)
        if reply is not None:
            code, out, err = reply
            sys.stdout.buffer.write(out)
            sys.stdout.buffer.flush()
            if err:
                sys.stderr.buffer.write(err)
            return code
    return run_in_process(plugin, module, stdin)


def main(plugin: str, module: str) -> None:
    """A plugin executable's whole life: :func:`launch`, then end the process at once, its output flushed.

    The interpreter's orderly shutdown would free every object of every module imported (~5 ms of a cold call
    here) for a process that is gone right after. Nothing on the CNI path registers exit handlers; the threads a
    plugin starts are joined before its handler returns, but for a link deletion's wait in the kernel, which
    finishes there on its own either way."""
    import os
    import sys

    code = launch(plugin, module)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a runtime that stopped reading: nothing left to tell it
            pass
    os._exit(code)
