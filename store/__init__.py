"""The one datastore interface Berth's rooms share (IPAM cluster mode, the overlay's subnet leases, discovery).

A room of its own because three packages need the same contract — get, put, delete, compare-and-swap,
leases, watch — and each backend (embedded SQLite, etcd v3, later Consul) must honour it identically.
Use :func:`store.api.open_store` with a URL: ``sqlite:///path``, ``etcd://host:port[,host:port]``.
"""
