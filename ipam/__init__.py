"""Address management that knows nothing of CNI.

``config`` parses host-local's IPAM configuration into frozen range sets, ``allocator`` decides which address an
attachment gets (pure: it only talks to a ``Store``), and ``store``/``disk`` keep the reservations. The CNI face
(``berth-ipam``) lives in ``cni_plugins.ipam_plugin`` and the Docker one in ``docker_plugin.ipam_driver``, so
imports run one way: cni_plugins → datapath → ipam → store (tests/core/test_rooms.py). ``record`` holds the frozen
value classes every room above uses in place of dataclasses, which cost a cold CNI call a third of its time.
"""
