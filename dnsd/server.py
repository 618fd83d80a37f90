"""The socket shell: moves bytes between sockets and the :class:`Responder`; no DNS logic lives here.

UDP: one blocking loop per socket (``udp_batch``) whose cache hit costs a dict lookup and a share of one batched
send. TCP (RFC 7766): one selector loop per worker (``tcp``) with deadlines and connection caps. Forwarded questions run on a
small thread pool so a slow upstream never stalls the loop. Several worker processes may share a port through
SO_REUSEPORT, each with its own view and responder.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from . import stats as dns_stats
from . import udp_batch
from . import upstream as upstream_io
from .chain import Forward
from .responder import Responder
from .tcp import TcpLimits, TcpServer

log = logging.getLogger("berth.dnsd")
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ServerOptions:
    listen: tuple[tuple[str, int], ...] = (("127.0.0.1", 0),)
    workers: int = 1
    tcp_idle_timeout: float = 10.0  # each whole TCP message within this (tcp.py), idle connections closed after it
    max_tcp_connections: int = 256
    max_tcp_per_source: int = 16
    upstreams: tuple[upstream_io.Upstream, ...] = ()
    upstream_timeout: float = 2.0
    forward_threads: int = 16
    max_pending_forwards: int = 1024  # past this, SERVFAIL at once rather than queue without bound
    batched_udp: bool = True  # recvmmsg/sendmmsg where the platform has them


@dataclass
class Listener:
    """The sockets of one listen address: a UDP socket per worker (SO_REUSEPORT) and one TCP socket."""

    host: str
    port: int
    udp: list[socket.socket] = field(default_factory=list)
    tcp: socket.socket | None = None

    def close(self) -> None:
        for sock in (*self.udp, self.tcp):
            if sock is not None:
                sock.close()


def bind_listener(host: str, port: int, workers: int, attempts: int = 20) -> Listener:
    """Bind UDP and TCP on the same port (a free one when ``port`` is 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    last_error: OSError | None = None
    for _ in range(attempts if port == 0 else 1):
        listener = Listener(host, port)
        try:
            for _ in range(workers):
                sock = socket.socket(family, socket.SOCK_DGRAM)
                listener.udp.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                sock.bind((host, listener.port))
                listener.port = sock.getsockname()[1]
            tcp = socket.socket(family, socket.SOCK_STREAM)
            listener.tcp = tcp
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((host, listener.port))
            tcp.listen(128)
            return listener
        except OSError as exc:
            listener.close()
            last_error = exc
    raise OSError(f"cannot listen on {host}:{port}: {last_error}")


class Worker:
    """One responder and the threads that serve its sockets."""

    def __init__(self, responder: Responder, options: ServerOptions) -> None:
        self.responder = responder
        self.options = options
        self.stopping = threading.Event()
        self.forward_pool = ThreadPoolExecutor(options.forward_threads, thread_name_prefix="dnsd-forward")
        self.forward_slots = threading.BoundedSemaphore(options.max_pending_forwards)
        respond = self.responder.respond
        self.tcp = TcpServer([], lambda data, client: respond(data, client, True), self.forward_tcp,
                             TcpLimits(options.tcp_idle_timeout, options.max_tcp_connections,
                                       options.max_tcp_per_source))
        self.threads: list[threading.Thread] = []
        self.sockets: list[socket.socket] = []

    def start(self, udp_socks: list[socket.socket], tcp_socks: list[socket.socket]) -> None:
        for sock in udp_socks:
            self._spawn(self.serve_udp, sock)
        if tcp_socks:
            self.sockets.extend(tcp_socks)
            thread = threading.Thread(target=self.tcp.run, daemon=True, name="dnsd-tcp")
            self.tcp.listeners = list(tcp_socks)
            thread.start()
            self.threads.append(thread)

    def _spawn(self, target: Callable, sock: socket.socket) -> None:
        self.sockets.append(sock)
        thread = threading.Thread(target=target, args=(sock,), daemon=True, name=f"dnsd-{target.__name__}")
        thread.start()
        self.threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        self.tcp.stop()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recvfrom/accept
            except OSError:
                pass
        for thread in self.threads:
            thread.join(timeout=5)
        for sock in self.sockets:
            sock.close()
        self.forward_pool.shutdown(wait=False, cancel_futures=True)

    # -- UDP ------------------------------------------------------------------------------------------------
    def serve_udp(self, sock: socket.socket) -> None:
        responder = self.responder
        view = responder.view

        def refresh() -> None:
            if view.revision != responder.revision:
                responder.refresh()

        def slow(data: bytes, client) -> bytes | None:
            try:
                reply = responder.respond_slowly(data, client[0], False)
            except Exception as exc:  # a bug must cost one answer, never the server
                log.error("error answering %s: %r", client, exc)
                return None
            if reply.__class__ is Forward:
                return self.start_forward(sock, reply, client)
            return reply

        # packed_udp is cleared in place on every revision change, never replaced
        udp_batch.serve(sock, responder.packed_udp, refresh, slow, self.stopping, self.options.batched_udp)

    def start_forward(self, sock: socket.socket, forward: Forward, client) -> bytes | None:
        """Queue the upstream question; when too many are waiting already, SERVFAIL now (returned)."""
        if not self.forward_slots.acquire(blocking=False):
            self.responder.stats.overflowed()
            return self.responder.complete(forward, None)
        self.forward_pool.submit(self._forward_udp, sock, forward, client)
        return None

    def ask_upstream(self, forward: Forward) -> bytes | None:
        """The upstreams' reply (None when none answered), timed and counted for the metrics."""
        started = time.monotonic()
        reply = None
        try:
            reply = upstream_io.resolve(forward.packet, list(self.options.upstreams), self.options.upstream_timeout)
            return reply
        finally:
            self.responder.stats.forwarded(time.monotonic() - started, reply is not None)

    def _forward_udp(self, sock: socket.socket, forward: Forward, client) -> None:
        try:
            reply = self.ask_upstream(forward)
            sock.sendto(self.responder.complete(forward, reply), client)
        except Exception as exc:
            log.warning("forwarding for %s failed: %r", client, exc)
        finally:
            self.forward_slots.release()

    # -- TCP ------------------------------------------------------------------------------------------------
    def forward_tcp(self, forward: Forward, done: Callable[[bytes | None], None]) -> None:
        """Ask upstream on the pool; ``done`` gets the client's reply (SERVFAIL at once when the pool is full)."""
        if not self.forward_slots.acquire(blocking=False):
            self.responder.stats.overflowed()
            done(self.responder.complete(forward, None))
            return

        def work() -> None:
            try:
                reply = self.ask_upstream(forward)
                done(self.responder.complete(forward, reply))
            except Exception as exc:
                log.warning("forwarding over TCP for %s failed: %r", forward.client, exc)
                done(None)
            finally:
                self.forward_slots.release()
        self.forward_pool.submit(work)


def run_workers(listeners: list[Listener], make_responder: Callable[[], Responder], options: ServerOptions,
                ready: Callable[[], None] = lambda: None, hub: dns_stats.Hub | None = None) -> int:
    """Serve until SIGTERM/SIGINT. With one worker, in this process; with more, one forked process each.
    ``hub`` learns where every worker's counts are read (this process, or a socket pair to each child)."""
    hub = hub if hub is not None else dns_stats.Hub()
    hub.expected = max(1, options.workers)
    if options.workers <= 1:
        worker = Worker(make_responder(), options)
        hub.local.append(lambda: dns_stats.snapshot(worker.responder, worker.responder.stats))
        worker.start([ln.udp[0] for ln in listeners], [ln.tcp for ln in listeners])
        ready()
        _wait_for_signal()
        worker.stop()
        return 0
    children = []
    for index in range(options.workers):
        ours, theirs = dns_stats.snapshot_channel()
        pid = os.fork()
        if pid == 0:
            _die_with_parent()
            try:
                ours.close()
                for earlier in hub.remote:
                    earlier.close()
                worker = Worker(make_responder(), options)
                dns_stats.serve_snapshots(theirs, lambda: dns_stats.snapshot(worker.responder,
                                                                             worker.responder.stats))
                worker.start([ln.udp[index] for ln in listeners], [ln.tcp for ln in listeners])
                _wait_for_signal()
            finally:
                os._exit(0)
        theirs.close()
        hub.remote.append(ours)
        children.append(pid)
    ready()
    _wait_for_signal()
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for pid in children:
        os.waitpid(pid, 0)
    return 0


def _wait_for_signal() -> None:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(3600):
        pass


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
