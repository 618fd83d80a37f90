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
- calls for one attachment (container ID, ifname, network) run one at a time in arrival order, and a GC runs
  alone on its network, never freeing what an ADD that came before it reserved (:mod:`cni_plugins.call_order`);
  an ADD whose launcher was killed still runs to its end (completed, or rolled back by its own undo);
- it refuses to start in a directory another user could write, speaks first (greeting with its build id, so a
  launcher checks whom it talks to before sending), and bounds everything a peer controls: frame sizes (stdin
  16 MiB, environment 1 MiB), connections (and so threads), and the time to deliver a request;
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
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from cni_plugins import daemon_metrics as metrics
from cni_plugins import invoke, launcher, skel
from cni_plugins.call_order import Call, CallOrder, call_of, with_valid

log = logging.getLogger("berth.cni-daemon")
MAX_CONCURRENT_CALLS = 64
MAX_CONNECTIONS = 128         # connections (one thread each) at once; more are closed at once (launchers fall back)
REQUEST_DEADLINE = 5.0        # seconds for a launcher to deliver its whole request after connecting
REPLY_SEND_TIMEOUT = 30.0     # seconds a launcher may take to read its answer


class UnsafeSocketDirectory(RuntimeError):
    """The socket's directory (or one above it) could be written by a user the launchers do not trust."""


class CniDaemon:
    def __init__(self, socket_path: str = launcher.DEFAULT_SOCKET, build_id: Optional[str] = None,
                 max_concurrent: int = MAX_CONCURRENT_CALLS,
                 resolve: Callable[[str], Optional[skel.Handlers]] = invoke.in_process_handlers,
                 max_connections: int = MAX_CONNECTIONS, request_deadline: float = REQUEST_DEADLINE) -> None:
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
        self.idle_exit = 0.0  # with an adopted socket: exit after this many idle seconds (0: never)
        self.last_active = time.monotonic()
        self.order = CallOrder()
        self.connections = threading.BoundedSemaphore(max_connections)
        self.request_deadline = request_deadline
        self.connections_refused = 0

    # --- lifecycle -----------------------------------------------------------------------------------------------

    def preload(self) -> None:
        """Import every plugin, and warm the netlink path they share, so the first container does not pay for it."""
        for plugin_type in invoke.IN_PROCESS:
            try:
                self.resolve(plugin_type)
            except ImportError as exc:
                log.warning("plugin %s not available: %s", plugin_type, exc)
        try:
            from datapath import rtnl

            rtnl.warm()
        except (ImportError, OSError) as exc:
            log.warning("netlink warm-up failed (the first call pays for it): %s", exc)

    def bind(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.socket_path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        reason = launcher.untrusted_reason(self.socket_path, (0, os.geteuid()), own_dir_only=True)
        if reason is not None:  # another user could put a listener of their own where launchers look
            raise UnsafeSocketDirectory(f"refusing to serve on {self.socket_path}: {reason}")
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

    def adopt(self, listener: socket.socket, idle_exit: float = 0.0) -> None:
        """Serve on a listening socket the init system made (socket activation). The socket stays its owner's:
        ``stop`` never removes its file, and connections that arrive after an idle exit wait in it until the
        init system starts the daemon again."""
        reason = launcher.untrusted_reason(self.socket_path, (0, os.geteuid()))
        if reason is not None:  # bind()'s rule, and the socket file too: launchers must trust where it lives
            raise UnsafeSocketDirectory(f"refusing to serve on {self.socket_path}: {reason}")
        self.listener = listener
        self.socket_inode = 0
        self.idle_exit = idle_exit

    def _idle_too_long(self) -> bool:
        with self.in_flight_lock:
            return bool(self.idle_exit) and not self.in_flight and \
                time.monotonic() - self.last_active > self.idle_exit

    def serve_forever(self) -> None:
        assert self.listener is not None, "bind() or adopt() first"
        self.listener.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                if self._idle_too_long():
                    log.info("idle for %.0f s: exiting (the socket stays with the init system)", self.idle_exit)
                    self.stopping.set()
                continue
            except OSError:
                if self.stopping.is_set():
                    break
                raise
            if not self.connections.acquire(blocking=False):
                self.connections_refused += 1
                metrics.SENT_BACK.labels("connections").inc()
                conn.close()  # at the cap: the launcher sees the close before any ``A`` and runs the call itself
                continue
            threading.Thread(target=self._serve_counted, args=(conn,), daemon=True).start()
        self._drain()

    def _serve_counted(self, conn: socket.socket) -> None:
        try:
            self._serve_connection(conn)
        finally:
            self.connections.release()

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
                    metrics.SENT_BACK.labels("uid").inc()
                    return
                conn.settimeout(launcher.ACCEPT_TIMEOUT)
                conn.sendall(launcher.encode_greeting(self.build_id))
                build_id, plugin_type, env, stdin = self._read_request(conn)
                servable = build_id == self.build_id and same_namespaces(peer_pid)
                handlers = self._handlers_for(plugin_type) if servable else None
                if handlers is None:
                    metrics.SENT_BACK.labels("skew").inc()
                    conn.sendall(launcher.STATUS_SKEW)
                    return
                call = call_of(env, stdin)
                with self._admission(call) as admitted:
                    if not admitted:
                        metrics.SENT_BACK.labels("busy").inc()
                        conn.sendall(launcher.STATUS_BUSY)
                        return
                    self._run_accepted(conn, handlers, env, stdin, call, plugin_type)
            except (OSError, EOFError, ValueError) as exc:
                log.debug("CNI call dropped: %s", exc)

    @contextmanager
    def _admission(self, call: Optional[Call] = None) -> Iterator[bool]:
        """Whether this call may run now (not stopping, under the concurrency cap); counted while it runs, so a
        draining daemon waits for it. Checked and counted under one lock. A call that would queue behind one here
        is admitted over the cap: sent back, it would run in process beside that one, out of order (a DEL before
        its ADD, an ADD under a GC, a GC beside an ADD). The connection cap still bounds how many wait."""
        with self.in_flight_lock:
            ordered_behind = call is not None and self.order.would_wait(call)
            admitted = not self.stopping.is_set() and (self.in_flight < self.max_concurrent or ordered_behind)
            if admitted:
                self.in_flight += 1
                self.last_active = time.monotonic()
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
        """The whole request within one deadline, each field under its cap (checked before it is read)."""
        deadline = time.monotonic() + self.request_deadline
        header = launcher.recv_exact(conn, len(launcher.MAGIC) + 1, deadline)
        if header[:-1] != launcher.MAGIC or header[-1] != launcher.PROTOCOL_VERSION:
            return "", "", {}, b""  # another protocol: answered as skew, so the launcher runs it itself
        build_id = launcher.recv_field(conn, launcher.MAX_NAME, deadline).decode()
        plugin_type = launcher.recv_field(conn, launcher.MAX_NAME, deadline).decode()
        env = launcher.decode_env(launcher.recv_field(conn, launcher.MAX_ENV, deadline))
        stdin = launcher.recv_field(conn, launcher.MAX_STDIN, deadline)
        return build_id, plugin_type, env, stdin

    def _run_accepted(self, conn: socket.socket, handlers: skel.Handlers, env: dict, stdin: bytes,
                      call: Optional[Call] = None, plugin_type: str = "") -> None:
        if _peer_hung_up(conn):
            return  # the launcher gave up before we accepted: it runs the call itself
        conn.sendall(launcher.STATUS_ACCEPTED)
        # From here the call runs to its end whatever happens to the launcher: waiting for its turn, then the
        # plugin's own plan/apply/undo. Only sending the answer can fail.
        started = time.monotonic()
        metrics.IN_FLIGHT.inc()
        try:
            with self.order.turn(call) as added_before:
                reply = skel.dispatch(handlers, env, with_valid(stdin, added_before))
        finally:
            metrics.IN_FLIGHT.dec()
        metrics.record_call(plugin_type, env, reply.exit_code, reply.stdout, time.monotonic() - started)
        self.calls_served += 1
        conn.settimeout(REPLY_SEND_TIMEOUT)
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


def run_daemon(socket_path: str, inherited: Optional[socket.socket] = None, idle_exit: float = 0.0,
               on_listening: Optional[Callable[["CniDaemon"], None]] = None) -> int:
    """Run in the foreground until SIGTERM or SIGINT (or, socket-activated, an idle period); used by
    ``berth cni-daemon``. ``on_listening`` is called once the socket is bound or adopted."""
    daemon = CniDaemon(socket_path)
    try:
        if inherited is not None:
            # the call that woke us waits in the socket: serve it now, warm the other plugins meanwhile
            daemon.adopt(inherited, idle_exit)
            threading.Thread(target=daemon.preload, name="preload", daemon=True).start()
        else:
            daemon.preload()
            daemon.bind()
    except UnsafeSocketDirectory as exc:
        log.error("%s", exc)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: daemon.stop())
    if on_listening is not None:
        on_listening(daemon)
    log.info("serving CNI calls on %s (build %s)", socket_path, daemon.build_id[:12])
    daemon.serve_forever()
    log.info("stopped after serving %d calls", daemon.calls_served)
    return 0
