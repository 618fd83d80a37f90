"""`berth status`: the tables, the JSON document and the picture say what the store holds, no more, no less."""
from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest

from berth.daemon_probe import DaemonStatus
from berth.status import ClusterStatus, EndpointStatus, HostStatus, as_document, as_graph, render_tables
from discovery.model import ENDPOINTS_PREFIX, EndpointRecord, PortBinding, endpoint_key
from overlay.lease import parse_lease, subnets_prefix
from store.api import open_store
from tests.conftest import VENV_BIN
from tests.discovery.conftest import LEASE_TTL, agents  # noqa: F401 - fixtures
from tests.overlay.conftest import make_sim, sqlite_url  # noqa: F401 - fixtures
from tests.ports import free_port, held_port
from tests.waiting import wait_until

BERTH = str(VENV_BIN / "berth")


def status(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BERTH, "status", *args], capture_output=True, text=True, timeout=60)


def host(subnet: str, underlay: str) -> HostStatus:
    return HostStatus(ipaddress.IPv4Network(subnet), underlay, "02:00:00:00:00:01", 1, False)


def endpoint(name: str, *addresses: str, agent: str = "h0") -> EndpointStatus:
    return EndpointStatus(name, name, (), addresses, agent, "net", "", (), "passing")


# -- pure views -----------------------------------------------------------------------------------------------------

def test_usage_counts_endpoint_addresses_inside_each_hosts_subnet():
    snapshot = ClusterStatus(7, None, (host("10.5.1.0/24", "10.0.0.1"), host("10.5.2.0/24", "10.0.0.2")),
                             (endpoint("a", "10.5.1.2"), endpoint("b", "10.5.1.3"), endpoint("c", "10.5.2.2"),
                              endpoint("svc", "127.0.0.1")), ())
    assert [(str(u.subnet), u.used, u.capacity) for u in snapshot.usage] == [("10.5.1.0/24", 2, 253),
                                                                            ("10.5.2.0/24", 1, 253)]
    doc = as_document(snapshot)
    assert doc["version"] == 1 and doc["revision"] == 7 and doc["overlay"] is None
    assert [e["name"] for e in doc["endpoints"]] == ["a", "b", "c", "svc"]


def test_tables_name_every_host_and_endpoint_and_say_when_there_are_none():
    snapshot = ClusterStatus(1, {"network": "10.5.0.0/16", "subnetLen": 24, "vni": 1, "port": 8472},
                             (host("10.5.1.0/24", "10.0.0.1"),), (endpoint("web", "10.5.1.2"),), ("k: bad",))
    text = "\n".join(render_tables(snapshot))
    assert "overlay 10.5.0.0/16" in text and "10.0.0.1" in text and "web" in text and "unreadable: k: bad" in text
    empty = "\n".join(render_tables(ClusterStatus(1, None, (), (), ())))
    assert "no hosts" in empty and "no endpoints" in empty


def test_the_graph_puts_containers_in_their_hosts_and_services_with_their_agent():
    snapshot = ClusterStatus(1, {"network": "10.5.0.0/16", "subnetLen": 24, "vni": 4, "port": 8472},
                             (host("10.5.1.0/24", "10.0.0.1"), host("10.5.2.0/24", "10.0.0.2")),
                             (endpoint("web", "10.5.2.2"), endpoint("db", "127.0.0.1", agent="h9")), ())
    source = as_graph(snapshot).source
    assert "VXLAN VNI 4" in source and "vtep0 -- vtep1" in source
    cluster_b = source[source.index("cluster_host1"):source.index("}", source.index("cluster_host1"))]
    assert "web" in cluster_b
    assert "services of agent h9" in source and "db" in source


# -- against a real store with simulated hosts ----------------------------------------------------------------------

@pytest.mark.root
@pytest.mark.service
def test_status_json_and_picture_match_what_the_store_holds(make_sim, sqlite_url, tmp_path):  # noqa: F811
    sim = make_sim(sqlite_url, hosts=3)
    store = open_store(sqlite_url)
    try:
        leases = [parse_lease(kv.key, kv.value) for kv in store.get_prefix(subnets_prefix())[0]]
        written = []
        for index, sim_host in enumerate(sim.hosts):
            subnet = sim_host.subnet()
            record = EndpointRecord(id=f"bt{index}/eth0", name=f"btctr{index}", addresses=(str(subnet[2]),),
                                    aliases=(f"alias{index}",), network="btnet", host=sim_host.netns,
                                    container_id=f"bt{index}", ifname="eth0",
                                    ports=(PortBinding(port=80, protocol="tcp", host_port=8080 + index),))
            store.put(endpoint_key(sim_host.netns, record.id), record.to_json().encode())
            written.append(record)
        service = EndpointRecord(id="btdb1", name="btdb", addresses=("127.0.0.1",), host="btagent",
                                 ports=(PortBinding(port=5432, protocol="tcp"),))
        store.put(endpoint_key("btagent", service.id), service.to_json().encode())
        held = {kv.key for kv in store.get_prefix(ENDPOINTS_PREFIX)[0]}
    finally:
        store.close()

    picture = tmp_path / "topology.svg"
    done = status("--store", sqlite_url, "--json", "--graph", str(picture))
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["overlay"]["network"] == "10.214.0.0/16"
    assert {(h["subnet"], h["underlay"], h["vtepMac"]) for h in doc["hosts"]} == {
        (str(lease.subnet), str(lease.public_ip), lease.vtep_mac) for lease in leases}
    assert {(h["underlay"]) for h in doc["hosts"]} == {str(h.address.ip) for h in sim.hosts}
    # every daemon keeps its lease alive: time is left on each, never more than the TTL
    assert all(0 < h["leaseSecondsLeft"] <= sim.lease_ttl + 1 for h in doc["hosts"]), doc["hosts"]
    assert len(doc["endpoints"]) == len(held) == 4
    by_name = {e["name"]: e for e in doc["endpoints"]}
    for record in written:
        shown = by_name[record.name]
        assert shown["addresses"] == list(record.addresses) and shown["aliases"] == list(record.aliases)
        assert shown["host"] == record.host and shown["containerId"] == record.container_id
        assert shown["ports"] == [f"{record.ports[0].host_port}->80/tcp"]
    assert by_name["btdb"]["ports"] == ["5432/tcp"] and by_name["btdb"]["containerId"] == ""
    assert sorted(u["used"] for u in doc["ipam"]) == [1, 1, 1] and doc["problems"] == []

    svg = picture.read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for sim_host in sim.hosts:
        assert str(sim_host.address.ip) in svg
    for name in ("btctr0", "btctr1", "btctr2", "btdb"):
        assert name in svg

    tables = status("--store", sqlite_url)
    assert tables.returncode == 0 and all(r.name in tables.stdout for r in written)
    assert tables.stdout.count(" s left") == len(sim.hosts)


def test_status_of_an_unreadable_store_is_a_clear_error(tmp_path):
    done = status("--store", "nosuch://x")
    assert done.returncode == 1 and "cannot read nosuch://x" in done.stderr


def test_a_picture_in_an_unknown_format_is_refused(tmp_path):
    done = status("--store", f"sqlite:///{tmp_path}/empty.db", "--graph", str(tmp_path / "t.gif"))
    assert done.returncode == 1 and "suffix" in done.stderr


# -- the agents, and who may write through them -------------------------------------------------------------------

@pytest.mark.service
def test_status_names_each_running_agent_and_warns_of_one_without_acls(agents, tmp_path):  # noqa: F811
    url = f"sqlite:///{tmp_path}/agents.db"
    open_agent = agents(url, host="btopen")
    closed_agent = agents(url, host="btclosed", extra=("--acl-default-policy", "deny"))
    doc = json.loads(status("--store", url, "--json").stdout)
    shown = {a["host"]: a for a in doc["agents"]}
    assert shown["btopen"]["acl"] == "allow" and shown["btclosed"]["acl"] == "deny"
    assert shown["btopen"]["http"] == f"127.0.0.1:{open_agent.http_port}"
    assert shown["btclosed"]["http"] == f"127.0.0.1:{closed_agent.http_port}"
    text = status("--store", url).stdout
    assert "warning: btopen run without ACLs" in text and "btclosed" not in text.split("warning:")[1]
    closed_agent.kill()  # a dead agent's record goes with its lease
    assert wait_until(lambda: "btclosed" not in status("--store", url, "--json").stdout,
                      timeout=LEASE_TTL * 6, what="the killed agent's record to expire with its lease")


@pytest.mark.service
def test_status_says_which_daemons_answer_their_health_endpoints(agents, tmp_path):  # noqa: F811
    url = f"sqlite:///{tmp_path}/daemons.db"
    metrics = f"127.0.0.1:{free_port()}"
    agents(url, host="btwatched", extra=("--metrics", metrics))
    agents(url, host="btunwatched")
    with held_port() as dead:
        done = status("--store", url, "--json", "--daemon", f"dns=127.0.0.1:{dead}")
        tables = status("--store", url, "--daemon", f"dns=127.0.0.1:{dead}").stdout
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert {a["host"]: a["metrics"] for a in doc["agents"]} == {"btwatched": metrics, "btunwatched": ""}
    shown = {d["name"]: d for d in doc["daemons"]}
    assert set(shown) == {"agent btwatched", "dns"}
    assert shown["agent btwatched"] == {"name": "agent btwatched", "address": metrics, "healthy": True,
                                        "ready": True, "detail": ""}
    assert shown["dns"]["healthy"] is False and shown["dns"]["ready"] is None and "no answer" in shown["dns"]["detail"]
    assert "agent btwatched" in tables and "no answer" in tables
    refused = status("--store", url, "--daemon", "nonsense")
    assert refused.returncode == 2 and "NAME=ADDR:PORT" in refused.stderr


def test_tables_show_lease_time_left_and_the_daemons():
    snapshot = ClusterStatus(1, None, (HostStatus(ipaddress.IPv4Network("10.5.1.0/24"), "10.0.0.1", "", 1, False,
                                                  12.4),
                                       HostStatus(ipaddress.IPv4Network("10.5.2.0/24"), "10.0.0.2", "", 1, True)),
                             (), (), daemons=(DaemonStatus("dns", "127.0.0.1:9153", True, False, "store: down"),))
    text = "\n".join(render_tables(snapshot))
    assert "12 s left" in text and "reserved" in text and "no: store: down" in text
    doc = as_document(snapshot)
    assert [h["leaseSecondsLeft"] for h in doc["hosts"]] == [12.4, None]
    assert doc["daemons"] == [{"name": "dns", "address": "127.0.0.1:9153", "healthy": True, "ready": False,
                               "detail": "store: down"}]


def test_status_shows_cluster_ipam_per_network_and_host_as_the_store_holds_it(tmp_path):
    from ipam.cluster import departed_key, host_key
    from tests.ipam.test_cluster_store import added, conf

    url = f"sqlite:///{tmp_path / 'bt-status.db'}"
    for n in range(3):
        added(conf(url, tmp_path, "h1"), f"a{n}")
    added(conf(url, tmp_path, "h2"), "b0")
    with open_store(url) as store:  # h2 is gone, and a reclaim pass has marked it
        store.revoke_lease(store.get(host_key("h2")).lease)
        store.put(departed_key("h2"), json.dumps({"host": "h2", "since": 1700000000.0}).encode())
    done = status("--store", url, "--json")
    assert done.returncode == 0, done.stderr
    rows = {r["host"]: r for r in json.loads(done.stdout)["clusterIpam"]}
    assert rows == {
        "h1": {"network": "btnet", "host": "h1", "blocks": 1, "held": 3, "capacity": rows["h1"]["capacity"],
               "live": True, "departedSince": None},
        "h2": {"network": "btnet", "host": "h2", "blocks": 1, "held": 1, "capacity": rows["h2"]["capacity"],
               "live": False, "departedSince": 1700000000.0}}
    assert {rows["h1"]["capacity"], rows["h2"]["capacity"]} <= {14, 15}  # /28 blocks of 10.8.0.0/27
    tables = status("--store", url)
    assert tables.returncode == 0 and "cluster IPAM network" in tables.stdout and "departed" in tables.stdout
