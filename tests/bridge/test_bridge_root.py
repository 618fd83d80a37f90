"""berth-bridge against real namespaces, veth pairs and bridges, with the reference host-local as IPAM.

Each test runs the plugin inside a namespace playing the host, so bridges, sysctls and nftables rules are made and
destroyed with that namespace.
"""
from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest

from tests.bridge.cni_call import call, in_ns, nft_ruleset, ns_json, ping
from tests.bridge.conftest import reservations

pytestmark = pytest.mark.root


def add(conf, host, netns, cid="ctr1", **kw):
    return call("berth-bridge", "ADD", conf, host=host, container_id=cid, netns=netns, **kw)


def delete(conf, host, netns, cid="ctr1", **kw):
    return call("berth-bridge", "DEL", conf, host=host, container_id=cid, netns=netns, **kw)


def ns_name(path):
    return path.rsplit("/", 1)[1]


def link(ns, name):
    return ns_json(ns, "-d", "link", "show", name)[0]


def addresses(ns, name):
    return {f"{a['local']}/{a['prefixlen']}" for a in ns_json(ns, "addr", "show", name)[0]["addr_info"]
            if a.get("scope") == "global"}


def routes(ns, family="-4"):
    return {(r["dst"], r.get("gateway")) for r in ns_json(ns, family, "route", "show")}


def host_veths(host):
    return [l["ifname"] for l in ns_json(host, "link", "show", "type", "veth")]


@pytest.mark.parametrize("ipam", ["host-local", "berth-ipam"])
def test_v4_add_gives_address_routes_and_a_reachable_gateway(host, container, make_conf, ipam):
    conf = make_conf(isDefaultGateway=True, mtu=1400, dns={"nameservers": ["10.231.1.53"]}, ipam_type=ipam)
    ns = container()
    r = add(conf, host, ns)
    assert r.rc == 0, r.out
    res = r.out
    assert [i["name"] for i in res["interfaces"]][0::2] == [conf["bridge"], "eth0"]
    assert res["interfaces"][2]["sandbox"] == ns
    assert res["ips"] == [{"interface": 2, "address": "10.231.1.2/24", "gateway": "10.231.1.1"}]
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.231.1.1"}]
    assert res["dns"] == {"nameservers": ["10.231.1.53"]}
    c = ns_name(ns)
    eth0 = link(c, "eth0")
    assert eth0["mtu"] == 1400 and eth0["address"] == res["interfaces"][2]["mac"] and "UP" in eth0["flags"]
    assert addresses(c, "eth0") == {"10.231.1.2/24"}
    assert ("default", "10.231.1.1") in routes(c)
    veth = link(host, res["interfaces"][1]["name"])
    assert veth["master"] == conf["bridge"] and veth["mtu"] == 1400
    assert addresses(host, conf["bridge"]) == {"10.231.1.1/24"}
    assert in_ns(host, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert ping(c, "10.231.1.1")


def test_second_container_reuses_the_bridge_and_reaches_the_first(host, container, make_conf):
    conf = make_conf(isGateway=True)
    first, second = container(), container()
    assert add(conf, host, first, "c1").rc == 0
    r = add(conf, host, second, "c2")
    assert r.rc == 0, r.out
    assert r.out["ips"][0]["address"] == "10.231.1.3/24"
    assert len(ns_json(host, "link", "show", "type", "bridge")) == 1
    assert ping(ns_name(second), "10.231.1.2")


def test_the_bridge_keeps_its_mac_when_ports_come_and_go(host, container, make_conf):
    """A bridge whose MAC was never set takes its lowest port's and changes when that port goes: containers'
    ARP entries for the gateway would then name a MAC nobody answers. Set once at creation (sysfs says "3")."""
    conf = make_conf(isGateway=True)
    ns = [container() for _ in range(3)]
    for i, path in enumerate(ns):
        assert add(conf, host, path, f"c{i}").rc == 0
    mac = link(host, conf["bridge"])["address"]
    kind = subprocess.run(["ip", "netns", "exec", host, "cat", f"/sys/class/net/{conf['bridge']}/addr_assign_type"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert kind == "3"  # NET_ADDR_SET
    for i, path in enumerate(ns[:2]):
        assert delete(conf, host, path, f"c{i}").rc == 0
        assert link(host, conf["bridge"])["address"] == mac
    assert ping(ns_name(ns[2]), "10.231.1.1")


def test_v6_and_dual_stack(host, container, make_conf):
    conf = make_conf(subnets=["10.231.2.0/24", "fd00:231:2::/64"], isDefaultGateway=True)
    ns = container()
    r = add(conf, host, ns)
    assert r.rc == 0, r.out
    assert [ip["address"] for ip in r.out["ips"]] == ["10.231.2.2/24", "fd00:231:2::2/64"]
    c = ns_name(ns)
    assert addresses(c, "eth0") == {"10.231.2.2/24", "fd00:231:2::2/64"}
    assert ("default", "fd00:231:2::1") in routes(c, "-6")
    v6 = [a for a in ns_json(c, "-6", "addr", "show", "eth0")[0]["addr_info"] if a["scope"] == "global"]
    assert not v6[0].get("tentative"), "DAD is off unless enabledad"
    assert "fd00:231:2::1/64" in addresses(host, conf["bridge"])
    assert ping(c, "fd00:231:2::1")


def test_several_range_sets_give_one_address_each(host, container, make_conf):
    conf = make_conf(subnets=["10.231.3.0/24", "10.231.4.0/24"])
    r = add(conf, host, container())
    assert r.rc == 0, r.out
    assert [ip["address"] for ip in r.out["ips"]] == ["10.231.3.2/24", "10.231.4.2/24"]


def test_hairpin_isolation_and_promisc(host, container, make_conf):
    conf = make_conf(hairpinMode=True, portIsolation=True)
    r = add(conf, host, container())
    assert r.rc == 0, r.out
    port = json.loads(subprocess.run(["ip", "netns", "exec", host, "bridge", "-j", "-d", "link", "show", "dev",
                                      r.out["interfaces"][1]["name"]], capture_output=True, text=True).stdout)[0]
    assert port["hairpin"] is True and port["isolated"] is True
    promisc = make_conf(promiscMode=True)
    assert add(promisc, host, container(), "c2").rc == 0
    assert "PROMISC" in link(host, promisc["bridge"])["flags"]


@pytest.mark.parametrize("source", ["CNI_ARGS", "args.cni", "runtimeConfig"])
def test_mac_from_each_source(host, container, make_conf, source):
    mac = "02:42:0a:e7:05:07"
    extra, args = {}, "IgnoreUnknown=1"
    if source == "CNI_ARGS":
        args += f";MAC={mac}"
    elif source == "args.cni":
        extra["args"] = {"cni": {"mac": mac}}
    else:
        extra["runtimeConfig"] = {"mac": mac}
        extra["capabilities"] = {"mac": True}
    ns = container()
    r = add(make_conf(**extra), host, ns, args=args)
    assert r.rc == 0, r.out
    assert r.out["interfaces"][2]["mac"] == mac == link(ns_name(ns), "eth0")["address"]


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_ip_masq_rules_follow_the_attachment(host, container, make_conf, backend):
    conf = make_conf(isGateway=True, ipMasq=True, ipMasqBackend=backend)
    ns = container()
    assert add(conf, host, ns).rc == 0

    def rules():
        if backend == "nftables":
            return [l for l in nft_ruleset(host).splitlines() if "masquerade" in l]
        return [l for l in in_ns(host, "iptables", "-t", "nat", "-S").stdout.splitlines() if "MASQUERADE" in l]

    found = rules()
    assert len(found) == 1 and "10.231.1.2" in found[0] and "ctr1" in found[0]
    if backend == "nftables":
        assert "table inet berth-nat" in nft_ruleset(host)
    else:
        assert "-N BERTH-MASQ" in in_ns(host, "iptables", "-t", "nat", "-S").stdout
    assert delete(conf, host, ns).rc == 0
    assert rules() == []


def test_macspoofchk_installs_a_drop_rule_for_other_sources(host, container, make_conf):
    conf = make_conf(macspoofchk=True)
    ns = container()
    r = add(conf, host, ns)
    assert r.rc == 0, r.out
    ruleset = nft_ruleset(host)
    assert f'iifname "{r.out["interfaces"][1]["name"]}" ether saddr != {r.out["interfaces"][2]["mac"]} drop' \
        in ruleset
    assert delete(conf, host, ns).rc == 0
    assert "ether saddr" not in nft_ruleset(host)


def test_disabled_container_interface_stays_down_without_address(host, container, make_conf):
    ns = container()
    r = add(make_conf(disableContainerInterface=True), host, ns)
    assert r.rc == 0, r.out
    assert r.out["ips"][0]["address"] == "10.231.1.2/24"
    eth0 = link(ns_name(ns), "eth0")
    assert "UP" not in eth0["flags"] and addresses(ns_name(ns), "eth0") == set()


def test_layer_two_only_without_ipam(host, container, make_conf):
    ns = container()
    r = add(make_conf(subnets=None), host, ns)
    assert r.rc == 0, r.out
    assert "ips" not in r.out and len(r.out["interfaces"]) == 3
    assert link(ns_name(ns), "eth0")["link_type"] == "ether"
    assert addresses(ns_name(ns), "eth0") == set()


def test_vlan_port_or_a_clean_failure_where_the_kernel_lacks_vlan_filtering(host, container, make_conf, ipam_dir):
    conf = make_conf(vlan=7)
    probe = in_ns(host, "ip", "link", "add", "btprobe", "type", "bridge", "vlan_filtering", "1")
    ns = container()
    r = add(conf, host, ns)
    if probe.returncode == 0:
        assert r.rc == 0, r.out
        vlans = json.loads(in_ns(host, "bridge", "-j", "vlan", "show", "dev", r.out["interfaces"][1]["name"]).stdout)
        assert any(v["vlan"] == 7 and "PVID" in v.get("flags", []) for v in vlans[0]["vlans"])
    else:
        assert r.rc == 1 and r.code == 5, r.out
        assert "bridge" in r.out["msg"]
        assert reservations(ipam_dir, conf["name"]) == []
        assert host_veths(host) == [] and ns_json(ns_name(ns), "link", "show", "type", "veth") == []


@pytest.mark.parametrize("ipam", ["host-local", "berth-ipam"])
def test_add_failing_after_ipam_releases_the_address_and_leaves_nothing(host, container, make_conf, ipam_dir, ipam):
    conf = make_conf(isGateway=True, ipMasq=True, ipam_type=ipam)
    ns = container()
    c = ns_name(ns)
    subprocess.run(["ip", "-n", c, "link", "add", "eth0", "type", "veth", "peer", "name", "other"], check=True)
    r = add(conf, host, ns)
    assert r.rc == 1, r.out
    assert "eth0" in r.out["msg"] and "already exists" in r.out["msg"]
    assert reservations(ipam_dir, conf["name"]) == []
    assert host_veths(host) == []
    assert "masquerade" not in nft_ruleset(host)


def test_repeated_del_and_del_without_netns_succeed_and_release(host, container, make_conf, ipam_dir, netns):
    conf = make_conf(isGateway=True, ipMasq=True)
    ns = container()
    assert add(conf, host, ns).rc == 0
    assert reservations(ipam_dir, conf["name"]) == ["10.231.1.2"]
    assert delete(conf, host, ns).rc == 0
    assert delete(conf, host, ns).rc == 0
    assert reservations(ipam_dir, conf["name"]) == [] and host_veths(host) == []

    ns2 = container()
    assert add(conf, host, ns2, "c2").rc == 0
    subprocess.run(["ip", "netns", "del", ns_name(ns2)], check=True)
    netns.created.remove(ns_name(ns2))
    r = delete(conf, host, ns2, "c2")
    assert r.rc == 0, r.out
    r = call("berth-bridge", "DEL", conf, host=host, container_id="c2", netns="")
    assert r.rc == 0, r.out
    assert reservations(ipam_dir, conf["name"]) == []
    assert "masquerade" not in nft_ruleset(host)


def test_check_passes_then_catches_a_removed_route(host, container, make_conf):
    conf = make_conf(isDefaultGateway=True)
    ns = container()
    r = add(conf, host, ns)
    assert r.rc == 0
    checked = {**conf, "prevResult": r.out}
    ok = call("berth-bridge", "CHECK", checked, host=host, container_id="ctr1", netns=ns)
    assert ok.rc == 0, ok.out
    subprocess.run(["ip", "-n", ns_name(ns), "route", "del", "default"], check=True)
    bad = call("berth-bridge", "CHECK", checked, host=host, container_id="ctr1", netns=ns)
    assert bad.rc == 1 and "route to 0.0.0.0/0 via 10.231.1.1 is missing" in bad.out["msg"], bad.out


def test_gc_removes_rules_of_attachments_not_listed(host, container, make_conf, ipam_dir):
    conf = make_conf(isGateway=True, ipMasq=True)
    assert add(conf, host, container(), "keep").rc == 0
    assert add(conf, host, container(), "gone").rc == 0
    # GC is a 1.1.0 command; the reference host-local speaks up to 1.0.0, so GC is not forwarded to it.
    gc_conf = {**conf, "cniVersion": "1.1.0",
               "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    r = call("berth-bridge", "GC", gc_conf, host=host, ifname="")
    assert r.rc == 0, r.out
    ruleset = nft_ruleset(host)
    assert " keep eth0 masq" in ruleset and " gone eth0 " not in ruleset


def test_gc_is_forwarded_to_berth_ipam_and_frees_stale_reservations(host, container, make_conf, ipam_dir):
    conf = make_conf(isGateway=True, ipMasq=True, ipam_type="berth-ipam", cniVersion="1.1.0")
    conf["cniVersion"] = "1.1.0"
    assert add(conf, host, container(), "keep").rc == 0
    assert add(conf, host, container(), "gone").rc == 0
    assert len(reservations(ipam_dir, conf["name"])) == 2
    gc_conf = {**conf, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    r = call("berth-bridge", "GC", gc_conf, host=host, ifname="")
    assert r.rc == 0, r.out
    assert reservations(ipam_dir, conf["name"]) == ["10.231.1.2"]
    assert " gone eth0 " not in nft_ruleset(host)
    status = call("berth-bridge", "STATUS", conf, host=host, ifname="")
    assert status.rc == 0, status.out


def test_parallel_first_adds_share_one_bridge_and_one_gateway_address(host, container, make_conf):
    import concurrent.futures

    conf = make_conf(isGateway=True)
    spaces = [container() for _ in range(6)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(lambda i: add(conf, host, spaces[i], f"p{i}"), range(6)))
    assert all(o.rc == 0 for o in outcomes), [o.out for o in outcomes if o.rc]
    assert len({o.out["ips"][0]["address"] for o in outcomes}) == 6
    assert addresses(host, conf["bridge"]) == {"10.231.1.1/24"}
    assert len(host_veths(host)) == 6


@pytest.mark.parametrize("keys, code", [
    ({"vlan": 5000}, 7),
    ({"hairpinMode": True, "promiscMode": True}, 7),
    ({"bridge": "bt" + "x" * 14}, 7),
])
def test_bad_input_is_a_spec_error_and_leaves_nothing(host, container, make_conf, ipam_dir, keys, code):
    conf = make_conf(**keys)
    ns = container()
    r = add(conf, host, ns)
    assert r.rc == 1 and r.code == code, r.out
    assert r.out["cniVersion"] == "1.0.0" and r.out["msg"]
    assert reservations(ipam_dir, conf["name"]) == []
    assert ns_json(host, "link", "show", "type", "bridge") == [] and host_veths(host) == []


def test_missing_netns_is_an_environment_error_before_ipam(host, make_conf, ipam_dir):
    conf = make_conf()
    r = add(conf, host, "/run/netns/bt-does-not-exist")
    assert r.rc == 1 and r.code == 4, r.out
    assert reservations(ipam_dir, conf["name"]) == []


def test_in_process_handlers_in_threads_leave_every_thread_in_its_own_namespace(host, container, make_conf):
    """The daemon case: handlers run in worker threads of one process; each worker enters the host namespace
    itself, and no thread may be left inside a container's namespace afterwards."""
    import concurrent.futures
    import os

    from cni_plugins import bridge, skel
    from datapath import netns
    from tests.bridge.cni_call import cni_env

    conf = make_conf(isGateway=True, ipam_type="berth-ipam")
    spaces = [container() for _ in range(5)]
    own = os.stat("/proc/thread-self/ns/net").st_ino
    host_ino = os.stat(f"/run/netns/{host}").st_ino

    def one(i):
        with netns.entered(f"/run/netns/{host}"):
            reply = skel.dispatch(bridge.HANDLERS, cni_env("ADD", container_id=f"t{i}", netns=spaces[i]),
                                  json.dumps(conf).encode())
            still_host = os.stat("/proc/thread-self/ns/net").st_ino == host_ino
        return reply, still_host, os.stat("/proc/thread-self/ns/net").st_ino

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(one, range(5)))
    assert all(reply.exit_code == 0 for reply, _, _ in outcomes), [r.stdout for r, _, _ in outcomes]
    assert all(still_host for _, still_host, _ in outcomes), "a handler left its thread in another namespace"
    assert all(after == own for _, _, after in outcomes)
    addresses = {json.loads(reply.stdout)["ips"][0]["address"] for reply, _, _ in outcomes}
    assert len(addresses) == 5
    assert ns_json(host, "link", "show", "type", "bridge")[0]["ifname"] == conf["bridge"]
    real_host = subprocess.run(["ip", "link", "show", conf["bridge"]], capture_output=True)
    assert real_host.returncode != 0, "the bridge must exist only in the namespace playing the host"


def test_other_address_in_the_gateway_subnet_needs_force_address(host, container, make_conf, ipam_dir):
    conf = make_conf(isGateway=True)
    subprocess.run(["ip", "-n", host, "link", "add", conf["bridge"], "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", host, "addr", "add", "10.231.1.200/24", "dev", conf["bridge"]], check=True)
    r = add(conf, host, container())
    assert r.rc == 1 and "already has an IP address 10.231.1.200/24" in r.out["msg"], r.out
    assert reservations(ipam_dir, conf["name"]) == [] and host_veths(host) == []
    r = add({**conf, "forceAddress": True}, host, container(), "c2")
    assert r.rc == 0, r.out
    assert addresses(host, conf["bridge"]) == {"10.231.1.1/24"}


def test_existing_link_that_is_not_a_bridge_is_refused(host, container, make_conf, ipam_dir):
    conf = make_conf()
    subprocess.run(["ip", "-n", host, "link", "add", conf["bridge"], "type", "veth", "peer", "name", "btpeer0"],
                   check=True)
    r = add(conf, host, container())
    assert r.rc == 1 and "is not a bridge" in r.out["msg"], r.out
    assert reservations(ipam_dir, conf["name"]) == []
