"""berth-ipam: a drop-in for the reference host-local, with GC and STATUS that do their job.

Handlers take a ``skel.Request`` and touch nothing process-wide (no os.environ, no cwd, no exit), so the same
``HANDLERS`` serve the executable, ``invoke.delegate`` in process and, later, a long-lived daemon. Every
operation opens and flocks the network's lock file itself, which serialises threads and processes alike.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from cni_plugins import codes, errors, skel, types
from ipam.allocator import allocate, exhausted
from ipam.config import IpamConfig, parse_ipam_config, parse_requested
from ipam.disk import DiskStore
from ipam.errors import (AddressUnavailable, ConfigError, DuplicateAllocation, IpamError, RangeExhausted,
                         StoreBusy, StoreFailure)
from ipam.store import Attachment

MAX_RESOLV_CONF = 64 << 10  # bytes
CODE_ADDRESS_UNAVAILABLE = codes.ADDRESS_UNAVAILABLE
CODE_DUPLICATE_ALLOCATION = codes.DUPLICATE_ALLOCATION
CODE_CHECK_MISMATCH = codes.STATE_DIFFERS


@contextmanager
def _cni_errors() -> Iterator[None]:
    """The IPAM library's errors become the spec's, each with its code. An exhausted range set is 50, the code
    STATUS reports for it too: this network cannot serve ADD until an address is released."""
    try:
        yield
    except ConfigError as err:
        raise errors.InvalidConfig(str(err)) from None
    except RangeExhausted as err:
        raise errors.NotAvailable(str(err), "the range set has no free address") from None
    except AddressUnavailable as err:
        raise errors.CniError(str(err), code=CODE_ADDRESS_UNAVAILABLE) from None
    except DuplicateAllocation as err:
        raise errors.CniError(str(err), code=CODE_DUPLICATE_ALLOCATION) from None
    except StoreBusy as err:
        raise errors.TryAgainLater(str(err)) from None
    except StoreFailure as err:
        raise errors.IOFailure(str(err)) from None
    except IpamError as err:
        raise errors.CniError(str(err)) from None


def load_config(req: skel.Request) -> IpamConfig:
    return skel.plugin_config(req, parse_config)


def parse_config(req: skel.Request) -> IpamConfig:
    with _cni_errors():
        return parse_ipam_config(req.config.get("ipam"), req.name, req.runtime.raw.get("ipRanges"))


def _store(cfg: IpamConfig):
    """host-local's files, or (``store`` set) cluster mode over the datastore, imported only then."""
    if cfg.cluster is None:
        return DiskStore(cfg.network, cfg.data_dir)
    from ipam.cluster import ClusterStore
    return ClusterStore(cfg)


def _attachment(req: skel.Request) -> Attachment:
    return Attachment(req.container_id, req.ifname)


def _dns(cfg: IpamConfig) -> types.DNS:
    if not cfg.resolv_conf:
        return types.DNS()
    from ipam.resolv import parse_resolv_conf
    try:  # non-blocking and bounded: a FIFO or /dev/zero named here must not hang or fill the plugin
        fd = os.open(cfg.resolv_conf, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise errors.InvalidConfig(f"ipam.resolvConf: {cfg.resolv_conf} is not a regular file")
            data = f.read(MAX_RESOLV_CONF + 1)
    except OSError as err:
        raise errors.IOFailure(f"ipam.resolvConf: cannot read {cfg.resolv_conf}: {err.strerror}") from None
    if len(data) > MAX_RESOLV_CONF:
        raise errors.DecodeFailure(f"ipam.resolvConf: {cfg.resolv_conf} is larger than {MAX_RESOLV_CONF} bytes")
    found = parse_resolv_conf(data.decode("utf-8", errors="replace"))
    return types.DNS(found.nameservers, found.domain, found.search, found.options)


def cmd_add(req: skel.Request) -> types.Result:
    cfg = load_config(req)
    with _cni_errors():
        requested = parse_requested(req.runtime.ips)
    dns = _dns(cfg)  # before any reservation: a bad resolvConf must leave nothing behind
    store = _store(cfg)
    with _cni_errors(), store.lock():
        allocations = allocate(store, cfg.range_sets, _attachment(req), requested)
    return types.Result(
        cni_version=req.cni_version,
        ips=[types.IPConfig(address=a.address, gateway=a.gateway) for a in allocations],
        routes=[types.Route(dst=r.dst, gw=r.gw) for r in cfg.routes],
        dns=dns,
    )


def cmd_del(req: skel.Request) -> None:
    cfg = load_config(req)
    store = _store(cfg)
    if not store.exists():
        return
    with _cni_errors(), store.lock():
        store.release(_attachment(req))


def cmd_check(req: skel.Request) -> None:
    cfg = load_config(req)
    store = _store(cfg)
    held: list = []
    if store.exists():
        with _cni_errors(), store.lock():
            held = store.get(_attachment(req))
    ours = [ip for ip in held if any(rs.contains(ip) for rs in cfg.range_sets)]
    if not ours:
        raise errors.UnknownContainer(f"berth-ipam: no address reserved for {req.container_id}/{req.ifname}")
    if req.prev_result is None:
        return
    expected = {c.address.ip for c in req.prev_result.ips if any(rs.contains(c.address.ip) for rs in cfg.range_sets)}
    if expected != set(ours):
        raise errors.CniError("berth-ipam: reservations do not match prevResult",
                              f"reserved {sorted(map(str, ours))}, prevResult has {sorted(map(str, expected))}",
                              code=CODE_CHECK_MISMATCH)


def cmd_gc(req: skel.Request) -> None:
    """Release every reservation whose owner is not a valid attachment; ``lock`` and ``last_reserved_ip.*`` stay."""
    cfg = load_config(req)
    if req.valid_attachments is None:
        raise errors.InvalidConfig("GC needs cni.dev/valid-attachments (an empty list releases everything)")
    valid = [Attachment(a.container_id, a.ifname) for a in req.valid_attachments]
    store = _store(cfg)
    if not store.exists():
        return
    with _cni_errors(), store.lock():
        stale = {owner for owner in store.reservations().values() if not any(v.covers(owner) for v in valid)}
        for owner in sorted(stale):
            store.release(owner)


def cmd_status(req: skel.Request) -> None:
    """Code 50 when the data directory cannot take a reservation or a range set has no free address."""
    cfg = load_config(req)
    store = _store(cfg)
    try:
        store.check_usable()
        taken = getattr(store, "pool_reservations", None)  # cluster mode: every host's, since ADD may borrow
        reserved = list(taken() if taken else store.reservations()) if store.exists() else []
    except StoreFailure as err:
        raise errors.NotAvailable(f"berth-ipam: data directory unusable: {err}") from None
    for idx, rs in enumerate(cfg.range_sets):
        if exhausted(rs, reserved):
            raise errors.NotAvailable(f"berth-ipam: range set {idx} ({rs}) is exhausted")


HANDLERS = skel.Handlers(add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc, status=cmd_status,
                         config=parse_config)


def main() -> int:
    return skel.main(HANDLERS, about="berth-ipam: host-local compatible IPAM")


if __name__ == "__main__":
    raise SystemExit(main())
