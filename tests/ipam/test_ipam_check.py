"""``berth ipam check`` over a real SQLite store and a real ZooKeeper server that cluster IPAM wrote: leaks found
exactly, released only with --yes, nothing freed that a live agent registers or that is younger than --min-age,
departed hosts' emptied blocks given back."""
from __future__ import annotations

import json
import secrets

import pytest

from berth import cli
from discovery.model import EndpointRecord, endpoint_key
from ipam.allocator import allocate
from ipam.cluster import ClusterStore, host_key, network_prefix
from ipam.config import parse_ipam_config
from ipam.store import Attachment
from store.api import open_store
from tests.zk_harness import zk_server  # noqa: F401  (fixture)


def host_store(url, tmp_path, host):
    ipam = {"type": "berth-ipam", "store": url, "host": host, "dataDir": str(tmp_path / host),
            "ranges": [[{"subnet": "10.9.0.0/27"}]], "blockSize": 28, "quarantine": 60}
    return ClusterStore(parse_ipam_config(ipam, "btnet"))


def take(store, container):
    with store.lock():
        return allocate(store, list(store.cfg.range_sets), Attachment(container, "eth0"))[0].address.ip


def check(capsys, url, *extra):
    code = cli.main(["ipam", "check", "--store", url, "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture(params=["sqlite", pytest.param("zk", marks=[pytest.mark.zk, pytest.mark.service])])
def url(request, tmp_path):
    """The embedded store, or a root of its own on one ZooKeeper server per module."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/bt-check.db"
    return f"{request.getfixturevalue('zk_server').url}/bt-check-{secrets.token_hex(4)}"


@pytest.fixture
def world(url, tmp_path):
    """h1 live with c1 (listed by its runtime) and c2 (not listed); h2 departed with d1 (a live agent still
    registers it) and d2 (nobody does)."""
    h1, h2 = host_store(url, tmp_path, "h1"), host_store(url, tmp_path, "h2")
    ips = {c: take(h1, c) for c in ("c1", "c2")} | {d: take(h2, d) for d in ("d1", "d2")}
    with open_store(url) as raw:
        raw.revoke_lease(raw.get(host_key("h2")).lease)
        lease = raw.grant_lease(60)
        record = EndpointRecord(id="d1/eth0", name="d1", addresses=(str(ips['d1']),), host="h9",
                                container_id="d1", ifname="eth0")
        raw.put(endpoint_key("h9", record.id), record.to_json().encode(), lease=lease.id)
    lists = tmp_path / "lists.json"
    lists.write_text(json.dumps({"h1": [{"containerID": "c1", "ifname": "eth0"}]}))
    return ips, str(lists)


def test_check_reports_exactly_the_leaks_and_releases_them_only_with_yes(capsys, url, world):
    ips, lists = world
    code, doc = check(capsys, url, "--valid-attachments", lists, "--min-age", "0")
    assert code == 1
    assert {(x["containerId"], x["reason"]) for x in doc["leaked"]} == {("c2", "unlisted"), ("d2", "departed")}
    assert [b["owner"] for b in doc["ownerless"]] == ["h2"] and doc["duplicates"] == []
    assert {h["host"]: h["held"] for h in doc["hosts"]} == {"h1": 2, "h2": 2}
    assert cli.main(["ipam", "check", "--store", url, "--release"]) == 2  # no --yes: nothing freed
    capsys.readouterr()
    code, doc = check(capsys, url, "--valid-attachments", lists, "--min-age", "0", "--release", "--yes")
    assert code == 0 and {x["address"] for x in doc["released"]} == {str(ips["c2"]), str(ips["d2"])}
    assert doc["releasedBlocks"] == []  # h2's block still holds d1, which a live agent registers
    code, doc = check(capsys, url, "--valid-attachments", lists, "--min-age", "0")
    assert code == 0 and doc["leaked"] == []
    quarantined = {b["block"]: b["quarantined"] for b in doc["blocks"]}
    assert sorted(quarantined.values()) == [1, 1]


def test_young_addresses_are_never_leaks(capsys, url, world):
    _ips, lists = world
    code, doc = check(capsys, url, "--valid-attachments", lists)  # default --min-age: 300 s
    assert code == 0 and doc["leaked"] == []


def test_a_departed_hosts_emptied_block_is_given_back(capsys, url, tmp_path, world):
    with open_store(url) as raw:
        raw.delete("/berth/endpoints/", prefix=True)  # the agent that registered d1 is gone too
    code, doc = check(capsys, url, "--min-age", "0", "--release", "--yes")
    assert code == 0 and {x["containerId"] for x in doc["released"]} == {"d1", "d2"}
    assert len(doc["releasedBlocks"]) == 1
    with open_store(url) as raw:
        owners = [json.loads(kv.value)["host"] for kv in raw.get_prefix(network_prefix("btnet") + "blocks/")[0]]
    assert owners == ["h1"]


def kv(key, value, revision=1):
    from store.api import KeyValue
    return KeyValue(key, value if isinstance(value, bytes) else json.dumps(value).encode(), revision, revision)


def held(network, address, container, host="h1", taken_at=0.0):
    from ipam.blocks import AddressRecord
    record = AddressRecord(container, "eth0", network, host, "t", taken_at=taken_at)
    return kv(f"/berth/ipam/networks/{network}/ips/10.9.0.0_28/{address}", record.to_json())


def test_judge_reports_duplicates_across_networks_and_against_live_registrations():
    import ipaddress

    from ipam.check import Liveness, judge
    kvs = [held("n1", "10.9.0.5", "a"), held("n2", "10.9.0.5", "b"), held("n1", "10.9.0.6", "c"),
           kv("/berth/ipam/networks/n1/blocks/10.9.0.0_28", {"host": "h1", "token": "x"}),
           kv("/berth/ipam/networks/n1/ips/10.9.0.0_28/10.9.0.7", b"not json")]
    live = Liveness(frozenset({"h1"}), {"z": "h1"}, {ipaddress.ip_address("10.9.0.6"): "z"})
    report = judge(kvs, 9, live, now=1000.0, min_age=0)
    assert any("10.9.0.5 is held 2 times" in d for d in report.duplicates)
    assert any("10.9.0.6 is held by c but a live agent registers it for z" in d for d in report.duplicates)
    assert report.leaked == () and len(report.problems) == 1  # the unreadable record is reported, not judged
    assert [(b.block, b.owner, b.held) for b in report.blocks] == [("10.9.0.0_28", "h1", 2)]
