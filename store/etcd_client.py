"""gRPC plumbing for the etcd backend: endpoints, failover, retries, and gRPC errors turned into Berth's.

We speak etcd's v3 gRPC API through the stubs that etcd-sdk-python ships (``pyetcd.etcdrpc``) rather than
through its client class: that client parks a failed endpoint for minutes, does not retry, and its watcher
gives up on compaction or a lost connection. Here each member gets a channel; a call that finds its member
gone moves to the next one and tries again within the store's time budget.
"""
from __future__ import annotations

import random
import threading
import time
from typing import Callable, TypeVar

import grpc

from store.api import Compacted, InvalidRequest, LeaseNotFound, OutcomeUnknown, StoreError, StoreUnavailable
from store.deadline import time_left

T = TypeVar("T")

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),       # etcd refuses pings more often than every 5 s
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.max_receive_message_length", 256 << 20),  # a large prefix listing; gRPC's default is 4 MiB
]
# Codes that mean "this member cannot answer now": no leader, leader changed, member down or restarting.
FAILOVER_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
                  grpc.StatusCode.RESOURCE_EXHAUSTED}
# Failures that prove the request was never applied: the channel never reached a member, or the member refused it
# before proposing it to raft. Any other failover code after the request left may hide an applied write.
NOT_SENT_DETAILS = ("failed to connect to all addresses", "etcdserver: no leader", "etcdserver: too many requests")


def never_applied(exc: grpc.RpcError) -> bool:
    detail = (exc.details() if hasattr(exc, "details") else "") or ""
    return any(marker in detail for marker in NOT_SENT_DETAILS)


def store_error(exc: grpc.RpcError, what: str) -> StoreError:
    """One gRPC failure as the matching :class:`StoreError` subclass."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    detail = (exc.details() if hasattr(exc, "details") else "") or str(code)
    message = f"etcd: {what}: {detail}"
    if code == grpc.StatusCode.NOT_FOUND and "lease" in detail:
        return LeaseNotFound(message)
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in detail:
        return Compacted(message)
    if code == grpc.StatusCode.INVALID_ARGUMENT or (code == grpc.StatusCode.OUT_OF_RANGE and "future" in detail):
        return InvalidRequest(message)
    if code in FAILOVER_CODES or code == grpc.StatusCode.CANCELLED:
        return StoreUnavailable(message)
    error = StoreError(message)
    error.retryable = False
    return error


def parse_endpoints(netloc: str) -> list[str]:
    """``h:p[,h:p...]`` → ["h:p", ...]; an IPv6 host goes in brackets."""
    endpoints = []
    for part in netloc.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidRequest(f"etcd endpoint {part!r}: expected host:port")
        endpoints.append(f"{host}:{port}")
    return endpoints


class Endpoints:
    """The cluster's members and the one in use; a failure moves every later call to the next member."""

    def __init__(self, endpoints: list[str]) -> None:
        self.addresses = endpoints
        self._channels: dict[str, grpc.Channel] = {}
        self._current = 0
        self._lock = threading.Lock()
        self._closed = False

    @property
    def current(self) -> str:
        return self.addresses[self._current]

    def channel(self, address: str) -> grpc.Channel:
        with self._lock:
            if self._closed:
                raise StoreError("etcd store is closed")
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
            return channel

    def failed(self, address: str) -> None:
        """Move on from ``address`` (unless another thread already did)."""
        with self._lock:
            if self.addresses[self._current] == address and len(self.addresses) > 1:
                self._current = (self._current + 1) % len(self.addresses)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()


class Caller:
    """Runs one RPC with failover: retries on another member until ``budget`` seconds have passed (or the
    caller's :func:`store.deadline.call_deadline`, when nearer).

    A call that is not ``idempotent`` (a transaction with compares) is retried only after a failure that proves
    it was never applied; after any other failover error it raises :class:`OutcomeUnknown`, because a blind
    retry of a compare-and-swap that did apply would fail against its own write and report a lost race."""

    def __init__(self, endpoints: Endpoints, call_timeout: float, budget: float) -> None:
        self.endpoints = endpoints
        self.call_timeout = call_timeout
        self.budget = budget

    def __call__(self, what: str, attempt: Callable[[grpc.Channel, float], T], idempotent: bool = True) -> T:
        deadline = time.monotonic() + max(0.05, time_left(self.budget))
        pause = 0.02
        while True:
            address = self.endpoints.current
            remaining = deadline - time.monotonic()
            try:
                return attempt(self.endpoints.channel(address), max(0.05, min(self.call_timeout, remaining)))
            except grpc.RpcError as exc:
                if exc.code() not in FAILOVER_CODES:
                    raise store_error(exc, what) from exc
                self.endpoints.failed(address)
                if not idempotent and not never_applied(exc):
                    raise OutcomeUnknown(f"etcd: {what}: outcome unknown: {exc.details() or exc.code()}") from exc
                if time.monotonic() + pause >= deadline:
                    raise store_error(exc, what) from exc
                time.sleep(pause * (0.5 + random.random()))
                pause = min(pause * 2, 0.5)
