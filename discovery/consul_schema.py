"""Consul's agent-API JSON, parsed at the edge into Berth's types, and Berth's records rendered back as Consul's.

Consul accepts field names in any case (``Name``, ``name``; py-consul sends lower-case ``checks`` but
``DeregisterCriticalServiceAfter``), so keys are matched case-insensitively, ignoring underscores.
"""
from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any, Mapping

from discovery.health import CheckSpec, parse_duration
from discovery.model import EndpointRecord, Health, InvalidRecord, PortBinding

DATACENTER = "dc1"
MAX_INTERVAL = 24 * 3600.0     # seconds; a longer interval is a typo, not a health check
MAX_TIMEOUT = 600.0
MAX_META_PAIRS, MAX_META_KEY, MAX_META_VALUE = 64, 128, 512   # Consul's own limits
MAX_ID = 512


def check_service_id(service_id: object, field_name: str = "ID") -> str:
    """An ID Berth can store, serve back and deregister: the rest of a URL path, so '/' is fine, but not an
    empty, '.' or '..' segment (HTTP clients rewrite those before sending) nor control characters."""
    if not isinstance(service_id, str) or not service_id:
        raise InvalidRecord(f"{field_name}: {service_id!r} is not a non-empty string")
    if len(service_id) > MAX_ID:
        raise InvalidRecord(f"{field_name}: {len(service_id)} characters is longer than {MAX_ID}")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in service_id):
        raise InvalidRecord(f"{field_name}: control characters are not allowed")
    if any(part in ("", ".", "..") for part in service_id.split("/")):
        raise InvalidRecord(f"{field_name}: {service_id[:80]!r} has an empty, '.' or '..' path segment")
    return service_id


def _check_target(kind: str, target: str) -> str:
    """A probe target that can be probed: refused here, with the field named, rather than failing forever."""
    if kind == "http":
        url = urllib.parse.urlsplit(target)
        if url.scheme != "http":
            raise InvalidRecord(f"Check.HTTP: {target[:200]!r} is not an http:// URL (https is not supported)")
        try:
            port = url.port
        except ValueError:
            raise InvalidRecord(f"Check.HTTP: {target[:200]!r} has an invalid port") from None
        if not url.hostname or port == 0:
            raise InvalidRecord(f"Check.HTTP: {target[:200]!r} has no host or port 0")
    if kind == "tcp":
        host, sep, port = target.rpartition(":")
        if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidRecord(f"Check.TCP: {target[:200]!r} is not host:port with a port 1-65535")
    return target


def _bounded(value: float, limit: float, field_name: str) -> float:
    if value > limit:
        raise InvalidRecord(f"{field_name}: {value:g}s is longer than the limit of {limit:g}s")
    return value


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
        check_id = check_service_id(str(c.get("checkid") or c.get("id")), "Check.CheckID")
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
    interval = parse_duration(c["interval"], "Check.Interval") if c.get("interval") else (
        0.0 if kind != "ttl" else 10.0)
    if kind != "ttl" and not interval > 0:
        raise InvalidRecord("Check.Interval: a positive interval is required for TCP and HTTP checks")
    timeout = parse_duration(c["timeout"], "Check.Timeout") if c.get("timeout") else 10.0
    if not timeout > 0:
        raise InvalidRecord("Check.Timeout: must be a positive duration")
    return CheckSpec(
        id=check_id, name=name, kind=kind,  # type: ignore[arg-type]
        target="" if kind == "ttl" else _check_target(kind, str(c[kind])),
        interval=_bounded(interval, MAX_INTERVAL, "Check.Interval"),
        timeout=_bounded(timeout, MAX_TIMEOUT, "Check.Timeout"),
        ttl=_bounded(parse_duration(c["ttl"], "Check.TTL"), MAX_INTERVAL, "Check.TTL") if kind == "ttl" else 0.0,
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
    if "." in name:  # it would name DNS records under another's (web.service, web1.net): one label only
        raise InvalidRecord(f"Name: {name[:80]!r} must be a single DNS label (no dots)")
    service_id = check_service_id(d.get("id") or name)
    port = d.get("port") or 0
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise InvalidRecord(f"Port: {port!r} is not a port number")
    tags = d.get("tags") or []
    meta = d.get("meta") or {}
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidRecord("Tags: must be a list of strings")
    if not isinstance(meta, Mapping) or not all(isinstance(v, str) for v in meta.values()):
        raise InvalidRecord("Meta: must be an object of strings")
    if len(meta) > MAX_META_PAIRS:
        raise InvalidRecord(f"Meta: {len(meta)} pairs is more than {MAX_META_PAIRS}")
    for key, value in meta.items():
        if not key or len(key) > MAX_META_KEY or len(value) > MAX_META_VALUE:
            raise InvalidRecord(f"Meta: key {key[:40]!r}: keys are 1-{MAX_META_KEY} characters, "
                                f"values at most {MAX_META_VALUE}")
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
