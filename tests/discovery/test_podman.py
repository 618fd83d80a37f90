"""End to end under a real podman: a container on a Berth network (berth-bridge, berth-ipam, berth-portmap, then
berth-register last) appears in the store with its name, aliases, address and published port; removing the
container removes the record."""
from __future__ import annotations

import ipaddress

import pytest

from discovery.model import ENDPOINTS_PREFIX, EndpointRecord
from tests.conftest import unique_name
from tests.waiting import wait_until
from tests.podman.harness import berth_network, podman  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.root, pytest.mark.podman, pytest.mark.slow]


def test_container_on_a_berth_register_network_is_registered_and_removed(podman, berth_network, agents,  # noqa: F811
                                                                          open_url, tmp_path):
    url = f"sqlite:///{tmp_path / 'berth.db'}"
    agent = agents(url, ttl=30)
    store = open_url(url)
    register = {"type": "berth-register", "agentSocket": agent.socket, "spoolDir": agent.spool_dir,
                "capabilities": {"aliases": True, "portMappings": True}}
    network, _, subnet, _ = berth_network(extra=[register])
    name = unique_name("ctr")
    host_port, cid = podman.run_publishing(name, 80, network=network, command=["sleep", "300"], aliases=["web", "www"])

    def records():
        return [EndpointRecord.from_json(kv.value) for kv in store.get_prefix(ENDPOINTS_PREFIX)[0]]
    [record] = wait_until(records)
    assert record.name == name and record.container_id == cid and record.network == network
    assert set(record.aliases) >= {"web", "www"}
    assert record.addresses == (podman.address(name).split("/")[0],)
    assert ipaddress.ip_address(record.addresses[0]) in ipaddress.ip_network(subnet)
    assert [(p.port, p.host_port, p.protocol) for p in record.ports] == [(80, host_port, "tcp")]
    podman.remove(name)
    assert wait_until(lambda: not records())
