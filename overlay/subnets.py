"""Which subnet a host should try to claim: pure, so it is tested without a datastore.

Candidates come in random order (as flannel picks one at random): when many hosts start at once they rarely race
for the same key, and the compare-and-swap in ``claim`` settles the races that remain.
"""
from __future__ import annotations

import ipaddress
import random
from typing import Iterable

from overlay.config import NetworkConfig


def all_subnets(config: NetworkConfig) -> list[ipaddress.IPv4Network]:
    step = 1 << (32 - config.subnet_len)
    start = int(config.subnet_min.network_address)
    return [ipaddress.IPv4Network((start + i * step, config.subnet_len)) for i in range(config.subnet_count())]


def candidate_subnets(config: NetworkConfig, taken: Iterable[ipaddress.IPv4Network],
                      rng: random.Random | None = None, preferred: ipaddress.IPv4Network | None = None,
                      ) -> list[ipaddress.IPv4Network]:
    """Free subnets in the order to try: ``preferred`` first (this host's subnet before a restart) if it is
    still free and still fits the configuration, then the others shuffled. Taken subnets overlap any other host's
    lease, so a configuration change never hands out an address range that is in use."""
    taken = list(taken)

    def free(sub: ipaddress.IPv4Network) -> bool:
        return not any(sub.overlaps(t) for t in taken)

    free_subnets = [s for s in all_subnets(config) if free(s)]
    (rng or random.Random()).shuffle(free_subnets)
    if preferred is not None and preferred in free_subnets:
        free_subnets.remove(preferred)
        free_subnets.insert(0, preferred)
    return free_subnets
