"""Simulated hosts (namespaces on one underlay bridge), each running its own ``berth overlay`` process.

Containers here are hand-made namespaces on each host's bridge, so these tests cover the daemon alone; the CNI
plugin's own tests put containers on the same hosts through ``berth-overlay``.
"""
from __future__ import annotations

import ipaddress
import importlib.util
import re
import signal
import subprocess
import threading

import pytest

from overlay import subnetfile
from tests.overlay.helpers import Capture, ip_json, overlay_entries, ping, tcp_exchange, wait_until

pytestmark = pytest.mark.root

HAS_ETCD_BACKEND = importlib.util.find_spec("store.etcd") is not None


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=[pytest.mark.etcd, pytest.mark.skipif(
    not HAS_ETCD_BACKEND, reason="the etcd backend (store/etcd.py) is not on this branch yet")]),
    pytest.param("zk", marks=[pytest.mark.zk, pytest.mark.service])])
def store(request, tmp_path):
    """A store URL maker for ``make_sim``: the shared SQLite file, or a real etcd or ZooKeeper running inside the
    simulation's underlay namespace (reachable from every host namespace, from nowhere else)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/overlay.db"

    def start(sim):
        if request.param == "zk":
            from tests.zk_harness import start_zookeeper
            ensemble = start_zookeeper(1, host=str(sim.underlay_gateway), netns=sim.underlay_ns)
            request.addfinalizer(ensemble.close)
            return ensemble.url
        from tests.etcd_harness import start_etcd
        cluster = start_etcd(1, host=str(sim.underlay_gateway), netns=sim.underlay_ns)
        request.addfinalizer(cluster.close)
        return cluster.url

    return start


def vxlan_mac(host) -> str:
    return ip_json(host.netns, "link", "show", "berth.1")[0]["address"]


def forgotten(host, peer) -> bool:
    """Whether ``host`` has none of ``peer``'s entries left: route, VTEP neighbour, FDB entry. A daemon removes
    them one after the other (the route first), so a test about all three waits for all three."""
    subnet = peer.subnet()  # from its subnet file, which a SIGKILL leaves behind
    entries = overlay_entries(host.netns)
    return (str(subnet) not in entries["routes"] and str(subnet.network_address) not in entries["neighbours"]
            and not any(dst == str(peer.address.ip) for _mac, dst in entries["fdb"]))


def test_containers_on_two_hosts_reach_each_other_through_vxlan(make_sim, store):
    sim = make_sim(store, hosts=2)
    a, b = sim.hosts
    assert a.subnet() != b.subnet()
    ca, cb = sim.add_plain_container(a), sim.add_plain_container(b)

    wait_until(lambda: ping(ca.netns, cb.address.ip), what="A's container reaching B's")
    with Capture(sim.underlay_ns, "br0", "udp port 8472", count=4) as cap:
        assert ping(ca.netns, cb.address.ip, count=2)
    assert tcp_exchange(cb.netns, str(cb.address.ip), ca.netns, b"hello over vxlan") == b"hello over vxlan"
    assert tcp_exchange(ca.netns, str(ca.address.ip), cb.netns, b"and back") == b"and back"

    from scapy.all import ICMP, IP, UDP
    from scapy.layers.vxlan import VXLAN
    assert len(cap.packets) >= 4
    for packet in cap.packets:
        assert packet[UDP].dport == 8472
        assert {packet[IP].src, packet[IP].dst} == {str(a.address.ip), str(b.address.ip)}
        vxlan = VXLAN(bytes(packet[UDP].payload))
        assert vxlan.vni == 1
        inner = vxlan[IP]  # the containers' own addresses: no masquerade between containers
        assert {inner.src, inner.dst} == {str(ca.address.ip), str(cb.address.ip)}
        assert inner.haslayer(ICMP)

    # the subnet file a CNI plugin reads, in flannel's format
    settings = subnetfile.read(a.subnet_file)
    assert settings.network == ipaddress.IPv4Network("10.214.0.0/16")
    assert settings.mtu == 1450 and settings.ipmasq
    assert ip_json(a.netns, "link", "show", "berth.1")[0]["mtu"] == 1450


def test_vxlan_device_settings(make_sim, sqlite_url):
    sim = make_sim(sqlite_url, hosts=1, vni=77, port=4789)
    (a,) = sim.hosts
    link = ip_json(a.netns, "-d", "link", "show", "berth.77")[0]
    data = link["linkinfo"]["info_data"]
    assert data["id"] == 77 and data["port"] == 4789 and data["local"] == str(a.address.ip)
    assert data.get("learning") is False
    assert link["mtu"] == 1450
    assert [addr["local"] for addr in ip_json(a.netns, "-4", "addr", "show", "berth.77")[0]["addr_info"]] == \
        [str(a.subnet().network_address)]


def test_host_joins_and_dies(make_sim, store):
    sim = make_sim(store, hosts=3, start=False, lease_ttl=3)
    a, b, c = sim.hosts
    a.start(wait=False), b.start(wait=False)
    a.wait_ready(), b.wait_ready()
    ca, cb = sim.add_plain_container(a), sim.add_plain_container(b)
    wait_until(lambda: ping(ca.netns, cb.address.ip), what="A and B connected")

    c.start()  # joins
    cc = sim.add_plain_container(c)
    wait_until(lambda: ping(ca.netns, cc.address.ip), what="A reaching C's container")
    wait_until(lambda: ping(cb.netns, cc.address.ip), what="B reaching C's container")
    c_subnet = str(c.subnet())
    for host in (a, b):
        assert c_subnet in overlay_entries(host.netns)["routes"]

    c.kill(signal.SIGKILL)  # dies: nobody renews its lease any more
    for host in (a, b):
        wait_until(lambda: forgotten(host, c), timeout=20, what=f"{host.label} forgetting C")
        assert len(overlay_entries(host.netns)["routes"]) == 1  # the other survivor stays
    assert ping(ca.netns, cb.address.ip)
    assert not ping(ca.netns, cc.address.ip)


def test_sixteen_hosts_starting_at_once_get_distinct_subnets(make_sim, store):
    # exactly 16 subnets for 16 hosts: every claim races, and one duplicate would leave a host without
    sim = make_sim(store, hosts=16, start=False, network="10.214.0.0/20", subnet_min="10.214.0.0",
                   subnet_max="10.214.15.0", lease_ttl=10)
    sim.start_all(timeout=90)
    subnets = [host.subnet() for host in sim.hosts]
    assert len(set(subnets)) == 16
    assert all(s.subnet_of(ipaddress.IPv4Network("10.214.0.0/20")) for s in subnets)
    for i, first in enumerate(subnets):
        assert not any(first.overlaps(other) for other in subnets[i + 1:])
    listing = subprocess.run([*sim.hosts[0].argv()[:7], "overlay", "leases", "--store", sim.store_url],
                             capture_output=True, text=True, check=True).stdout
    listed = {line.split()[0]: line.split()[1] for line in listing.splitlines()[1:]}
    assert listed == {str(h.subnet()): str(h.address.ip) for h in sim.hosts}


def test_sigkilled_daemon_comes_back_with_same_subnet_and_mac_without_losing_pings(make_sim, sqlite_url):
    sim = make_sim(sqlite_url, hosts=2, lease_ttl=3)
    a, b = sim.hosts
    ca, cb = sim.add_plain_container(a), sim.add_plain_container(b)
    wait_until(lambda: ping(ca.netns, cb.address.ip), what="connectivity")
    subnet, mac = b.subnet(), vxlan_mac(b)

    # pings every 50 ms while B is killed and restarted: every one sent must be answered. They run until B is
    # back and has carried 20 more (not a fixed count: a restart on a loaded machine may outlast any fixed one)
    pinger = subprocess.Popen(["ip", "netns", "exec", ca.netns, "busybox", "ping", "-i", "0.05", "-w", "120",
                               str(cb.address.ip)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read() -> None:
        for line in pinger.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def answered() -> list[int]:
        return [int(m.group(1)) for line in list(lines) if (m := re.search(r"seq=(\d+)", line))]

    try:
        wait_until(lambda: len(answered()) >= 10, what="pings answered before the kill")
        b.kill(signal.SIGKILL)
        b.start()
        assert pinger.poll() is None, f"ping stopped during the restart: {''.join(lines)[-300:]}"
        after_restart = len(answered())
        wait_until(lambda: len(answered()) >= after_restart + 20, what="pings answered after the restart")
    finally:
        if pinger.poll() is None:
            pinger.send_signal(signal.SIGINT)  # busybox ping prints its summary and exits
        pinger.wait(timeout=30)
        reader.join(timeout=30)
    output = "".join(lines)
    sent, received = _ping_counts(output)
    # a set: busybox interrupted while writing a reply line may write that line again (the same seq, no DUP!)
    seqs = sorted(set(answered()))
    assert seqs == list(range(len(seqs))), f"pings lost around the restart: {output[-600:]}"
    assert sent - received <= 1, output[-300:]  # only the one in flight when ping was interrupted
    assert b.subnet() == subnet and vxlan_mac(b) == mac
    assert f"lease {subnet} for {b.address.ip} (VTEP MAC {mac}" in b.log_since_start()


def _ping_counts(output: str) -> tuple[int, int]:
    for line in output.splitlines():
        if "packets transmitted" in line:
            parts = line.split()
            return int(parts[0]), int(parts[3])
    raise AssertionError(f"no ping summary in {output!r}")


def test_after_reboot_and_lease_expiry_host_reclaims_its_subnet_and_mac(make_sim, sqlite_url):
    sim = make_sim(sqlite_url, hosts=2, lease_ttl=3)
    a, b = sim.hosts
    subnet, mac = b.subnet(), vxlan_mac(b)
    b.kill(signal.SIGKILL)
    b.exec("ip", "link", "del", "berth.1")  # a reboot loses the device; only the subnet file remains
    wait_until(lambda: str(subnet) not in overlay_entries(a.netns)["routes"], timeout=20,
               what="B's lease expiring at A")
    b.start()
    assert b.subnet() == subnet and vxlan_mac(b) == mac
    wait_until(lambda: overlay_entries(a.netns)["routes"].get(str(subnet)) == str(subnet.network_address),
               what="A re-learning B")
    ca, cb = sim.add_plain_container(a), sim.add_plain_container(b)
    wait_until(lambda: ping(ca.netns, cb.address.ip), what="connectivity after the reboot")


def test_stale_entries_of_departed_hosts_are_removed_at_start_up(make_sim, sqlite_url):
    sim = make_sim(sqlite_url, hosts=3, lease_ttl=3)
    a, b, c = sim.hosts
    c_subnet = str(c.subnet())
    assert c_subnet in overlay_entries(a.netns)["routes"]
    a.kill(signal.SIGKILL)  # A is down while C leaves: nobody tells A
    c.kill(signal.SIGKILL)
    wait_until(lambda: c_subnet not in overlay_entries(b.netns)["routes"], timeout=20, what="C's lease expiring")
    assert c_subnet in overlay_entries(a.netns)["routes"]  # still there: A was not running
    a.start()
    entries = overlay_entries(a.netns)
    assert set(entries["routes"]) == {str(b.subnet())}
    assert set(entries["neighbours"]) == {str(b.subnet().network_address)}
    assert {dst for _mac, dst in entries["fdb"]} == {str(b.address.ip)}


def test_masquerade_for_traffic_leaving_the_overlay(make_sim, sqlite_url):
    sim = make_sim(sqlite_url, hosts=1)
    (a,) = sim.hosts
    ca = sim.add_plain_container(a)
    outside = sim.underlay_gateway  # the underlay namespace has no route back to the overlay network
    with Capture(sim.underlay_ns, "br0", "icmp", count=2) as cap:
        assert ping(ca.netns, outside)
    from scapy.all import IP
    assert cap.packets and all(str(a.address.ip) in (p[IP].src, p[IP].dst) for p in cap.packets)
    tables = subprocess.run(["ip", "netns", "exec", a.netns, "nft", "list", "tables"], capture_output=True,
                            text=True, check=True).stdout
    assert "table ip berth-overlay" in tables


def test_direct_routing_between_hosts_on_one_segment(make_sim, sqlite_url):
    sim = make_sim(sqlite_url, hosts=2, direct_routing=True)
    a, b = sim.hosts
    ca, cb = sim.add_plain_container(a), sim.add_plain_container(b)
    entries = overlay_entries(a.netns)
    assert entries["routes"] == {str(b.subnet()): str(b.address.ip)}
    assert entries["fdb"] == set() and entries["neighbours"] == {}
    with Capture(sim.underlay_ns, "br0", "icmp", count=2) as cap:
        assert wait_until(lambda: ping(ca.netns, cb.address.ip), what="direct route")
    from scapy.all import IP, UDP
    assert cap.packets and not any(p.haslayer(UDP) for p in cap.packets)
    assert {cap.packets[0][IP].src, cap.packets[0][IP].dst} == {str(ca.address.ip), str(cb.address.ip)}


def test_reserved_subnet_is_used_and_never_expires(make_sim, sqlite_url):
    sim = make_sim(sqlite_url, hosts=3, start=False, lease_ttl=2)
    a, b, c = sim.hosts
    reserve = [*a.argv()[:7], "overlay", "reserve", "--store", sim.store_url, "--subnet", "10.214.200.0/24",
               "--public-ip", str(b.address.ip)]
    subprocess.run(reserve, check=True, capture_output=True)
    sim.start_all()
    assert b.subnet() == ipaddress.IPv4Network("10.214.200.0/24")
    c_subnet = str(c.subnet())
    b.kill(signal.SIGKILL)
    c.kill(signal.SIGKILL)
    # C held an ordinary lease: once A has forgotten C, B's time would have run out too, were it leased
    wait_until(lambda: c_subnet not in overlay_entries(a.netns)["routes"], timeout=20, what="C's lease expiring")
    assert overlay_entries(a.netns)["routes"].get("10.214.200.0/24") == "10.214.200.0"
    b.start()
    assert b.subnet() == ipaddress.IPv4Network("10.214.200.0/24")


def test_lost_store_lease_is_taken_again_with_the_same_subnet(make_sim, sqlite_url):
    from store.api import open_store

    sim = make_sim(sqlite_url, hosts=2, lease_ttl=3)
    a, b = sim.hosts
    subnet = a.subnet()
    lease_id = int(re.search(r"store lease ([0-9a-f]+)", a.log_since_start()).group(1), 16)
    store = open_store(sqlite_url)
    try:
        store.revoke_lease(lease_id)  # as if it had expired while the store was out of reach
        wait_until(lambda: "restored under store lease" in a.log_since_start(), what="A restoring its lease")
        kv = wait_until(lambda: store.get(f"/berth/overlay/subnets/{subnet.network_address}-24"),
                        what="A's lease key back")
        assert kv.lease not in (0, lease_id)
    finally:
        store.close()
    assert a.subnet() == subnet and a.running
    wait_until(lambda: str(subnet) in overlay_entries(b.netns)["routes"], what="B re-learning A")
    ca, cb = sim.add_plain_container(a), sim.add_plain_container(b)
    wait_until(lambda: ping(cb.netns, ca.address.ip), what="connectivity after the lease came back")


def test_watch_that_lost_its_place_to_compaction_re_lists(make_sim, sqlite_url):
    from store.api import open_store

    sim = make_sim(sqlite_url, hosts=3, lease_ttl=5)
    a, b, c = sim.hosts
    c_subnet = c.subnet()
    assert str(c_subnet) in overlay_entries(a.netns)["routes"]
    store = open_store(sqlite_url)
    try:
        a.process.send_signal(signal.SIGSTOP)  # A's watch stays at an old revision...
        try:
            c.kill(signal.SIGKILL)
            store.delete(f"/berth/overlay/subnets/{c_subnet.network_address}-24")
            _kvs, revision = store.get_prefix("/berth/overlay/")
            store.compact(revision)  # ... whose history is then thrown away
        finally:
            a.process.send_signal(signal.SIGCONT)
        wait_until(lambda: forgotten(a, c), what="A forgetting C")
    finally:
        store.close()
    assert "watch re-listed" in a.log_since_start() or "watch compacted" in a.log_since_start()
    entries = overlay_entries(a.netns)
    assert set(entries["routes"]) == {str(b.subnet())} and len(entries["fdb"]) == 1


def test_orderly_stop_with_release_gives_the_subnet_back(make_sim, sqlite_url):
    sim = make_sim(sqlite_url, hosts=2, lease_ttl=60, daemon_args=("--release-on-exit",))
    a, b = sim.hosts
    subnet = str(a.subnet())
    a.stop()  # SIGTERM
    assert not a.subnet_file.exists()
    assert ip_json(a.netns, "link", "show", "type", "vxlan") == []
    tables = subprocess.run(["ip", "netns", "exec", a.netns, "nft", "list", "tables"], capture_output=True,
                            text=True, check=True).stdout
    assert "berth-overlay" not in tables
    # with a 60 s TTL only the release can make B forget A this soon
    wait_until(lambda: subnet not in overlay_entries(b.netns)["routes"], timeout=20, what="B forgetting A")


def test_daemon_bad_input_is_a_clear_error_and_claims_nothing(make_sim, sqlite_url):
    from store.api import open_store

    sim = make_sim(sqlite_url, hosts=1, start=False)
    (a,) = sim.hosts
    base = a.argv()
    for flags, message in ((["--iface", "btnope"], "underlay interface 'btnope' does not exist"),
                           (["--iface", "underlay0", "--public-ip", "10.99.0.1"], "is not an address of")):
        argv = base[:base.index("--iface")] + flags + base[base.index("--iface") + 2:]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and message in done.stderr, done.stderr
    store = open_store(sqlite_url)
    try:
        assert store.get_prefix("/berth/overlay/subnets/")[0] == []
    finally:
        store.close()
    assert ip_json(a.netns, "link", "show", "type", "vxlan") == []
    assert not a.subnet_file.exists()


def test_entries_changed_by_someone_else_are_repaired(make_sim, sqlite_url):
    sim = make_sim(sqlite_url, hosts=2, daemon_args=("--resync-interval", "0.5"))
    a, b = sim.hosts
    wanted = overlay_entries(a.netns)
    assert len(wanted["routes"]) == 1
    subprocess.run(["ip", "-n", a.netns, "route", "del", str(b.subnet())], check=True)
    subprocess.run(["ip", "-n", a.netns, "neigh", "del", str(b.subnet().network_address), "dev", "berth.1"],
                   check=True)
    subprocess.run(["bridge", "-n", a.netns, "fdb", "append", "02:00:00:00:be:ef", "dev", "berth.1", "dst",
                    "10.213.0.99"], check=True)
    wait_until(lambda: overlay_entries(a.netns) == wanted, what="A's entries repaired")
    assert "repairing kernel entries" in a.log_since_start()
