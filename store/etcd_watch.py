"""A watch on etcd that keeps its place when a member dies and re-lists when etcd compacted past it.

The stream runs in a thread of its own, started by the first read, and hands batches over a queue. When the
stream breaks (member killed, leader lost: the stream asks for a leader with ``hasleader``), the watch moves
to the next member and resumes from the revision after the last event it delivered, so nothing is missed
or repeated. When etcd answers that this revision is compacted, the watch re-lists the prefix and emits the
difference from what it delivered so far, marked ``resynced``.
"""
from __future__ import annotations

import queue
import random
import threading
from typing import TYPE_CHECKING

import grpc
from pyetcd.etcdrpc import rpc_pb2 as rpc
from pyetcd.etcdrpc import rpc_pb2_grpc as rpc_grpc

from store.api import Compacted, InvalidRequest, StoreError, StoreUnavailable, WatchBatch, WatchEvent
from store.common import BatchIteration, PrefixView
from store.etcd_client import FAILOVER_CODES, store_error

if TYPE_CHECKING:
    from store.etcd import EtcdStore

REQUIRE_LEADER = (("hasleader", "true"),)
EVENT_KINDS = {0: "put", 1: "delete"}


class EtcdWatch(BatchIteration):
    """Changes under a prefix as :class:`WatchBatch` es; the state before ``start_revision`` is read at once."""

    def __init__(self, store: "EtcdStore", prefix: str, start_revision: int | None) -> None:
        from store.etcd import key_range

        self.store = store
        self.prefix = prefix
        self._key, self._range_end = key_range(prefix)
        if start_revision is None:
            response = store.range(prefix, keys_only=True)
            known, self.next_revision = self._keys(response), response.header.revision + 1
        else:
            known, self.next_revision = self._state_before(start_revision), start_revision
        self.view = PrefixView(prefix, known)
        self.endpoint: str | None = None
        self._batches: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._call = None
        self._requests: queue.Queue | None = None

    @staticmethod
    def _keys(response) -> dict[str, int]:
        return {kv.key.decode(): kv.mod_revision for kv in response.kvs}

    def _state_before(self, start_revision: int) -> dict[str, int]:
        if start_revision == 1:
            return {}
        try:
            return self._keys(self.store.range(self.prefix, revision=start_revision - 1, keys_only=True))
        except Compacted as exc:
            raise Compacted(f"watch from revision {start_revision}: {exc}; re-list with get_prefix and watch "
                            f"from its revision + 1") from exc
        except InvalidRequest:  # a future revision: nothing will have changed before it
            return self._keys(self.store.range(self.prefix, keys_only=True))

    # -- reading -----------------------------------------------------------------------------------------

    def next_batch(self, timeout: float | None = None) -> WatchBatch | None:
        """The next batch of changes; None when ``timeout`` seconds pass first or the watch is closed."""
        if self._closed.is_set():
            return None
        self._start()
        try:
            item = self._batches.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is None:
            self._batches.put(None)  # stay ended for every later read
            return None
        if isinstance(item, Exception):
            self._batches.put(None)
            raise item
        return item

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"berth-watch {self.prefix}", daemon=True)
                self._thread.start()

    # -- the stream thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        pause = 0.02
        while not self._closed.is_set():
            address = self.store.endpoints.current
            try:
                self._follow(address)
                pause = 0.02
                continue
            except grpc.RpcError as exc:
                if self._closed.is_set():
                    break
                if exc.code() not in FAILOVER_CODES | {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN}:
                    self._batches.put(store_error(exc, "watch"))
                    break
            except StoreUnavailable:
                pass
            except StoreError as exc:
                self._batches.put(exc)
                break
            except ValueError as exc:  # the channel was closed under us by close()
                if not self._closed.is_set():
                    self._batches.put(StoreError(f"etcd: watch: {exc}"))
                break
            self.store.endpoints.failed(address)
            self._closed.wait(pause * (0.5 + random.random()))
            pause = min(pause * 2, 0.5)
        self._batches.put(None)

    def _follow(self, address: str) -> None:
        """One stream on one member, until it breaks (raises) or must re-list after compaction (returns)."""
        requests: queue.Queue = queue.Queue()
        requests.put(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=self._key, range_end=self._range_end, start_revision=self.next_revision)))

        def outgoing():
            while (request := requests.get()) is not None:
                yield request

        call = rpc_grpc.WatchStub(self.store.endpoints.channel(address)).Watch(outgoing(), metadata=REQUIRE_LEADER)
        with self._lock:
            self._call, self._requests, self.endpoint = call, requests, address
        if self._closed.is_set():
            call.cancel()
        try:
            for response in call:
                if response.compact_revision:
                    self._resync()
                    return
                if response.canceled:
                    raise StoreUnavailable(f"etcd: watch cancelled by {address}: {response.cancel_reason}")
                if response.events:
                    self._deliver(response.events)
            raise StoreUnavailable(f"etcd: watch stream from {address} ended")
        finally:
            requests.put(None)
            call.cancel()

    def _deliver(self, raw_events) -> None:
        events = tuple(WatchEvent(EVENT_KINDS[event.type], event.kv.key.decode(),
                                  bytes(event.kv.value) if event.type == 0 else b"", event.kv.mod_revision)
                       for event in raw_events)
        self.view.apply(events)
        self.next_revision = events[-1].mod_revision + 1
        self._batches.put(WatchBatch(events[-1].mod_revision, events))

    def _resync(self) -> None:
        current, revision = self.store.get_prefix(self.prefix)
        events = self.view.difference(current, revision)
        self.next_revision = revision + 1
        if events:
            self._batches.put(WatchBatch(revision, tuple(events), resynced=True))

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            call, requests, thread = self._call, self._requests, self._thread
        if call is not None:
            call.cancel()
        if requests is not None:
            requests.put(None)
        self._batches.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def __enter__(self) -> "EtcdWatch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
