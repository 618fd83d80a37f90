"""Berth as Docker's network and IPAM driver, through a real dockerd (20.10) and the real docker CLI.

Each test builds its own network on the module's private engine and removes it; what must be gone afterwards
(veths, address reservations, firewall rules, records) is looked for where it would be.
"""
from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import secrets
import shutil
import socket

import pytest

from tests.podman.harness import random_test_subnet
from tests.ports import free_port
from tests.waiting import wait_until

pytestmark = [pytest.mark.root, pytest.mark.service, pytest.mark.docker]
PAGE = "berth"  # build_rootfs's /www/index.html


def _reserved(host, subnet: str) -> list[str]:
    folder = host.state_dir / "ipam" / subnet.replace("/", "_")
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name[0].isdigit())


def _endpoint_records(host) -> list[str]:
    return sorted(p.stem for p in (host.state_dir / "endpoints").glob("*.json"))


def _veths(host) -> list[str]:
    return [name for name in host.links() if name.startswith(("vb", "vc"))]


@pytest.fixture
def network(docker_host):
    """A fresh Berth network ``(name, subnet)``; its containers and the network are removed afterwards."""
    made = []

    def create(*options: str):
        name, subnet = f"btnet{len(made)}", random_test_subnet()
        docker_host.create_network(name, subnet, *options)
        made.append(name)
        return name, subnet

    yield create
    for name in made:
        ids = docker_host.docker("ps", "-aq", "--filter", f"network={name}", check=False).stdout.split()
        if ids:
            docker_host.docker("rm", "-f", *ids, check=False)
        docker_host.docker("network", "rm", name, check=False)


def test_two_containers_reach_each_other_by_address(docker_host, network):
    name, subnet = network()
    docker_host.run_httpd("bt-web-a", name)
    docker_host.run_httpd("bt-web-b", name)
    a, b = docker_host.address_of("bt-web-a"), docker_host.address_of("bt-web-b")
    assert a != b and {ipaddress.ip_address(a), ipaddress.ip_address(b)} <= set(ipaddress.ip_network(subnet))
    assert _reserved(docker_host, subnet) == sorted([a, b])  # Berth's IPAM gave them out
    assert wait_until(lambda: docker_host.fetch_from("bt-web-b", f"http://{a}/"), timeout=20,
                      what="b fetching a's page").strip() == PAGE
    assert docker_host.fetch_from("bt-web-a", f"http://{b}/").strip() == PAGE
    gateway = str(ipaddress.ip_network(subnet).network_address + 1)
    routes = docker_host.docker("exec", "bt-web-a", "ip", "route").stdout
    assert f"default via {gateway} dev eth0" in routes
    mac = docker_host.docker("exec", "bt-web-a", "cat", "/sys/class/net/eth0/address").stdout.strip()
    assert mac == "02:be:" + ":".join(f"{b:02x}" for b in ipaddress.ip_address(a).packed)  # follows the address


def test_published_port_reaches_container_and_a_taken_port_is_refused(docker_host, network):
    name, subnet = network()
    port = free_port()
    docker_host.run_httpd("bt-pub-a", name, "-p", f"{port}:80")
    page = wait_until(lambda: docker_host.fetch_here(f"http://127.0.0.1:{port}/"), timeout=20,
                      what="the published port from the host")
    assert page.strip() == PAGE
    address = docker_host.address_of("bt-pub-a")
    outside = str(ipaddress.ip_network(subnet).network_address + 1)  # the host's own address on the bridge
    assert docker_host.fetch_here(f"http://{outside}:{port}/").strip() == PAGE
    before = (_reserved(docker_host, subnet), sorted(docker_host.rule_comments()), _veths(docker_host))

    refused = docker_host.docker("run", "-d", "--name", "bt-pub-b", "--network", name, "-p", f"{port}:80",
                                 "bt-busybox:1", "httpd", "-f", "-p", "80", "-h", "/www", check=False)
    assert refused.returncode != 0
    assert f"tcp host port {port} is already mapped" in refused.stderr
    # the refused container holds nothing: no address, rule or link beyond the first container's
    assert (_reserved(docker_host, subnet), sorted(docker_host.rule_comments()), _veths(docker_host)) == before
    assert _reserved(docker_host, subnet) == [address]
    docker_host.docker("rm", "-f", "bt-pub-b")


def test_unpublished_and_ranged_ports_are_refused_clearly(docker_host, network):
    name, _ = network()
    refused = docker_host.docker("run", "-d", "--name", "bt-pub-c", "--network", name, "-p", "80",
                                 "bt-busybox:1", "true", check=False)
    assert refused.returncode != 0 and "Berth publishes only explicit host ports" in refused.stderr
    docker_host.docker("rm", "-f", "bt-pub-c")


def test_rm_f_leaves_no_link_reservation_rule_or_record(docker_host, network):
    name, subnet = network()
    port = free_port()
    docker_host.run_httpd("bt-gone", name, "-p", f"{port}:80")
    address = docker_host.address_of("bt-gone")
    assert _veths(docker_host) and _endpoint_records(docker_host)
    tags = {" ".join(c.split(" ")[:4]) for c in docker_host.rule_comments()}
    assert len(tags) == 1

    docker_host.docker("rm", "-f", "bt-gone")
    assert _veths(docker_host) == []
    assert address not in _reserved(docker_host, subnet)
    assert docker_host.rule_comments() == []
    assert _endpoint_records(docker_host) == []
    assert docker_host.fetch_here(f"http://127.0.0.1:{port}/") == ""

    bridge = json.loads(next((docker_host.state_dir / "networks").glob("*.json")).read_text())["bridge"]
    docker_host.docker("network", "rm", name)
    assert bridge not in docker_host.links()
    assert list((docker_host.state_dir / "networks").glob("*.json")) == []
    assert list((docker_host.state_dir / "pools").glob("*.json")) == []


def test_plugin_restart_keeps_a_working_network(docker_host, network):
    name, subnet = network()
    docker_host.run_httpd("bt-keep-a", name)
    a = docker_host.address_of("bt-keep-a")
    docker_host.stop_plugin()
    docker_host.start_plugin()
    docker_host.run_httpd("bt-keep-b", name)  # Docker replays nothing: the plugin knows the network from its records
    b = docker_host.address_of("bt-keep-b")
    assert b != a and _reserved(docker_host, subnet) == sorted([a, b])
    assert wait_until(lambda: docker_host.fetch_from("bt-keep-b", f"http://{a}/"), timeout=20,
                      what="the new container reaching the old one").strip() == PAGE
    docker_host.docker("rm", "-f", "bt-keep-a", "bt-keep-b")
    assert _veths(docker_host) == [] and _reserved(docker_host, subnet) == []


def test_overlapping_subnet_and_unknown_option_are_refused(docker_host, network):
    _, subnet = network()
    clash = docker_host.docker("network", "create", "-d", docker_host.plugin_name, "--ipam-driver",
                               docker_host.plugin_name, "--subnet", subnet, "btclash", check=False)
    assert clash.returncode != 0 and "overlaps pool" in clash.stderr
    odd = docker_host.docker("network", "create", "-d", docker_host.plugin_name, "--ipam-driver",
                             docker_host.plugin_name, "--subnet", random_test_subnet(), "-o", "berth.colour=red",
                             "btodd", check=False)
    assert odd.returncode != 0 and "unknown option -o berth.colour" in odd.stderr
    assert len(list((docker_host.state_dir / "pools").glob("*.json"))) == 1  # the refused ones kept no pool


def _raw(host, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(host.plugin_socket))
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks):
                head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                if len(body) >= length:
                    break
        return b"".join(chunks)


def _post(path: str, body: bytes) -> bytes:
    return (f"POST /{path} HTTP/1.1\r\nHost: plugin\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


def test_the_plugin_socket_is_root_only_and_refuses_bad_requests_clearly(docker_host):
    assert docker_host.plugin_socket.stat().st_mode & 0o777 == 0o600
    assert b'"Implements": ["NetworkDriver", "IpamDriver"]' in _raw(docker_host, _post("Plugin.Activate", b""))
    unknown = _raw(docker_host, _post("NetworkDriver.Teleport", b"{}"))
    assert unknown.startswith(b"HTTP/1.1 404") and b"not a method Berth implements" in unknown
    garbled = _raw(docker_host, _post("IpamDriver.RequestPool", b"{not json"))
    assert garbled.startswith(b"HTTP/1.1 400") and b"request body" in garbled
    missing = _raw(docker_host, _post("NetworkDriver.Join", b'{"NetworkID": "../../etc"}'))
    assert missing.startswith(b"HTTP/1.1 400") and b"is not a Docker id" in missing
    huge = _raw(docker_host, b"POST /IpamDriver.RequestPool HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n")
    assert huge.startswith(b"HTTP/1.1 413")


def test_a_name_waits_in_the_spool_until_the_agent_starts(docker_host, network):
    if docker_host.agent is not None:
        pytest.skip("the module's agent already runs")
    name, _ = network()
    docker_host.run_httpd("bt-early", name, "--network-alias", "early")
    address = docker_host.address_of("bt-early")
    wait_until(lambda: list(docker_host.spool_dir.glob("*")), timeout=30, what="the registration in the spool")
    port = free_port()
    docker_host.start_agent()
    docker_host.start_dns(f"127.0.0.1:{port}")
    assert wait_until(lambda: docker_host.dig("early.berth.internal", "127.0.0.1", port), timeout=30,
                      what="the spooled name answering") == [address]
    assert not [p for p in docker_host.spool_dir.glob("*") if p.is_file()]  # the agent took it


def test_names_and_aliases_answer_in_berth_dns_and_go_with_the_container(docker_host, network):
    name, subnet = network()
    gateway = str(ipaddress.ip_network(subnet).network_address + 1)
    port = free_port()
    docker_host.start_agent()
    docker_host.start_dns(f"127.0.0.1:{port}", f"{gateway}:53")
    docker_host.run_httpd("bt-named", name, "--network-alias", "www")
    address = docker_host.address_of("bt-named")
    for wanted in ("bt-named.berth.internal", "www.berth.internal"):
        assert wait_until(lambda: docker_host.dig(wanted, "127.0.0.1", port), timeout=30,
                          what=f"berth dns answering {wanted}") == [address]
    # a container that uses berth dns (through Docker's embedded resolver) reaches the other by Berth's name
    docker_host.docker("run", "-d", "--name", "bt-asker", "--network", name, "--dns", gateway, "bt-busybox:1",
                       "sleep", "600")
    page = wait_until(lambda: docker_host.fetch_from("bt-asker", "http://www.berth.internal/"), timeout=30,
                      what="the page by its Berth name")
    assert page.strip() == PAGE
    docker_host.docker("rm", "-f", "bt-named")
    wait_until(lambda: docker_host.dig("www.berth.internal", "127.0.0.1", port) == [], timeout=30,
               what="the name going with the container")
    assert docker_host.dig("bt-named.berth.internal", "127.0.0.1", port) == []


def test_containers_started_at_once_get_distinct_addresses_and_leave_nothing(docker_host, network):
    name, subnet = network()
    names = [f"bt-par-{i}" for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(lambda n: docker_host.docker("run", "-d", "--name", n, "--network", name, "bt-busybox:1",
                                                   "sleep", "600"), names))
    addresses = [docker_host.address_of(n) for n in names]
    assert len(set(addresses)) == len(names) and _reserved(docker_host, subnet) == sorted(addresses)
    assert len(_veths(docker_host)) == len(names)
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(lambda n: docker_host.docker("rm", "-f", n), names))
    assert _veths(docker_host) == [] and _reserved(docker_host, subnet) == [] and _endpoint_records(docker_host) == []


def test_the_plugin_refuses_connections_beyond_its_cap_and_serves_again_after(docker_host):
    from docker_plugin.server import MAX_CONNECTIONS
    keep_alive = b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 0\r\n\r\n"
    held, served, refused = [], 0, 0
    try:
        for _ in range(MAX_CONNECTIONS + 4):  # each kept open after its answer, as Docker's client keeps them
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(str(docker_host.plugin_socket))
            held.append(sock)
            try:
                sock.sendall(keep_alive)
                answer = sock.recv(65536)
            except (BrokenPipeError, ConnectionResetError):  # closed before or while we wrote
                answer = b""
            if answer.startswith(b"HTTP/1.1 200"):
                served += 1
            else:
                assert answer == b""  # closed at once, not queued without bound
                refused += 1
    finally:
        for sock in held:
            sock.close()
    # dockerd may hold an idle connection or two of its own
    assert MAX_CONNECTIONS - 4 <= served <= MAX_CONNECTIONS and refused >= 4
    assert wait_until(lambda: _raw(docker_host, _post("Plugin.Activate", b"")).startswith(b"HTTP/1.1 200"),
                      timeout=20, what="the plugin serving again")


def test_a_dual_stack_network_reaches_containers_over_ipv6(docker_host, network):
    v6 = f"fd00:b7:{secrets.randbelow(1 << 16):x}::/64"
    name, _ = network("--ipv6", "--subnet", v6)
    docker_host.run_httpd("bt-six-a", name)
    docker_host.run_httpd("bt-six-b", name)
    fmt = "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}} {{.IPv6Gateway}}{{end}}"
    address, gateway = docker_host.docker("inspect", "-f", fmt, "bt-six-a").stdout.split()
    assert ipaddress.ip_address(address) in ipaddress.ip_network(v6)
    assert gateway == str(ipaddress.ip_network(v6).network_address + 1)
    assert wait_until(lambda: docker_host.fetch_from("bt-six-b", f"http://[{address}]/"), timeout=20,
                      what="b fetching a's page over IPv6").strip() == PAGE


ID = "ab" * 32
WRONG_TYPES = (b'{"NetworkID": 5, "EndpointID": 5, "PoolID": 5, "Pool": 5, "SubPool": 5, "Address": 5,'
               b' "Options": 5, "Interface": 5, "IPv4Data": 5}')
BAD_FOR_ALL = [b"[]", b"7", b'"text"', b"{not json", WRONG_TYPES,
               b'{"NetworkID": "../../etc", "EndpointID": "../x", "PoolID": "../x", "Pool": "../x"}']
BAD_FOR = {  # bodies that are wrong for one method in particular
    "NetworkDriver.CreateNetwork": [
        b'{"NetworkID": "%s", "Options": []}' % ID.encode(),
        b'{"NetworkID": "%s", "IPv4Data": "10.0.0.0/8"}' % ID.encode(),
        b'{"NetworkID": "%s", "IPv4Data": [{"Pool": "10.0.0.1/8", "Gateway": "x"}]}' % ID.encode(),
        b'{"NetworkID": "%s", "IPv4Data": [{"Pool": "10.0.0.0/16", "Gateway": "10.1.0.1/16"}]}' % ID.encode(),
        b'{"NetworkID": "%s", "Options": {"com.docker.network.generic": {"berth.mtu": []}}}' % ID.encode(),
        b'{"NetworkID": "%s", "Options": {"com.docker.network.generic": {"berth.bridge": 5}}}' % ID.encode()],
    "NetworkDriver.CreateEndpoint": [b'{"NetworkID": "%s", "EndpointID": "%s"}' % (ID.encode(), ID.encode())],
    "NetworkDriver.Join": [b'{"NetworkID": "%s", "EndpointID": "%s"}' % (ID.encode(), ID.encode())],
    "NetworkDriver.ProgramExternalConnectivity": [
        b'{"NetworkID": "%s", "EndpointID": "%s", "Options": {"com.docker.network.portmap": [{"Proto": 1}]}}'
        % (ID.encode(), ID.encode())],
    "IpamDriver.RequestPool": [b'{"Pool": "10.0.0.1/8"}', b'{"Pool": "10.231.250.0/24", "SubPool": "10.9.0.0/25"}',
                               b'{"Options": {"berth.overlay": "maybe"}}', b'{"Pool": "fd00::/64"}'],
    "IpamDriver.RequestAddress": [b'{"PoolID": "10.0.0.0_8"}'],
    "IpamDriver.ReleaseAddress": [b'{"PoolID": "10.0.0.0_8", "Address": "garbage"}'],
}


def test_bad_requests_to_every_method_get_a_clear_4xx_and_change_nothing(docker_host):
    from docker_plugin.cli import routes

    def snapshot():
        return (sorted(str(p) for p in docker_host.state_dir.rglob("*")), docker_host.links(),
                docker_host.rule_comments())

    before = snapshot()
    for method in sorted(routes(_Names(), _Names())):
        for body in BAD_FOR_ALL + BAD_FOR.get(method, []):
            answer = _raw(docker_host, _post(method, body))
            status = int(answer.split(b" ", 2)[1])
            assert status < 500, (method, body, answer)
            if status != 200:
                assert b'"Err": "' in answer, (method, body, answer)
            elif method in BAD_FOR or (body in BAD_FOR_ALL[:4]):
                raise AssertionError(f"{method} accepted {body!r}: {answer!r}")
    assert snapshot() == before


class _Names:
    """Stands in for the drivers when only the route names are wanted."""

    def __getattr__(self, name):
        return name


def test_a_lost_state_directory_is_rebuilt_from_docker(docker_host, network):
    name, subnet = network()
    port = free_port()
    docker_host.run_httpd("bt-kept", name, "-p", f"{port}:80")
    kept = docker_host.address_of("bt-kept")
    docker_host.stop_plugin()
    lost = docker_host.state_dir.with_name("lost-state")
    docker_host.state_dir.rename(lost)
    try:
        docker_host.start_plugin()
        wait_until(lambda: _reserved(docker_host, subnet) == [kept] and _endpoint_records(docker_host), timeout=60,
                   what="the plugin taking the network back from Docker")
        docker_host.run_httpd("bt-new", name)
        new = docker_host.address_of("bt-new")
        assert new != kept and _reserved(docker_host, subnet) == sorted([kept, new])
        assert wait_until(lambda: docker_host.fetch_from("bt-new", f"http://{kept}/"), timeout=20,
                          what="the new container reaching the kept one").strip() == PAGE
        assert docker_host.fetch_here(f"http://127.0.0.1:{port}/").strip() == PAGE
        docker_host.docker("rm", "-f", "bt-kept", "bt-new")
        assert _veths(docker_host) == [] and _reserved(docker_host, subnet) == [] and docker_host.rule_comments() == []
        bridge = json.loads(next((docker_host.state_dir / "networks").glob("*.json")).read_text())["bridge"]
        docker_host.docker("network", "rm", name)
        assert bridge not in docker_host.links() and list((docker_host.state_dir / "pools").glob("*.json")) == []
    finally:
        shutil.rmtree(lost, ignore_errors=True)


# These two restart dockerd: they stay last in the module.

def test_a_dockerd_restart_keeps_the_network_and_its_containers_start_again(docker_host, network):
    name, subnet = network()
    docker_host.run_httpd("bt-again", name, "--stop-timeout", "1")  # busybox as PID 1 ignores SIGTERM
    docker_host.restart_dockerd()
    assert name in docker_host.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    docker_host.docker("start", "bt-again")
    docker_host.run_httpd("bt-again-b", name)
    a, b = docker_host.address_of("bt-again"), docker_host.address_of("bt-again-b")
    assert a and b and a != b and _reserved(docker_host, subnet) == sorted([a, b])
    assert wait_until(lambda: docker_host.fetch_from("bt-again-b", f"http://{a}/"), timeout=20,
                      what="reaching the restarted container").strip() == PAGE
    docker_host.docker("rm", "-f", "bt-again", "bt-again-b")
    assert _veths(docker_host) == [] and _reserved(docker_host, subnet) == []


def test_a_network_docker_forgot_and_a_pool_left_without_its_network_are_released_when_the_plugin_starts(
        docker_host, network):
    name, subnet = network()
    orphan, orphan_subnet = network()
    docker_host.run_httpd("bt-forgot", name, "--stop-timeout", "1")
    records = docker_host.state_dir / "networks"
    orphan_id = docker_host.docker("network", "inspect", "-f", "{{.Id}}", orphan).stdout.strip()
    orphan_record = records / f"{orphan_id}.json"
    bridge, orphan_bridge = (json.loads(p.read_text())["bridge"] for p in
                             (next(p for p in records.glob("*.json") if p != orphan_record), orphan_record))
    docker_host.restart_dockerd(forget_networks=True)  # Docker's network database is gone; Berth is not told
    docker_host.docker("rm", "-f", "bt-forgot", check=False)
    pools = docker_host.state_dir / "pools"
    assert len(list(records.glob("*.json"))) == len(list(pools.glob("*.json"))) == 2  # the plugin holds both...
    docker_host.stop_plugin()
    # a plugin that crashed after dropping a network's record and bridge, before releasing its pool
    orphan_record.unlink()
    docker_host.run_here("ip", "link", "del", orphan_bridge)
    docker_host.start_plugin()
    # ...until it asks Docker at start: the forgotten network goes, its pool with it, and the orphaned pool
    wait_until(lambda: not list(records.glob("*.json")) and not list(pools.glob("*.json"))
               and _reserved(docker_host, subnet) == [],
               timeout=60, what="the plugin dropping the network Docker forgot, its addresses and the orphaned pool")
    assert bridge not in docker_host.links() and _veths(docker_host) == []
    assert list((docker_host.state_dir / "endpoints").glob("*.json")) == []
    assert docker_host.rule_comments() == []
