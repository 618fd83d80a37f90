"""The part of Consul's HTTP API that registration clients use, served by the Berth agent.

Agent endpoints (``/v1/agent/...``) act on this host's endpoints; catalog and health endpoints read the
cluster-wide discovery view. A write waits (briefly) until the view has seen it, so a client that registers
and then reads the catalog sees its own registration, as it would with Consul.

Every GET carries an X-Consul-Index and takes Consul's blocking parameters (kept by
:mod:`discovery.consul_index`). The semantics (what every GET of the agent's API promises):

- **An index names one answer.** Each query (path + the parameters that shape its answer) has its own index.
  Two answers to the same query that carry the same index carry the same bytes. The index of a query only moves
  when its answer changes, so a change to service ``db`` leaves the index of ``/v1/catalog/service/web`` alone
  (per-resource indexes, as Consul's). It is never 0 and never goes backwards while the agent runs.
- **Where the number comes from.** A changed answer takes the store revision of the view it was computed from,
  or the previous index + 1 when that is not higher (answers that also hold this agent's own state, such as
  check status, can change between two store revisions). A store revision survives an agent restart, so after
  one the indexes clients hold are normally below the new ones.
- **Blocking.** ``?index=0`` or no index answers at once. Any other index answers at once unless it is the
  query's current one (an index the client cannot have seen here — from another agent, from before a restart —
  is no reason to wait). With the current index the query waits until its answer changes, or until ``wait``
  (default 5 minutes, at most 10, as Consul) has passed, then answers with whatever index it has then.

Who may write is decided by :mod:`discovery.acl`. Paths whose last part is an
ID take the rest of the path, percent-decoded, as Consul does, so an ID holding ``/`` is served and deregistered
whether the client encodes it or not. Sockets and HTTP framing live in :mod:`discovery.http_server`.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from discovery import consul_schema as cs
from discovery import metrics
from discovery.acl import (Acl, AclError, ContainerClaims, Identity, container_addresses, container_names,
                           presented_token, squatters)
from discovery.agent import Agent, UnknownCheck
from discovery.consul_index import (DEFAULT_WAIT, MAX_WAIT, BlockingParams, ChangeSignal, IndexBook, digest,
                                    first, query_key)
from discovery.health import parse_duration
from discovery.http_server import Request, Response, text
from discovery.local import LocalEndpoint
from discovery.model import EndpointRecord, Health, InvalidRecord
from discovery.view import DiscoveryView
from discovery.viewstate import ViewChange

log = logging.getLogger(__name__)

READ_YOUR_WRITES_TIMEOUT = 2.0
RECHECK = 2.0          # a blocked query recomputes at least this often (agent-only changes make no store event)
MAX_JSON_DEPTH = 16    # a registration is 4 levels deep; anything far deeper is an attack, not a service
_TTL_STATUS = {"pass": Health.PASSING, "warn": Health.WARNING, "fail": Health.CRITICAL}
_JSON = "application/json"


class HttpError(Exception):
    def __init__(self, code: int, message: str, **headers: str) -> None:
        super().__init__(message)
        self.code = code
        self.headers = headers


def parse_json(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A request body as JSON, with its nesting bounded (a deep body must be a 400, not a RecursionError)."""
    try:
        data = json.loads(body or b"null")
    except RecursionError:
        raise HttpError(400, f"Request decode failed: JSON nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise HttpError(400, f"Request decode failed: {exc}") from None
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > max_depth:
                raise HttpError(400, f"Request decode failed: JSON nested deeper than {max_depth} levels")
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
    return data


def parse_blocking(query: Mapping[str, list[str]]) -> BlockingParams:
    raw_index, raw_wait = first(query.get("index"), "0") or "0", first(query.get("wait"))
    if not raw_index.isdigit():
        raise HttpError(400, f"Invalid index: {raw_index[:40]!r} is not a number")
    try:
        wait = parse_duration(raw_wait, "wait") if raw_wait else DEFAULT_WAIT
    except InvalidRecord as exc:
        raise HttpError(400, f"Invalid wait time: {exc}") from None
    return BlockingParams(index=int(raw_index), wait=min(wait, MAX_WAIT))


@dataclass(frozen=True)
class _Route:
    prefix: tuple[str, ...]   # path parts after /v1
    rest: bool                # the remainder of the path is one parameter (an ID or a name)
    methods: frozenset[str]
    handler: str              # method name on ConsulApi


def _route(path: str, methods: str, handler: str) -> _Route:
    rest = path.endswith("/*")
    parts = tuple(p for p in path.removesuffix("/*").split("/") if p)
    return _Route(parts, rest, frozenset(methods.split()), handler)


ROUTES = (
    _route("agent/service/register", "PUT POST", "register"),
    _route("agent/service/deregister/*", "PUT POST", "deregister"),
    _route("agent/check/pass/*", "PUT POST", "ttl_pass"),
    _route("agent/check/warn/*", "PUT POST", "ttl_warn"),
    _route("agent/check/fail/*", "PUT POST", "ttl_fail"),
    _route("agent/services", "GET", "agent_services"),
    _route("agent/service/*", "GET", "agent_service"),
    _route("agent/checks", "GET", "agent_checks"),
    _route("agent/self", "GET", "agent_self"),
    _route("status/leader", "GET", "status_leader"),
    _route("catalog/services", "GET", "catalog_services"),
    _route("catalog/service/*", "GET", "catalog_service"),
    _route("health/service/*", "GET", "health_service"),
)


def match(raw_path: str) -> tuple[list[_Route], str]:
    """The routes whose path fits (one per method set) and the decoded parameter; exact paths win."""
    if not raw_path.startswith("/v1/"):
        return [], ""
    tail = raw_path[len("/v1/"):]
    exact = tuple(urllib.parse.unquote(p) for p in tail.split("/") if p)
    found: list[_Route] = []
    param = ""
    for route in ROUTES:
        if not route.rest and exact == route.prefix:
            return [route], ""
    for route in ROUTES:
        head = "/".join(route.prefix) + "/"
        if route.rest and tail.startswith(head) and len(tail) > len(head):
            candidate = urllib.parse.unquote(tail[len(head):])
            if not found or candidate == param:
                found.append(route)
                param = candidate
    return found, param


class ConsulApi:
    """Routes requests to the agent and the view; knows nothing about sockets."""

    def __init__(self, agent: Agent, view: DiscoveryView, acl: Acl) -> None:
        self.agent = agent
        self.view = view
        self.acl = acl
        self.indexes = IndexBook()
        self.changes = ChangeSignal()
        self._answer_lock = threading.Lock()  # answers are computed one at a time, so indexes follow time
        self.claims = ContainerClaims()
        view.subscribe(self._on_view_change)
        self.claims.apply(ViewChange(view.revision, added=dict(view.records())))

    def _on_view_change(self, change: ViewChange) -> None:
        self.claims.apply(change)
        self._withdraw_squatters()
        self.changes.bump()

    def _withdraw_squatters(self) -> list[str]:
        """HTTP registrations standing on a container's name or address without a token grant for it give way
        to the container (see :func:`discovery.acl.squatters`)."""
        withdrawn = squatters(self.agent.endpoints(), self.claims)
        for endpoint_id in withdrawn:
            log.warning("withdrawing HTTP registration %r: a container endpoint now holds its name or address "
                        "and the registrant's token does not grant it", endpoint_id)
            self.agent.remove(endpoint_id)
        return withdrawn

    # -- the application callable ------------------------------------------------------------------------
    def __call__(self, request: Request) -> Response:
        try:
            return self._serve(request)
        except HttpError as exc:
            return text(exc.code, str(exc), **exc.headers)
        except AclError as exc:
            return text(403, str(exc))

    def _serve(self, req: Request) -> Response:
        routes, param = match(req.raw_path)
        if not routes:
            raise HttpError(404, f"no such endpoint {req.raw_path[:200]}")
        method = "PUT" if req.method == "POST" else req.method
        route = next((r for r in routes if req.method in r.methods), None)
        if route is None:
            allowed = sorted({m for r in routes for m in r.methods})
            raise HttpError(405, f"method {req.method[:20]} not allowed here", Allow=", ".join(allowed))
        who = self.acl.identify(presented_token(req.headers, req.query))
        handler = getattr(self, route.handler)
        if method == "PUT":
            handler(req, who, param)
            self.changes.bump()
            return Response(200, b"", _JSON)
        if route.handler != "status_leader":
            self.acl.check_read(who)
        return self._blocking_read(req, lambda: handler(req, param))

    def _blocking_read(self, req: Request, compute: Callable[[], Any]) -> Response:
        """Answer at once, or hold the answer until it differs from the one the client's index names."""
        params = parse_blocking(req.query)
        key = query_key(req.raw_path, req.query)
        deadline = time.monotonic() + params.wait
        waiting = False
        try:
            while True:
                generation = self.changes.generation
                with self._answer_lock:
                    revision = self.view.snapshot()[0]
                    body = json.dumps(compute(), sort_keys=True).encode()
                    index = self.indexes.index_for(key, digest(body), revision)
                left = deadline - time.monotonic()
                if params.index == 0 or index != params.index or left <= 0:
                    return Response(200, body, _JSON, {"X-Consul-Index": str(index),
                                                        "X-Consul-Knownleader": "true", "X-Consul-Lastcontact": "0"})
                if not waiting:
                    waiting = True
                    metrics.BLOCKING_WAITING.inc()
                    log.debug("blocking query %s waits at index %d", req.raw_path[:200], index)
                self.changes.wait_past(generation, min(left, RECHECK))
        finally:
            if waiting:
                metrics.BLOCKING_WAITING.dec()

    # -- writes ------------------------------------------------------------------------------------------
    def register(self, req: Request, who: Identity, _param: str) -> None:
        try:
            reg = cs.parse_registration(parse_json(req.body), self.agent.host, self.agent.node_address)
        except InvalidRecord as exc:
            raise HttpError(400, f"Invalid service registration: {exc}") from None
        record = reg.record
        endpoints = self.agent.endpoints()
        existing = endpoints.get(record.id)
        if existing is not None:
            self._check_may_change(who, existing)
        local = [ep.record for ep in endpoints.values() if ep.source != "api"]  # maybe not in the view yet
        if (record.service in container_names(local) or self.claims.holds_name(record.service)) \
                and not who.may_write_name(record.service):
            raise AclError(f"Permission denied: {record.service!r} is a container endpoint's name; "
                           "registering more instances needs a token allowed to write it")
        held = container_addresses(local)
        for address in record.addresses:
            services = held.get(address, set()) | self.claims.services_at(address)
            if services and not any(who.may_write_name(s) for s in services):
                raise AclError(f"Permission denied: {address} is a container endpoint's address; registering "
                               "it needs a token allowed to write that container's service")
        self.acl.check_write(who, record.service)
        revision = self.agent.add(LocalEndpoint(record=record, checks=reg.checks, source="api", grant=who.grant))
        if record.id in self._withdraw_squatters():  # a container claimed the name while this one was checked
            raise AclError(f"Permission denied: {record.service!r} or its address was just taken by a container "
                           "endpoint")
        self._seen(revision)

    def deregister(self, req: Request, who: Identity, service_id: str) -> None:
        existing = self.agent.endpoints().get(service_id)
        if existing is None:
            self.acl.check_read(who)
            raise HttpError(404, f'Unknown service ID "{service_id}". Ensure that the service ID is passed, '
                                 "not the service name.")
        self._check_may_change(who, existing)
        _, revision = self.agent.remove(service_id)
        self._seen(revision)

    def ttl_pass(self, req: Request, who: Identity, check_id: str) -> None:
        self._ttl_update(req, who, check_id, Health.PASSING)

    def ttl_warn(self, req: Request, who: Identity, check_id: str) -> None:
        self._ttl_update(req, who, check_id, Health.WARNING)

    def ttl_fail(self, req: Request, who: Identity, check_id: str) -> None:
        self._ttl_update(req, who, check_id, Health.CRITICAL)

    def _ttl_update(self, req: Request, who: Identity, check_id: str, status: Health) -> None:
        owner = next((ep for eid, ep in self.agent.endpoints().items()
                      if any(spec.id == check_id for spec, _ in self.agent.checks_of(eid))), None)
        if owner is None:
            self.acl.check_read(who)
            raise HttpError(404, f'Unknown check ID "{check_id}"')
        self._check_may_change(who, owner)
        try:
            revision = self.agent.update_ttl(check_id, status, first(req.query.get("note")))
        except UnknownCheck:
            raise HttpError(404, f'Unknown check ID "{check_id}"') from None
        except InvalidRecord as exc:
            raise HttpError(400, str(exc)) from None
        self._seen(revision)

    def _check_may_change(self, who: Identity, existing: LocalEndpoint) -> None:
        """Container endpoints belong to the CNI chain: over HTTP only the management token may touch them."""
        if existing.source != "api" and not who.is_management:
            raise AclError(f"Permission denied: {existing.record.id!r} is a container endpoint registered by "
                           "the CNI chain")
        self.acl.check_write(who, existing.record.service)

    def _seen(self, revision: int) -> None:
        if revision:
            self.view.wait_until(lambda _records: self.view.revision >= revision, READ_YOUR_WRITES_TIMEOUT)

    # -- reads -------------------------------------------------------------------------------------------
    def agent_services(self, req: Request, _param: str) -> dict[str, Any]:
        out = {}
        for eid in self.agent.endpoints():
            record = self.agent.current_record(eid)
            if record is not None:
                out[eid] = cs.agent_service(record)
        return out

    def agent_service(self, req: Request, service_id: str) -> dict[str, Any]:
        record = self.agent.current_record(service_id)
        if record is None:
            raise HttpError(404, f"unknown service ID: {service_id}")
        return cs.agent_service(record)

    def agent_checks(self, req: Request, _param: str) -> dict[str, Any]:
        out = {}
        for eid in self.agent.endpoints():
            record = self.agent.current_record(eid)
            if record is None:
                continue
            for spec, state in self.agent.checks_of(eid):
                out[spec.id] = {"Node": self.agent.host, "CheckID": spec.id, "Name": spec.name,
                                "Status": state.status.value, "Output": state.output, "ServiceID": eid,
                                "ServiceName": record.service, "Type": spec.kind}
        return out

    def agent_self(self, req: Request, _param: str) -> dict[str, Any]:
        return {"Config": {"NodeName": self.agent.host, "Datacenter": cs.DATACENTER},
                "Member": {"Name": self.agent.host, "Addr": self.agent.node_address}}

    def status_leader(self, req: Request, _param: str) -> str:
        return f"{self.agent.node_address}:8300"

    def catalog_services(self, req: Request, _param: str) -> dict[str, list[str]]:
        out: dict[str, set[str]] = {}
        for record in self.view.snapshot()[1].values():
            out.setdefault(record.service, set()).update(record.tags)
        return {name: sorted(tags) for name, tags in sorted(out.items())}

    def catalog_service(self, req: Request, service: str) -> list[dict[str, Any]]:
        return [cs.catalog_service(r, self._node_address(r)) for r in self._instances(service, req.query)]

    def _instances(self, service: str, query: Mapping[str, list[str]]) -> list[EndpointRecord]:
        wanted_tags = set(query.get("tag", []))
        service = service.lower()
        return sorted((r for r in self.view.snapshot()[1].values()
                       if r.service == service and wanted_tags <= set(r.tags)),
                      key=lambda r: (r.host, r.id))

    def _node_address(self, record: EndpointRecord) -> str:
        if record.host == self.agent.host:
            return self.agent.node_address
        return record.addresses[0] if record.addresses else ""

    def health_service(self, req: Request, service: str) -> list[dict[str, Any]]:
        passing = req.query.get("passing")
        passing_only = passing is not None and (first(passing) or "1").lower() not in ("0", "false")
        out = []
        for record in self._instances(service, req.query):
            checks = None
            if record.host == self.agent.host and record.id in self.agent.endpoints():
                checks = [{"CheckID": spec.id, "Name": spec.name, "Status": state.status.value,
                           "Output": state.output, "Type": spec.kind}
                          for spec, state in self.agent.checks_of(record.id)]
                current = self.agent.current_record(record.id)
                if current is not None:
                    record = current
            entry = cs.health_entry(record, self._node_address(record), checks)
            if passing_only and any(c["Status"] != "passing" for c in entry["Checks"]):
                continue
            out.append(entry)
        return out

