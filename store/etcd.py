"""The etcd v3 backend: the store contract over etcd's gRPC API, with failover across the cluster's members.

etcd already has the contract's semantics (revisions, leases, transactions, watches from a revision), so
this module is mostly translation; what it adds is endpoint failover (see ``etcd_client``) and a watch that
survives a member's death and compaction (see ``etcd_watch``).

A write retried after its member died mid-call may have been applied once already. A retried ``put``,
``delete`` or compare-free ``txn`` is harmless (the same end state; ``delete`` may count 0). A transaction with
compares is never retried blindly: after a lost answer it reads its own write back (see :meth:`EtcdStore.txn`).
"""
from __future__ import annotations

import math
import time
from typing import Sequence
from urllib.parse import parse_qs, urlparse

from pyetcd.etcdrpc import rpc_pb2 as rpc
from pyetcd.etcdrpc import rpc_pb2_grpc as rpc_grpc

from store.api import (Compare, Delete, InvalidRequest, KeyValue, Lease, LeaseNotFound, OutcomeUnknown, Put, StoreError,
                       TxnResult)
from store.common import (DerivedCalls, OpenWatches, check_compares, check_key, check_lease_id, check_ops,
                          check_revision, check_ttl, check_value, prefix_range_end)
from store.deadline import call_deadline, time_left
from store.etcd_client import Caller, Endpoints, parse_endpoints
from store.etcd_watch import EtcdWatch

CALL_TIMEOUT = 5.0    # seconds one RPC may take on one member
RERUN_PAUSE = 0.05    # seconds before a transaction found not applied runs again
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


class EtcdStore(DerivedCalls):
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
        if not compares:
            response = self._kv("txn", "Txn", request)
            return TxnResult(response.succeeded, response.header.revision)
        return self._conditional_txn(request, [op for op in success_ops if isinstance(op, Put)])

    def _conditional_txn(self, request, puts: list[Put]) -> TxnResult:
        """A transaction with compares whose outcome is settled even when an answer is lost.

        After :class:`OutcomeUnknown` it reads its success branch's puts back: every one holding exactly our
        value and lease at one revision means it applied. Otherwise it is not in effect (never applied, or
        already overwritten), and running it again decides against the present as a fresh call would. A
        compare that fails on such a rerun may have failed on our own late-applied first attempt, so that
        answer is checked the same way. Callers that need certainty put a unique token in the value (a
        claim ID, a host's address): identical bytes under the same lease are then only ever ours.
        A transaction without puts cannot be read back and raises :class:`OutcomeUnknown` to its caller."""
        deadline = time.monotonic() + time_left(self.call.budget)
        unsure = False
        while True:
            try:
                with call_deadline(max(0.05, deadline - time.monotonic())):
                    response = self.call("txn", lambda channel, timeout: rpc_grpc.KVStub(channel).Txn(
                        request, timeout=timeout), idempotent=False)
            except OutcomeUnknown:
                if not puts:
                    raise
                unsure = True
                revision = self._applied_at(puts, deadline)
                if revision:
                    return TxnResult(True, revision)
                if time.monotonic() + RERUN_PAUSE >= deadline:
                    raise
                time.sleep(RERUN_PAUSE)
                continue
            if unsure and not response.succeeded:
                revision = self._applied_at(puts, deadline)
                if revision:
                    return TxnResult(True, revision)
            return TxnResult(response.succeeded, response.header.revision)

    def _applied_at(self, puts: list[Put], deadline: float) -> int:
        """The revision at which all of ``puts`` took effect together, or 0 when they are not all in place.
        A read that fails leaves the outcome unknown."""
        revisions = set()
        try:
            with call_deadline(max(0.05, deadline - time.monotonic())):
                for put in puts:
                    kv = self.get(put.key)
                    if kv is None or kv.value != put.value or kv.lease != put.lease:
                        return 0
                    revisions.add(kv.mod_revision)
        except StoreError as exc:
            raise OutcomeUnknown(f"etcd: txn: outcome unknown (reading it back failed: {exc})") from exc
        return revisions.pop() if len(revisions) == 1 else 0

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

    def close(self) -> None:
        self._watches.close_all()
        self.endpoints.close()

