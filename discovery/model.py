"""The one endpoint schema and key-path function shared by every writer (agent) and reader (dnsd).

Like CoreDNS's ``msg/service.go`` + ``msg/path.go``: whoever writes the datastore and whoever answers from it use
these functions, so the two can never disagree about where a record lives or what it means.
"""
from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping
from urllib.parse import quote, unquote

ENDPOINTS_PREFIX = "/berth/endpoints/"
DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")  # \Z, not $: "web\n" is no label
PROTOCOLS = ("tcp", "udp", "sctp")


class InvalidRecord(ValueError):
    """A record field fails validation; the message names the field."""


class Health(str, Enum):
    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True)
class PortBinding:
    """A port the endpoint serves; ``host_port`` is set when a port mapping publishes it on the host."""

    port: int
    protocol: str = "tcp"
    host_port: int | None = None
    host_ip: str | None = None

    def __post_init__(self) -> None:
        for name in ("port", "host_port"):
            value = getattr(self, name)
            if value is None and name == "host_port":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
                raise InvalidRecord(f"ports.{name}: {value!r} is not a port number (1-65535)")
        if self.protocol not in PROTOCOLS:
            raise InvalidRecord(f"ports.protocol: {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.host_ip is not None:
            _check_address(self.host_ip, "ports.hostIP")


def dns_label_for(name: str) -> str:
    """A container name as a DNS label: lower case, any other character than a-z, 0-9 and ``-`` becomes ``-``."""
    label = "".join(c if c.isascii() and (c.isalnum() or c == "-") else "-" for c in name.lower())
    return label.strip("-")[:63].rstrip("-")


def _check_address(value: Any, field_name: str) -> str:
    try:
        address = ipaddress.ip_address(value)
    except (ValueError, TypeError):
        raise InvalidRecord(f"{field_name}: {value!r} is not an IP address") from None
    if getattr(address, "scope_id", None) is not None:  # a zone means nothing to whoever asks DNS for it
        raise InvalidRecord(f"{field_name}: {value!r} carries a zone (%{address.scope_id}); give an address "
                            f"without one")
    return str(address)


def check_dns_name(value: Any, field_name: str) -> str:
    """A name made of DNS labels (RFC 1123 host names), returned lower-cased."""
    if not isinstance(value, str) or not value or len(value) > 253:
        raise InvalidRecord(f"{field_name}: {value!r} is not a DNS name")
    for label in value.rstrip(".").split("."):
        if not DNS_LABEL.match(label):
            raise InvalidRecord(f"{field_name}: {value!r} is not a valid DNS name (label {label!r})")
    return value.rstrip(".").lower()


@dataclass(frozen=True)
class EndpointRecord:
    """One endpoint: a container interface, or a service registered through the agent's HTTP API.

    ``id`` is unique per host's agent: ``<containerID>/<ifname>`` for CNI attachments, the service ID otherwise.
    ``service`` is the Consul-style service name (defaults to ``name``).
    """

    id: str
    name: str
    addresses: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    network: str = ""
    host: str = ""
    container_id: str = ""
    ifname: str = ""
    ports: tuple[PortBinding, ...] = ()
    service: str = ""
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    txt: tuple[str, ...] = ()
    health: Health = Health.PASSING

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id or len(self.id) > 512:
            raise InvalidRecord(f"id: {self.id!r} must be a non-empty string")
        object.__setattr__(self, "name", check_dns_name(self.name, "name"))
        object.__setattr__(self, "aliases", tuple(check_dns_name(a, "aliases") for a in self.aliases))
        object.__setattr__(self, "service", check_dns_name(self.service or self.name, "service"))
        if not self.addresses and not self.ports:
            raise InvalidRecord("addresses: an endpoint needs at least one address")
        object.__setattr__(self, "addresses", tuple(_check_address(a, "addresses") for a in self.addresses))
        if self.network:
            check_dns_name(self.network, "network")
        for tag in self.tags:
            if not isinstance(tag, str):
                raise InvalidRecord(f"tags: {tag!r} is not a string")
        object.__setattr__(self, "health", Health(self.health))

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "addresses": list(self.addresses),
            "aliases": list(self.aliases),
            "network": self.network,
            "host": self.host,
            "containerID": self.container_id,
            "ifname": self.ifname,
            "ports": [
                {k: v for k, v in (("port", p.port), ("protocol", p.protocol), ("hostPort", p.host_port),
                                   ("hostIP", p.host_ip)) if v is not None}
                for p in self.ports
            ],
            "service": self.service,
            "tags": list(self.tags),
            "meta": dict(self.meta),
            "txt": list(self.txt),
            "health": self.health.value,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EndpointRecord":
        if not isinstance(data, Mapping):
            raise InvalidRecord("record: not a JSON object")
        try:
            ports = tuple(
                PortBinding(port=p["port"], protocol=p.get("protocol", "tcp"), host_port=p.get("hostPort"),
                            host_ip=p.get("hostIP"))
                for p in data.get("ports", ())
            )
        except (KeyError, TypeError, AttributeError):
            raise InvalidRecord("ports: each port needs a numeric 'port'") from None
        return cls(
            id=data.get("id", ""),
            name=data.get("name", ""),
            addresses=tuple(data.get("addresses", ())),
            aliases=tuple(data.get("aliases", ())),
            network=data.get("network", ""),
            host=data.get("host", ""),
            container_id=data.get("containerID", ""),
            ifname=data.get("ifname", ""),
            ports=ports,
            service=data.get("service", ""),
            tags=tuple(data.get("tags", ())),
            meta=dict(data.get("meta", {})),
            txt=tuple(data.get("txt", ())),
            health=data.get("health", Health.PASSING.value),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> "EndpointRecord":
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise InvalidRecord(f"record: not valid JSON ({exc})") from None
        return cls.from_dict(data)


def endpoint_key(host: str, endpoint_id: str) -> str:
    """Where a record lives: ``/berth/endpoints/<host>/<quoted id>`` (one prefix per host, so a host's agent
    can list and reconcile exactly its own records)."""
    return f"{ENDPOINTS_PREFIX}{quote(host, safe='')}/{quote(endpoint_id, safe='')}"


def parse_endpoint_key(key: str) -> tuple[str, str]:
    """The inverse of :func:`endpoint_key`: ``(host, endpoint id)``."""
    if not key.startswith(ENDPOINTS_PREFIX):
        raise InvalidRecord(f"key: {key!r} is not under {ENDPOINTS_PREFIX}")
    host, _, endpoint_id = key[len(ENDPOINTS_PREFIX):].partition("/")
    return unquote(host), unquote(endpoint_id)
