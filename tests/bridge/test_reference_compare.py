"""Side by side: the same config through the reference ``bridge`` + ``host-local`` and through berth-bridge +
``host-local`` gives equivalent results and the same observable state in the namespace and on the host side."""
from __future__ import annotations

import pytest

from tests.bridge.cni_call import call, ns_json

pytestmark = pytest.mark.root

CASES = {
    "v4-default-gateway-mtu": dict(subnets=["10.231.10.0/24"], isDefaultGateway=True, mtu=1400),
    "v4-gateway-only": dict(subnets=["10.231.11.0/24"], isGateway=True),
    "dual-stack": dict(subnets=["10.231.12.0/24", "fd00:231:12::/64"], isDefaultGateway=True),
    "v6-no-gateway": dict(subnets=["fd00:231:13::/64"]),
    "layer2-with-dns": dict(subnets=None, dns={"nameservers": ["10.231.14.53"], "search": ["bt.test"]}),
    "spec-0.3.1": dict(subnets=["10.231.15.0/24"], isGateway=True, version="0.3.1"),
    "spec-0.4.0-two-ranges": dict(subnets=["10.231.16.0/24", "10.231.17.0/24"], version="0.4.0"),
}


def normalised_result(res: dict) -> dict:
    """The result without what is random per run: MACs and the host veth's name."""
    out = {k: v for k, v in res.items() if k != "interfaces"}
    out["interfaces"] = [{k: v for k, v in i.items() if k not in ("mac",)} for i in res["interfaces"]]
    out["interfaces"][1]["name"] = "<veth>"
    out["interfaces"][2].pop("sandbox")
    return out


def namespace_state(ns: str) -> dict:
    link = ns_json(ns, "link", "show", "eth0")[0]
    addrs = sorted((a["family"], a["local"], a["prefixlen"], a["scope"]) for a in
                   ns_json(ns, "addr", "show", "eth0")[0]["addr_info"] if a["scope"] == "global")
    routes = sorted((fam, r["dst"], r.get("gateway"), r.get("scope"), r.get("dev")) for fam in ("-4", "-6")
                    for r in ns_json(ns, fam, "route", "show") if not r["dst"].startswith("fe80"))
    return {"mtu": link["mtu"], "up": "UP" in link["flags"], "kind": link.get("link_type"), "addresses": addrs,
            "routes": routes}


def host_state(host: str, bridge: str, veth: str) -> dict:
    br = ns_json(host, "addr", "show", bridge)[0]
    port = ns_json(host, "link", "show", veth)[0]
    return {"bridge_mtu": br["mtu"], "bridge_up": "UP" in br["flags"],
            "bridge_addresses": sorted(a["local"] for a in br["addr_info"] if a["scope"] == "global"),
            "port_master": port.get("master") == bridge, "port_mtu": port["mtu"], "port_up": "UP" in port["flags"]}


@pytest.mark.parametrize("case", CASES)
def test_same_result_and_state_as_the_reference(netns, make_conf, tmp_path, case):
    observed = {}
    for plugin in ("bridge", "berth-bridge"):
        host, ctr = netns("host"), netns("ctr")
        (tmp_path / plugin).mkdir()
        conf = make_conf(plugin=plugin, bridge="btcmpbr0", **CASES[case])
        conf["name"] = "btcompare"
        if conf.get("ipam"):
            conf["ipam"]["dataDir"] = str(tmp_path / plugin)
        r = call(plugin, "ADD", conf, host=host, container_id="cmp1", netns=netns.path(ctr))
        assert r.rc == 0, (plugin, r.out, r.err)
        observed[plugin] = (normalised_result(r.out), namespace_state(ctr),
                            host_state(host, "btcmpbr0", r.out["interfaces"][1]["name"]))
        assert call(plugin, "DEL", conf, host=host, container_id="cmp1", netns=netns.path(ctr)).rc == 0
        assert ns_json(ctr, "link", "show", "type", "veth") == []
    reference, berth = observed["bridge"], observed["berth-bridge"]
    assert berth[0] == reference[0], "result"
    assert berth[1] == reference[1], "container namespace"
    assert berth[2] == reference[2], "host side"
