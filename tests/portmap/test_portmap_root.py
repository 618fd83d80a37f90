"""berth-portmap chained after berth-bridge, with traffic from outside, from the host and via localhost.

Topology, all test-made: an "outside" namespace linked by a veth pair to a namespace playing the host, which runs
the plugins; containers behind the host's bridge run busybox httpd.
"""
from __future__ import annotations

import secrets
import subprocess

import pytest

from tests.bridge.cni_call import call, in_ns, nft_ruleset
from tests.conftest import unique_name
from tests.ports import free_port
from tests.waiting import wait_listening

pytestmark = pytest.mark.root
HOST_IP, OUTSIDE_IP = "10.231.200.1", "10.231.200.2"
HOST_IP6, OUTSIDE_IP6 = "fd00:231:200::1", "fd00:231:200::2"


@pytest.fixture
def site(netns, tmp_path, make_conf):
    """(host ns, outside ns, bridge conf, start(cid) → container ns path serving its id on port 80)."""
    host, outside = netns("host"), netns("out")
    a, b = unique_name("o"), unique_name("o")
    subprocess.run(["ip", "-n", host, "link", "add", a, "type", "veth", "peer", "name", b, "netns", outside],
                   check=True)
    subprocess.run(["ip", "-n", host, "addr", "add", f"{HOST_IP}/24", "dev", a], check=True)
    subprocess.run(["ip", "-n", host, "addr", "add", f"{HOST_IP6}/64", "dev", a, "nodad"], check=True)
    subprocess.run(["ip", "-n", outside, "addr", "add", f"{OUTSIDE_IP6}/64", "dev", b, "nodad"], check=True)
    subprocess.run(["ip", "-n", host, "link", "set", a, "up"], check=True)
    subprocess.run(["ip", "-n", outside, "addr", "add", f"{OUTSIDE_IP}/24", "dev", b], check=True)
    subprocess.run(["ip", "-n", outside, "link", "set", b, "up"], check=True)
    conf = make_conf(isDefaultGateway=True, subnets=["10.231.1.0/24", "fd00:231:1::/64"])
    servers = []

    def start(cid):
        ns = netns("ctr")
        r = call("berth-bridge", "ADD", conf, host=host, container_id=cid, netns=netns.path(ns))
        assert r.rc == 0, r.out
        web = tmp_path / cid
        web.mkdir()
        (web / "index.html").write_text(cid)
        server = subprocess.Popen(["ip", "netns", "exec", ns, "busybox", "httpd", "-f", "-p", "80", "-h", str(web)])
        servers.append(server)
        # httpd binds its port a moment after the Popen (later still on a busy machine): a fetch before that is
        # refused at once, and fetch() would spend its attempts in a few milliseconds
        wait_listening(80, netns=ns, process=server)
        return netns.path(ns), r.out

    yield host, outside, conf, start
    for server in servers:
        server.kill()
        server.wait()


def portmap_conf(bridge_conf, prev, mappings, **keys):
    return {"cniVersion": bridge_conf["cniVersion"], "name": bridge_conf["name"], "type": "berth-portmap",
            "capabilities": {"portMappings": True}, "runtimeConfig": {"portMappings": mappings},
            "prevResult": prev, **keys}


def fetch(ns, address, port, attempts=3):
    """The body served at address:port, fetched from inside ns (busybox wget, bounded from outside), or None.

    A few attempts: on a loaded machine a SYN can be lost (e.g. a conntrack clash with the masqueraded localhost
    connection just before); a missing or wrong rule still fails every attempt."""
    url = f"http://{address}:{port}/" if ":" not in address else f"http://[{address}]:{port}/"
    for _ in range(attempts):
        try:
            proc = in_ns(ns, "busybox", "wget", "-q", "-O", "-", url, timeout=5)
        except subprocess.TimeoutExpired:
            continue
        if proc.returncode == 0:
            return proc.stdout.strip()
    return None


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_published_port_reaches_the_container_from_outside_host_and_localhost(site, backend):
    host, outside, conf, start = site
    ns, prev = start("web1")
    port = free_port()
    pm = portmap_conf(conf, prev, [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}], backend=backend)
    r = call("berth-portmap", "ADD", pm, host=host, container_id="web1", netns=ns)
    assert r.rc == 0, r.out
    assert r.out["ips"] == prev["ips"]  # the result passes through
    bridge_ip = prev["ips"][0]["gateway"]
    assert fetch(outside, HOST_IP, port) == "web1"
    assert fetch(host, HOST_IP, port) == "web1"
    assert fetch(host, "127.0.0.1", port) == "web1"
    assert fetch(host, bridge_ip, port) == "web1"
    assert fetch(outside, HOST_IP6, port) == "web1"
    assert call("berth-portmap", "CHECK", pm, host=host, container_id="web1", netns=ns).rc == 0

    assert call("berth-portmap", "DEL", pm, host=host, container_id="web1", netns=ns).rc == 0
    assert call("berth-portmap", "DEL", pm, host=host, container_id="web1", netns=ns).rc == 0
    check = call("berth-portmap", "CHECK", pm, host=host, container_id="web1", netns=ns)
    assert check.rc == 1 and "missing" in check.out["msg"]
    if backend == "nftables":
        assert "dnat" not in nft_ruleset(host)
        assert "table inet berth-portmap" in nft_ruleset(host)
    else:
        assert "-j DNAT" not in in_ns(host, "iptables", "-t", "nat", "-S").stdout
    assert fetch(outside, HOST_IP, port, attempts=1) is None


def test_second_container_cannot_take_a_published_port(site):
    host, outside, conf, start = site
    (ns1, prev1), (ns2, prev2) = start("first"), start("second")
    port = free_port()
    mapping = [{"hostPort": port, "containerPort": 80}]
    assert call("berth-portmap", "ADD", portmap_conf(conf, prev1, mapping), host=host, container_id="first",
                netns=ns1).rc == 0
    r = call("berth-portmap", "ADD", portmap_conf(conf, prev2, mapping), host=host, container_id="second",
             netns=ns2)
    assert r.rc == 1 and r.code == 102, r.out
    assert r.out["msg"] == f"tcp host port {port} is already mapped by container first"
    assert " second " not in nft_ruleset(host)
    assert fetch(outside, HOST_IP, port) == "first"
    other = [{"hostPort": port, "containerPort": 80, "protocol": "udp"}]
    assert call("berth-portmap", "ADD", portmap_conf(conf, prev2, other), host=host, container_id="second",
                netns=ns2).rc == 0


def test_gc_reclaims_ports_of_vanished_containers(site):
    host, outside, conf, start = site
    (ns1, prev1), (ns2, prev2) = start("stay"), start("left")
    p1 = free_port()
    p2 = p1 + 1  # never the same port (two random picks can be)
    call("berth-portmap", "ADD", portmap_conf(conf, prev1, [{"hostPort": p1, "containerPort": 80}]), host=host,
         container_id="stay", netns=ns1)
    call("berth-portmap", "ADD", portmap_conf(conf, prev2, [{"hostPort": p2, "containerPort": 80}]), host=host,
         container_id="left", netns=ns2)
    gc = {"cniVersion": "1.1.0", "name": conf["name"], "type": "berth-portmap",
          "cni.dev/valid-attachments": [{"containerID": "stay", "ifname": "eth0"}]}
    r = call("berth-portmap", "GC", gc, host=host, ifname="")
    assert r.rc == 0, r.out
    ruleset = nft_ruleset(host)
    assert f"dport {p1}" in ruleset and f"dport {p2}" not in ruleset
    assert fetch(outside, HOST_IP, p1) == "stay"


@pytest.mark.parametrize("host_port", [0, 70000])
def test_invalid_port_is_a_config_error_and_writes_nothing(site, host_port):
    host, outside, conf, start = site
    ns, prev = start("bad")
    r = call("berth-portmap", "ADD", portmap_conf(conf, prev, [{"hostPort": host_port, "containerPort": 80}]),
             host=host, container_id="bad", netns=ns)
    assert r.rc == 1 and r.code == 7 and "hostPort" in r.out["msg"], r.out
    assert "berth-portmap" not in nft_ruleset(host)


def test_del_succeeds_with_stale_mappings_and_without_prev_result(site):
    host, outside, conf, start = site
    ns, prev = start("stale")
    port = free_port()
    call("berth-portmap", "ADD", portmap_conf(conf, prev, [{"hostPort": port, "containerPort": 80}]), host=host,
         container_id="stale", netns=ns)
    broken = portmap_conf(conf, None, [{"hostPort": 0, "containerPort": 80}])
    broken.pop("prevResult")
    r = call("berth-portmap", "DEL", broken, host=host, container_id="stale", netns=ns)
    assert r.rc == 0, r.out
    assert f"dport {port}" not in nft_ruleset(host)
