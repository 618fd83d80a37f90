"""Waiting for state that another process, thread or watch produces: poll it, with a deadline that is generous
because it only bounds a hang (the fast case returns at the first poll that sees the state).

A test that asserts right after starting a server, a daemon or a watcher races it; a fixed ``sleep`` races it
too, on a loaded machine. Wait here for the state the test is entitled to expect, then assert what it tests.
"""
from __future__ import annotations

import subprocess
import time

DEFAULT_TIMEOUT = 30.0


def wait_until(predicate, timeout: float = DEFAULT_TIMEOUT, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy, and return that; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def listening(port: int, netns: str | None = None, udp: bool = False) -> bool:
    """Whether a socket listens on (TCP) or is bound to (UDP) ``port``, in ``netns`` or in this namespace."""
    argv = ["ss", *(["-N", netns] if netns else []), "-Hln", "-u" if udp else "-t", f"sport = :{port}"]
    return bool(subprocess.run(argv, capture_output=True, text=True).stdout.strip())


def wait_listening(port: int, netns: str | None = None, udp: bool = False, process=None,
                   timeout: float = DEFAULT_TIMEOUT) -> None:
    """Wait until a server started in the background has bound ``port``; fail at once if ``process`` (its
    ``Popen``) exits first."""
    def ready() -> bool:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{process.args} exited ({process.returncode}) before listening on {port}")
        return listening(port, netns, udp)

    wait_until(ready, timeout, what=f"a server listening on {'udp' if udp else 'tcp'} port {port}"
                                    + (f" in {netns}" if netns else ""))


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, up to ``grace`` seconds to finish cleanly (so it can give back leases, sockets, rules), then
    SIGKILL; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
