"""The order in which the CNI daemon runs the calls it accepted.

- Calls for one attachment (container ID, ifname, network) run one at a time in arrival order: a DEL that arrives
  while its ADD runs waits for it and then undoes it.
- A GC runs alone on its network: after every call of that network that arrived before it, before any call of
  that network that arrives after it. Other networks never wait for it.
- A GC is told which ADDs of its network arrived before it (running or queued): the runtime made its list of
  valid attachments before those ADDs finished, so the list cannot name them, and freeing what they reserved
  would break a container that is starting. The daemon adds them to the GC's list (:func:`with_valid`).

Without the daemon, plugins exec'd side by side share only the per-operation locks of their stores (host-local's
flock): they order single reservations, not a GC against an ADD.
"""
from __future__ import annotations

import json
import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

ORDERED_COMMANDS = ("ADD", "DEL", "CHECK", "GC")
VALID_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")


@dataclass(frozen=True)
class Call:
    command: str
    network: str
    attachment: Optional[tuple[str, str]] = None  # (container ID, ifname); None for a GC

    @property
    def key(self) -> Optional[tuple[str, str, str]]:
        return None if self.attachment is None else (*self.attachment, self.network)


def call_of(env: dict, stdin: bytes) -> Optional[Call]:
    """The call an ADD, DEL, CHECK or GC is; None for anything else or unreadable input (which the plugin will
    refuse without touching anything)."""
    command = env.get("CNI_COMMAND")
    if command not in ORDERED_COMMANDS:
        return None
    try:
        name = json.loads(stdin).get("name")
    except Exception:  # noqa: BLE001 - any undecodable stdin: the plugin answers code 6 without side effects
        return None
    if not isinstance(name, str):
        return None
    if command == "GC":
        return Call(command, name)
    return Call(command, name, (env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", "")))


def with_valid(stdin: bytes, attachments: frozenset[tuple[str, str]]) -> bytes:
    """A GC's config with ``attachments`` added to its list of valid ones. A config without a list is left as
    it is (the plugin decides what a GC without one means)."""
    if not attachments:
        return stdin
    config = json.loads(stdin)
    extra = [{"containerID": c, "ifname": i} for c, i in sorted(attachments)]
    listed = [key for key in VALID_KEYS if key in config]
    if not listed or not all(isinstance(config[key], (list, type(None))) for key in listed):
        return stdin  # no list, or not a list: the plugin refuses it or decides
    for key in listed:
        config[key] = list(config[key] or ()) + extra
    return json.dumps(config).encode()


class _Turn:
    def __init__(self, call: Call) -> None:
        self.call = call
        self.go = threading.Event()


class CallOrder:
    """FIFO turns per attachment and per network (a plain Lock is not fair), under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._networks: dict[str, deque[_Turn]] = {}
        self._attachments: dict[tuple[str, str, str], deque[_Turn]] = {}

    @contextmanager
    def turn(self, call: Optional[Call]) -> Iterator[frozenset[tuple[str, str]]]:
        """Wait for ``call``'s turn; yields, for a GC, the attachments whose ADD arrived before it."""
        if call is None:
            yield frozenset()
            return
        mine = _Turn(call)
        with self._lock:
            network = self._networks.setdefault(call.network, deque())
            ahead = frozenset(t.call.attachment for t in network if t.call.command == "ADD")
            network.append(mine)
            if call.key is not None:
                self._attachments.setdefault(call.key, deque()).append(mine)
            self._start_ready(network)
        mine.go.wait()
        try:
            yield ahead if call.command == "GC" else frozenset()
        finally:
            with self._lock:
                network.remove(mine)
                if call.key is not None:
                    self._attachments[call.key].popleft()
                    if not self._attachments[call.key]:
                        del self._attachments[call.key]
                if network:
                    self._start_ready(network)
                else:
                    del self._networks[call.network]

    def _start_ready(self, network: deque[_Turn]) -> None:
        """A GC starts at the head of its network's queue; any other call once no GC is ahead of it and it is
        first for its attachment."""
        for index, turn in enumerate(network):
            if turn.call.command == "GC":
                if index == 0:
                    turn.go.set()
                return
            if self._attachments[turn.call.key][0] is turn:
                turn.go.set()

    def would_wait(self, call: Call) -> bool:
        """Whether ``call`` would queue behind a call here now (its attachment's, a GC of its network, or, for a
        GC, any call of its network)."""
        with self._lock:
            network = self._networks.get(call.network, ())
            if call.command == "GC":
                return bool(network)
            return call.key in self._attachments or any(t.call.command == "GC" for t in network)

    def pending(self, key: tuple[str, str, str]) -> int:
        """Calls for attachment ``key`` (container ID, ifname, network) running or waiting (0 when none)."""
        with self._lock:
            return len(self._attachments.get(key, ()))
