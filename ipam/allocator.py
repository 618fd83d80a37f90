"""Which address an attachment gets: host-local's policy, with no file in sight.

Round robin: each range set continues after its last reserved address, wraps from the end of the last range to
the start of the first, skips the gateway, and gives up when it is back where it started. Requested addresses
go to the range set that contains them. Unlike host-local, the network address and the IPv4 broadcast are never
handed out even when ``rangeStart``/``rangeEnd`` include them.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence

from .addresses import IPAddress
from .config import Range, RangeSet
from .errors import AddressUnavailable, DuplicateAllocation, RangeExhausted
from .record import Record
from .store import Attachment, Store


class Allocation(Record):
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    gateway: IPAddress
    range_set: int


def usable(r: Range, ip: IPAddress) -> bool:
    """An address that may be handed out: inside the range, not the gateway, network or broadcast address."""
    if not r.contains(ip) or ip == r.gateway or ip == r.subnet.network_address:
        return False
    return not (r.version == 4 and ip == r.subnet.broadcast_address)


def candidates(range_set: RangeSet, last_reserved: IPAddress | None) -> Iterator[tuple[Range, IPAddress]]:
    """Every usable address once, in host-local's order: after ``last_reserved`` when the set contains it."""
    ranges = range_set.ranges
    idx = next((i for i, r in enumerate(ranges) if last_reserved is not None and r.contains(last_reserved)), None)
    if idx is None:
        idx, cur = 0, int(ranges[0].range_start)
    else:
        idx, cur = _advance(ranges, idx, int(last_reserved))  # type: ignore[arg-type]
    start = cur
    while True:
        r = ranges[idx]
        ip = ipaddress.ip_address(cur) if r.version == 4 else ipaddress.IPv6Address(cur)
        if usable(r, ip):
            yield r, ip
        idx, cur = _advance(ranges, idx, cur)
        if cur == start:
            return


def _advance(ranges: Sequence[Range], idx: int, cur: int) -> tuple[int, int]:
    if cur >= int(ranges[idx].range_end):
        idx = (idx + 1) % len(ranges)
        return idx, int(ranges[idx].range_start)
    return idx, cur + 1


def capacity(range_set: RangeSet) -> int:
    """How many addresses the set can hand out (counted, not enumerated: an IPv6 /64 is fine)."""
    total = 0
    for r in range_set.ranges:
        total += int(r.range_end) - int(r.range_start) + 1
        excluded = {r.gateway, r.subnet.network_address}
        if r.version == 4:
            excluded.add(r.subnet.broadcast_address)
        total -= sum(1 for ip in excluded if r.contains(ip))
    return total


def exhausted(range_set: RangeSet, reserved: Sequence[IPAddress]) -> bool:
    taken = sum(1 for ip in set(reserved) if any(usable(r, ip) for r in range_set.ranges))
    return taken >= capacity(range_set)


def allocate(store: Store, range_sets: Sequence[RangeSet], attachment: Attachment,
             requested: Sequence[IPAddress] = ()) -> list[Allocation]:
    """One address per range set for ``attachment``; all or nothing. The caller holds ``store.lock()``."""
    pending = list(requested)
    chosen: list[IPAddress | None] = []
    for rs in range_sets:
        want = next((ip for ip in pending if rs.contains(ip)), None)
        if want is not None:
            pending.remove(want)
        chosen.append(want)
    if pending:
        raise AddressUnavailable("failed to allocate all requested IPs: " + " ".join(map(str, pending)))
    held = store.get(attachment)
    for idx, (rs, want) in enumerate(zip(range_sets, chosen)):
        dup = next((ip for ip in held if rs.contains(ip)), None)
        if want is None and dup is not None:
            raise DuplicateAllocation(f"failed to allocate for range {idx}: {dup} has been allocated to "
                                      f"{attachment.container_id}, duplicate allocation is not allowed")
    done: list[Allocation] = []
    try:
        for idx, (rs, want) in enumerate(zip(range_sets, chosen)):
            done.append(_reserve_requested(store, rs, idx, attachment, want) if want is not None
                        else _reserve_next(store, rs, idx, attachment))
    except BaseException:
        store.release(attachment, [a.address.ip for a in done])
        raise
    return done


def _reserve_requested(store: Store, rs: RangeSet, idx: int, attachment: Attachment,
                       ip: IPAddress) -> Allocation:
    r = rs.range_for(ip)
    assert r is not None
    if ip == r.gateway:
        raise AddressUnavailable(f"failed to allocate for range {idx}: requested ip {ip} is subnet's gateway")
    if not usable(r, ip) or not store.reserve(attachment, ip, idx):
        raise AddressUnavailable(f"failed to allocate for range {idx}: requested IP address {ip} "
                                 f"is not available in range set {rs}")
    return Allocation(ipaddress.ip_interface(f"{ip}/{r.subnet.prefixlen}"), r.gateway, idx)


def _reserve_next(store: Store, rs: RangeSet, idx: int, attachment: Attachment) -> Allocation:
    order = store.candidates(rs, idx) if hasattr(store, "candidates") else candidates(rs, store.last_reserved(idx))
    for r, ip in order:
        if store.reserve(attachment, ip, idx):
            return Allocation(ipaddress.ip_interface(f"{ip}/{r.subnet.prefixlen}"), r.gateway, idx)
    raise RangeExhausted(f"failed to allocate for range {idx}: no IP addresses available in range set: {rs}")
