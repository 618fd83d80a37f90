"""What the discovery agent counts, for ``berth agent --metrics``: registrations and deregistrations, anti-entropy
runs, every store call it makes (latency and errors, by operation), the endpoints it holds and the Consul
blocking queries waiting for a change."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import Counter, Gauge, Histogram

from store.api import StoreError

# the store operations the agent and its lease keeper use; any other name is counted as "other"
OPERATIONS = ("get", "get_prefix", "put", "delete", "txn", "create", "compare_and_swap", "grant_lease",
              "keep_alive", "revoke_lease", "watch_prefix")
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REGISTRATIONS = Counter("berth_agent_registrations_total", "Endpoints registered (or replaced) on this agent, "
                        "from berth-register and the Consul API")
DEREGISTRATIONS = Counter("berth_agent_deregistrations_total", "Endpoints removed from this agent (by request, "
                          "CNI GC, a gone network namespace or a critical health check)")
ENDPOINTS = Gauge("berth_agent_endpoints", "Endpoints this agent holds")
ANTI_ENTROPY = Counter("berth_agent_anti_entropy_runs_total", "Anti-entropy runs (make the store hold exactly this "
                       "host's keys), by result", ("result",))
STORE_CALLS = Histogram("berth_agent_store_call_duration_seconds", "Time of each store call the agent and its lease "
                        "keeper make, by operation", ("operation",), buckets=BUCKETS)
STORE_ERRORS = Counter("berth_agent_store_errors_total", "Store calls that failed, by operation", ("operation",))
BLOCKING_WAITING = Gauge("berth_agent_blocking_queries_waiting", "Consul API blocking queries holding their "
                         "answer until the catalog changes")
for _result in ("ok", "error"):
    ANTI_ENTROPY.labels(_result)
for _operation in ("get", "get_prefix", "txn", "grant_lease", "keep_alive"):
    STORE_CALLS.labels(_operation)
    STORE_ERRORS.labels(_operation)


class TimedStore:
    """The agent's store, every call timed and its failures counted; otherwise the store itself."""

    def __init__(self, store) -> None:
        self._store = store

    def __getattr__(self, name: str):
        value = getattr(self._store, name)
        if name.startswith("_") or not callable(value) or name == "close":
            return value
        operation = name if name in OPERATIONS else "other"

        def timed(*args, **kwargs):
            started = time.monotonic()
            try:
                return value(*args, **kwargs)
            except StoreError:
                STORE_ERRORS.labels(operation).inc()
                raise
            finally:
                STORE_CALLS.labels(operation).observe(time.monotonic() - started)
        return timed


@contextmanager
def anti_entropy_run() -> Iterator[None]:
    try:
        yield
    except Exception:
        ANTI_ENTROPY.labels("error").inc()
        raise
    ANTI_ENTROPY.labels("ok").inc()

