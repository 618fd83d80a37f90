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


def bridge_conflist(name: str, subnet: str, ipam_type: str = "berth-ipam") -> dict:
    return {"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "berth-bridge", "bridge": "btbr0", "ipam": {"type": ipam_type, "ranges": [[{"subnet": subnet}]]}},
        {"type": "berth-register"}]}


def test_ipam_networks_of_cni_configs():
    configs = [bridge_conflist("btnet", "10.88.0.0/16"), bridge_conflist("btlocal", "10.89.0.0/24", "host-local"),
               bridge_conflist("btother", "10.90.0.0/24", "dhcp"),
               {"name": "btsingle", "type": "bridge", "ipam": {"type": "host-local", "subnet": "10.91.0.0/24"}},
               {"name": "btbroken", "type": "bridge", "ipam": {"type": "host-local", "ranges": "nope"}}]
    assert managed_strs(configs) == ["10.88.0.0/16", "10.89.0.0/24", "10.91.0.0/24"]


def managed_strs(configs) -> list[str]:
    from dnsd.managed import ipam_networks
    return [str(n) for n in ipam_networks(configs)]


@pytest.mark.root
def test_only_root_only_cni_configs_count(tmp_path):
    import json
    import os

    from dnsd.managed import read_cni_configs
    folder = tmp_path / "net.d"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    (folder / "10-bt.conflist").write_text(json.dumps(bridge_conflist("btnet", "10.88.0.0/16")))
    sneaky = folder / "20-bt.conflist"
    sneaky.write_text(json.dumps(bridge_conflist("btsneak", "198.51.100.0/24")))
    os.chmod(sneaky, 0o666)  # anyone could have written it
    foreign = folder / "30-bt.conflist"
    foreign.write_text(json.dumps(bridge_conflist("btforeign", "203.0.113.0/24")))
    os.chown(foreign, 65534, 65534)  # written by nobody
    assert managed_strs(read_cni_configs(str(folder))) == ["10.88.0.0/16"]
    os.chmod(folder, 0o777)
    assert read_cni_configs(str(folder)) == []  # a directory anyone can write to proves nothing


@pytest.mark.service
@pytest.mark.root
def test_cni_conf_dir_opens_recursion_to_its_ranges(start_dns, records_file, tiny_upstream, tmp_path):
    import json
    import os
    tiny_upstream.answers[("btfar.example", "A")] = ["btfar.example. 60 IN A 192.0.2.7"]
    folder = tmp_path / "net.d"
    folder.mkdir()
    os.chmod(folder, 0o755)
    (folder / "10-bt.conflist").write_text(json.dumps(bridge_conflist("btnet", "127.0.96.0/24")))
    server = start_dns("--records", str(records_file), "--upstream", tiny_upstream.address,
                       "--no-default-recursion", "--cni-conf-dir", str(folder))
    assert ask_from("127.0.96.7", server.port, "btfar.example").answer[0][0].address == "192.0.2.7"
    assert ask_from(OUTSIDER, server.port, "btfar.example").rcode() == dns.rcode.REFUSED
