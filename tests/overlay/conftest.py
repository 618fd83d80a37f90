"""Fixtures for the overlay's tiers: a store URL per test and simulated hosts that are always torn down."""
from __future__ import annotations

import pytest

from overlay.sim import SimCluster


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path}/overlay.db"


@pytest.fixture
def make_sim():
    """``make_sim(store, hosts=2, ...)`` → a SimCluster: underlay, network config, hosts, daemons started (unless
    ``start=False``). ``store`` is a URL, or a callable given the cluster after its underlay exists (to start an
    etcd inside it) that returns one. Every namespace and process is removed at teardown, pass or fail."""
    made: list[SimCluster] = []

    def factory(store, hosts: int = 2, start: bool = True, network: str | None = "10.214.0.0/16",
                lease_ttl: float = 4.0, daemon_args: tuple[str, ...] = (), **config) -> SimCluster:
        sim = SimCluster("", lease_ttl=lease_ttl, daemon_args=tuple(daemon_args))
        made.append(sim)
        sim.create_underlay()
        sim.store_url = store(sim) if callable(store) else store
        if network:
            sim.init_network(network, **config)
        for _ in range(hosts):
            sim.add_host()
        if start:
            sim.start_all()
        return sim

    yield factory
    for sim in made:
        sim.teardown()
