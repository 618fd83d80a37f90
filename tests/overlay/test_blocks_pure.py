"""Pure tier: cluster IPAM blocks followed by the overlay (keys -> owners and borrowed addresses -> routes)."""
from __future__ import annotations

import ipaddress
from types import SimpleNamespace

from ipam.blocks import AddressRecord, BlockClaim
from overlay.blocks import BlockView, block_routes, gateways_for_borrowed, parse_key
from overlay.lease import SubnetLease, parse_lease, subnet_key
from overlay.reconcile import KernelState, Route, desired_state, plan

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address
NET = "/berth/ipam/networks/pods/"


def kv(key: str, value: bytes) -> SimpleNamespace:
    return SimpleNamespace(key=key, value=value)


def claim(block: str, host: str) -> SimpleNamespace:
    return kv(f"{NET}blocks/{block}", BlockClaim(host, "t").to_json())


def record(block: str, ip: str, host: str, released: float | None = None) -> SimpleNamespace:
    return kv(f"{NET}ips/{block}/{ip}", AddressRecord("c", "eth0", "pods", host, "t", released).to_json())


def batch(*events) -> SimpleNamespace:
    return SimpleNamespace(events=events, resynced=False)


def put(item) -> SimpleNamespace:
    return SimpleNamespace(kind="put", key=item.key, value=item.value)


def delete(key: str) -> SimpleNamespace:
    return SimpleNamespace(kind="delete", key=key, value=b"")


def peer(subnet: str, ip: str, host: str, mac: str = "02:00:00:00:00:01") -> SubnetLease:
    return SubnetLease(N(subnet), A(ip), mac, 1, ipam_host=host)


PEERS = [peer("10.5.1.0/24", "192.168.9.1", "a"), peer("10.5.2.0/24", "192.168.9.2", "b", "02:00:00:00:00:02")]


def test_keys_parsed_and_others_ignored():
    assert parse_key(f"{NET}blocks/10.9.0.64_26") == ("block", "pods", N("10.9.0.64/26"), None)
    assert parse_key(f"{NET}ips/10.9.0.64_26/10.9.0.70") == ("ip", "pods", N("10.9.0.64/26"), A("10.9.0.70"))
    assert parse_key(f"{NET}pool") == ("pool", "pods", None, None)
    for key in (f"{NET}attachments/cid/eth0/10.9.0.70", f"{NET}ips/10.9.0.64_26/10.9.1.1", f"{NET}blocks/garbage", "/other/key"):
        assert parse_key(key) is None, key


def test_lease_carries_the_ipam_host_and_old_records_read_without_it():
    lease = peer("10.5.1.0/24", "192.168.9.1", "node-a")
    assert parse_lease(subnet_key(lease.subnet), lease.to_json()) == lease
    old = SubnetLease(N("10.5.1.0/24"), A("192.168.9.1"), "02:00:00:00:00:01", 1)
    assert b"IpamHost" not in old.to_json()
    assert parse_lease(subnet_key(old.subnet), old.to_json()).ipam_host == ""


def test_blocks_of_peers_route_via_their_vtep_own_and_unknown_hosts_do_not():
    view = BlockView()
    snap = view.reset([claim("10.9.0.0_26", "a"), claim("10.9.0.64_26", "b"), claim("10.9.0.128_26", "b"),
                       claim("10.9.0.192_26", "me"), claim("10.9.1.0_26", "gone")])
    routes = block_routes(snap, PEERS, "me", "berth.1")
    assert routes == {Route(N("10.9.0.0/26"), A("10.5.1.0"), "berth.1"),
                      Route(N("10.9.0.64/26"), A("10.5.2.0"), "berth.1"),
                      Route(N("10.9.0.128/26"), A("10.5.2.0"), "berth.1")}


def test_borrowed_address_routes_to_its_holder_and_stops_when_released():
    view = BlockView()
    view.reset([claim("10.9.0.0_26", "a"), record("10.9.0.0_26", "10.9.0.5", "a")])
    snap = view.apply(batch(put(record("10.9.0.0_26", "10.9.0.9", "b"))))  # b borrowed from a's block
    assert snap is not None and snap.borrowed == {A("10.9.0.9"): ("pods", "b")}
    assert Route(N("10.9.0.9/32"), A("10.5.2.0"), "berth.1") in block_routes(snap, PEERS, "me", "berth.1")
    # on a itself: its block is local, the borrowed address goes to b
    assert block_routes(snap, PEERS, "a", "berth.1") == {Route(N("10.9.0.9/32"), A("10.5.2.0"), "berth.1")}
    snap = view.apply(batch(put(record("10.9.0.0_26", "10.9.0.9", "b", released=5.0))))
    assert snap is not None and snap.borrowed == {}


def test_address_changes_inside_own_blocks_change_nothing():
    view = BlockView()
    view.reset([claim("10.9.0.0_26", "a")])
    assert view.apply(batch(put(record("10.9.0.0_26", "10.9.0.5", "a")))) is None
    assert view.apply(batch(delete(f"{NET}attachments/c/eth0/10.9.0.5"))) is None


def test_an_address_follows_its_holder_whatever_its_block_claim_says():
    view = BlockView()
    snap = view.reset([record("10.9.0.0_26", "10.9.0.9", "b")])  # a block nobody claims (now)
    assert snap.borrowed == {A("10.9.0.9"): ("pods", "b")}
    assert view.apply(batch(put(claim("10.9.0.0_26", "a")))).borrowed == {A("10.9.0.9"): ("pods", "b")}
    assert view.apply(batch(put(claim("10.9.0.0_26", "b")))).borrowed == {}  # b's own block after all


def test_an_address_this_host_borrowed_goes_onto_the_bridge_holding_the_pool_gateway():
    from ipam.blocks import pool_definition
    from ipam.config import parse_range_set

    ranges = parse_range_set([{"subnet": "10.9.0.0/24"}], "ranges")
    view = BlockView()
    snap = view.reset([kv(f"{NET}pool", pool_definition([ranges], [26])), claim("10.9.0.0_26", "a"),
                       record("10.9.0.0_26", "10.9.0.9", "me")])
    assert gateways_for_borrowed(snap, "me") == {A("10.9.0.1")}
    assert gateways_for_borrowed(snap, "a") == set()
    local = Route(N("10.9.0.9/32"), None, "cni0")
    assert local in block_routes(snap, PEERS, "me", "berth.1", bridges={A("10.9.0.1"): "cni0"})
    # the owner's block still routes to it; without the bridge yet, no local route (the next check adds it)
    assert block_routes(snap, PEERS, "me", "berth.1") == {Route(N("10.9.0.0/26"), A("10.5.1.0"), "berth.1")}
    assert plan(KernelState(), KernelState(routes=frozenset({local}))).remove_routes == (local,)


def test_released_block_and_departed_host_remove_their_routes():
    view = BlockView()
    snap = view.reset([claim("10.9.0.0_26", "a"), claim("10.9.0.64_26", "b")])
    before = KernelState(routes=block_routes(snap, PEERS, "me", "berth.1"))
    snap = view.apply(batch(delete(f"{NET}blocks/10.9.0.0_26")))
    after = KernelState(routes=block_routes(snap, PEERS, "me", "berth.1"))
    assert plan(after, before).remove_routes == (Route(N("10.9.0.0/26"), A("10.5.1.0"), "berth.1"),)
    gone_b = KernelState(routes=block_routes(snap, PEERS[:1], "me", "berth.1"))
    assert gone_b.routes == frozenset()


def test_peer_without_ipam_host_or_mac_gets_no_block_route_and_direct_routing_uses_the_underlay():
    snap = BlockView().reset([claim("10.9.0.0_26", "a"), claim("10.9.0.64_26", "b")])
    peers = [SubnetLease(N("10.5.1.0/24"), A("192.168.9.1"), "02:00:00:00:00:01", 1),
             peer("10.5.2.0/24", "192.168.9.2", "b", mac="")]
    assert block_routes(snap, peers, "me", "berth.1") == frozenset()
    direct = block_routes(snap, PEERS, "me", "berth.1", "eth9", [N("192.168.9.0/24")])
    assert Route(N("10.9.0.0/26"), A("192.168.9.1"), "eth9") in direct


def test_block_routes_join_the_peer_routes_in_one_plan():
    snap = BlockView().reset([claim("10.9.0.64_26", "b")])
    desired = desired_state(PEERS, "berth.1")
    desired = KernelState(desired.routes | block_routes(snap, PEERS, "me", "berth.1"), desired.neighbours,
                          desired.fdb)
    changes = plan(desired, KernelState())
    assert Route(N("10.9.0.64/26"), A("10.5.2.0"), "berth.1") in changes.add_routes
    assert len(changes.add_neighbours) == 2 and len(changes.add_fdb) == 2  # reused, one per peer
