"""The one retry policy of the follower and the keeper: capped exponential back-off with jitter.

One policy so that every room behaves the same when the store is away: the first retry comes quickly (a
leader election takes about a second), later ones spread out, and none waits longer than ``cap``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    first: float = 0.1   # seconds before the first retry
    cap: float = 2.0     # seconds between retries at the most
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap or self.factor < 1:
            raise ValueError(f"retry policy: need 0 < first <= cap and factor >= 1, got {self}")

    def delays(self, rng: random.Random | None = None):
        """An endless series of pauses: ``first``, then growing by ``factor`` up to ``cap``, each jittered
        by ±25% so that hosts which lost the store together do not come back in step."""
        rng = rng or random.Random()
        delay = self.first
        while True:
            yield delay * rng.uniform(0.75, 1.25)
            delay = min(delay * self.factor, self.cap)


DEFAULT_RETRY = RetryPolicy()
