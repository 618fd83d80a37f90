"""dnsd the way containers use it: listening on a bridge-style gateway address inside a namespace, asked from
another namespace. Recursion is offered to the gateway's network and refused to an address outside it, even one registered as an
endpoint."""
from __future__ import annotations

import secrets
import shutil
import subprocess
import sys

import pytest

from ..conftest import run
from ..waiting import stop_process, wait_listening
from discovery.model import EndpointRecord

from .conftest import REPO, sample_records, write_records

pytestmark = [pytest.mark.root, pytest.mark.skipif(shutil.which("dig") is None, reason="needs dig")]

Z = "berth.internal"
GATEWAY, CLIENT = "10.199.0.1", "10.199.0.2"
STRANGER_NET_SERVER, STRANGER = "192.0.2.1", "192.0.2.2"


def dig(ns: str, *args: str) -> str:
    return run("ip", "netns", "exec", ns, "dig", f"@{GATEWAY}", "+time=2", "+tries=2", *args,
               check=False).stdout


@pytest.fixture
def gateway_pair(netns, host_links):
    """Two namespaces joined by a veth pair: ``server`` holds the gateway, ``client`` a container address plus
    a second address from a network dnsd does not serve."""
    server, client = netns("dnss"), netns("dnsc")
    outside, inside = f"bt{secrets.token_hex(4)}", f"bt{secrets.token_hex(4)}"
    run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
    host_links.append(outside)
    run("ip", "link", "set", outside, "netns", server)
    run("ip", "link", "set", inside, "netns", client)
    run("ip", "-n", server, "addr", "add", f"{GATEWAY}/24", "dev", outside)
    run("ip", "-n", server, "addr", "add", f"{STRANGER_NET_SERVER}/24", "dev", outside)
    run("ip", "-n", client, "addr", "add", f"{CLIENT}/24", "dev", inside)
    run("ip", "-n", client, "addr", "add", f"{STRANGER}/24", "dev", inside)
    for ns, link in ((server, outside), (client, inside)):
        run("ip", "-n", ns, "link", "set", link, "up")
    return server, client


def test_containers_resolve_names_and_recurse_only_from_the_bridge(gateway_pair, records_file, tmp_path):
    server_ns, client_ns = gateway_pair
    # a registration at the stranger's address is data, not an authorisation to recurse (issue 13)
    write_records(records_file, [*sample_records(),
                                 EndpointRecord(id="sneak/eth0", name="btsneak", addresses=(STRANGER,))])
    upstream = subprocess.Popen(["ip", "netns", "exec", server_ns, "/usr/sbin/dnsmasq", "--keep-in-foreground",
                                 "--no-resolv", "--no-hosts", "--port=5300", "--listen-address=127.0.0.1",
                                 "--bind-interfaces", "--address=/btfar.example/192.0.2.77", "--pid-file="],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dnsd = subprocess.Popen(["ip", "netns", "exec", server_ns, sys.executable, "-m", "berth.cli", "dns",
                             "--records", str(records_file), "--listen", f"{GATEWAY}:53",
                             "--upstream", "127.0.0.1:5300"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert "listening on" in dnsd.stdout.readline()
        assert dig(client_ns, f"btweb1.{Z}", "+short").split() == ["10.89.0.11"]
        wait_listening(5300, netns=server_ns, udp=True, process=upstream)  # dnsmasq may still be starting
        assert dig(client_ns, "btfar.example", "+short").split() == ["192.0.2.77"]
        stranger = dig(client_ns, "-b", STRANGER, "btfar.example")
        assert "status: REFUSED" in stranger
        assert dig(client_ns, "-b", STRANGER, f"btweb1.{Z}", "+short").split() == ["10.89.0.11"]
        assert dig(client_ns, f"ns.{Z}", "+short").split() == [GATEWAY]
    finally:
        for proc in (dnsd, upstream):
            stop_process(proc, grace=5)
        dnsd.stdout.close()
        dnsd.stderr.close()
