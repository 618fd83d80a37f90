"""Who may recurse is configuration, not data (issue 13, point 1): a registration through the agent's Consul API
never makes its address a recursion client; the overlay's subnets in the store (written by `berth overlay`) do."""
from __future__ import annotations

import ipaddress
import subprocess

import consul
import dns.message
import dns.query
import dns.rcode
import pytest

from dnsd.acl import RecursionPolicy
from dnsd.managed import managed_networks
from overlay.config import make_config
from overlay.lease import config_key, subnet_key
from tests.conftest import VENV_BIN
from tests.waiting import wait_until

from .conftest import agent_process  # noqa: F401  (fixture)

Z = "berth.internal"
OUTSIDER = "127.0.0.9"   # a client outside every allowed range
ALLOWED = "127.0.0.5"    # the one --allow range of these servers


def ask_from(source: str, port: int, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(query, "127.0.0.1", port=port, timeout=5, source=source)
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=5, source=source)


def test_policy_is_static_ranges_plus_managed_subnets():
    managed = (ipaddress.ip_network("10.244.0.0/16"),)
    policy = RecursionPolicy.from_cidrs(["127.0.0.0/8", "192.0.2.0/24"], lambda: managed)
    assert policy.allows("127.0.0.1") and policy.allows("::ffff:127.0.0.1") and policy.allows("192.0.2.9")
    assert policy.allows("10.244.7.1") and not policy.allows("10.245.0.1") and not policy.allows("bogus")
    assert not RecursionPolicy(()).allows("127.0.0.1")


def test_managed_networks_come_from_the_overlay_config_and_leases_only():
    items = [(config_key(), make_config("10.244.0.0/16").to_json()),
             (subnet_key(ipaddress.ip_network("10.244.3.0/24")), b'{"PublicIP": "192.0.2.1"}'),
             ("/berth/overlay/subnets/garbage", b"{}"), ("/berth/overlay/config-old", b"x"),
             ("/berth/endpoints/h/x", b'{"addresses": ["198.51.100.1"]}')]
    assert managed_networks(items) == (ipaddress.ip_network("10.244.0.0/16"), ipaddress.ip_network("10.244.3.0/24"))
    assert managed_networks([(config_key(), b"not json")]) == ()


@pytest.mark.service
def test_a_consul_registration_does_not_open_recursion_but_the_overlay_subnet_does(
        agent_process, start_dns, tiny_upstream, tmp_path):
    tiny_upstream.answers[("btfar.example", "A")] = ["btfar.example. 60 IN A 192.0.2.7"]
    url = agent_process.store_url
    server = start_dns("--store", url, "--upstream", tiny_upstream.address,
                       "--no-default-recursion", "--allow", f"{ALLOWED}/32")
    api = consul.Consul(host="127.0.0.1", port=agent_process.http_port)
    # a non-root API caller registers a service at the outsider's address
    assert api.agent.service.register("btsneak", service_id="btsneak1", address=OUTSIDER, port=53)
    wait_until(lambda: ask_from(ALLOWED, server.port, f"btsneak.service.{Z}").answer, what="the registration")
    for tcp in (False, True):
        refused = ask_from(OUTSIDER, server.port, "btfar.example", tcp=tcp)
        assert refused.rcode() == dns.rcode.REFUSED and not refused.answer
    assert tiny_upstream.udp_queries == []
    assert ask_from(OUTSIDER, server.port, f"btsneak.service.{Z}").answer[0][0].address == OUTSIDER  # zone: anyone
    assert ask_from(ALLOWED, server.port, "btfar.example").answer[0][0].address == "192.0.2.7"

    # the overlay's network, written by the root component `berth overlay init`, is Berth-managed
    subprocess.run([str(VENV_BIN / "berth"), "overlay", "init", "--store", url, "--network", "127.0.64.0/18"],
                   check=True, capture_output=True, timeout=60)
    inside = "127.0.65.9"
    wait_until(lambda: ask_from(inside, server.port, "btfar.example").rcode() == dns.rcode.NOERROR,
               what="recursion for the overlay's subnet")
    assert ask_from(OUTSIDER, server.port, "btfar.example").rcode() == dns.rcode.REFUSED


@pytest.mark.service
def test_no_managed_recursion_ignores_the_overlay(agent_process, start_dns, tiny_upstream):
    url = agent_process.store_url
    subprocess.run([str(VENV_BIN / "berth"), "overlay", "init", "--store", url, "--network", "127.0.64.0/18"],
                   check=True, capture_output=True, timeout=60)
    server = start_dns("--store", url, "--upstream", tiny_upstream.address, "--no-default-recursion",
                       "--no-managed-recursion")
    assert ask_from("127.0.65.9", server.port, "btfar.example").rcode() == dns.rcode.REFUSED
