"""SkyDNS interop: the keys CoreDNS's etcd plugin reads, under the agent's lease, following health."""
from __future__ import annotations

import json

import consul

from discovery.model import endpoint_key
from tests.discovery.conftest import register_config, run_register


def skydns(store, prefix="/skydns/internal/berth/"):
    return {kv.key: (json.loads(kv.value), kv.lease) for kv in store.get_prefix(prefix)[0]}


def test_skydns_keys_follow_registrations_and_health(store_url, agents, open_url):
    extra = () if store_url.startswith("etcd:") else ("--skydns", "on")  # auto: on with etcd
    agent = agents(store_url, extra=extra)
    store = open_url(store_url)
    config = register_config("btnet", agent.socket, agent.spool_dir, address="10.77.0.9/24", aliases=["www"],
                             port_mappings=[{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
    assert run_register("ADD", config, container_id="ca01", name="web")[0] == 0
    keys = skydns(store)
    lease = store.get(endpoint_key(agent.host, "ca01/eth0")).lease
    assert {k.rsplit("/", 1)[0] for k in keys} == {"/skydns/internal/berth/web", "/skydns/internal/berth/www"}
    for value, key_lease in keys.values():
        assert value["host"] == "10.77.0.9" and value["port"] == 80 and value["ttl"] > 0
        assert key_lease == lease  # they vanish with the agent, like the record

    c = consul.Consul(port=agent.http_port)
    c.agent.service.register("api", service_id="api1", address="10.77.0.10", port=9000,
                             check=consul.Check.ttl("30s"))
    assert not skydns(store, "/skydns/internal/berth/api/")  # critical until the application says otherwise
    c.agent.check.ttl_pass("service:api1")
    [(value, _)] = skydns(store, "/skydns/internal/berth/api/").values()
    assert value["host"] == "10.77.0.10" and value["port"] == 9000
    c.agent.check.ttl_fail("service:api1")
    assert not skydns(store, "/skydns/internal/berth/api/")

    assert run_register("DEL", config, container_id="ca01", name="web")[0] == 0
    assert skydns(store) == {}


def test_no_skydns_keys_with_sqlite_by_default(agents, open_url, tmp_path):
    url = f"sqlite:///{tmp_path / 'b.db'}"
    agent = agents(url)
    store = open_url(url)
    config = register_config("btnet", agent.socket, agent.spool_dir)
    assert run_register("ADD", config, container_id="cb01", name="web")[0] == 0
    assert store.get(endpoint_key(agent.host, "cb01/eth0")) is not None
    assert store.get_prefix("/skydns/")[0] == []
