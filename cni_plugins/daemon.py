"""The local CNI daemon: Berth's plugin handlers, imported once, served to thin launchers over a Unix socket.

A runtime execs a plugin per container; the expensive part of a Python plugin is starting up (pyroute2 alone costs
~160 ms), not its work. This process pays that once and answers each launcher (:mod:`cni_plugins.launcher`) with
exactly what the plugin executable would have printed, by running the same :func:`cni_plugins.skel.dispatch`.

Safety rules it keeps:
- only root (or the daemon's own uid) may connect: the socket is 0600 in a 0700 directory, and every peer's
  credentials are checked (SO_PEERCRED) in case the file mode is loosened;
- a launcher of another build, or in other network or mount namespaces than the daemon's, is told to run the
  call itself (``S``): it is never answered by different code, nor acted on in the wrong "host";
- a call is accepted (``A``) before it runs, and only while the launcher is still connected; after SIGTERM the
  daemon stops accepting, finishes the calls in flight, and exits — launchers that find no daemon run in process;
- the socket is bound under a temporary name and renamed into place, so a restart never leaves a moment where a
  stale file answers nothing for long: a refused connection makes the launcher fall back at once.
"""
from __future__ import annotations

import logging
import os
import select
import signal
import socket
import struct
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from cni_plugins import invoke, launcher, skel

log = logging.getLogger("berth.cni-daemon")
MAX_CONCURRENT_CALLS = 64


class CniDaemon:
    def __init__(self, socket_path: str = launcher.DEFAULT_SOCKET, build_id: Optional[str] = None,
                 max_concurrent: int = MAX_CONCURRENT_CALLS,
                 resolve: Callable[[str], Optional[skel.Handlers]] = invoke.in_process_handlers) -> None:
        from cni_plugins.buildinfo import build_id as current_build_id

        self.socket_path = socket_path
        self.build_id = build_id if build_id is not None else current_build_id()
        self.resolve = resolve
        self.max_concurrent = max_concurrent
        self.stopping = threading.Event()
        self.in_flight = 0
        self.in_flight_lock = threading.Condition()
        self.calls_served = 0
        self.listener: Optional[socket.socket] = None
        self.socket_inode = 0

    # --- lifecycle -----------------------------------------------------------------------------------------------

    def preload(self) -> None:
        """Import every plugin, and warm the netlink path they share, so the first container does not pay for it."""
        for plugin_type in invoke.IN_PROCESS:
            try:
                self.resolve(plugin_type)
            except ImportError as exc:
                log.warning("plugin %s not available: %s", plugin_type, exc)
        try:
            from cni_plugins import rtnl

            rtnl.warm()
        except (ImportError, OSError) as exc:
            log.warning("netlink warm-up failed (the first call pays for it): %s", exc)

    def bind(self) -> None:
        directory = os.path.dirname(self.socket_path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        temporary = f"{self.socket_path}.{os.getpid()}.tmp"
        if os.path.exists(temporary):
            os.unlink(temporary)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(temporary)
        finally:
            os.umask(old_umask)
        os.chmod(temporary, 0o600)
        listener.listen(128)
        os.replace(temporary, self.socket_path)
        self.socket_inode = os.stat(self.socket_path).st_ino
        self.listener = listener

    def serve_forever(self) -> None:
        assert self.listener is not None, "bind() first"
        self.listener.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if self.stopping.is_set():
                    break
                raise
            threading.Thread(target=self._serve_connection, args=(conn,), daemon=True).start()
        self._drain()

    def stop(self) -> None:
        """Stop accepting; calls in flight finish (``serve_forever`` returns once they have)."""
        self.stopping.set()
        listener, self.listener = self.listener, None
        if listener is not None:
            try:  # withdraw the socket file unless a newer daemon has already put its own in place
                if os.stat(self.socket_path).st_ino == self.socket_inode:
                    os.unlink(self.socket_path)
            except OSError:
                pass
            listener.close()

    def _drain(self) -> None:
        with self.in_flight_lock:
            while self.in_flight:
                self.in_flight_lock.wait()

    # --- one call ------------------------------------------------------------------------------------------------

    def _peer(self, conn: socket.socket) -> tuple[int, int]:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        return pid, uid

    def _serve_connection(self, conn: socket.socket) -> None:
        with conn:
            try:
                peer_pid, peer_uid = self._peer(conn)
                if peer_uid not in (0, os.geteuid()):
                    log.warning("refused a CNI call from uid %d", peer_uid)
                    return
                conn.settimeout(launcher.ACCEPT_TIMEOUT)
                build_id, plugin_type, env, stdin = self._read_request(conn)
                servable = build_id == self.build_id and same_namespaces(peer_pid)
                handlers = self._handlers_for(plugin_type) if servable else None
                if handlers is None:
                    conn.sendall(launcher.STATUS_SKEW)
                    return
                with self._admission() as admitted:
                    if not admitted:
                        conn.sendall(launcher.STATUS_BUSY)
                        return
                    self._run_accepted(conn, handlers, env, stdin)
            except (OSError, EOFError, ValueError) as exc:
                log.debug("CNI call dropped: %s", exc)

    @contextmanager
    def _admission(self) -> Iterator[bool]:
        """Whether this call may run now (not stopping, under the concurrency cap); counted while it runs, so a
        draining daemon waits for it. Checked and counted under one lock."""
        with self.in_flight_lock:
            admitted = not self.stopping.is_set() and self.in_flight < self.max_concurrent
            if admitted:
                self.in_flight += 1
        try:
            yield admitted
        finally:
            if admitted:
                with self.in_flight_lock:
                    self.in_flight -= 1
                    self.in_flight_lock.notify_all()

    def _handlers_for(self, plugin_type: str) -> Optional[skel.Handlers]:
        try:
            return self.resolve(plugin_type)
        except Exception as exc:  # noqa: BLE001 - a plugin that cannot load here is run by the launcher itself
            log.warning("cannot serve %s: %s", plugin_type, exc)
            return None

    def _read_request(self, conn: socket.socket) -> tuple[str, str, dict, bytes]:
        header = launcher.recv_exact(conn, len(launcher.MAGIC) + 1)
        if header[:-1] != launcher.MAGIC or header[-1] != launcher.PROTOCOL_VERSION:
            return "", "", {}, b""  # another protocol: answered as skew, so the launcher runs it itself
        build_id = launcher.recv_field(conn).decode()
        plugin_type = launcher.recv_field(conn).decode()
        env = launcher.decode_env(launcher.recv_field(conn))
        stdin = launcher.recv_field(conn)
        return build_id, plugin_type, env, stdin

    def _run_accepted(self, conn: socket.socket, handlers: skel.Handlers, env: dict, stdin: bytes) -> None:
        if _peer_hung_up(conn):
            return  # the launcher gave up before we accepted: it runs the call itself
        conn.sendall(launcher.STATUS_ACCEPTED)
        reply = skel.dispatch(handlers, env, stdin)
        self.calls_served += 1
        conn.settimeout(None)
        conn.sendall(launcher.pack_fields(reply.exit_code.to_bytes(4, "big"), reply.stdout, reply.stderr))


def same_namespaces(pid: int) -> bool:
    """Whether process ``pid`` shares this daemon's network and mount namespaces.

    A plugin acts on "the host" it is exec'd in (its bridge, sysctls, firewall, paths such as CNI_NETNS): a
    launcher started elsewhere (``ip netns exec``, a containerised runtime) must run the call itself."""
    try:
        return all(os.stat(f"/proc/{pid}/ns/{kind}").st_ino == os.stat(f"/proc/self/ns/{kind}").st_ino
                   for kind in ("net", "mnt"))
    except OSError:
        return False


def _peer_hung_up(conn: socket.socket) -> bool:
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def run_daemon(socket_path: str) -> int:
    """Run in the foreground until SIGTERM or SIGINT; used by ``berth cni-daemon``."""
    daemon = CniDaemon(socket_path)
    daemon.preload()
    daemon.bind()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: daemon.stop())
    log.info("serving CNI calls on %s (build %s)", socket_path, daemon.build_id[:12])
    daemon.serve_forever()
    log.info("stopped after serving %d calls", daemon.calls_served)
    return 0
