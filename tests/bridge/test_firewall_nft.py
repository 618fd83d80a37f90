"""The nftables backend's fast ADD (the rules alone once the table is there) still builds and repairs the table."""
from __future__ import annotations

import ipaddress

import pytest

from datapath import firewall, netns as nsctx
from datapath.firewall_nft import NftBackend
from tests.bridge.cni_call import nft_ruleset

pytestmark = pytest.mark.root


def masq(address: str) -> list[firewall.Rule]:
    return [firewall.Masquerade(source=ipaddress.ip_address(address), subnet=ipaddress.ip_network("10.231.5.0/24"))]


def test_rules_are_added_with_or_without_the_table_and_removed_by_tag(netns):
    ns = netns("host")
    backend = NftBackend("nat")
    with nsctx.entered(netns.path(ns)):
        backend.add("berth aaaa c1 eth0", masq("10.231.5.2"))  # no table yet: built with the rules
        backend.add("berth aaaa c2 eth0", masq("10.231.5.3"))  # the table is there: rules alone
        assert sorted(r.comment for r in backend.rules("berth aaaa ")) == \
            ["berth aaaa c1 eth0 masq", "berth aaaa c2 eth0 masq"]
        backend.drop_table()
        backend.add("berth aaaa c3 eth0", masq("10.231.5.4"))  # removed behind our back: built again
        assert [r.comment for r in backend.rules("berth aaaa ")] == ["berth aaaa c3 eth0 masq"]
        backend.remove(["berth aaaa c3 eth0"])
        assert backend.rules("berth aaaa ") == []
    assert "type nat hook postrouting priority srcnat; policy accept;" in nft_ruleset(ns)
