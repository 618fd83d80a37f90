"""Cluster IPAM's pure parts: cutting a pool into blocks, the records, which address comes next, config parsing."""
from __future__ import annotations

import ipaddress
import random

import pytest

from ipam.blocks import (AddressRecord, BlockClaim, BlockPool, block_name, free_in_block, order_blocks,
                         parse_block_name)
from ipam.config import parse_ipam_config, parse_range_set
from ipam.errors import ConfigError

net = ipaddress.ip_network
ip = ipaddress.ip_address


def pool(ranges, prefixlen):
    return BlockPool(parse_range_set(ranges, "ranges"), prefixlen)


def test_a_pool_is_cut_into_aligned_blocks_of_the_configured_size():
    p = pool([{"subnet": "10.1.0.0/24", "rangeEnd": "10.1.0.135"}], 28)
    assert p.block_count() == 9
    assert [p.block_at(i) for i in (0, 1, 8)] == [net("10.1.0.0/28"), net("10.1.0.16/28"), net("10.1.0.128/28")]
    assert p.block_of(ip("10.1.0.77")) == net("10.1.0.64/28")
    assert p.block_of(ip("10.1.0.200")) is None  # beyond rangeEnd: not in the pool


def test_a_block_never_exceeds_its_ranges_subnet():
    p = pool([{"subnet": "10.2.0.0/28"}], 26)
    assert p.block_count() == 1 and p.block_at(0) == net("10.2.0.0/28")
    assert p.holds(net("10.2.0.0/28")) and not p.holds(net("10.2.0.0/26"))


def test_block_addresses_skip_network_gateway_broadcast_and_what_lies_outside_the_range():
    p = pool([{"subnet": "10.3.0.0/24", "rangeEnd": "10.3.0.20"}], 28)
    first = [str(a) for _r, a in p.addresses(net("10.3.0.0/28"))]
    assert first == [f"10.3.0.{n}" for n in range(2, 16)]
    assert [str(a) for _r, a in p.addresses(net("10.3.0.16/28"))] == [f"10.3.0.{n}" for n in range(16, 21)]
    last = pool([{"subnet": "10.3.1.0/28"}], 28)
    assert ip("10.3.1.15") not in [a for _r, a in last.addresses(net("10.3.1.0/28"))]


def test_ipv6_pools_are_sampled_not_listed():
    p = pool([{"subnet": "fd00:1::/64"}], 122)
    assert p.block_count() == 1 << 58
    picked = p.unclaimed(set(), random.Random(1), limit=5)
    assert len(picked) == 5 and all(b.prefixlen == 122 and b.subnet_of(net("fd00:1::/64")) for b in picked)


def test_unclaimed_blocks_leave_out_the_claimed_ones():
    p = pool([{"subnet": "10.4.0.0/26"}], 28)
    claimed = {net("10.4.0.0/28"), net("10.4.0.32/28")}
    assert sorted(p.unclaimed(claimed, random.Random(2))) == [net("10.4.0.16/28"), net("10.4.0.48/28")]


def test_block_names_round_trip():
    for block in (net("10.5.0.64/26"), net("fd00::40/122")):
        assert parse_block_name(block_name(block)) == block and "/" not in block_name(block)


def test_a_released_address_is_free_only_after_the_quarantine():
    p = pool([{"subnet": "10.6.0.0/29"}], 29)
    held = AddressRecord("c1", "eth0", "n", "h1", "t1")
    released = AddressRecord("c2", "eth0", "n", "h1", "t2", released_at=100.0)
    records = {ip("10.6.0.2"): held, ip("10.6.0.3"): released}
    at = lambda now: [str(a) for _r, a in free_in_block(p, net("10.6.0.0/29"), records, now, 60.0)]
    assert at(159.9) == ["10.6.0.4", "10.6.0.5", "10.6.0.6"]
    assert at(160.0) == ["10.6.0.3", "10.6.0.4", "10.6.0.5", "10.6.0.6"]


def test_records_round_trip_and_blocks_split_by_owner():
    record = AddressRecord("c1", "eth0", "n", "h1", "t1", released_at=5.0)
    assert AddressRecord.from_json(record.to_json()) == record
    claim = BlockClaim("h1", "tok")
    assert BlockClaim.from_json(claim.to_json()) == claim
    own, others = order_blocks({net("10.0.0.16/28"): claim, net("10.0.0.0/28"): BlockClaim("h2", "x")}, "h1")
    assert own == [net("10.0.0.16/28")] and others == [net("10.0.0.0/28")]


def ipam(**extra):
    return {"type": "berth-ipam", "ranges": [[{"subnet": "10.7.0.0/24"}], [{"subnet": "fd07::/64"}]], **extra}


def test_store_selects_cluster_mode_with_defaults():
    cfg = parse_ipam_config(ipam(store="/tmp/bt.db", host="h1"), "n")
    assert cfg.cluster.store_url == "sqlite:///tmp/bt.db" and cfg.cluster.host == "h1"
    assert (cfg.cluster.block_size(4), cfg.cluster.block_size(6)) == (26, 122)
    assert (cfg.cluster.quarantine, cfg.cluster.release_departed_after) == (None, None)  # the stored pool's
    assert parse_ipam_config(ipam(), "n").cluster is None


@pytest.mark.parametrize("extra, field", [
    ({"store": 5}, "ipam.store"), ({"store": "http://x"}, "ipam.store"), ({"host": "a/b"}, "ipam.host"),
    ({"blockSize": 31}, "ipam.blockSize"), ({"blockSizeV6": 64}, "ipam.blockSizeV6"),
    ({"blockSize": True}, "ipam.blockSize"), ({"quarantine": -1}, "ipam.quarantine"),
    ({"hostTTL": "1m"}, "ipam.hostTTL"), ({"releaseDepartedAfter": -5}, "ipam.releaseDepartedAfter")])
def test_bad_cluster_fields_are_named(extra, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_ipam_config(ipam(**{"store": "etcd://127.0.0.1:2379", **extra}), "n")
