"""End to end under a real podman: containers on a berth-bridge + IPAM + berth-portmap network get an address,
reach their gateway and each other, a published port reaches busybox httpd from the host, and removing the
containers leaves no veth, reservation or rule behind."""
from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess

import pytest

from tests.bridge.cni_call import ns_json
from tests.podman.harness import berth_network, podman  # noqa: F401 - fixtures

pytestmark = [pytest.mark.root, pytest.mark.podman, pytest.mark.slow]


def host_fetch(port: int, attempts: int = 3) -> str:
    """The page at 127.0.0.1:port from the host (busybox wget, bounded from outside), or "" when unreachable."""
    for _ in range(attempts):
        try:
            proc = subprocess.run(["busybox", "wget", "-q", "-O", "-", f"http://127.0.0.1:{port}/"],
                                  capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            continue
        if proc.returncode == 0:
            return proc.stdout.strip()
    return ""


def bridge_ports(bridge: str) -> list[str]:
    return [l["ifname"] for l in ns_json(None, "link", "show", "master", bridge)]


def reservations(data_dir: str, network: str) -> list[str]:
    path = os.path.join(data_dir, network)
    return [f for f in os.listdir(path) if f[0].isdigit()] if os.path.isdir(path) else []


def nft_rules_naming(*ids: str) -> list[str]:
    ruleset = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    return [line for line in ruleset.splitlines() if any(i in line for i in ids)]


@pytest.mark.parametrize("ipam", ["berth-ipam", "host-local"])
def test_podman_containers_on_a_berth_network(podman, berth_network, ipam):
    network, bridge, subnet, data_dir = berth_network(ipam=ipam, ip_masq=True)
    gateway = str(ipaddress.ip_network(subnet).network_address + 1)
    web, client = f"btweb{secrets.token_hex(3)}", f"btcli{secrets.token_hex(3)}"
    port, web_id = podman.run_publishing(web, 80, network=network,
                                         command=["/bin/httpd", "-f", "-p", "80", "-h", "/www"])
    client_id = podman.run(client, network=network, command=["/bin/sleep", "300"])

    web_ip = podman.address(web)
    assert ipaddress.ip_interface(web_ip).network == ipaddress.ip_network(subnet)
    assert ipaddress.ip_interface(podman.address(client)).network == ipaddress.ip_network(subnet)
    assert podman.exec(client, "ping", "-c", "3", "-i", "0.2", "-w", "3", gateway).returncode == 0
    assert podman.exec(client, "ping", "-c", "3", "-i", "0.2", "-w", "3", web_ip.split("/")[0]).returncode == 0
    podman.wait_listening(web, 80)
    assert host_fetch(port) == "berth"
    assert len(bridge_ports(bridge)) == 2
    assert len(reservations(data_dir, network)) == 2
    assert nft_rules_naming(web_id), "the published port and the masquerade rule name the container"

    podman.remove(web, client)
    assert bridge_ports(bridge) == []
    assert reservations(data_dir, network) == []
    assert nft_rules_naming(web_id, client_id) == []
    assert host_fetch(port, attempts=1) == ""
