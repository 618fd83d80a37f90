"""Health checks: what a check is (parsed once, frozen), how its status moves (pure), and the two probes (I/O).

Status transitions are pure functions of (state, observation, now) so TTL expiry and the deregister deadline
are tested without sleeping; the agent's check loop only runs probes and feeds their results in.
"""
from __future__ import annotations

import http.client
import re
import socket
import urllib.parse
from dataclasses import dataclass, replace
from typing import Iterable, Literal

from discovery.model import Health, InvalidRecord

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_ORDER = {Health.PASSING: 0, Health.WARNING: 1, Health.CRITICAL: 2}


def parse_duration(value: object, field_name: str) -> float:
    """Seconds from a Go duration string (``"10s"``, ``"1m30s"``, ``"500ms"``) or a number of nanoseconds,
    as Consul accepts both."""
    if isinstance(value, bool):
        raise InvalidRecord(f"{field_name}: {value!r} is not a duration")
    if isinstance(value, (int, float)):
        seconds = value / 1e9
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT[match.group(2)]
            pos = match.end()
        if pos != len(text) or pos == 0:
            raise InvalidRecord(f"{field_name}: {value!r} is not a duration like '10s' or '500ms'")
    else:
        raise InvalidRecord(f"{field_name}: {value!r} is not a duration")
    if seconds < 0:
        raise InvalidRecord(f"{field_name}: {value!r} is negative")
    return seconds


@dataclass(frozen=True)
class CheckSpec:
    """One check of one endpoint. ``target`` is ``host:port`` (tcp), a URL (http) or empty (ttl)."""

    id: str
    name: str
    kind: Literal["tcp", "http", "ttl"]
    target: str = ""
    interval: float = 10.0
    timeout: float = 10.0
    ttl: float = 0.0
    deregister_after: float | None = None
    initial: Health = Health.CRITICAL

    def __post_init__(self) -> None:
        if self.kind not in ("tcp", "http", "ttl"):
            raise InvalidRecord(f"check.kind: {self.kind!r} is not tcp, http or ttl")
        if self.kind == "ttl":
            if not self.ttl > 0:
                raise InvalidRecord(f"check.TTL: {self.ttl!r} must be a positive duration")
        elif not self.interval > 0:
            raise InvalidRecord(f"check.Interval: {self.interval!r} must be a positive duration")
        if self.kind == "tcp":
            host, sep, port = self.target.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise InvalidRecord(f"check.TCP: {self.target!r} is not host:port")
        if self.kind == "http":
            url = urllib.parse.urlsplit(self.target)
            if url.scheme not in ("http",) or not url.hostname:
                raise InvalidRecord(f"check.HTTP: {self.target!r} is not an http:// URL")
        if not self.timeout > 0:
            raise InvalidRecord(f"check.Timeout: {self.timeout!r} must be a positive duration")

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "kind": self.kind, "target": self.target,
                "interval": self.interval, "timeout": self.timeout, "ttl": self.ttl,
                "deregister_after": self.deregister_after, "initial": self.initial.value}

    @classmethod
    def from_dict(cls, d: dict) -> "CheckSpec":
        return cls(id=d["id"], name=d["name"], kind=d["kind"], target=d.get("target", ""),
                   interval=d.get("interval", 10.0), timeout=d.get("timeout", 10.0), ttl=d.get("ttl", 0.0),
                   deregister_after=d.get("deregister_after"), initial=Health(d.get("initial", "critical")))


@dataclass(frozen=True)
class CheckState:
    """Where a check stands. ``critical_since`` drives the deregister deadline; ``ttl_deadline`` the TTL."""

    status: Health
    output: str = ""
    critical_since: float | None = None
    ttl_deadline: float | None = None
    next_run: float = 0.0
    first_result_by: float | None = None  # a probed check with no result by then turns critical


def initial_state(spec: CheckSpec, now: float) -> CheckState:
    return CheckState(
        status=spec.initial, output="",
        critical_since=now if spec.initial is Health.CRITICAL else None,
        ttl_deadline=now + spec.ttl if spec.kind == "ttl" else None,
        next_run=now,
        first_result_by=None if spec.kind == "ttl" else now + spec.interval,
    )


def _with_status(state: CheckState, status: Health, output: str, now: float) -> CheckState:
    if status is Health.CRITICAL:
        since = state.critical_since if state.status is Health.CRITICAL and state.critical_since is not None else now
    else:
        since = None
    return replace(state, status=status, output=output, critical_since=since)


def observe(spec: CheckSpec, state: CheckState, status: Health, output: str, now: float) -> CheckState:
    """A probe finished (tcp/http) or the application reported (ttl): the new state."""
    state = replace(_with_status(state, status, output, now), first_result_by=None)
    if spec.kind == "ttl":
        return replace(state, ttl_deadline=now + spec.ttl)
    return replace(state, next_run=now + spec.interval)


def tick(spec: CheckSpec, state: CheckState, now: float) -> CheckState:
    """Time passed with no report: a TTL check whose deadline went by turns critical, and so does a probed check
    whose first probe has not answered within one interval (a check never keeps its initial status unproven)."""
    if spec.kind == "ttl" and state.ttl_deadline is not None and now >= state.ttl_deadline \
            and state.status is not Health.CRITICAL:
        return _with_status(state, Health.CRITICAL, f"TTL expired ({spec.ttl:g}s without an update)", now)
    if state.first_result_by is not None and now >= state.first_result_by:
        state = replace(state, first_result_by=None)
        if state.status is not Health.CRITICAL:
            return _with_status(state, Health.CRITICAL, f"no probe result within the first interval "
                                                        f"({spec.interval:g}s)", now)
    return state


def due(spec: CheckSpec, state: CheckState, now: float) -> bool:
    return spec.kind != "ttl" and now >= state.next_run


def should_deregister(spec: CheckSpec, state: CheckState, now: float) -> bool:
    """Consul's DeregisterCriticalServiceAfter: critical for longer than the deadline."""
    return (spec.deregister_after is not None and state.status is Health.CRITICAL
            and state.critical_since is not None and now - state.critical_since >= spec.deregister_after)


def aggregate(statuses: Iterable[Health]) -> Health:
    """An endpoint is as healthy as its worst check (passing when it has none)."""
    worst = Health.PASSING
    for status in statuses:
        if _ORDER[status] > _ORDER[worst]:
            worst = status
    return worst


# -- probes (I/O) -------------------------------------------------------------------------------------------
def probe_tcp(target: str, timeout: float) -> tuple[Health, str]:
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return Health.PASSING, f"TCP connect {target}: Success"
    except OSError as exc:
        return Health.CRITICAL, f"TCP connect {target}: {exc}"


def probe_http(url: str, timeout: float) -> tuple[Health, str]:
    """GET ``url``: 2xx passing, 429 warning (as Consul), anything else or no answer critical."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request("GET", path, headers={"User-Agent": "berth-agent health check"})
        response = conn.getresponse()
        response.read(4096)
        code = response.status
    except (OSError, http.client.HTTPException) as exc:
        return Health.CRITICAL, f"HTTP GET {url}: {exc}"
    finally:
        conn.close()
    output = f"HTTP GET {url}: {code} {response.reason}"
    if 200 <= code < 300:
        return Health.PASSING, output
    if code == 429:
        return Health.WARNING, output
    return Health.CRITICAL, output


def run_probe(spec: CheckSpec) -> tuple[Health, str]:
    """Probe once; any failure of the probe itself is a critical result, never an exception (the check loop
    would otherwise wait for a result that never comes)."""
    try:
        if spec.kind == "tcp":
            return probe_tcp(spec.target, spec.timeout)
        return probe_http(spec.target, spec.timeout)
    except Exception as exc:
        return Health.CRITICAL, f"{spec.kind.upper()} probe of {spec.target} failed: {exc}"
