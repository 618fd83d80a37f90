"""Cluster IPAM across 16 simulated hosts: each a network namespace wired to a hub, the real berth-ipam executed
in it (8 ADDs at once per host), the store the embedded SQLite file or a 3-member etcd in the hub namespace.

The pool has fewer blocks than hosts, so blocks are claimed and then borrowed from; no address may ever be given
twice. Plugins are SIGKILLed mid-ADD: whatever they left is whole (record and attachment index together) and GC
frees it. A departed host's addresses are not handed out, and once freed wait out their quarantine.
"""
from __future__ import annotations

import ipaddress
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass

import pytest

from cni_plugins import codes
from ipam.blocks import AddressRecord
from ipam.cluster import host_key, network_prefix
from tests.conftest import REPO_ROOT, VENV_BIN, NetnsFactory, plugin_path, run, unique_name
from tests.etcd_harness import start_etcd
from tests.waiting import wait_until
from tests.zk_harness import start_zookeeper

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.service]

HOSTS, PER_HOST = 16, 8
HUB_ADDRESS = "10.199.0.1"
# 10.201.0.0-10.201.0.135 in /28 blocks: 9 blocks (the last one half), 134 usable addresses for 128 ADDs.
FILL_POOL = [[{"subnet": "10.201.0.0/24", "rangeEnd": "10.201.0.135"}]]
KILL_POOL = [[{"subnet": "10.202.0.0/26"}]]
CALL_TIMEOUT = 120  # a hang guard per plugin call
WIRE_HOSTS: list[str] = []  # the host namespaces of the module's wire


@pytest.fixture(scope="module")
def wire():
    """A hub namespace with a bridge, and HOSTS namespaces each with an eth0 on it."""
    factory = NetnsFactory()
    try:
        hub = factory("iphub")
        run("ip", "-n", hub, "link", "add", "bt-ipbr", "type", "bridge")
        run("ip", "-n", hub, "addr", "add", f"{HUB_ADDRESS}/24", "dev", "bt-ipbr")
        run("ip", "-n", hub, "link", "set", "bt-ipbr", "up")
        hosts = []
        for index in range(HOSTS):
            ns = factory("iph")
            run("ip", "-n", hub, "link", "add", f"bt-ipv{index}", "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            run("ip", "-n", hub, "link", "set", f"bt-ipv{index}", "master", "bt-ipbr", "up")
            run("ip", "-n", ns, "addr", "add", f"10.199.0.{10 + index}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            hosts.append(ns)
        WIRE_HOSTS[:] = hosts
        yield hub, hosts
    finally:
        factory.cleanup()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd),
                                        pytest.param("zk", marks=pytest.mark.zk)])
def store_url(request, wire, tmp_path_factory):
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path_factory.mktemp('bt-ipam')}/bt-ipam.db"
        return
    start = start_etcd if request.param == "etcd" else start_zookeeper
    cluster = start(3, host=HUB_ADDRESS, netns=wire[0])
    try:
        yield cluster.url
    finally:
        cluster.close()


def config(url, data_root, network, host, ranges, **extra):
    return {"cniVersion": "1.1.0", "name": network, "type": "berth-ipam",
            "ipam": {"type": "berth-ipam", "store": url, "host": host, "dataDir": f"{data_root}/{host}",
                     "ranges": ranges, "blockSize": 28, **extra}}


def start(ns, command, conf, container, extra=None):
    env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": "/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", "BERTH_CNI_DAEMON": "off"}
    proc = subprocess.Popen(["ip", "netns", "exec", ns, str(plugin_path("berth-ipam"))], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(json.dumps({**conf, **(extra or {})}).encode())
    proc.stdin.close()
    proc.stdin = None  # written and closed: communicate() reads the replies only
    return proc


def finish(proc) -> tuple[int, dict | None]:
    out, err = proc.communicate(timeout=CALL_TIMEOUT)
    try:
        return proc.returncode, json.loads(out) if out.strip() else None
    except ValueError:
        raise AssertionError(f"not a CNI reply: {out!r}; stderr: {err.decode(errors='replace')[-2000:]}") from None


def address_of(reply) -> ipaddress.IPv4Address:
    code, out = reply
    assert code == 0, out
    return ipaddress.ip_interface(out["ips"][0]["address"]).ip


READER = """
import json, sys
from store.api import open_store
with open_store(sys.argv[1]) as store:
    kvs, _ = store.get_prefix(sys.argv[3])
    print(json.dumps([[kv.key, kv.value.decode(), kv.create_revision] for kv in kvs]))
"""


@dataclass(frozen=True)
class Row:
    key: str
    value: bytes
    create_revision: int


def in_a_host(url, *argv) -> str:
    """Store calls from inside a host namespace (etcd listens in the hub, unreachable from the test's own)."""
    ns = WIRE_HOSTS[0]
    done = run("ip", "netns", "exec", ns, sys.executable, "-c", READER, url, *argv, cwd=str(REPO_ROOT))
    return done.stdout


def ipam_check(url, tmp_path, *extra) -> tuple[int, dict]:
    """``berth ipam check --json --min-age 0`` run from inside a host namespace."""
    done = run("ip", "netns", "exec", WIRE_HOSTS[0], str(VENV_BIN / "berth"), "ipam", "check", "--store", url,
               "--json", "--min-age", "0", *extra, check=False, cwd=str(tmp_path))
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def listing(url, prefix) -> list[Row]:
    return [Row(k, v.encode(), rev) for k, v, rev in json.loads(in_a_host(url, "list", prefix))]


def records(url, network):
    kvs = listing(url, network_prefix(network))
    ips = {ipaddress.ip_address(kv.key.rsplit("/", 1)[1]): AddressRecord.from_json(kv.value)
           for kv in kvs if "/ips/" in kv.key}
    index = {(kv.key.split("/")[-3], ipaddress.ip_address(kv.key.rsplit("/", 1)[1])) for kv in kvs
             if "/attachments/" in kv.key}
    blocks = {kv.key.rsplit("/", 1)[1]: json.loads(kv.value)["host"] for kv in kvs if "/blocks/" in kv.key}
    return ips, index, blocks


def revisions(url, network, part):
    """key's last part → create revision, for keys under ``part`` of the network."""
    kvs = listing(url, network_prefix(network) + part)
    return {kv.key.rsplit("/", 1)[1]: kv.create_revision for kv in kvs}


def test_sixteen_hosts_claim_and_borrow_without_a_duplicate(wire, store_url, tmp_path):
    _hub, hosts = wire
    network = unique_name("fill")
    # host 3's liveness lease lasts 5 s past its last call (the others' an hour): it will die without a goodbye
    confs = [config(store_url, tmp_path, network, f"bth{i}", FILL_POOL, **({"hostTTL": 5} if i == 3 else {}))
             for i in range(HOSTS)]
    procs = {(i, j): start(hosts[i], "ADD", confs[i], f"h{i}c{j}") for i in range(HOSTS) for j in range(PER_HOST)}
    got = {key: address_of(finish(proc)) for key, proc in procs.items()}
    assert len(set(got.values())) == HOSTS * PER_HOST

    ips, index, blocks = records(store_url, network)
    assert {ip: (r.container_id, r.host) for ip, r in ips.items() if r.held} == {
        ip: (f"h{i}c{j}", f"bth{i}") for (i, j), ip in got.items()}
    assert index == {(f"h{i}c{j}", ip) for (i, j), ip in got.items()}
    assert len(blocks) == 9 and len(set(blocks.values())) == 9  # every block claimed, one per host
    owner_of = {ipaddress.ip_network(name.replace("_", "/")): host for name, host in blocks.items()}
    borrowed = [ip for (i, _j), ip in got.items() if next(h for b, h in owner_of.items() if ip in b) != f"bth{i}"]
    assert {i for i in range(HOSTS) if f"bth{i}" not in blocks.values()} <= {
        i for (i, _j), ip in got.items() if ip in borrowed}
    # borrowing only once the pool had no unclaimed block left: every borrowed address after the last claim
    taken_at = {ipaddress.ip_address(k): rev for k, rev in revisions(store_url, network, "ips/").items()}
    last_claim = max(revisions(store_url, network, "blocks/").values())
    assert borrowed and all(taken_at[ip] > last_claim for ip in borrowed)

    # host 3's processes die (its last plugins SIGKILLed mid-ADD) and its liveness lease runs out by itself: its
    # addresses stay held and no other host gets them
    dying = [start(hosts[3], "ADD", confs[3], f"h3k{n}") for n in range(3)]
    time.sleep(random.uniform(0.3, 1.5))
    for proc in dying:
        proc.kill()
        finish(proc)
    wait_until(lambda: not listing(store_url, host_key("bth3")), what="host 3's liveness key expired", timeout=60)
    ips, _index, _blocks = records(store_url, network)
    host3 = {str(ip) for ip, r in ips.items() if r.held and r.host == "bth3"}
    assert {str(ip) for (i, _j), ip in got.items() if i == 3} <= host3
    free = 134 - sum(1 for r in ips.values() if r.held)
    more = [finish(start(hosts[4], "ADD", confs[4], f"late{n}")) for n in range(free + 1)]
    late = [address_of(reply) for reply in more[:free]]
    assert not {str(ip) for ip in late} & host3 and len(set(late)) == free
    assert more[free][1]["code"] == codes.NOT_AVAILABLE
    # `berth ipam check` finds exactly host 3's addresses; released, they wait out the 60 s quarantine
    code, doc = ipam_check(store_url, tmp_path)
    assert code == 1 and {(x["address"], x["reason"]) for x in doc["leaked"]} == {(a, "departed") for a in host3}
    code, doc = ipam_check(store_url, tmp_path, "--release", "--yes")
    assert code == 0 and {x["address"] for x in doc["released"]} == host3
    assert finish(start(hosts[4], "ADD", confs[4], "late-after"))[1]["code"] == codes.NOT_AVAILABLE


def test_plugins_killed_mid_add_leave_whole_records_that_check_and_gc_free(wire, store_url, tmp_path):
    _hub, hosts = wire
    network = unique_name("kill")
    conf = config(store_url, tmp_path, network, "btk0", KILL_POOL)
    kept = [f"keep{n}" for n in range(4)]
    kept_ips = {address_of(finish(start(hosts[0], "ADD", conf, c))) for c in kept}
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    victims = [start(hosts[0], "ADD", conf, f"kill{n}") for n in range(12)]
    started = time.monotonic()
    for delay, proc in sorted(zip([rng.uniform(0.2, 3.0) for _ in victims], victims), key=lambda p: p[0]):
        time.sleep(max(0.0, started + delay - time.monotonic()))
        proc.kill()
    outcomes = Counter("completed" if finish(proc)[0] == 0 else "killed" for proc in victims)
    print(f"SIGKILLed plugins: {dict(outcomes)}")

    ips, index, _blocks = records(store_url, network)
    held = {(r.container_id, ip) for ip, r in ips.items() if r.held}
    assert held == index  # every address record with its attachment index entry, and nothing half-written
    assert {ip for c, ip in held if c in kept} == kept_ips
    # the runtime lists what it started and saw finish; check finds exactly what the killed ones left
    live = kept + [f"kill{n}" for n, proc in enumerate(victims) if proc.returncode == 0]
    lists = tmp_path / "lists.json"
    lists.write_text(json.dumps({"btk0": [{"containerID": c, "ifname": "eth0"} for c in live]}))
    leaked = {str(ip) for c, ip in held if c not in live}
    code, doc = ipam_check(store_url, tmp_path, "--valid-attachments", str(lists))
    assert {x["address"] for x in doc["leaked"] if x["network"] == network} == leaked
    code, doc = ipam_check(store_url, tmp_path, "--valid-attachments", str(lists), "--release", "--yes")
    assert {x["address"] for x in doc["released"] if x["network"] == network} == leaked
    ips, index, _blocks = records(store_url, network)
    assert {(r.container_id, ip) for ip, r in ips.items() if r.held} == index == {
        (c, ip) for c, ip in held if c in live}
    valid = [{"containerID": c, "ifname": "eth0"} for c in kept]
    assert finish(start(hosts[0], "GC", conf, "", {"cni.dev/valid-attachments": valid})) == (0, None)
    ips, index, _blocks = records(store_url, network)
    assert {(r.container_id, ip) for ip, r in ips.items() if r.held} == index == {
        (c, ip) for c, ip in held if c in kept}
