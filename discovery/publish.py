"""What the agent writes for its endpoints (pure): the Berth record and, optionally, SkyDNS keys for CoreDNS.

Everything one endpoint produces is one ``{key: value}`` mapping, so adding, changing or removing an endpoint is
one transaction of puts and deletes (nothing partial), and anti-entropy compares whole mappings.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterable, Mapping

from discovery.model import ENDPOINTS_PREFIX, EndpointRecord, Health, check_dns_name, endpoint_key
from store.machine import other_machine
from urllib.parse import quote

SKYDNS_PREFIX = "/skydns/"


def skydns_path(name: str) -> str:
    """``web.berth.internal`` → ``/skydns/internal/berth/web`` (labels reversed, as CoreDNS's etcd plugin reads)."""
    labels = check_dns_name(name, "name").split(".")
    return SKYDNS_PREFIX + "/".join(reversed(labels))


@dataclass(frozen=True)
class Publishing:
    """How this agent publishes: its host name, SkyDNS on or off, the zone and the DNS TTL."""

    host: str
    skydns_zone: str | None = None  # None: SkyDNS keys off
    dns_ttl: int = 30


def skydns_keys(record: EndpointRecord, pub: Publishing) -> dict[str, bytes]:
    """One key per (name, address) under ``/skydns/<reversed zone>/<name>/<label>``. Critical endpoints are
    left out: CoreDNS serves every key it finds, and an unhealthy endpoint must drop out of answers."""
    if pub.skydns_zone is None or record.health is Health.CRITICAL:
        return {}
    out: dict[str, bytes] = {}
    port = record.ports[0].port if record.ports else 0
    for name in record.names:
        base = skydns_path(f"{name}.{pub.skydns_zone}")
        for address in record.addresses:
            digest = hashlib.sha1(f"{pub.host}\0{record.id}\0{address}".encode()).hexdigest()[:16]
            value = {"host": address, "ttl": pub.dns_ttl, "berthHost": pub.host}
            if port:
                value["port"] = port
            out[f"{base}/x{digest}"] = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return out


def endpoint_keys(record: EndpointRecord, pub: Publishing) -> dict[str, bytes]:
    """Every key one endpoint owns in the store."""
    return {endpoint_key(pub.host, record.id): record.to_json().encode(), **skydns_keys(record, pub)}


def host_prefix(host: str) -> str:
    return f"{ENDPOINTS_PREFIX}{quote(host, safe='')}/"


def is_mine(key: str, value: bytes, pub: Publishing) -> bool:
    """Whether a stored key was written by this host's agent (its endpoint prefix, or SkyDNS keys it tagged)."""
    if key.startswith(host_prefix(pub.host)):
        return True
    if key.startswith(SKYDNS_PREFIX):
        try:
            return json.loads(value).get("berthHost") == pub.host
        except (ValueError, AttributeError):
            return False
    return False


@dataclass(frozen=True)
class SyncPlan:
    puts: Mapping[str, bytes]
    deletes: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.puts or self.deletes)


def plan_sync(desired: Mapping[str, bytes], stored: Iterable[tuple[str, bytes, int]], lease: int) -> SyncPlan:
    """Anti-entropy for the store: ``stored`` is this host's keys as ``(key, value, lease)``. Put what is missing,
    different or under another lease (an old lease would expire under it); delete what is not desired."""
    have = {key: (value, key_lease) for key, value, key_lease in stored}
    puts = {k: v for k, v in desired.items() if have.get(k) != (v, lease)}
    deletes = tuple(sorted(k for k in have if k not in desired))
    return SyncPlan(puts, deletes)


def plan_change(old: Mapping[str, bytes], new: Mapping[str, bytes]) -> SyncPlan:
    """One endpoint went from ``old`` keys to ``new`` keys."""
    return SyncPlan({k: v for k, v in new.items() if old.get(k) != v},
                    tuple(sorted(k for k in old if k not in new)))


AGENTS_PREFIX = "/berth/agents/"
ACL_NONE = "none"  # the agent serves no HTTP API: only the root-only socket writes its catalogue


def name_used_elsewhere(stored: bytes | None, mine: bytes | None) -> str | None:
    """The other machine's ID when the agent record in the store (``stored``) is another machine's than this
    agent's own (``mine``): two agents with one host name would delete each other's endpoints."""
    if stored is None or mine is None:
        return None
    try:
        return other_machine(AgentRecord.from_json(stored).machine, AgentRecord.from_json(mine).machine)
    except ValueError:
        return None


def agent_key(host: str) -> str:
    """Where an agent describes itself, under its lease: ``/berth/agents/<host>`` (gone when the agent is)."""
    return f"{AGENTS_PREFIX}{quote(host, safe='')}"


@dataclass(frozen=True)
class AgentRecord:
    """What ``berth status`` shows of a running agent: where its HTTP API is, who may write through it (``acl``
    is the default policy, ``allow`` meaning any local user), and where its operations endpoint answers."""

    host: str
    address: str
    http: str  # "ADDR:PORT", or "" without an HTTP API
    acl: str  # "allow", "deny" or ACL_NONE
    metrics: str = ""  # "ADDR:PORT" of /metrics, /health and /ready (--metrics), or "" when not served
    machine: str = ""  # the machine ID (store.machine): a second machine using the same host name is told apart

    def to_json(self) -> bytes:
        return json.dumps({"host": self.host, "address": self.address, "http": self.http, "acl": self.acl,
                           "metrics": self.metrics, "machine": self.machine},
                          sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "AgentRecord":
        try:
            doc = json.loads(raw)
            return cls(str(doc["host"]), str(doc["address"]), str(doc.get("http", "")), str(doc["acl"]),
                       str(doc.get("metrics", "")), str(doc.get("machine", "")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not an agent record ({exc})") from None
