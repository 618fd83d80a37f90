"""Docker on two simulated hosts joined by Berth's overlay: each host runs ``berth overlay`` (VXLAN, subnet lease
in a shared store), its own private dockerd with Berth's plugin, and a discovery agent on the shared store; a
container on host A reaches one on host B by its address and by the name B's agent registered."""
from __future__ import annotations

import ipaddress

import pytest

from overlay import subnetfile
from overlay.sim import SimCluster
from tests.docker.harness import DockerHost, available
from tests.ports import free_port
from tests.waiting import wait_until

pytestmark = [pytest.mark.root, pytest.mark.service, pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory):
    reason = available()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("docker-overlay")
    sim = SimCluster(f"sqlite:///{work}/cluster.db", lease_ttl=5.0)
    hosts: list[DockerHost] = []
    try:
        sim.create_underlay()
        sim.init_network("10.214.0.0/16")
        for _ in range(2):
            sim.add_host()
        sim.start_all()
        for sim_host in sim.hosts:
            hosts.append(DockerHost.start(netns=f"/run/netns/{sim_host.netns}", subnet_file=str(sim_host.subnet_file),
                                          store_url=sim.store_url, label=f"bt-docker-{sim_host.label}"))
        yield sim, hosts
    finally:
        for host in hosts:
            host.stop()
        sim.teardown()


def test_a_container_on_one_host_reaches_one_on_the_other_by_name(two_hosts):
    sim, (here, there) = two_hosts
    for host in (here, there):
        host.docker("network", "create", "-d", host.plugin_name, "--ipam-driver", host.plugin_name,
                    "--ipam-opt", "berth.overlay=true", "-o", "berth.overlay=true", "btovl")
        host.start_agent()
    subnet_here, subnet_there = sim.hosts[0].subnet(), sim.hosts[1].subnet()
    gateway = str(subnet_here.network_address + 1)
    port = free_port()
    here.start_dns(f"{gateway}:53", f"127.0.0.1:{port}")

    there.run_httpd("bt-far", "btovl", "--network-alias", "far-www")
    far = there.address_of("bt-far")
    assert ipaddress.ip_address(far) in subnet_there
    here.docker("run", "-d", "--name", "bt-near", "--network", "btovl", "--dns", gateway, "bt-busybox:1",
                "sleep", "600")
    assert ipaddress.ip_address(here.address_of("bt-near")) in subnet_here
    assert wait_until(lambda: here.dig("far-www.berth.internal", "127.0.0.1", port), timeout=30,
                      what="host A's berth dns answering host B's container") == [far]
    page = wait_until(lambda: here.fetch_from("bt-near", f"http://{far}/"), timeout=30,
                      what="A's container reaching B's over the overlay")
    assert page.strip() == "berth"
    assert here.fetch_from("bt-near", "http://far-www.berth.internal/").strip() == "berth"
    # the overlay's MTU on the network, and no masquerading inside the overlay network
    mtu = int(there.docker("exec", "bt-far", "cat", "/sys/class/net/eth0/mtu").stdout)
    assert mtu < 1500
    masquerades = [line for line in here.run_here("nft", "list", "ruleset").stdout.splitlines()
                   if "masquerade" in line and "masq\"" in line]
    daemon_masquerades = subnetfile.read(sim.hosts[0].subnet_file).ipmasq
    assert (masquerades == []) == daemon_masquerades  # the bridge masquerades only when berth overlay does not
    assert all("ip daddr != 10.214.0.0/16" in line for line in masquerades)
    there.docker("rm", "-f", "bt-far")
    wait_until(lambda: here.dig("far-www.berth.internal", "127.0.0.1", port) == [], timeout=30,
               what="the name leaving with the container")


def test_an_overlay_network_needs_the_overlay_pool(two_hosts):
    _, (here, _) = two_hosts
    refused = here.docker("network", "create", "-d", here.plugin_name, "--ipam-driver", here.plugin_name,
                          "--subnet", "10.231.77.0/24", "-o", "berth.overlay=true", "btovl-bad", check=False)
    assert refused.returncode != 0 and "--ipam-opt berth.overlay=true" in refused.stderr
