"""Pure tier: cluster IPAM's IPv6 blocks followed by the overlay (keys -> owners and borrowed addresses -> routes
via each peer VTEP's link-local address, with the neighbour and FDB entries those next hops need)."""
from __future__ import annotations

import ipaddress

import pytest

from ipam.blocks import pool_definition
from ipam.config import parse_range_set
from overlay.blocks import BlockView, block_routes, block_state, gateways_for_borrowed, needs_ipv6, parse_key, \
    vtep_link_local
from overlay.reconcile import FdbEntry, KernelState, Neighbour, Route, desired_state, plan
from tests.overlay.test_blocks_pure import NET, PEERS, batch, claim, delete, kv, peer, put, record

N4, N6 = ipaddress.IPv4Network, ipaddress.IPv6Network
A4, A6 = ipaddress.IPv4Address, ipaddress.IPv6Address
LL_A, LL_B = A6("fe80::ff:fe00:1"), A6("fe80::ff:fe00:2")  # EUI-64 of PEERS' VTEP MACs 02:00:00:00:00:0{1,2}


def dual_stack_pool():
    sets = [parse_range_set([{"subnet": subnet}], "ranges") for subnet in ("10.9.0.0/24", "fd00:9::/64")]
    return kv(f"{NET}pool", pool_definition(sets, [26, 122]))


def test_link_local_next_hop_is_the_eui64_of_the_vtep_mac():
    assert vtep_link_local("02:00:00:00:00:01") == LL_A
    assert vtep_link_local("5a:94:ef:e4:0c:ee") == A6("fe80::5894:efff:fee4:cee")  # the U/L bit flipped back
    with pytest.raises(ValueError):
        vtep_link_local("02:00:00:00:01")


def test_ipv6_keys_parsed_and_addresses_outside_their_block_ignored():
    assert parse_key(f"{NET}blocks/fd00:9::40_122") == ("block", "pods", N6("fd00:9::40/122"), None)
    assert parse_key(f"{NET}ips/fd00:9::40_122/fd00:9::41") == ("ip", "pods", N6("fd00:9::40/122"), A6("fd00:9::41"))
    for key in (f"{NET}ips/fd00:9::40_122/fd00:9::1", f"{NET}ips/fd00:9::40_122/10.9.0.1",
                f"{NET}blocks/fd00:9::zz_122"):
        assert parse_key(key) is None, key


def test_ipv6_blocks_route_via_the_peer_vteps_link_local_beside_ipv4_ones():
    snap = BlockView().reset([claim("10.9.0.0_26", "a"), claim("fd00:9::_122", "a"), claim("fd00:9::40_122", "b"),
                              claim("fd00:9::80_122", "me"), claim("fd00:9::c0_122", "gone")])
    assert block_routes(snap, PEERS, "me", "berth.1") == {
        Route(N4("10.9.0.0/26"), A4("10.5.1.0"), "berth.1"),
        Route(N6("fd00:9::/122"), LL_A, "berth.1"),
        Route(N6("fd00:9::40/122"), LL_B, "berth.1")}
    state = block_state(snap, PEERS, "me", "berth.1")
    assert state.neighbours == {Neighbour(LL_A, "02:00:00:00:00:01"), Neighbour(LL_B, "02:00:00:00:00:02")}
    assert state.fdb == {FdbEntry("02:00:00:00:00:01", A4("192.168.9.1")),
                         FdbEntry("02:00:00:00:00:02", A4("192.168.9.2"))}
    # joined with the peers' own entries: the FDB entries are the same ones, the IPv6 neighbours come on top
    peers = desired_state(PEERS, "berth.1")
    changes = plan(KernelState(peers.routes | state.routes, peers.neighbours | state.neighbours,
                               peers.fdb | state.fdb), KernelState())
    assert len(changes.add_fdb) == 2 and len(changes.add_neighbours) == 4


def test_ipv4_only_pool_adds_no_ipv6_entries_and_needs_no_ipv6():
    snap = BlockView().reset([claim("10.9.0.0_26", "a")])
    state = block_state(snap, PEERS, "me", "berth.1")
    assert state.neighbours == frozenset() and state.fdb == frozenset()
    assert not needs_ipv6(snap)
    assert needs_ipv6(BlockView().reset([dual_stack_pool()]))  # before any IPv6 block is claimed
    assert needs_ipv6(BlockView().reset([claim("fd00:9::_122", "a")]))


def test_borrowed_ipv6_address_is_a_128_to_its_holder_and_onto_the_holders_bridge():
    view = BlockView()
    snap = view.reset([dual_stack_pool(), claim("fd00:9::_122", "a"), record("fd00:9::_122", "fd00:9::5", "a"),
                       record("fd00:9::_122", "fd00:9::9", "b")])
    assert snap.borrowed == {A6("fd00:9::9"): ("pods", "b")}
    host = N6("fd00:9::9/128")
    assert block_routes(snap, PEERS, "me", "berth.1") == {Route(N6("fd00:9::/122"), LL_A, "berth.1"),
                                                          Route(host, LL_B, "berth.1")}
    # on the owner, its block stays on its bridge and the borrowed address goes to the holder
    assert block_routes(snap, PEERS, "a", "berth.1") == {Route(host, LL_B, "berth.1")}
    # on the holder: the bridge carrying the IPv6 gateway (the IPv4 one's device is not asked for an IPv6 route)
    assert gateways_for_borrowed(snap, "b") == {A4("10.9.0.1"), A6("fd00:9::1")}
    local = block_routes(snap, PEERS, "b", "berth.1", bridges={A4("10.9.0.1"): "v4only0", A6("fd00:9::1"): "cni0"})
    assert local == {Route(N6("fd00:9::/122"), LL_A, "berth.1"), Route(host, None, "cni0")}
    assert block_routes(snap, PEERS, "b", "berth.1", bridges={A4("10.9.0.1"): "cni0"}) == {
        Route(N6("fd00:9::/122"), LL_A, "berth.1")}
    # released: gone everywhere
    snap = view.apply(batch(put(record("fd00:9::_122", "fd00:9::9", "b", released=5.0))))
    assert snap is not None and snap.borrowed == {}
    assert block_routes(snap, PEERS, "me", "berth.1") == {Route(N6("fd00:9::/122"), LL_A, "berth.1")}


def test_released_ipv6_block_and_departed_host_remove_its_routes_neighbour_and_fdb_entry():
    view = BlockView()
    snap = view.reset([claim("fd00:9::_122", "a"), claim("fd00:9::40_122", "b")])
    before = block_state(snap, PEERS, "me", "berth.1")
    snap = view.apply(batch(delete(f"{NET}blocks/fd00:9::_122")))
    after = block_state(snap, PEERS, "me", "berth.1")
    changes = plan(after, before)
    assert changes.remove_routes == (Route(N6("fd00:9::/122"), LL_A, "berth.1"),)
    assert changes.remove_neighbours == (Neighbour(LL_A, "02:00:00:00:00:01"),)
    assert changes.remove_fdb == (FdbEntry("02:00:00:00:00:01", A4("192.168.9.1")),)  # ipv4 peers keep theirs
    assert block_state(snap, PEERS[:1], "me", "berth.1") == KernelState()


def test_direct_routing_sends_ipv4_over_the_underlay_and_ipv6_over_the_vxlan_device():
    snap = BlockView().reset([claim("10.9.0.0_26", "a"), claim("fd00:9::_122", "a")])
    state = block_state(snap, PEERS, "me", "berth.1", "eth9", [N4("192.168.9.0/24")])
    assert state.routes == {Route(N4("10.9.0.0/26"), A4("192.168.9.1"), "eth9"),
                            Route(N6("fd00:9::/122"), LL_A, "berth.1")}
    # a direct peer has no VXLAN entries of its own: the IPv6 blocks bring them
    assert state.fdb == {FdbEntry("02:00:00:00:00:01", A4("192.168.9.1"))}
    assert desired_state(PEERS, "berth.1", "eth9", [N4("192.168.9.0/24")]).fdb == frozenset()


def test_peer_without_mac_gets_no_ipv6_route():
    snap = BlockView().reset([claim("fd00:9::_122", "b")])
    assert block_state(snap, [peer("10.5.2.0/24", "192.168.9.2", "b", mac="")], "me", "berth.1") == KernelState()
