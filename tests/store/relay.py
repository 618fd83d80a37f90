"""A loopback TCP relay between a store client and a real server, to lose an answer on the wire on purpose.

:meth:`Relay.hold_replies` makes it swallow what the server sends; :meth:`Relay.cut` then drops every open
connection: a request the server applied never gets its answer to the client. :func:`lose_the_answer` does both
around one write, cutting once a direct client sees the write land.
"""
from __future__ import annotations

import socket
import threading
import time

from tests.store.conftest import WAIT


class Relay:
    """Loopback TCP relay to ``upstream``; :meth:`hold_replies` buffers what the server sends, :meth:`cut`
    drops every open connection (and whatever it held)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.holding = threading.Event()
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            with self.lock:
                self.pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        try:
            while data := source.recv(65536):
                if replies and self.holding.is_set():
                    continue  # held back, and dropped when the connection is cut
                if not replies:
                    self.on_request(source, data)
                sink.sendall(data)
        except OSError:
            pass

    def on_request(self, source: socket.socket, data: bytes) -> None:
        """Called with what a client sends, before it is passed on (a subclass may start holding replies)."""

    def hold_replies(self) -> None:
        self.holding.set()

    def cut(self) -> None:
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        self.holding.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()


def lose_the_answer(relay: Relay, direct, key: str, write, prefix: bool = False) -> list:
    """Run ``write`` through the relay; cut the connection once ``key`` (or, with ``prefix``, any key under it)
    is seen changed in the store."""
    def read():
        return direct.get_prefix(key)[0] if prefix else direct.get(key)

    before = read()
    outcome: list = []
    relay.hold_replies()
    thread = threading.Thread(target=lambda: outcome.append(_result_of(write)))
    thread.start()
    deadline = time.monotonic() + WAIT
    while read() == before:
        assert time.monotonic() < deadline, "the write never reached the server"
        time.sleep(0.01)
    relay.cut()
    thread.join(WAIT)
    assert not thread.is_alive()
    return outcome


def _result_of(write):
    try:
        return write()
    except Exception as exc:  # noqa: BLE001 - handed to the test's assertion
        return exc
