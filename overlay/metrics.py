"""What the overlay daemon counts, for ``berth overlay --metrics``: the peers and kernel entries it keeps, and how
its reconciliations (start-up, each watch step, the periodic repair) go."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import Counter, Gauge, Histogram

TRIGGERS = ("start", "watch", "repair")
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

PEERS = Gauge("berth_overlay_peers", "Other hosts whose subnet lease this host follows")
ROUTES = Gauge("berth_overlay_routes", "Routes to peers' subnets as last programmed on the VXLAN device")
NEIGHBOURS = Gauge("berth_overlay_neighbours", "Neighbour (ARP) entries for peers' VTEPs as last programmed")
FDB_ENTRIES = Gauge("berth_overlay_fdb_entries", "Forwarding database entries for peers' VTEPs as last programmed")
RECONCILE = Histogram("berth_overlay_reconcile_duration_seconds", "Time to compare the wanted kernel entries with "
                      "the programmed ones and apply the difference", ("trigger",), buckets=BUCKETS)
RECONCILE_ERRORS = Counter("berth_overlay_reconcile_errors_total", "Reconciliations that failed (the watch "
                           "re-lists, the repair loop tries again)", ("trigger",))
IPAM_RECLAIMED = Counter("berth_overlay_ipam_addresses_reclaimed_total", "Addresses of departed cluster IPAM "
                         "hosts this daemon freed once their pool's releaseDepartedAfter had passed")
IPAM_RECLAIM_ERRORS = Counter("berth_overlay_ipam_reclaim_errors_total", "Reclaim passes that failed (retried at "
                              "the next interval)")
LEASE_REWRITES = Counter("berth_overlay_lease_rewrites_total", "Times this host's subnet record was written again "
                         "under a new store lease after the old one was lost")
for _trigger in TRIGGERS:
    RECONCILE.labels(_trigger)
    RECONCILE_ERRORS.labels(_trigger)


@contextmanager
def reconciling(trigger: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    except Exception:
        RECONCILE_ERRORS.labels(trigger).inc()
        raise
    finally:
        RECONCILE.labels(trigger).observe(time.monotonic() - started)


def programmed(peers: int, state) -> None:
    """After a successful reconciliation: the peers followed and the kernel entries now in place."""
    PEERS.set(peers)
    ROUTES.set(len(state.routes))
    NEIGHBOURS.set(len(state.neighbours))
    FDB_ENTRIES.set(len(state.fdb))
