"""The CNI face of Berth: the protocol core (``skel``, ``types``, ``errors``, ``invoke``) and every plugin executable.

Entry modules import only the standard library at the top: a runtime execs a plugin per container, so every import
paid at start-up is container start latency.
"""
