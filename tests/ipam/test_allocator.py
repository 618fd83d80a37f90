"""The allocator's policy against the in-memory store: no files, no root (pure)."""
from ipaddress import ip_address as ip

import pytest

from ipam.allocator import allocate, candidates, capacity, exhausted
from ipam.config import parse_ipam_config
from ipam.errors import AddressUnavailable, DuplicateAllocation, RangeExhausted
from ipam.store import Attachment, MemoryStore


def sets(**ipam):
    return parse_ipam_config(ipam, "net1").range_sets


def att(n):
    return Attachment(f"c{n}", "eth0")


def add(store, range_sets, n, requested=()):
    with store.lock():
        return [str(a.address) for a in allocate(store, range_sets, att(n), requested)]


def test_sequential_allocation_skips_the_gateway_and_carries_prefix_and_gateway():
    rs, store = sets(subnet="10.0.0.0/29"), MemoryStore()
    with store.lock():
        (first,) = allocate(store, rs, att(0))
    assert (str(first.address), first.gateway, first.range_set) == ("10.0.0.2/29", ip("10.0.0.1"), 0)
    assert [add(store, rs, n) for n in range(1, 5)] == [["10.0.0.3/29"], ["10.0.0.4/29"], ["10.0.0.5/29"],
                                                        ["10.0.0.6/29"]]


def test_round_robin_continues_after_the_last_reserved_and_reuses_freed_addresses_only_after_wrapping():
    rs, store = sets(subnet="10.0.0.0/28"), MemoryStore()
    for n in range(4):
        add(store, rs, n)                      # .2 .3 .4 .5
    with store.lock():
        store.release(att(1))                  # frees .3
    assert add(store, rs, 10) == ["10.0.0.6/28"]
    for n in range(11, 19):
        add(store, rs, n)                      # .7 ... .14: the range ends at .14
    assert add(store, rs, 19) == ["10.0.0.3/28"]  # wrapped, skipping taken .2


def test_exhaustion_raises_and_reserves_nothing():
    rs, store = sets(subnet="10.0.0.0/29"), MemoryStore()
    for n in range(5):
        add(store, rs, n)
    with pytest.raises(RangeExhausted, match="no IP addresses available in range set: 10.0.0.1-10.0.0.6"):
        add(store, rs, 99)
    assert len(store.reservations()) == 5 and exhausted(rs[0], list(store.reservations()))


def test_network_and_broadcast_addresses_are_never_handed_out_even_inside_the_range():
    rs, store = sets(subnet="10.0.0.0/29", rangeStart="10.0.0.0", rangeEnd="10.0.0.7"), MemoryStore()
    got = [add(store, rs, n)[0] for n in range(5)]
    assert got == ["10.0.0.2/29", "10.0.0.3/29", "10.0.0.4/29", "10.0.0.5/29", "10.0.0.6/29"]
    with pytest.raises(RangeExhausted):
        add(store, rs, 9)
    with pytest.raises(AddressUnavailable):
        add(store, sets(subnet="10.0.0.0/29", rangeEnd="10.0.0.7"), 9, [ip("10.0.0.7")])


def test_a_gateway_inside_the_range_is_skipped_wherever_it_is():
    rs = sets(subnet="10.0.0.0/29", gateway="10.0.0.4")
    assert [str(a) for _, a in candidates(rs[0], None)] == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5",
                                                          "10.0.0.6"]
    assert capacity(rs[0]) == 5


def test_a_set_of_several_ranges_is_walked_in_order_and_wraps_to_the_first():
    rs = sets(ranges=[[{"subnet": "10.0.0.0/29", "rangeStart": "10.0.0.5"},
                       {"subnet": "10.0.1.0/29", "rangeEnd": "10.0.1.3"}]])
    order = [str(a) for _, a in candidates(rs[0], ip("10.0.0.6"))]
    assert order == ["10.0.1.2", "10.0.1.3", "10.0.0.5", "10.0.0.6"]
    assert capacity(rs[0]) == 4


def test_last_reserved_outside_the_set_restarts_at_the_first_range():
    rs = sets(subnet="10.0.0.0/29")
    assert str(next(candidates(rs[0], ip("192.168.9.9")))[1]) == "10.0.0.2"


def test_requested_addresses_are_honoured_per_range_set():
    rs, store = sets(ranges=[[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]), MemoryStore()
    assert add(store, rs, 0, [ip("fd00::99"), ip("10.0.0.50")]) == ["10.0.0.50/24", "fd00::99/64"]
    assert add(store, rs, 1, [ip("10.0.0.60")]) == ["10.0.0.60/24", "fd00::9a/64"]  # after the last reserved


@pytest.mark.parametrize("requested, message", [
    ("10.0.0.50", "requested IP address 10.0.0.50 is not available in range set 10.0.0.1-10.0.0.254"),
    ("10.0.0.1", "requested ip 10.0.0.1 is subnet's gateway"),
    ("10.9.0.1", "failed to allocate all requested IPs: 10.9.0.1"),
])
def test_unavailable_requested_addresses_fail_and_leave_the_store_as_it_was(requested, message):
    rs, store = sets(ranges=[[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]), MemoryStore()
    add(store, rs, 0, [ip("10.0.0.50")])
    before = store.reservations(), store.last_reserved(0), store.last_reserved(1)
    with pytest.raises(AddressUnavailable, match=message):
        add(store, rs, 1, [ip(requested)])
    # unlike host-local, which reserves (and moves last_reserved_ip) before noticing, then releases
    assert (store.reservations(), store.last_reserved(0), store.last_reserved(1)) == before


def test_dual_stack_gives_one_address_per_range_set():
    rs, store = sets(ranges=[[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/120"}]]), MemoryStore()
    assert add(store, rs, 0) == ["10.0.0.2/24", "fd00::2/120"]
    assert sorted(map(str, store.get(att(0)))) == ["10.0.0.2", "fd00::2"]


def test_a_second_add_for_one_attachment_is_refused_without_reserving():
    rs, store = sets(ranges=[[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/120"}]]), MemoryStore()
    add(store, rs, 0)
    with pytest.raises(DuplicateAllocation, match="10.0.0.2 has been allocated to c0"):
        add(store, rs, 0)
    assert len(store.reservations()) == 2


def test_all_or_nothing_when_a_later_range_set_is_exhausted():
    rs, store = sets(ranges=[[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/126"}]]), MemoryStore()
    add(store, rs, 0)
    add(store, rs, 1)  # fd00::2 and ::3: the v6 set is now full
    with pytest.raises(RangeExhausted, match="range 1"):
        add(store, rs, 2)
    assert att(2) not in store.reservations().values()
    assert store.last_reserved(0) == ip("10.0.0.4")  # round robin moved on, as host-local's does


def test_capacity_is_counted_not_enumerated_for_huge_ipv6_sets():
    (rs,) = sets(ranges=[[{"subnet": "fd00::/64"}]])
    assert capacity(rs) == 2**64 - 2  # minus the subnet-router anycast address and the gateway
    assert not exhausted(rs, [ip("fd00::2")])
