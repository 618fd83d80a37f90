"""Consul's agent-API JSON, parsed at the edge into Berth's types, and Berth's records rendered back as Consul's.

Consul accepts field names in any case (``Name``, ``name``; py-consul sends lower-case ``checks`` but
``DeregisterCriticalServiceAfter``), so keys are matched case-insensitively, ignoring underscores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from discovery.health import CheckSpec, parse_duration
from discovery.model import EndpointRecord, Health, InvalidRecord, PortBinding

DATACENTER = "dc1"


def _fold(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidRecord(f"{what}: not a JSON object")
    return {str(k).replace("_", "").lower(): v for k, v in data.items()}


@dataclass(frozen=True)
class ServiceRegistration:
    """A parsed ``PUT /v1/agent/service/register`` body."""

    record: EndpointRecord
    checks: tuple[CheckSpec, ...]


def parse_check(raw: Any, service_id: str, index: int, total: int) -> CheckSpec:
    c = _fold(raw, "Check")
    if "checkid" in c or "id" in c:
        check_id = str(c.get("checkid") or c.get("id"))
    else:
        check_id = f"service:{service_id}" if total == 1 else f"service:{service_id}:{index + 1}"
    name = str(c.get("name") or f"Service '{service_id}' check")
    kinds = [k for k in ("tcp", "http", "ttl") if c.get(k)]
    if len(kinds) != 1:
        unsupported = [k for k in ("args", "script", "grpc", "dockercontainerid", "h2ping", "udp") if c.get(k)]
        if unsupported:
            raise InvalidRecord(f"Check: {unsupported[0]!r} checks are not supported (use TCP, HTTP or TTL)")
        raise InvalidRecord("Check: exactly one of TCP, HTTP or TTL is required")
    kind = kinds[0]
    deregister = c.get("deregistercriticalserviceafter")
    status = c.get("status") or "critical"
    try:
        initial = Health(status)
    except ValueError:
        raise InvalidRecord(f"Check.Status: {status!r} is not passing, warning or critical") from None
    return CheckSpec(
        id=check_id, name=name, kind=kind,  # type: ignore[arg-type]
        target="" if kind == "ttl" else str(c[kind]),
        interval=parse_duration(c["interval"], "Check.Interval") if c.get("interval") else (
            0.0 if kind != "ttl" else 10.0),
        timeout=parse_duration(c["timeout"], "Check.Timeout") if c.get("timeout") else 10.0,
        ttl=parse_duration(c["ttl"], "Check.TTL") if kind == "ttl" else 0.0,
        deregister_after=parse_duration(deregister, "Check.DeregisterCriticalServiceAfter")
        if deregister else None,
        initial=initial,
    )


def parse_registration(body: Any, host: str, default_address: str) -> ServiceRegistration:
    """Validate a whole registration before anything is stored; errors name the Consul field."""
    d = _fold(body, "service")
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRecord("Name: a service name is required")
    service_id = d.get("id") or name
    if not isinstance(service_id, str):
        raise InvalidRecord(f"ID: {service_id!r} is not a string")
    port = d.get("port") or 0
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise InvalidRecord(f"Port: {port!r} is not a port number")
    tags = d.get("tags") or []
    meta = d.get("meta") or {}
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidRecord("Tags: must be a list of strings")
    if not isinstance(meta, Mapping) or not all(isinstance(v, str) for v in meta.values()):
        raise InvalidRecord("Meta: must be an object of strings")
    raw_checks = []
    if d.get("check"):
        raw_checks.append(d["check"])
    checks_field = d.get("checks") or []
    if not isinstance(checks_field, list):
        raise InvalidRecord("Checks: must be a list")
    raw_checks.extend(checks_field)
    checks = tuple(parse_check(c, service_id, i, len(raw_checks)) for i, c in enumerate(raw_checks))
    if len({c.id for c in checks}) != len(checks):
        raise InvalidRecord("Checks: check IDs must be unique")
    record = EndpointRecord(
        id=service_id, name=name, service=name, host=host,
        addresses=(d.get("address") or default_address,),
        ports=(PortBinding(port=port),) if port else (),
        tags=tuple(tags), meta=dict(meta),
    )
    return ServiceRegistration(record=record, checks=checks)


# -- rendering ----------------------------------------------------------------------------------------------
def _port(record: EndpointRecord) -> int:
    return record.ports[0].port if record.ports else 0


def _address(record: EndpointRecord) -> str:
    return record.addresses[0] if record.addresses else ""


def agent_service(record: EndpointRecord) -> dict[str, Any]:
    return {
        "ID": record.id, "Service": record.service, "Tags": list(record.tags), "Meta": dict(record.meta),
        "Port": _port(record), "Address": _address(record), "Weights": {"Passing": 1, "Warning": 1},
        "EnableTagOverride": False, "Datacenter": DATACENTER,
    }


def catalog_service(record: EndpointRecord, node_address: str) -> dict[str, Any]:
    return {
        "ID": "", "Node": record.host, "Address": node_address, "Datacenter": DATACENTER,
        "TaggedAddresses": {}, "NodeMeta": {}, "ServiceKind": "", "ServiceID": record.id,
        "ServiceName": record.service, "ServiceTags": list(record.tags), "ServiceAddress": _address(record),
        "ServiceMeta": dict(record.meta), "ServicePort": _port(record), "ServiceEnableTagOverride": False,
        "ServiceWeights": {"Passing": 1, "Warning": 1},
    }


def health_entry(record: EndpointRecord, node_address: str,
                 checks: list[dict[str, Any]] | None) -> dict[str, Any]:
    """One ``/v1/health/service`` entry. ``checks`` are the local agent's; for another host's endpoint the
    record's aggregate health stands in as one check."""
    if checks is None:
        checks = [{"CheckID": f"service:{record.id}", "Name": f"Service '{record.service}' check",
                   "Status": record.health.value, "Output": "", "Type": ""}]
    common = {"Node": record.host, "ServiceID": record.id, "ServiceName": record.service,
              "ServiceTags": list(record.tags), "Notes": "", "Definition": {}}
    return {
        "Node": {"ID": "", "Node": record.host, "Address": node_address, "Datacenter": DATACENTER,
                 "TaggedAddresses": {}, "Meta": {}},
        "Service": {"ID": record.id, "Service": record.service, "Tags": list(record.tags),
                    "Address": _address(record), "Meta": dict(record.meta), "Port": _port(record),
                    "Weights": {"Passing": 1, "Warning": 1}},
        "Checks": [{**common, **c} for c in checks],
    }
