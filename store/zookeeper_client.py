"""kazoo with a deadline on every call, and ZooKeeper's connection errors mapped onto Berth's.

kazoo's blocking calls wait without a bound while the client reconnects, so every request here is made
through kazoo's asynchronous API and waited for at most ``call_timeout`` seconds. A call that fails because
the connection is down (lost, expired, timed out) is tried again, after a short growing pause, until
``budget`` seconds have passed (or a caller's :func:`store.deadline.call_deadline`, when nearer); then it raises
:class:`StoreUnavailable`. Only idempotent requests (reads, and writes whose outcome the caller can check) go
through :meth:`Calls.retrying`.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import threading
import time
from typing import Callable, Iterator, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import (BadVersionError, ConnectionClosedError, ConnectionLoss, KazooException, NodeExistsError,
                              NoNodeError, NotEmptyError, OperationTimeoutError, SessionExpiredError)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from store.api import StoreError, StoreUnavailable
from store.deadline import time_left

T = TypeVar("T")
ANSWERS = (NoNodeError, NodeExistsError, BadVersionError, NotEmptyError)   # the server's answer; callers decide
TRANSIENT = (ConnectionLoss, SessionExpiredError, OperationTimeoutError, KazooTimeoutError)
SESSION_TIMEOUT = 10.0   # seconds ZooKeeper keeps a silent client's session (its watches and ephemeral nodes)
log = logging.getLogger(__name__)


def connect(hosts: str, budget: float, session_timeout: float = SESSION_TIMEOUT) -> KazooClient:
    """A started client that reconnects on its own, forever, with pauses of at most one second."""
    client = KazooClient(hosts=hosts, timeout=session_timeout,
                         connection_retry=KazooRetry(max_tries=-1, delay=0.05, backoff=2, max_delay=1.0),
                         command_retry=None)
    try:
        client.start(timeout=budget)
    except (KazooTimeoutError, KazooException) as exc:
        client.stop()
        client.close()
        raise StoreUnavailable(f"zookeeper {hosts}: no server answered within {budget:.0f}s ({exc})") from exc
    return client


class Calls:
    def __init__(self, client: KazooClient, hosts: str, call_timeout: float, budget: float) -> None:
        self.client = client
        self.hosts = hosts
        self.call_timeout = call_timeout
        self.budget = budget
        self._local = threading.local()
        self.closed = False

    @contextlib.contextmanager
    def within(self, seconds: float) -> Iterator[None]:
        """Calls this thread makes inside the block give up after ``seconds`` at most (a watch's timeout)."""
        previous = getattr(self._local, "deadline", math.inf)
        self._local.deadline = min(previous, time.monotonic() + max(seconds, 0.0))
        try:
            yield
        finally:
            self._local.deadline = previous

    def wait(self, pending, what: str):
        """The result of one asynchronous kazoo request, within ``call_timeout``; its error re-raised."""
        remaining = getattr(self._local, "deadline", math.inf) - time.monotonic()
        timeout = max(0.05, min(time_left(self.call_timeout), remaining))
        try:
            return pending.get(timeout=timeout)
        except KazooTimeoutError as exc:
            raise OperationTimeoutError(f"{what}: no answer within {timeout:.2f}s") from exc

    def retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """``attempt()`` again while the connection is down, for at most ``budget`` seconds."""
        deadline = min(time.monotonic() + time_left(self.budget), getattr(self._local, "deadline", math.inf))
        pause = 0.02
        while True:
            if self.closed:
                raise StoreError(f"zookeeper {self.hosts}: {what}: the store is closed")
            try:
                return attempt()
            except TRANSIENT as exc:
                if time.monotonic() + pause > deadline:
                    raise StoreUnavailable(f"zookeeper {self.hosts}: {what}: {type(exc).__name__}: {exc}") from exc
                log.debug("zookeeper %s: %s: %r; trying again", self.hosts, what, exc)
            except (StoreError, *ANSWERS):
                raise
            except ConnectionClosedError as exc:  # kazoo says this only once the client was stopped
                raise StoreError(f"zookeeper {self.hosts}: {what}: the store is closed") from exc
            except KazooException as exc:
                raise StoreError(f"zookeeper {self.hosts}: {what}: {type(exc).__name__}: {exc}") from exc
            time.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, 0.5)

    # -- shorthands for single requests, each bounded --------------------------------------------------------

    def get(self, path: str, watch=None):
        return self.wait(self.client.get_async(path, watch=watch), f"get {path}")

    def children(self, path: str) -> list[str]:
        return self.wait(self.client.get_children_async(path), f"list {path}")

    def set(self, path: str, data: bytes, version: int = -1):
        return self.wait(self.client.set_async(path, data, version), f"set {path}")

    def create(self, path: str, data: bytes = b""):
        return self.wait(self.client.create_async(path, data), f"create {path}")

    def get_many(self, paths: list[str]) -> list[tuple[bytes, object] | None]:
        """Pipelined reads (sent together, answered in order); None for a node that does not exist."""
        pending = [self.client.get_async(path) for path in paths]
        results = []
        for path, request in zip(paths, pending):
            try:
                results.append(self.wait(request, f"get {path}"))
            except NoNodeError:
                results.append(None)
        return results

    def delete_many(self, paths: list[str]) -> None:
        """Pipelined deletes; a node already gone is fine."""
        pending = [self.client.delete_async(path) for path in paths]
        for path, request in zip(paths, pending):
            try:
                self.wait(request, f"delete {path}")
            except NoNodeError:
                pass

    def close(self) -> None:
        self.closed = True
        try:
            self.client.stop()
        finally:
            self.client.close()
