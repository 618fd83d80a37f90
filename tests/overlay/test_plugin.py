"""berth-overlay, the CNI plugin: its pure config building, its errors, and containers on simulated hosts."""
from __future__ import annotations

import ipaddress
import os
import secrets
import types

import pytest

from cni_plugins.overlay_plugin import delegate_config, parse
from cni_plugins import errors
from overlay import subnetfile
from tests.overlay.helpers import cni, ping, tcp_exchange, wait_until

SETTINGS = subnetfile.for_lease(ipaddress.IPv4Network("10.214.0.0/16"), ipaddress.IPv4Network("10.214.9.0/24"),
                                1450, True)


def fake_request(config: dict) -> types.SimpleNamespace:
    """A stand-in for skel.Request holding only what delegate_config reads."""
    return types.SimpleNamespace(name=config["name"], cni_version=config["cniVersion"], config=config)


def net_config(tmp_path, **keys) -> dict:
    conf = {"cniVersion": "1.1.0", "name": "btovl", "type": "berth-overlay",
            "subnetFile": str(tmp_path / "subnet.env"), "dataDir": str(tmp_path / "saved"),
            "ipam": {"dataDir": str(tmp_path / "ipam")}}
    conf.update(keys)
    return conf


def test_delegate_config_gives_the_bridge_this_hosts_subnet(tmp_path):
    config = net_config(tmp_path, delegate={"bridge": "btbr0", "hairpinMode": True},
                        runtimeConfig={"portMappings": []})
    conf = delegate_config(parse(config), SETTINGS, fake_request(config))
    assert conf["type"] == "berth-bridge" and conf["name"] == "btovl" and conf["cniVersion"] == "1.1.0"
    assert conf["bridge"] == "btbr0" and conf["hairpinMode"] is True
    assert conf["mtu"] == 1450 and conf["isGateway"] is True and conf["isDefaultGateway"] is True
    assert conf["ipMasq"] is False  # the daemon masquerades (FLANNEL_IPMASQ=true): the bridge must not as well
    assert conf["ipam"] == {"type": "berth-ipam", "dataDir": str(tmp_path / "ipam"),
                            "ranges": [[{"subnet": "10.214.9.0/24"}]], "routes": [{"dst": "10.214.0.0/16"}]}
    assert conf["runtimeConfig"] == {"portMappings": []}


def test_delegate_config_keeps_user_choices(tmp_path):
    config = net_config(tmp_path, delegate={"type": "bridge", "mtu": 1400, "ipMasq": True},
                        ipam={"type": "host-local", "subnet": "10.9.9.0/24", "routes": [{"dst": "10.214.0.0/16"},
                                                                                        {"dst": "0.0.0.0/0"}]})
    conf = delegate_config(parse(config), SETTINGS, fake_request(config))
    assert (conf["type"], conf["mtu"], conf["ipMasq"]) == ("bridge", 1400, True)
    assert "subnet" not in conf["ipam"] and conf["ipam"]["type"] == "host-local"
    assert conf["ipam"]["routes"] == [{"dst": "10.214.0.0/16"}, {"dst": "0.0.0.0/0"}]


@pytest.mark.parametrize("keys, field", [({"subnetFile": "relative/subnet.env"}, "subnetFile"),
                                         ({"dataDir": 7}, "dataDir"), ({"delegate": []}, "delegate"),
                                         ({"ipam": {"type": ""}}, "ipam.type")])
def test_bad_plugin_config(tmp_path, keys, field):
    with pytest.raises(errors.InvalidConfig, match=field):
        parse(net_config(tmp_path, **keys))


def test_status_is_50_without_a_lease_and_add_asks_to_try_later(tmp_path):
    config = net_config(tmp_path)
    rc, out = cni("STATUS", config)
    assert rc == 1 and out["code"] == 50 and "no overlay subnet lease" in out["msg"]
    rc, out = cni("ADD", config, container_id="bt" + secrets.token_hex(4), netns="/run/netns/bt-none")
    assert rc == 1 and out["code"] == 11
    assert not (tmp_path / "saved").exists() or not os.listdir(tmp_path / "saved")


def test_bad_config_is_the_specs_error_object(tmp_path):
    rc, out = cni("STATUS", net_config(tmp_path, subnetFile="nope"))
    assert rc == 1 and out["code"] == 7 and "subnetFile" in out["msg"]


# -- on simulated hosts ---------------------------------------------------------------------------------------------

@pytest.fixture
def overlay_hosts(make_sim, sqlite_url):
    return make_sim(sqlite_url, hosts=2)


def host_config(tmp_path, host) -> dict:
    base = tmp_path / host.label
    return {"cniVersion": "1.1.0", "name": "btovl", "type": "berth-overlay", "subnetFile": str(host.subnet_file),
            "dataDir": str(base / "saved"), "delegate": {"bridge": "btovl0"}, "ipam": {"dataDir": str(base / "ipam")}}


def reserved(tmp_path, host) -> list[str]:
    path = tmp_path / host.label / "ipam" / "btovl"
    return sorted(f for f in os.listdir(path) if f[0].isdigit()) if path.exists() else []


@pytest.mark.root
def test_containers_on_two_hosts_through_the_plugin(overlay_hosts, netns, tmp_path):
    a, b = overlay_hosts.hosts
    ns_a, ns_b = netns("ctr"), netns("ctr")
    conf_a, conf_b = host_config(tmp_path, a), host_config(tmp_path, b)
    rc, res_a = cni("ADD", conf_a, host=a.netns, container_id="btca", netns=netns.path(ns_a))
    assert rc == 0, res_a
    rc, res_b = cni("ADD", conf_b, host=b.netns, container_id="btcb", netns=netns.path(ns_b))
    assert rc == 0, res_b
    ip_a = ipaddress.ip_interface(res_a["ips"][0]["address"])
    ip_b = ipaddress.ip_interface(res_b["ips"][0]["address"])
    assert ip_a.ip in a.subnet() and ip_b.ip in b.subnet()
    assert any(route["dst"] == "10.214.0.0/16" for route in res_a["routes"])
    wait_until(lambda: ping(ns_a, ip_b.ip), what="A's container reaching B's through the plugin")
    assert tcp_exchange(ns_b, str(ip_b.ip), ns_a, b"via berth-overlay") == b"via berth-overlay"

    # traffic leaving the overlay (to the underlay namespace, which has no route back) is masqueraded by the host
    assert ping(ns_a, overlay_hosts.underlay_gateway)

    # CHECK passes while everything is as ADD left it
    assert cni("CHECK", {**conf_a, "prevResult": res_a}, host=a.netns, container_id="btca",
               netns=netns.path(ns_a))[0] == 0
    # STATUS is fine while the daemon holds the lease
    assert cni("STATUS", conf_a, host=a.netns)[0] == 0

    # DEL works from the saved config even after the subnet file changed
    a.kill()  # keep the daemon from rewriting it
    moved = subnetfile.read(a.subnet_file)
    subnetfile.write(a.subnet_file, subnetfile.for_lease(moved.network, ipaddress.IPv4Network("10.214.250.0/24"),
                                                         moved.mtu, moved.ipmasq))
    rc, out = cni("CHECK", {**conf_a, "prevResult": res_a}, host=a.netns, container_id="btca",
                  netns=netns.path(ns_a))
    assert rc == 1 and out["code"] == 101 and "outside this host's subnet" in out["msg"], (res_a, out, a.subnet_file.read_text())
    assert reserved(tmp_path, a) == [str(ip_a.ip)]
    rc, out = cni("DEL", {**conf_a, "prevResult": res_a}, host=a.netns, container_id="btca",
                  netns=netns.path(ns_a))
    assert rc == 0, out
    assert reserved(tmp_path, a) == []
    assert not os.listdir(tmp_path / a.label / "saved")
    # a second DEL is still success
    assert cni("DEL", conf_a, host=a.netns, container_id="btca", netns=netns.path(ns_a))[0] == 0


@pytest.mark.root
def test_gc_releases_attachments_the_runtime_forgot(overlay_hosts, netns, tmp_path):
    a = overlay_hosts.hosts[0]
    conf = host_config(tmp_path, a)
    kept, forgotten = netns("ctr"), netns("ctr")
    assert cni("ADD", conf, host=a.netns, container_id="btkeep", netns=netns.path(kept))[0] == 0
    rc, res = cni("ADD", conf, host=a.netns, container_id="btgone", netns=netns.path(forgotten))
    assert rc == 0
    assert len(reserved(tmp_path, a)) == 2
    gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "btkeep", "ifname": "eth0"}]}
    rc, out = cni("GC", gc, host=a.netns)
    assert rc == 0, out
    remaining = reserved(tmp_path, a)
    assert len(remaining) == 1 and remaining[0] != ipaddress.ip_interface(res["ips"][0]["address"]).ip.compressed
    assert sorted(os.listdir(tmp_path / a.label / "saved")) == ["btkeep-eth0.json"]


def test_cluster_mode_delegates_the_pool_not_the_hosts_subnet(tmp_path):
    ipam = {"store": "sqlite:////tmp/x.db", "host": "n1", "ranges": [[{"subnet": "10.215.0.0/24"}]],
            "blockSize": 28}
    config = net_config(tmp_path, ipam=ipam, args={"cni": {"ips": ["10.215.0.9"]}})
    conf = delegate_config(parse(config), SETTINGS, fake_request(config))
    assert conf["ipam"] == {"type": "berth-ipam", **ipam}  # ranges as given: no host subnet, no overlay route
    assert conf["isGateway"] is True and conf["isDefaultGateway"] is True
    assert conf["ipMasq"] is True  # the daemon's masquerade rules know the overlay network, not the pool
    assert conf["ipv6SubnetViaGateway"] is True  # no proxy NDP for the IPv6 pool: routed via the gateway
    assert conf["args"] == {"cni": {"ips": ["10.215.0.9"]}} and conf["mtu"] == 1450
