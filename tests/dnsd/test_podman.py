"""Two podman containers on a Berth network find each other by name and alias through dnsd.

The whole chain is real: podman → berth-bridge → berth-register → ``berth agent`` → SQLite store → discovery view →
``berth dns``. dnsd runs in a namespace of the test's own, plugged into the network's bridge like one more host
on it (so nothing listens on port 53 of the host); the containers get it as their resolver with ``--dns``.
"""
from __future__ import annotations

import ipaddress
import secrets
import subprocess
import sys

import dns.message
import dns.query
import pytest

from tests.conftest import run, unique_name
from tests.discovery.conftest import agents  # noqa: F401  (fixture)
from tests.podman.harness import berth_network_plugins, podman, random_test_subnet  # noqa: F401  (fixture)
from tests.waiting import stop_process, wait_until

from .conftest import REPO

pytestmark = [pytest.mark.root, pytest.mark.podman, pytest.mark.slow]
ZONE = "berth.internal"


def resolves(server: str, name: str) -> list[str]:
    try:
        reply = dns.query.udp(dns.message.make_query(name, "A"), server, port=53, timeout=2)
    except dns.exception.Timeout:
        return []
    return sorted(r.address for rrset in reply.answer for r in rrset)


def test_containers_resolve_each_other_by_name_and_alias(podman, agents, netns, host_links, tmp_path):  # noqa: F811
    url = f"sqlite:///{tmp_path / 'berth.db'}"
    agent = agents(url, ttl=30)
    network, bridge = unique_name("net"), unique_name("br")
    host_links.append(bridge)
    subnet = ipaddress.ip_network(random_test_subnet())
    resolver = str(subnet.network_address + 250)
    podman.write_network(network, berth_network_plugins(
        bridge=bridge, subnet=str(subnet), data_dir=str(tmp_path / "ipam"), portmap=False,
        extra=[{"type": "berth-register", "agentSocket": agent.socket, "spoolDir": agent.spool_dir,
                "capabilities": {"aliases": True}}]))
    dns_args = ["--dns", resolver, "--dns-search", ZONE]
    first, second, alias = unique_name("ctr"), unique_name("ctr"), unique_name("al")
    podman.run(first, network=network, command=["sleep", "300"], aliases=[alias], extra=dns_args)

    # dnsd's own namespace, one more port on the bridge the first container brought up
    ns = netns("dnsd")
    outside, inside = f"bt{secrets.token_hex(4)}", f"bt{secrets.token_hex(4)}"
    run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
    host_links.append(outside)
    run("ip", "link", "set", outside, "master", bridge, "up")
    run("ip", "link", "set", inside, "netns", ns)
    run("ip", "-n", ns, "addr", "add", f"{resolver}/{subnet.prefixlen}", "dev", inside)
    run("ip", "-n", ns, "link", "set", inside, "up")
    dnsd = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "berth.cli", "dns", "--store", url,
                             "--listen", f"{resolver}:53", "--no-forward"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert "listening on" in dnsd.stdout.readline()
        podman.run(second, network=network, command=["sleep", "300"], extra=dns_args)
        first_ip = podman.address(first).split("/")[0]
        second_ip = podman.address(second).split("/")[0]
        wait_until(lambda: resolves(resolver, f"{second}.{ZONE}") == [second_ip],
                   what="the second container appearing in DNS")
        assert resolves(resolver, f"{first}.{ZONE}") == [first_ip]

        for asker, name, expected in ((second, first, first_ip), (second, alias, first_ip),
                                      (first, second, second_ip), (first, f"{alias}.{network}.{ZONE}", first_ip)):
            out = podman.exec(asker, "nslookup", name).stdout
            assert expected in out, f"{asker} looking up {name}: {out}"
        podman.remove(second)
        wait_until(lambda: resolves(resolver, f"{second}.{ZONE}") == [], what="the removed container leaving DNS")
    finally:
        stop_process(dnsd, grace=5)
        dnsd.stdout.close()
        dnsd.stderr.close()
