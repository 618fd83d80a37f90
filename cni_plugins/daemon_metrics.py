"""What the CNI daemon counts, for ``berth cni-daemon --metrics``: calls by plugin, command and result code, their
duration, the calls running, and the calls sent back to the launcher (which then runs them itself).

Imported by the daemon only: the plugin executables and the launcher never load prometheus_client. Labels are
bounded: plugins are the types this daemon serves, commands the spec's, codes the CNI error codes (0: success).
"""
from __future__ import annotations

import json

from prometheus_client import Counter, Gauge, Histogram

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
# a bridge ADD with IPAM in process takes milliseconds to a few hundred; a stuck delegate up to its minute
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

CALLS = Counter("berth_cni_calls_total", "CNI calls the daemon ran, by plugin, command and result code "
                "(0: success, else the CNI error code answered)", ("plugin", "command", "code"))
DURATION = Histogram("berth_cni_call_duration_seconds", "Time from accepting a CNI call to its answer, waiting "
                     "for an earlier call on the same attachment included", ("plugin", "command"), buckets=BUCKETS)
IN_FLIGHT = Gauge("berth_cni_calls_in_flight", "CNI calls accepted and not yet answered")
SENT_BACK = Counter("berth_cni_calls_sent_back_total", "Launcher connections the daemon did not serve (the launcher "
                    "runs the call itself): at the connection cap, at the call cap, another build or namespace, "
                    "a uid that may not call", ("reason",))
for _reason in ("connections", "busy", "skew", "uid"):
    SENT_BACK.labels(_reason)


def command_label(env: dict) -> str:
    command = env.get("CNI_COMMAND", "")
    return command if command in COMMANDS else "other"


def result_code(exit_code: int, stdout: bytes) -> str:
    """The CNI error code of a reply (its JSON error object), "0" on success, "unknown" if unreadable."""
    if exit_code == 0:
        return "0"
    try:
        code = json.loads(stdout).get("code")
    except (ValueError, AttributeError):
        return "unknown"
    return str(code) if isinstance(code, int) and 0 <= code < 1000 else "unknown"


def record_call(plugin: str, env: dict, exit_code: int, stdout: bytes, seconds: float) -> None:
    command = command_label(env)
    CALLS.labels(plugin, command, result_code(exit_code, stdout)).inc()
    DURATION.labels(plugin, command).observe(seconds)
