"""Berth's Docker face: a libnetwork remote network driver and IPAM driver on the same cores as the CNI plugins."""
