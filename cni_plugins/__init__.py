"""The CNI face of Berth: the protocol core (``skel``, ``types``, ``errors``, ``invoke``) and every plugin executable.

Entry modules import only the standard library at the top: a runtime execs a plugin per container, so every import
paid at start-up is container start latency. A common ADD or DEL loads neither pyroute2 nor ``dataclasses``,
``typing``, ``logging`` or ``subprocess`` (value classes are :mod:`ipam.record`'s; netlink goes through
:mod:`datapath.rtnl`); tests/bridge/test_cold_path.py holds that line, bench/fastpath_bench.py shows its cost.
"""
