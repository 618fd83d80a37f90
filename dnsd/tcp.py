"""DNS over TCP (RFC 7766) on one selector loop per worker: bounded in time, in connections and in buffers.

- Each message must arrive whole within ``message_timeout`` of the moment the server starts waiting for it (the
  connection's accept, or the end of the previous message): a deadline per message, not per ``recv``, so a client
  that sends a byte now and then is closed like a silent one. An idle connection is closed after it too.
- At most ``max_per_source`` connections per client address; at most ``max_connections`` in all, and when that
  is reached a new connection closes the oldest idle one first (RFC 7766 §6.2.3), or is itself closed when none is.
- Pipelined queries are answered in the order they came, forwarded ones included (they run on the worker's
  forwarding pool and hand their reply back to the loop); a client that does not read its replies is not read
  from until it does (``max_output``), and at most ``max_pending`` queries per connection wait at once.
"""
from __future__ import annotations

import logging
import queue
import selectors
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from .chain import Forward

log = logging.getLogger("berth.dnsd")
SWEEP_INTERVAL = 0.2
RECV_SIZE = 65536


@dataclass(frozen=True)
class TcpLimits:
    message_timeout: float = 10.0
    max_connections: int = 256
    max_per_source: int = 16
    max_output: int = 64 << 10
    max_pending: int = 64


class Connection:
    """One client connection's state; the framing and the order of replies live here, apart from the sockets."""

    __slots__ = ("sock", "source", "inbuf", "replies", "outbuf", "waiting_since", "events")

    def __init__(self, sock: socket.socket, source: str, now: float) -> None:
        self.sock = sock
        self.source = source
        self.inbuf = bytearray()
        self.replies: deque[list] = deque()  # one slot per query in arrival order: [bytes | None]
        self.outbuf = bytearray()
        self.waiting_since = now             # when the server began waiting for the next message
        self.events = selectors.EVENT_READ   # what the selector watches it for; 0 when not registered

    def feed(self, data: bytes, now: float) -> list[bytes]:
        """Add received bytes; the complete messages they finish, in order."""
        self.inbuf += data
        messages, start, size = [], 0, len(self.inbuf)
        while size - start >= 2:
            length = self.inbuf[start] << 8 | self.inbuf[start + 1]
            if size - start < 2 + length:
                break
            messages.append(bytes(self.inbuf[start + 2:start + 2 + length]))
            start += 2 + length
        if start:
            del self.inbuf[:start]  # once per read, however many messages it finished
            self.waiting_since = now
        return messages

    def ready_output(self) -> None:
        """Move the replies that are ready, from the front, to the output buffer (later ones wait their turn)."""
        while self.replies and self.replies[0][0] is not None:
            reply = self.replies.popleft()[0]
            if reply:
                self.outbuf += struct.pack("!H", len(reply)) + reply

    @property
    def idle(self) -> bool:
        """Nothing owed to the client: no query being answered, nothing waiting to be sent."""
        return not self.replies and not self.outbuf

    def expired(self, now: float, timeout: float) -> bool:
        """Past its message deadline, unless it is only waiting for our own upstream."""
        if now - self.waiting_since <= timeout:
            return False
        return not self.replies or bool(self.outbuf)


def oldest_idle(connections) -> Connection | None:
    idle = [c for c in connections if c.idle]
    return min(idle, key=lambda c: c.waiting_since) if idle else None


class TcpServer:
    """The loop: accepts, reads, answers through ``respond``, writes; ``forward(forward, done)`` carries out a
    forwarded question elsewhere and calls ``done(reply_bytes)`` from any thread."""

    def __init__(self, listeners: list[socket.socket], respond: Callable[[bytes, str], object],
                 forward: Callable[[Forward, Callable[[bytes | None], None]], None], limits: TcpLimits,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.listeners = listeners
        self.respond = respond
        self.forward = forward
        self.limits = limits
        self.clock = clock
        self.selector = selectors.DefaultSelector()
        self.connections: dict[socket.socket, Connection] = {}
        self.per_source: dict[str, int] = {}
        self.completed: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        self.stopping = False

    def stop(self) -> None:
        self.stopping = True
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:  # full (a wake-up is pending anyway) or closed at shutdown
            pass

    def run(self) -> None:
        for sock in self.listeners:
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, None)
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        next_sweep = self.clock() + SWEEP_INTERVAL
        try:
            while not self.stopping:
                for key, mask in self.selector.select(max(0.0, next_sweep - self.clock())):
                    if key.data is None:
                        self._accept(key.fileobj)
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        self._serve(key.data, mask)
                if self.clock() >= next_sweep:
                    self._sweep()
                    next_sweep = self.clock() + SWEEP_INTERVAL
        finally:
            for conn in list(self.connections.values()):
                self._close(conn)
            self.selector.close()
            self._wake_r.close()
            self._wake_w.close()

    # -- connections ------------------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # closed at shutdown, or out of descriptors: the next round tries again
            source = address[0]
            if self.per_source.get(source, 0) >= self.limits.max_per_source:
                sock.close()
                continue
            if len(self.connections) >= self.limits.max_connections:
                victim = oldest_idle(self.connections.values())
                if victim is None:
                    sock.close()
                    continue
                self._close(victim)
            sock.setblocking(False)
            conn = Connection(sock, source, self.clock())
            self.connections[sock] = conn
            self.per_source[source] = self.per_source.get(source, 0) + 1
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def _close(self, conn: Connection) -> None:
        if self.connections.pop(conn.sock, None) is None:
            return
        count = self.per_source.get(conn.source, 1) - 1
        if count:
            self.per_source[conn.source] = count
        else:
            self.per_source.pop(conn.source, None)
        if conn.events:
            self.selector.unregister(conn.sock)
        conn.sock.close()

    def _sweep(self) -> None:
        now = self.clock()
        for conn in [c for c in self.connections.values() if c.expired(now, self.limits.message_timeout)]:
            self._close(conn)

    # -- reading, answering, writing ---------------------------------------------------------------------
    def _serve(self, conn: Connection, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
        if mask & selectors.EVENT_READ and conn.sock in self.connections:
            self._read(conn)

    def _read(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        for message in conn.feed(data, self.clock()):
            self._answer(conn, message)
        self._flush(conn)

    def _answer(self, conn: Connection, message: bytes) -> None:
        slot: list = [None]
        conn.replies.append(slot)
        try:
            reply = self.respond(message, conn.source)
        except Exception:  # a bug must cost one answer, never the loop
            log.exception("error answering TCP from %s", conn.source)
            reply = None
        if reply.__class__ is Forward:
            def done(answer: bytes | None, slot=slot) -> None:
                slot[0] = answer or b""
                self.completed.put(conn)
                self._wake()
            self.forward(reply, done)
            return
        slot[0] = reply or b""

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return
        while True:
            try:
                conn = self.completed.get_nowait()
            except queue.Empty:
                return
            if conn.sock in self.connections:
                self._flush(conn)

    def _flush(self, conn: Connection) -> None:
        conn.ready_output()
        if conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf)
                del conn.outbuf[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._close(conn)
                return
        reading = len(conn.outbuf) < self.limits.max_output and len(conn.replies) < self.limits.max_pending
        events = (selectors.EVENT_READ if reading else 0) | (selectors.EVENT_WRITE if conn.outbuf else 0)
        if events == conn.events:
            return
        if not events:  # waiting for its forwards only: their completion flushes it again
            self.selector.unregister(conn.sock)
        elif not conn.events:
            self.selector.register(conn.sock, events, conn)
        else:
            self.selector.modify(conn.sock, events, conn)
        conn.events = events
