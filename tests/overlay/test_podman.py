"""Podman containers on two simulated hosts, networked by berth-overlay.

Podman runs inside each host's network namespace (``nsenter --net``), so the plugins it execs make the bridge there, and
the container namespaces it creates hang off that host; nothing lands in the machine's own namespace.
"""
from __future__ import annotations

import ipaddress
import subprocess

import pytest

from tests.overlay.helpers import wait_until
from tests.podman.harness import PODMAN_TIMEOUT, PodmanHarness, available

pytestmark = [pytest.mark.root, pytest.mark.podman, pytest.mark.slow]


class HostPodman(PodmanHarness):
    """One podman storage shared by the hosts; each call names the host namespace it runs in."""

    host: str = ""

    def __call__(self, *args: str, check: bool = True, timeout: float = PODMAN_TIMEOUT):
        # nsenter, not `ip netns exec`: that remounts /sys, and runc then finds no cgroup mounts
        argv = ["nsenter", f"--net=/run/netns/{self.host}", "podman", *self.storage, *args] if self.host else \
            ["podman", *self.storage, *args]
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc


@pytest.fixture
def host_podman():
    reason = available()
    if reason:
        pytest.skip(reason)
    harness = HostPodman.create()
    try:
        yield harness
    finally:
        harness.host = ""
        harness.close()


def test_podman_containers_on_two_hosts_reach_each_other(make_sim, sqlite_url, host_podman, tmp_path):
    sim = make_sim(sqlite_url, hosts=2)
    names = {}
    for host in sim.hosts:
        names[host.label] = f"btovl{host.label}"
        host_podman.write_network(names[host.label], [{
            "type": "berth-overlay", "subnetFile": str(host.subnet_file), "dataDir": str(tmp_path / host.label),
            "delegate": {"bridge": "btovl0"}, "ipam": {"dataDir": str(tmp_path / host.label / "ipam")}}],
            cni_version="1.0.0")
    a, b = sim.hosts
    host_podman.host = b.netns
    host_podman.run("btweb", network=names["h1"], command=["httpd", "-f", "-p", "80", "-h", "/www"])
    web = ipaddress.ip_interface(host_podman.address("btweb"))
    host_podman.wait_listening("btweb", 80)
    assert web.ip in b.subnet()
    host_podman.host = a.netns
    host_podman.run("btclient", network=names["h0"], command=["sleep", "300"])
    assert ipaddress.ip_interface(host_podman.address("btclient")).ip in a.subnet()
    wait_until(lambda: host_podman.exec("btclient", "ping", "-c", "1", "-W", "1", str(web.ip)).returncode == 0,
               what="podman container on A pinging the one on B")
    page = host_podman.exec("btclient", "wget", "-q", "-O", "-", f"http://{web.ip}/", check=True)
    assert page.stdout == "berth"
    host_podman.remove("btclient")
    host_podman.host = b.netns
    host_podman.remove("btweb")
    assert not list((tmp_path / "h0").glob("*.json")) and not list((tmp_path / "h1").glob("*.json"))
