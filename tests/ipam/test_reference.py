"""Side by side with the reference host-local (Debian's containernetworking-plugins): same configs, same
addresses in the same order, same results, and one data directory shared by both without losing anything."""
import json
from pathlib import Path

import pytest

from tests.ipam.conftest import call, net_config

pytestmark = pytest.mark.root


def dir_contents(data_dir: Path, name="btnet") -> dict[str, bytes]:
    """What both tools must agree on: every file of the network's directory but the (empty) lock."""
    return {p.name: p.read_bytes() for p in sorted((data_dir / name).iterdir()) if p.name != "lock"}


def outcome(reply):
    """A result to compare exactly; a failure compares as failure (host-local's codes are all 999)."""
    return reply.out if reply.code == 0 else "error"


def resolv(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("domain example.test\nnameserver 10.77.0.53\nnameserver fd77::53\nsearch a.test b.test\n")
    return str(path)


SCENARIOS = {
    "v4 with routes, 0.3.1": dict(version="0.3.1", subnet="10.77.0.0/28",
                                  routes=[{"dst": "0.0.0.0/0"}, {"dst": "10.99.0.0/16", "gw": "10.77.0.14"}]),
    "dual stack, 0.4.0": dict(version="0.4.0", ranges=[[{"subnet": "10.77.0.0/29"}],
                                                      [{"subnet": "fd77::/125", "rangeStart": "fd77::3"}]]),
    "two ranges in a set, gateway inside, 1.0.0": dict(
        version="1.0.0", ranges=[[{"subnet": "10.77.0.0/29", "gateway": "10.77.0.3"},
                                  {"subnet": "10.77.1.0/29", "rangeEnd": "10.77.1.4"}]]),
    "resolvConf, 1.0.0": dict(version="1.0.0", subnet="10.77.0.0/28", resolvConf=None),
}
# (command, container, requested address or None): ADDs run past exhaustion and round robin wraps.
STEPS = ([("ADD", f"c{n}", None) for n in range(6)] + [("DEL", "c1", None), ("DEL", "c3", None)]
         + [("ADD", "c6", "10.77.0.5"), ("ADD", "c7", None), ("ADD", "c8", None)]
         + [("ADD", f"d{n}", None) for n in range(8)] + [("DEL", "c0", None), ("ADD", "e0", None)])


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_same_configs_give_the_same_addresses_in_the_same_order_and_the_same_results(
        berth_ipam, host_local, sandbox, tmp_path, scenario):
    ipam = dict(SCENARIOS[scenario])
    if "resolvConf" in ipam:
        ipam["resolvConf"] = resolv(tmp_path)
    configs = {tool: net_config(tmp_path / tool.name, **ipam) for tool in (berth_ipam, host_local)}
    for command, cid, requested in STEPS:
        replies = {}
        for tool, config in configs.items():
            if requested:
                config = {**config, "runtimeConfig": {"ips": [requested]}}
            replies[tool] = call(tool, command, config, cid, netns=sandbox)
        assert outcome(replies[berth_ipam]) == outcome(replies[host_local]), (command, cid)
        assert dir_contents(tmp_path / berth_ipam.name) == dir_contents(tmp_path / host_local.name), (command, cid)


def test_one_data_dir_shared_by_both_tools_behaves_as_one_tool(berth_ipam, host_local, sandbox, tmp_path):
    """Alternate the tools on one directory; a host-local-only run of the same steps is the yardstick."""
    ipam = dict(ranges=[[{"subnet": "10.77.0.0/28"}], [{"subnet": "fd77::/120"}]])
    shared, control = net_config(tmp_path / "shared", **ipam), net_config(tmp_path / "control", **ipam)
    steps = [(host_local, "ADD", "a"), (host_local, "ADD", "b"), (berth_ipam, "ADD", "c"), (berth_ipam, "DEL", "a"),
             (host_local, "ADD", "d"), (host_local, "DEL", "c"), (berth_ipam, "ADD", "e"), (host_local, "DEL", "b"),
             (berth_ipam, "ADD", "f"), (berth_ipam, "DEL", "d"), (host_local, "ADD", "g"), (berth_ipam, "DEL", "e")]
    results = {}
    for tool, command, cid in steps:
        mixed = call(tool, command, shared, cid, netns=sandbox)
        alone = call(host_local, command, control, cid, netns=sandbox)
        assert mixed.code == alone.code == 0, (tool.name, command, cid, mixed.out)
        assert mixed.out == alone.out, (tool.name, command, cid)
        assert dir_contents(tmp_path / "shared") == dir_contents(tmp_path / "control"), (tool.name, command, cid)
        if command == "ADD":
            results[cid] = mixed.out
    check = {**shared, "cniVersion": "0.4.0"}
    for cid in ("f", "g"):   # f was added by berth-ipam, g by host-local: each tool's CHECK sees both
        for tool in (berth_ipam, host_local):
            prev = {**results[cid], "cniVersion": "0.4.0"}
            for ip in prev["ips"]:
                ip["version"] = "6" if ":" in ip["address"] else "4"
            reply = call(tool, "CHECK", {**check, "prevResult": prev}, cid, netns=sandbox)
            assert reply.code == 0, (tool.name, cid, reply.out)
    for tool, cid in ((host_local, "f"), (berth_ipam, "g")):
        assert call(tool, "DEL", shared, cid, netns=sandbox).code == 0
    assert sorted(p.name for p in (tmp_path / "shared" / "btnet").iterdir()) == [
        "last_reserved_ip.0", "last_reserved_ip.1", "lock"]


BAD_CONFIGS = [
    {"subnet": "10.77.0.1/24"},
    {"subnet": "10.77.0.0/31"},
    {"subnet": "10.77.0.0/32"},
    {"subnet": "fd77::/127"},
    {"ranges": [[{"subnet": "10.77.0.0/24"}, {"subnet": "fd77::/64"}]]},
    {"ranges": [[{"subnet": "10.77.0.0/24"}], [{"subnet": "10.77.0.0/25"}]]},
    {"ranges": [[{"subnet": "10.77.0.0/24"}, {"subnet": "10.77.0.64/26"}]]},
    {"ranges": [[]]},
    {"ranges": []},
    {"subnet": "10.77.0.0/24", "rangeStart": "10.78.0.1"},
    {"subnet": "10.77.0.0/24", "rangeEnd": "10.78.0.1"},
    {"subnet": "10.77.0.0/24", "rangeStart": "10.77.0.50", "rangeEnd": "10.77.0.10"},
]


@pytest.mark.parametrize("ipam", BAD_CONFIGS, ids=lambda c: json.dumps(c)[:60])
def test_both_refuse_the_same_configs_for_the_same_reason(berth_ipam, host_local, sandbox, tmp_path, ipam):
    ours = call(berth_ipam, "ADD", net_config(tmp_path / "b", **ipam), netns=sandbox)
    theirs = call(host_local, "ADD", net_config(tmp_path / "h", **ipam), netns=sandbox)
    assert theirs.code != 0 and ours.error_code == 7
    assert theirs.out["msg"].split(": ")[-1] in ours.out["msg"]
    assert not (tmp_path / "b").exists()


def test_both_tools_adding_at_once_into_one_dir_never_share_an_address(berth_ipam, host_local, sandbox, tmp_path):
    """Both flock the same ``lock`` file, so mixed parallel ADDs stay exclusive; each DELs the other's."""
    from concurrent.futures import ThreadPoolExecutor

    config = net_config(tmp_path, subnet="10.77.0.0/27")          # 29 addresses after the gateway
    jobs = [(berth_ipam if n % 2 else host_local, f"mix{n:02d}") for n in range(32)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        replies = list(pool.map(lambda job: call(job[0], "ADD", config, job[1], netns=sandbox), jobs))
    addresses = [r.out["ips"][0]["address"] for r in replies if r.code == 0]
    assert len(addresses) == len(set(addresses)) == 29
    owners = {(tmp_path / "btnet" / a.split("/")[0]).read_bytes() for a in addresses}
    assert len(owners) == 29
    with ThreadPoolExecutor(max_workers=32) as pool:
        other = {berth_ipam: host_local, host_local: berth_ipam}
        dels = list(pool.map(lambda job: call(other[job[0]], "DEL", config, job[1], netns=sandbox), jobs))
    assert all(r.code == 0 for r in dels)
    assert sorted(p.name for p in (tmp_path / "btnet").iterdir()) == ["last_reserved_ip.0", "lock"]
