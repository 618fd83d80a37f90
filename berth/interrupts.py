"""Stop requests (SIGINT, SIGTERM, SIGHUP) for a command that must always clean up after itself.

Why a module of its own: Python turns SIGINT into KeyboardInterrupt only when the process started with SIGINT at
its default. A shell starts background jobs (``cmd &``, CI runners, ``nohup``) with SIGINT ignored, and the signal
disposition survives ``exec``: such a ``berth demo`` used to ignore Ctrl-C entirely and play to the end. The guard
installs its own handler for every stop signal, whatever the parent left behind.

An exception raised from a signal handler can also be lost: Python prints and drops an exception raised while it
runs a finaliser (``__del__``, a weakref callback), and a library may catch ``BaseException``. So the request is
also remembered, and ``checkpoint()`` (called at every step of the story) raises it again until it is honoured.
Once the guard is ``shield()``-ed (the teardown), requests are only remembered: a second Ctrl-C must not cut the
clean-up short.
"""
from __future__ import annotations

import signal
from typing import Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class StopGuard:
    """Context manager: while active, a stop signal is remembered and raises ``Interrupted`` until shielded."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._shielded = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopGuard":
        global _active
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        _active = self
        return self

    def __exit__(self, *exc_info) -> None:
        global _active
        _active = None
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum
        if not self._shielded:
            raise Interrupted(self.received)

    def checkpoint(self) -> None:
        """Raise the remembered request if it was never honoured (lost in a finaliser or a broad ``except``)."""
        if self.received is not None and not self._shielded:
            raise Interrupted(self.received)

    def shield(self) -> None:
        """From now on requests are remembered, not raised: the clean-up has begun and must finish."""
        self._shielded = True

    @property
    def exit_status(self) -> Optional[int]:
        """128 + the signal's number, as shells report a command a signal ended; None when none came."""
        return None if self.received is None else 128 + self.received


_active: Optional[StopGuard] = None


def checkpoint() -> None:
    """Honour a pending stop request of the active guard, if any (a no-op without one)."""
    if _active is not None:
        _active.checkpoint()
