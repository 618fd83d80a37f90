"""Which Berth daemons answer their operations endpoints, for ``berth status``: each agent records its
``--metrics`` address in its agent record; any other daemon is named with ``--daemon NAME=ADDR:PORT``. Every
request has a deadline and all are asked at once, so a dead daemon costs the status at most one deadline."""
from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class DaemonStatus:
    name: str
    address: str
    healthy: bool
    ready: bool | None  # None: no answer at all
    detail: str


PROBE_DEADLINE = 2.0  # seconds for each daemon's /health and /ready


def daemon_targets(status, extra: list[str]) -> list[tuple[str, str]]:
    """(name, ADDR:PORT): every agent that records a --metrics address, then ``--daemon NAME=ADDR:PORT``."""
    targets = [(f"agent {a.host}", a.metrics) for a in status.agents if a.metrics]
    for text in extra:
        name, sep, address = text.partition("=")
        if not sep or not name or ":" not in address:
            raise ValueError(f"--daemon {text!r}: expected NAME=ADDR:PORT")
        targets.append((name, address))
    return targets


def probe_daemons(targets: list[tuple[str, str]]) -> tuple[DaemonStatus, ...]:
    """Ask each daemon's /health and /ready at once (a thread each, every request under its deadline)."""
    from concurrent.futures import ThreadPoolExecutor

    if not targets:
        return ()
    with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
        return tuple(pool.map(lambda target: _probe(*target), targets))


def _probe(name: str, address: str) -> DaemonStatus:
    import urllib.error
    import urllib.request

    def get(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{address}{path}", timeout=PROBE_DEADLINE) as reply:
                return reply.status, reply.read(1 << 16)
        except urllib.error.HTTPError as error:
            return error.code, error.read(1 << 16)

    try:
        health, _ = get("/health")
        ready, body = get("/ready")
    except (OSError, ValueError) as exc:
        return DaemonStatus(name, address, False, None, f"no answer: {getattr(exc, 'reason', exc)}")
    try:
        failing = [f"{check}: {result.get('detail', '')}" for check, result in
                   sorted(json.loads(body).get("checks", {}).items()) if not result.get("ok")]
    except (ValueError, AttributeError):
        failing = [] if ready == 200 else [f"/ready answered {ready}"]
    return DaemonStatus(name, address, health == 200, ready == 200, "; ".join(failing))
