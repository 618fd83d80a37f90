"""The part of Consul's HTTP API that registration clients use, served by the Berth agent.

Agent endpoints (``/v1/agent/...``) act on this host's endpoints; catalog and health endpoints read the
cluster-wide discovery view. A write waits (briefly) until the view has seen it, so a client that registers
and then reads the catalog sees its own registration, as it would with Consul.
"""
from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from discovery import consul_schema as cs
from discovery.agent import Agent, UnknownCheck
from discovery.health import parse_duration
from discovery.local import LocalEndpoint
from discovery.model import EndpointRecord, Health, InvalidRecord
from discovery.view import DiscoveryView

log = logging.getLogger(__name__)

READ_YOUR_WRITES_TIMEOUT = 2.0
DEFAULT_BLOCK = 300.0  # Consul's default wait for a blocking query
MAX_BLOCK = 600.0
_TTL_STATUS = {"pass": Health.PASSING, "warn": Health.WARNING, "fail": Health.CRITICAL}


class HttpError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class ConsulApi:
    """Routes requests to the agent and the view; knows nothing about sockets (see :class:`ConsulHttpServer`)."""

    def __init__(self, agent: Agent, view: DiscoveryView) -> None:
        self.agent = agent
        self.view = view

    def route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        if parts[:1] != ["v1"]:
            raise HttpError(404, f"no such endpoint {path}")
        p = parts[1:]
        if method == "PUT":
            if p == ["agent", "service", "register"]:
                return self.register(body)
            if p[:3] == ["agent", "service", "deregister"] and len(p) == 4:
                return self.deregister(p[3])
            if p[:2] == ["agent", "check"] and len(p) == 4 and p[2] in _TTL_STATUS:
                return self.ttl_update(p[3], _TTL_STATUS[p[2]], (query.get("note") or [""])[0])
        if method == "GET":
            self._block(query)
            if p[:2] == ["agent", "service"] and len(p) == 3:
                record = self.agent.current_record(p[2])
                if record is None:
                    raise HttpError(404, f"unknown service ID: {p[2]}")
                return 200, cs.agent_service(record)
            if p == ["agent", "services"]:
                return 200, {eid: cs.agent_service(self.agent.current_record(eid))
                             for eid in self.agent.endpoints() if self.agent.current_record(eid)}
            if p == ["agent", "checks"]:
                return 200, self.agent_checks()
            if p == ["agent", "self"]:
                return 200, {"Config": {"NodeName": self.agent.host, "Datacenter": cs.DATACENTER},
                             "Member": {"Name": self.agent.host, "Addr": self.agent.node_address}}
            if p == ["status", "leader"]:
                return 200, f"{self.agent.node_address}:8300"
            if p == ["catalog", "services"]:
                return 200, self.catalog_services()
            if p[:2] == ["catalog", "service"] and len(p) == 3:
                return 200, [cs.catalog_service(r, self._node_address(r))
                             for r in self._instances(p[2], query)]
            if p[:2] == ["health", "service"] and len(p) == 3:
                return 200, self.health_service(p[2], query)
        raise HttpError(404 if method in ("GET", "PUT") else 405, f"unsupported: {method} {path}")

    def _block(self, query: dict[str, list[str]]) -> None:
        """Consul's blocking query: with ``?index=N``, answer once the data moved past N (or ``wait`` passed)."""
        if "index" not in query:
            return
        try:
            index = int(query["index"][0])
            wait = parse_duration(query["wait"][0], "wait") if query.get("wait") else DEFAULT_BLOCK
        except (ValueError, InvalidRecord) as exc:
            raise HttpError(400, f"Invalid blocking query: {exc}") from None
        self.view.wait_until(lambda _records: self.view.revision > index, min(wait, MAX_BLOCK))

    # -- writes ------------------------------------------------------------------------------------------
    def register(self, body: bytes) -> tuple[int, Any]:
        try:
            data = json.loads(body or b"null")
        except ValueError as exc:
            raise HttpError(400, f"Request decode failed: {exc}") from None
        try:
            reg = cs.parse_registration(data, self.agent.host, self.agent.node_address)
        except InvalidRecord as exc:
            raise HttpError(400, f"Invalid service registration: {exc}") from None
        revision = self.agent.add(LocalEndpoint(record=reg.record, checks=reg.checks, source="api"))
        self._seen(revision)
        return 200, None

    def deregister(self, service_id: str) -> tuple[int, Any]:
        if service_id not in self.agent.endpoints():
            raise HttpError(404, f'Unknown service ID "{service_id}". Ensure that the service ID is passed, '
                                 "not the service name.")
        _, revision = self.agent.remove(service_id)
        self._seen(revision)
        return 200, None

    def ttl_update(self, check_id: str, status: Health, note: str) -> tuple[int, Any]:
        try:
            revision = self.agent.update_ttl(check_id, status, note)
        except UnknownCheck:
            raise HttpError(404, f'Unknown check ID "{check_id}"') from None
        except InvalidRecord as exc:
            raise HttpError(400, str(exc)) from None
        self._seen(revision)
        return 200, None

    def _seen(self, revision: int) -> None:
        if revision:
            self.view.wait_until(lambda _records: self.view.revision >= revision, READ_YOUR_WRITES_TIMEOUT)

    # -- reads -------------------------------------------------------------------------------------------
    def agent_checks(self) -> dict[str, Any]:
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

    def catalog_services(self) -> dict[str, list[str]]:
        out: dict[str, set[str]] = {}
        for record in self.view.records().values():
            out.setdefault(record.service, set()).update(record.tags)
        return {name: sorted(tags) for name, tags in sorted(out.items())}

    def _instances(self, service: str, query: dict[str, list[str]]) -> list[EndpointRecord]:
        wanted_tags = set(query.get("tag", []))
        service = service.lower()
        return sorted((r for r in self.view.records().values()
                       if r.service == service and wanted_tags <= set(r.tags)),
                      key=lambda r: (r.host, r.id))

    def _node_address(self, record: EndpointRecord) -> str:
        if record.host == self.agent.host:
            return self.agent.node_address
        return record.addresses[0] if record.addresses else ""

    def health_service(self, service: str, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        passing_only = "passing" in query and (query["passing"][0] or "1").lower() not in ("0", "false")
        out = []
        for record in self._instances(service, query):
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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "berth-agent"

    def log_message(self, fmt: str, *args) -> None:
        log.debug("http: " + fmt, *args)

    def _serve(self, method: str) -> None:
        api: ConsulApi = self.server.api  # type: ignore[attr-defined]
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            code, payload = api.route(method, urllib.parse.unquote(url.path), query, body)
            data = b"" if payload is None else json.dumps(payload).encode()
            content_type = "application/json"
        except HttpError as exc:
            code, data, content_type = exc.code, str(exc).encode(), "text/plain; charset=utf-8"
        except Exception as exc:  # a bug must answer 500, not drop the connection
            log.exception("http %s %s failed", method, self.path)
            code, data, content_type = 500, f"internal error: {exc}".encode(), "text/plain; charset=utf-8"
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Consul-Index", str(max(api.view.revision, 1)))
        self.send_header("X-Consul-Knownleader", "true")
        self.send_header("X-Consul-Lastcontact", "0")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_POST(self) -> None:
        self._serve("PUT")  # Consul accepts POST for these writes too


class ConsulHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], api: ConsulApi) -> None:
        super().__init__(address, _Handler)
        self.api = api
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="consul-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
