"""A thread per connection, and never more than a set number at once: the one connection cap every Berth server
built on :mod:`socketserver` uses (the operations endpoint, the Consul-compatible HTTP API, the Docker plugin).

Without a cap, a client that opens connections and never finishes them gets a thread and its stack each, without
bound. What happens to one connection more is each server's own choice: refuse it at once (with a short reply
from :meth:`CappedThreadingMixIn.refuse`, or none), or stop accepting until a slot frees so the kernel's backlog
holds the rest (:meth:`CappedThreadingMixIn.take_slot`). In ``store/`` because every daemon imports this room.
"""
from __future__ import annotations

import socketserver
import threading


class CappedThreadingMixIn(socketserver.ThreadingMixIn):
    """Mix in before a ``socketserver`` server class and call :meth:`cap_connections` in ``__init__``."""

    daemon_threads = True
    _slots: threading.BoundedSemaphore

    def cap_connections(self, limit: int) -> None:
        self.connection_limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def take_slot(self) -> bool:
        """Whether this connection may be served now (default: only if a slot is free at once)."""
        return self._slots.acquire(blocking=False)

    def refuse(self, request) -> None:
        """What a connection over the cap is told before it is closed (default: nothing)."""

    def process_request(self, request, client_address) -> None:
        if not self.take_slot():
            try:
                self.refuse(request)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
