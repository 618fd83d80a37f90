"""The one datastore interface Berth's rooms share (IPAM cluster mode, the overlay's subnet leases, discovery).

A room of its own because three packages need the same contract — get, put, delete, compare-and-swap,
leases, watch — and each backend (embedded SQLite, etcd v3, later Consul) must honour it identically.
Use :func:`store.api.open_store` with a URL: ``sqlite:///path``, ``etcd://host:port[,host:port]``;
:func:`store.config.default_store_url` gives the one every command uses when told nothing.

Files: ``api`` (the contract), ``common`` (argument checks, etcd's compare rules, the watch's view of a
prefix), ``sqlite`` + ``sqlite_txn`` + ``sqlite_watch`` + ``change_signal`` (the embedded backend),
``etcd`` + ``etcd_client`` + ``etcd_watch`` (etcd v3 over gRPC). On top of the contract, the mechanisms every
room shares, one of each: ``follower`` (list a prefix, watch from revision + 1, resume, re-list, feed a pure
reducer), ``keeper`` (one lease kept alive, replaced when lost, its owner told), ``retry`` (their one back-off
policy) and ``deadline`` (a bound a caller puts on the store calls it makes). A Consul backend fits the same shape:
revisions are Consul's raft index, leases its sessions (TTL, behaviour "delete"), ``txn`` its ``/v1/txn``
with ``check-index``, and a watch its blocking queries, which carry no history, so every batch is a
re-list turned into the difference by :class:`store.common.PrefixView`.
"""
