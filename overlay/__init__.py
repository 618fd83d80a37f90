"""The overlay: one flannel-style host daemon per machine that gives containers on different hosts one flat network.

It is a room of its own because it is a long-lived host agent, not a per-container plugin: it owns the host's share
of the overlay network (a subnet lease in the datastore, kept alive), the VXLAN device, and the kernel state that
reaches every other host (one route, one neighbour and one FDB entry per peer). The CNI plugin ``berth-overlay``
only reads what this daemon publishes (the subnet file), so container start-up never waits on the datastore.

Layout: pure decisions (``config``, ``subnets``, ``lease``, ``reconcile``, ``subnetfile``, ``masq`` rendering) are
kept apart from side effects (``kernel`` for netlink, ``claim`` for the datastore, ``daemon`` to tie them together).
``cli`` is ``berth overlay``; ``sim`` brings up simulated hosts (namespaces on one underlay) for tests, benchmarks
and the demo.
"""
