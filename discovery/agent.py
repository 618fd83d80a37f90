"""The discovery agent's core: this host's endpoints → the datastore, under one lease, kept true.

The local endpoint files are the source of truth; the store is made to match them (on every change, after a
lost lease, and by periodic anti-entropy). Sockets and HTTP live in their own modules and call the methods here.

Durability contract (each clause is tested by killing real processes, ``tests/discovery/test_durability.py``):

1. Acknowledged means kept. :meth:`Agent.add` returns (and so the HTTP API answers 200, berth-register gets
   "ok") only after the endpoint's file is on disk (written, fsynced, renamed). A crash of the agent after that,
   or any outage of the store, cannot lose it.
2. Bounded calls. Every store call has a deadline (the etcd budget is a third of the lease TTL; the keeper's
   calls carry :func:`store.deadline.call_deadline`), so a stalled store never holds a request, the lease
   keeper or anti-entropy for longer than that.
3. Back within seconds. While the store is failing, anti-entropy retries on :mod:`store.retry`'s policy (at
   most 2 s apart) instead of its normal interval, and writes everything this host holds, in transactions
   small enough for every backend, within a few seconds of the store answering again. Anti-entropy cannot die
   (every error is caught and retried) nor wedge (clause 2).
4. Lost lease, everything rewritten. When the store drops the lease (it expired during an outage, or was
   revoked) the keeper grants a new one and the agent rewrites every record under it.
5. Ready means written. A (re)started agent is :attr:`Agent.ready` only after one full anti-entropy pass has
   succeeded under its lease: every endpoint it holds is then in the store.
6. No gap on a quick restart. The lease ID is kept in ``<state dir>/lease``; a restart within the TTL reuses
   that lease if the store still keeps it alive, so the records never leave the store. After the TTL the
   records have expired with the old lease (as they must when the host is gone) and come back at clause 5.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

from cni_plugins import codes
from discovery import health as hc
from discovery import metrics
from discovery import wire
from discovery.local import SOCKET_FACES, LeaseFile, LocalEndpoint, LocalEndpoints, looks_like_docker_face
from discovery.model import EndpointRecord, Health, InvalidRecord, endpoint_key
from discovery.publish import (SKYDNS_PREFIX, Publishing, SyncPlan, agent_key, endpoint_keys, host_prefix,
                               is_mine, name_used_elsewhere, plan_change, plan_sync)
from store.api import Delete, LeaseNotFound, Put, Store, StoreError
from store.common import txn_chunks
from store.deadline import call_deadline
from store.keeper import LeaseKeeper
from store.retry import DEFAULT_RETRY

log = logging.getLogger(__name__)

CHECK_TICK = 0.1
PROBE_DEADLINE = 1.0  # seconds a write may wait while the store is known to be failing (the agent's lock is held)


class UnknownCheck(KeyError):
    """No check with that ID on this agent."""


@dataclass
class _Check:
    endpoint_id: str
    spec: hc.CheckSpec
    state: hc.CheckState
    running: bool = False


def _face(request: dict, record: EndpointRecord | None = None) -> str:
    """Which face sent a socket request. berth-register omits it; so did the Docker plugin before faces (its
    spooled or live registrations are told by their shape, as old state files are)."""
    face = request.get("face")
    if face is None:
        return "docker" if record is not None and looks_like_docker_face(record) else "cni"
    if face not in SOCKET_FACES:
        raise InvalidRecord(f"face: {face!r} is not one of {', '.join(SOCKET_FACES)}")
    return face


def stale_endpoints(endpoints: dict[str, LocalEndpoint], netns_exists: Callable[[str], bool]) -> list[str]:
    """CNI endpoints whose network namespace is gone (the container died without a DEL reaching us)."""
    return sorted(eid for eid, ep in endpoints.items() if ep.netns and not netns_exists(ep.netns))


class Agent:
    def __init__(self, store: Store, host: str, state_dir: str, ttl: float = 15.0, *,
                 spool_dir: str | None = None, skydns_zone: str | None = None, dns_ttl: int = 30,
                 node_address: str = "127.0.0.1", resync_interval: float = 10.0,
                 netns_exists: Callable[[str], bool] = os.path.exists) -> None:
        if not isinstance(ttl, (int, float)) or not ttl > 0:
            raise ValueError(f"ttl: {ttl!r} must be a positive number of seconds")
        self.store = store
        self.pub = Publishing(host=host, skydns_zone=skydns_zone, dns_ttl=dns_ttl)
        self.host = host
        self.node_address = node_address
        self.state_dir = state_dir
        self.spool_dir = spool_dir or os.path.join(state_dir, "spool")
        self.resync_interval = resync_interval
        self.netns_exists = netns_exists
        self.files = LocalEndpoints(state_dir)
        self.lease_file = LeaseFile(state_dir)
        self.lease = LeaseKeeper(store, ttl, self._rewrite_all, name="agent-lease")
        self.ready = threading.Event()  # set after the first full anti-entropy pass under a lease (clause 5)
        self.about: bytes | None = None  # this agent's AgentRecord, kept under its lease like its endpoints
        self.name_conflict: str | None = None  # another machine's ID, while its agent uses this host name
        self._lock = threading.RLock()
        self._endpoints: dict[str, LocalEndpoint] = {}
        self._written: dict[str, dict[str, bytes]] = {}
        self._checks: dict[str, _Check] = {}
        # False after a write failed: later changes only go to disk until anti-entropy reaches the store again,
        # so an outage costs one slow write, not one per container start.
        self._store_ok = True
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._probes = ThreadPoolExecutor(max_workers=8, thread_name_prefix="health-probe")

    # -- life cycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        """Load what this host had, apply spooled registrations, take the lease (the saved one if it is still
        alive), write everything, start the loops. Returns without waiting for the store: :attr:`ready` says
        when everything is written. Call before the socket listens, so spooled requests go before newer ones."""
        now = time.monotonic()
        with self._lock:
            self._endpoints = self.files.load()
            for ep in self._endpoints.values():
                self._add_checks(ep, now)
        self.drain_spool()
        saved = self.lease_file.load()
        try:
            lease_id = self.lease.acquire(reuse=saved)
            log.info("lease %x (%s)", lease_id, "kept from the last run" if lease_id == saved else "new")
            self.lease_file.save(lease_id)
        except StoreError as exc:
            log.warning("taking a lease failed (%s); will retry", exc)
        self.lease.start()
        try:
            self.reconcile()
        except StoreError as exc:
            log.warning("initial anti-entropy failed (%s); will retry", exc)
        for target, name in ((self._resync_loop, "anti-entropy"), (self._check_loop, "health-checks")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop the loops; the lease is left to expire (a restart within the TTL keeps the records)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.lease.stop()
        self._probes.shutdown(wait=False, cancel_futures=True)

    # -- operations --------------------------------------------------------------------------------------
    def add(self, endpoint: LocalEndpoint) -> int:
        """Register (or replace) an endpoint: kept on disk first, then written to the store. Returns the store
        revision of the write (0 when the store could not be written now; anti-entropy retries)."""
        if endpoint.record.host != self.host:
            endpoint = replace(endpoint, record=replace(endpoint.record, host=self.host))
        with self._lock:
            old = self._endpoints.get(endpoint.record.id)
            if old is not None:
                self._drop_checks(old.record.id)
            self.files.save(endpoint)
            self._endpoints[endpoint.record.id] = endpoint
            self._add_checks(endpoint, time.monotonic())
            metrics.REGISTRATIONS.inc()
            return self._publish(endpoint.record.id)

    def remove(self, endpoint_id: str) -> tuple[bool, int]:
        """Deregister; ``(was registered, store revision)``. Removing what is absent succeeds."""
        with self._lock:
            endpoint = self._endpoints.pop(endpoint_id, None)
            self.files.remove(endpoint_id)
            if endpoint_id not in self._written:
                # not known to be written (store was down, lease replaced): delete every key it could own
                keys = endpoint_keys(replace(endpoint.record, health=Health.PASSING), self.pub) if endpoint \
                    else {endpoint_key(self.host, endpoint_id): b""}
                self._written[endpoint_id] = keys
            self._drop_checks(endpoint_id)
            revision = self._publish(endpoint_id)
            if endpoint is not None:
                metrics.DEREGISTRATIONS.inc()
            return endpoint is not None, revision

    def gc(self, network: str, valid: set[tuple[str, str]], face: str = "cni") -> list[str]:
        """GC: remove this network's attachments that the runtime no longer lists. Only those ``face`` registered:
        a CNI network and a Docker network may share a name, and neither runtime lists the other's."""
        with self._lock:
            doomed = [eid for eid, ep in self._endpoints.items()
                      if ep.source == face and ep.record.network == network
                      and (ep.record.container_id, ep.record.ifname) not in valid
                      and (ep.record.container_id, "") not in valid]
        for eid in doomed:
            self.remove(eid)
        return doomed

    def endpoints(self) -> dict[str, LocalEndpoint]:
        with self._lock:
            return dict(self._endpoints)

    def current_record(self, endpoint_id: str) -> EndpointRecord | None:
        with self._lock:
            endpoint = self._endpoints.get(endpoint_id)
            return self._with_health(endpoint) if endpoint else None

    def checks_of(self, endpoint_id: str) -> list[tuple[hc.CheckSpec, hc.CheckState]]:
        with self._lock:
            return [(c.spec, c.state) for c in self._checks.values() if c.endpoint_id == endpoint_id]

    def update_ttl(self, check_id: str, status: Health, note: str = "") -> int:
        """The application reports on a TTL check (Consul's ``/v1/agent/check/pass|warn|fail``)."""
        with self._lock:
            check = self._checks.get(check_id)
            if check is None:
                raise UnknownCheck(check_id)
            if check.spec.kind != "ttl":
                raise InvalidRecord(f"check {check_id!r} is a {check.spec.kind} check, not a TTL check")
            check.state = hc.observe(check.spec, check.state, status, note, time.monotonic())
            return self._publish(check.endpoint_id)

    # -- the socket protocol (berth-register and the spool) -----------------------------------------------
    def handle(self, request: dict) -> dict:
        """One berth-register request → reply (see :mod:`discovery.wire`)."""
        try:
            op = request.get("op")
            if op == "add":
                data = request.get("endpoint")
                if not isinstance(data, dict):
                    raise InvalidRecord("endpoint: not a JSON object")
                record = EndpointRecord.from_dict({**data, "host": self.host})
                netns = request.get("netns") or ""
                if not isinstance(netns, str):
                    raise InvalidRecord("netns: not a path")
                revision = self.add(LocalEndpoint(record=record, netns=netns, source=_face(request, record)))
                return {"ok": True, "revision": revision}
            if op == "del":
                found, revision = self.remove(str(request.get("id", "")))
                return {"ok": True, "found": found, "revision": revision}
            if op == "check":
                return {"ok": True, "registered": str(request.get("id", "")) in self.endpoints()}
            if op == "gc":
                valid = {(str(c), str(i)) for c, i in request.get("valid", ())}
                return {"ok": True, "removed": self.gc(str(request.get("network", "")), valid, _face(request))}
            if op == "ping":
                return {"ok": True, "host": self.host}
            return {"ok": False, "code": codes.INVALID_ENVIRONMENT, "error": f"op: unknown operation {op!r}"}
        except (InvalidRecord, TypeError, ValueError) as exc:
            return {"ok": False, "code": codes.INVALID_CONFIG, "error": str(exc)}
        except OSError as exc:
            return {"ok": False, "code": codes.IO_FAILURE, "error": f"agent state: {exc}"}

    def drain_spool(self) -> int:
        """Apply registrations berth-register kept on disk while no agent listened, oldest first."""
        applied = 0
        for path, request in wire.spooled(self.spool_dir):
            if request is None:
                log.warning("discarding unreadable spool file %s", path)
            else:
                reply = self.handle(request)
                if not reply.get("ok"):
                    log.warning("discarding spooled request %s: %s", path.name, reply.get("error"))
                applied += 1
            path.unlink(missing_ok=True)
        return applied

    # -- anti-entropy ------------------------------------------------------------------------------------
    def reconcile(self) -> SyncPlan:
        with metrics.anti_entropy_run():
            return self._reconcile_once()

    def _reconcile_once(self) -> SyncPlan:
        """Remove endpoints whose netns is gone, then make the store hold exactly this host's keys.

        The store is listed without holding the agent's lock (a slow or absent store must not stall
        registrations); the plan is then made under the lock from the endpoints as they are *now*. A listing a
        moment stale is harmless: it can only cause a put of a key already there or a delete of one already
        gone."""
        self.drain_spool()
        with self._lock:
            for eid in stale_endpoints(self._endpoints, self.netns_exists):
                log.info("endpoint %s: network namespace gone; removing", eid)
                self.remove(eid)
        lease = self.lease.lease_id
        if not lease:
            self._store_ok = False
            return SyncPlan({}, ())
        stored = self._stored_keys()
        other = name_used_elsewhere(next((v for k, v, _l in stored if k == agent_key(self.host)), None), self.about)
        if other is not None:  # write nothing: this agent would delete the other machine's endpoints
            self._store_ok = False
            self.name_conflict = other
            log.error("host name %r is used by the agent of another machine (machine ID %s): nothing is written "
                      "to the store until one of the two is given another --host", self.host, other)
            return SyncPlan({}, ())
        self.name_conflict = None
        with self._lock:
            desired: dict[str, bytes] = {}
            written: dict[str, dict[str, bytes]] = {}
            for eid, endpoint in self._endpoints.items():
                written[eid] = endpoint_keys(self._with_health(endpoint), self.pub)
                desired.update(written[eid])
            if self.about is not None:
                desired[agent_key(self.host)] = self.about
            plan = plan_sync(desired, stored, lease)
            if plan:
                log.info("anti-entropy: %d puts, %d deletes", len(plan.puts), len(plan.deletes))
                self._apply(plan, lease)
            self._written = written
            self._store_ok = True
        self.ready.set()
        return plan

    def _store_deadline(self) -> float:
        """The bound on one store call: a third of the TTL; while the store is failing, at most
        :data:`PROBE_DEADLINE`, because writes hold the agent's lock and registrations wait behind them."""
        normal = self.lease.call_timeout
        return normal if self._store_ok else min(PROBE_DEADLINE, normal)

    def _stored_keys(self) -> list[tuple[str, bytes, int]]:
        with call_deadline(self._store_deadline()):
            items, _ = self.store.get_prefix(host_prefix(self.host))
        if self.pub.skydns_zone is not None:
            with call_deadline(self._store_deadline()):
                more, _ = self.store.get_prefix(SKYDNS_PREFIX)
            items = list(items) + [kv for kv in more if is_mine(kv.key, kv.value, self.pub)]
        if self.about is not None:
            with call_deadline(self._store_deadline()):
                own = self.store.get(agent_key(self.host))
            items = list(items) + ([own] if own is not None else [])
        return [(kv.key, kv.value, kv.lease) for kv in items]

    def _rewrite_all(self, lease_id: int) -> None:
        """The keeper replaced a lost lease: remember it for a restart, then write every record under it."""
        try:
            self.lease_file.save(lease_id)
        except OSError as exc:
            log.warning("saving lease %x failed (%s); a restart will grant a new one", lease_id, exc)
        with self._lock:
            self._written = {}
        self.reconcile()

    def _resync_loop(self) -> None:
        """Anti-entropy every ``resync_interval``; while the store fails, on the retry policy instead."""
        delays = None
        pause = 0.0 if not self.ready.is_set() else self.resync_interval
        while not self._stop.wait(pause):
            try:
                self.reconcile()
            except StoreError as exc:
                self._store_ok = False
                log.warning("anti-entropy failed: %s", exc)
            except Exception:
                self._store_ok = False
                log.exception("anti-entropy failed")
            if self._store_ok and self.ready.is_set():
                delays, pause = None, self.resync_interval
            else:
                delays = delays or DEFAULT_RETRY.delays()
                pause = min(next(delays), self.resync_interval)

    # -- health checks -----------------------------------------------------------------------------------
    def _add_checks(self, endpoint: LocalEndpoint, now: float) -> None:
        for spec in endpoint.checks:
            self._checks[spec.id] = _Check(endpoint.record.id, spec, hc.initial_state(spec, now))

    def _drop_checks(self, endpoint_id: str) -> None:
        for check_id in [cid for cid, c in self._checks.items() if c.endpoint_id == endpoint_id]:
            del self._checks[check_id]

    def _with_health(self, endpoint: LocalEndpoint) -> EndpointRecord:
        statuses = [c.state.status for c in self._checks.values() if c.endpoint_id == endpoint.record.id]
        status = hc.aggregate(statuses)
        record = endpoint.record
        return record if record.health is status else replace(record, health=status)

    def _check_loop(self) -> None:
        while not self._stop.wait(CHECK_TICK):
            try:
                self._check_step(time.monotonic())
            except Exception:
                log.exception("health check step failed")

    def _check_step(self, now: float) -> None:
        changed: set[str] = set()
        deregister: set[str] = set()
        with self._lock:
            for check in list(self._checks.values()):
                before = check.state.status
                check.state = hc.tick(check.spec, check.state, now)
                if check.state.status is not before:
                    changed.add(check.endpoint_id)
                if hc.should_deregister(check.spec, check.state, now):
                    deregister.add(check.endpoint_id)
                if not check.running and hc.due(check.spec, check.state, now):
                    check.running = True
                    self._probes.submit(self._probe, check)
            for eid in changed - deregister:
                self._publish(eid)
        for eid in deregister:
            log.info("endpoint %s: critical past its deregister deadline; removing", eid)
            self.remove(eid)

    def _probe(self, check: _Check) -> None:
        status, output = hc.run_probe(check.spec)
        with self._lock:
            check.running = False
            if self._checks.get(check.spec.id) is not check:
                return  # deregistered or replaced meanwhile
            before = check.state.status
            check.state = hc.observe(check.spec, check.state, status, output, time.monotonic())
            if check.state.status is not before:
                self._publish(check.endpoint_id)

    # -- writing -----------------------------------------------------------------------------------------
    def _publish(self, endpoint_id: str) -> int:
        """Make the store hold this endpoint's current keys (or none, if it is gone), in one transaction."""
        endpoint = self._endpoints.get(endpoint_id)
        new = endpoint_keys(self._with_health(endpoint), self.pub) if endpoint else {}
        old = self._written.get(endpoint_id, {})
        plan = plan_change(old, new)
        lease = self.lease.lease_id
        if not plan or not lease:
            return 0
        if not self._store_ok:
            self._written.pop(endpoint_id, None)
            return 0
        try:
            revision = self._apply(plan, lease)
        except StoreError as exc:
            log.warning("writing endpoint %s failed (%s); anti-entropy will retry", endpoint_id, exc)
            self._written.pop(endpoint_id, None)
            self._store_ok = False
            return 0
        if new:
            self._written[endpoint_id] = new
        else:
            self._written.pop(endpoint_id, None)
        return revision

    def _apply(self, plan: SyncPlan, lease: int) -> int:
        """Write ``plan`` in as many transactions as the backend's limits need; the last one's revision."""
        ops = [Put(k, v, lease) for k, v in plan.puts.items()] + [Delete(k) for k in plan.deletes]
        revision = 0
        try:
            for chunk in txn_chunks(ops):
                with call_deadline(self._store_deadline()):
                    revision = self.store.txn([], chunk).revision
        except LeaseNotFound:
            self.lease.lost(lease)  # the store dropped it: the keeper replaces it now, not at its next renewal
            raise
        return revision
