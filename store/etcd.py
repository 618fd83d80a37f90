"""The etcd v3 backend: the store contract over etcd's gRPC API, with failover across the cluster's members.

etcd already has the contract's semantics (revisions, leases, transactions, watches from a revision), so
this module is mostly translation; what it adds is endpoint failover (see ``etcd_client``) and a watch that
survives a member's death and compaction (see ``etcd_watch``).

A write retried after its member died mid-call may have been applied once already: a retried ``put`` is
harmless, a retried ``create`` may then report a lost race that it in fact won (the key holds its value).
"""
from __future__ import annotations

import math
from typing import Sequence
from urllib.parse import parse_qs, urlparse

from pyetcd.etcdrpc import rpc_pb2 as rpc
from pyetcd.etcdrpc import rpc_pb2_grpc as rpc_grpc

from store.api import Compare, Delete, InvalidRequest, KeyValue, Lease, LeaseNotFound, Put, TxnResult
from store.common import (OpenWatches, check_compares, check_key, check_lease_id, check_ops, check_revision, check_ttl,
                          check_value, prefix_range_end)
from store.etcd_client import Caller, Endpoints, parse_endpoints
from store.etcd_watch import EtcdWatch

CALL_TIMEOUT = 5.0    # seconds one RPC may take on one member
BUDGET = 15.0         # seconds a call keeps failing over before it gives up (an election takes ~1 s)

COMPARE_TARGETS = {"value": rpc.Compare.VALUE, "version": rpc.Compare.VERSION,
                   "create_revision": rpc.Compare.CREATE, "mod_revision": rpc.Compare.MOD}
COMPARE_OPS = {"=": rpc.Compare.EQUAL, "!=": rpc.Compare.NOT_EQUAL, "<": rpc.Compare.LESS,
               ">": rpc.Compare.GREATER}


def key_range(prefix: str) -> tuple[bytes, bytes]:
    """etcd's (key, range_end) for every key under ``prefix``; b"\\0" as range_end means "to the end"."""
    start = prefix.encode() or b"\0"
    return start, prefix_range_end(prefix.encode()) or b"\0"


def to_kv(kv) -> KeyValue:
    return KeyValue(kv.key.decode(), bytes(kv.value), kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def to_request_op(op: Put | Delete) -> rpc.RequestOp:
    if isinstance(op, Put):
        return rpc.RequestOp(request_put=rpc.PutRequest(key=op.key.encode(), value=op.value, lease=op.lease))
    if op.prefix:
        start, end = key_range(op.key)
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=start, range_end=end))
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=op.key.encode()))


def to_compare(compare: Compare) -> rpc.Compare:
    fields = {"value": "value", "version": "version", "create_revision": "create_revision",
              "mod_revision": "mod_revision"}
    return rpc.Compare(result=COMPARE_OPS[compare.op], target=COMPARE_TARGETS[compare.target],
                       key=compare.key.encode(), **{fields[compare.target]: compare.value})


class EtcdStore:
    """Thread-safe: gRPC channels are shared by every thread."""

    def __init__(self, endpoints: list[str], call_timeout: float = CALL_TIMEOUT, budget: float = BUDGET) -> None:
        if not endpoints:
            raise InvalidRequest("etcd store needs at least one endpoint")
        self.endpoints = Endpoints(endpoints)
        self.call = Caller(self.endpoints, call_timeout, budget)
        self._watches = OpenWatches(EtcdWatch)

    @classmethod
    def from_url(cls, url: str) -> "EtcdStore":
        """``etcd://h:p[,h:p...]``, optionally ``?timeout=SECONDS`` (the failover budget of one call)."""
        parsed = urlparse(url)
        if parsed.scheme != "etcd" or not parsed.netloc or parsed.path not in ("", "/"):
            raise InvalidRequest(f"store URL {url!r}: expected etcd://host:port[,host:port...]")
        options = parse_qs(parsed.query)
        budget = BUDGET
        if "timeout" in options:
            try:
                budget = float(options["timeout"][-1])
            except ValueError:
                budget = math.nan
            if not math.isfinite(budget) or budget <= 0:
                raise InvalidRequest(f"store URL {url!r}: timeout must be a positive number of seconds")
        return cls(parse_endpoints(parsed.netloc), budget=budget)

    @property
    def endpoint(self) -> str:
        """The member calls go to now."""
        return self.endpoints.current

    # -- RPC helpers -------------------------------------------------------------------------------------

    def _kv(self, what: str, method: str, request):
        return self.call(what, lambda channel, timeout: getattr(rpc_grpc.KVStub(channel), method)(
            request, timeout=timeout))

    def _lease(self, what: str, method: str, request):
        return self.call(what, lambda channel, timeout: getattr(rpc_grpc.LeaseStub(channel), method)(
            request, timeout=timeout))

    def range(self, prefix: str, revision: int = 0, keys_only: bool = False):
        start, end = key_range(prefix)
        return self._kv("get prefix", "Range", rpc.RangeRequest(key=start, range_end=end, revision=revision,
                                                                 keys_only=keys_only))

    # -- keys --------------------------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        check_key(key)
        response = self._kv("get", "Range", rpc.RangeRequest(key=key.encode()))
        return to_kv(response.kvs[0]) if response.kvs else None

    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        check_key(prefix, "prefix")
        response = self.range(prefix)
        return [to_kv(kv) for kv in response.kvs], response.header.revision

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        check_key(key)
        value = check_value(value)
        check_lease_id(lease)
        return self._kv("put", "Put", rpc.PutRequest(key=key.encode(), value=value, lease=lease)).header.revision

    def delete(self, key: str, prefix: bool = False) -> int:
        check_key(key, "prefix" if prefix else "key")
        request = to_request_op(Delete(key, prefix)).request_delete_range
        return self._kv("delete", "DeleteRange", request).deleted

    def txn(self, compares: Sequence[Compare], success: Sequence[Put | Delete],
            failure: Sequence[Put | Delete] = ()) -> TxnResult:
        compares = check_compares(compares)
        success_ops, failure_ops = check_ops(success), check_ops(failure)
        request = rpc.TxnRequest(compare=[to_compare(c) for c in compares],
                                 success=[to_request_op(op) for op in success_ops],
                                 failure=[to_request_op(op) for op in failure_ops])
        response = self._kv("txn", "Txn", request)
        return TxnResult(response.succeeded, response.header.revision)

    def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        return self.txn([Compare(key, "create_revision", "=", 0)], [Put(key, value, lease)]).succeeded

    def compare_and_swap(self, key: str, value: bytes, expected_mod_revision: int, lease: int = 0) -> bool:
        compare = Compare(key, "mod_revision", "=", expected_mod_revision)
        return self.txn([compare], [Put(key, value, lease)]).succeeded

    # -- leases ------------------------------------------------------------------------------------------

    def grant_lease(self, ttl: float) -> Lease:
        """etcd counts whole seconds: the TTL is rounded up (and the server may raise it to its minimum)."""
        seconds = math.ceil(check_ttl(ttl))
        response = self._lease("grant lease", "LeaseGrant", rpc.LeaseGrantRequest(TTL=seconds))
        if response.error:
            raise InvalidRequest(f"etcd: grant lease: {response.error}")
        return Lease(response.ID, float(response.TTL))

    def keep_alive(self, lease_id: int) -> float:
        check_lease_id(lease_id)

        def once(channel, timeout):
            responses = rpc_grpc.LeaseStub(channel).LeaseKeepAlive(
                iter([rpc.LeaseKeepAliveRequest(ID=lease_id)]), timeout=timeout)
            try:
                return next(responses)
            finally:
                responses.cancel()

        response = self.call("keep lease alive", once)
        if response.TTL <= 0:
            raise LeaseNotFound(f"etcd: lease {lease_id:x} not found (expired or revoked)")
        return float(response.TTL)

    def lease_time_left(self, lease_id: int) -> float | None:
        """etcd answers whole seconds (TTL -1 for a lease it does not know)."""
        check_lease_id(lease_id)
        response = self._lease("read lease", "LeaseTimeToLive", rpc.LeaseTimeToLiveRequest(ID=lease_id))
        return float(response.TTL) if response.TTL > 0 else None

    def revoke_lease(self, lease_id: int) -> None:
        """A retry that finds the lease gone counts as done: the attempt whose answer was lost revoked it."""
        check_lease_id(lease_id)
        attempts = 0

        def attempt(channel, timeout):
            nonlocal attempts
            attempts += 1
            return rpc_grpc.LeaseStub(channel).LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease_id), timeout=timeout)

        try:
            self.call("revoke lease", attempt)
        except LeaseNotFound:
            if attempts == 1:
                raise

    # -- history and watches -----------------------------------------------------------------------------

    def compact(self, revision: int) -> None:
        """Forget history up to ``revision``; watches from before it must re-list."""
        check_revision(revision)
        self._kv("compact", "Compact", rpc.CompactionRequest(revision=revision, physical=True))

    def watch_prefix(self, prefix: str, start_revision: int | None = None) -> EtcdWatch:
        return self._watches.open(self, prefix, start_revision)

    def close(self) -> None:
        self._watches.close_all()
        self.endpoints.close()

    def __enter__(self) -> "EtcdStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
