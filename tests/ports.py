"""Ports for tests, without the pick-then-bind race.

A port the kernel calls free now can be taken before the test's server binds it: most often by the kernel itself,
which hands ephemeral ports to every outgoing connection on the machine. So ports are picked outside the ephemeral
range, and a test either holds the port from the moment it is picked (``held_port``: a dead address nobody else can
take) or retries with a fresh one when the server reports it taken (``with_free_port``).
"""
from __future__ import annotations

import contextlib
import secrets
import socket
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")
PORT_ATTEMPTS = 8


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(part) for part in f.read().split())
            return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(family, kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now on ``host`` for TCP and UDP, outside the kernel's ephemeral range (so no outgoing
    connection is handed it meanwhile); never a fixed one."""
    low, high = _ephemeral_range()
    start, end = (10000, low - 1) if low > 11000 else (high + 1, 65535)
    while True:
        port = start + secrets.randbelow(end - start + 1)
        if _bindable(host, port):
            return port


@contextlib.contextmanager
def held_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A TCP port bound, never listening, for as long as the block runs: connecting to it is refused, as to a
    dead server, and no other process can take it meanwhile."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        yield sock.getsockname()[1]


def port_taken(error: BaseException) -> bool:
    return "address already in use" in str(error).lower()


def with_free_port(start: Callable[[int], T], taken: Callable[[BaseException], bool] = port_taken,
                   host: str = "127.0.0.1") -> tuple[int, T]:
    """``start(port)`` with a free port; when it fails because the port was taken meanwhile, again with another."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port(host)
        try:
            return port, start(port)
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is the race this helper exists for
            if not taken(exc) or attempt == PORT_ATTEMPTS:
                raise
    raise AssertionError("unreachable")
