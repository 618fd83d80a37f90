"""The agent's Consul-compatible HTTP API, driven by py-consul itself; health checks against real listeners."""
from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import consul
import consul.exceptions
import pytest

from discovery.model import EndpointRecord, Health, endpoint_key
from tests.waiting import wait_until


@pytest.fixture
def api(store_url, agents):
    agent = agents(store_url)
    return agent, consul.Consul(host="127.0.0.1", port=agent.http_port)


def _passing(client, name):
    return client.health.service(name, passing=True)[1]


def _status(client, name):
    entries = client.health.service(name)[1]
    return [c["Status"] for e in entries for c in e["Checks"]]


def test_register_list_catalog_deregister(api, open_url, store_url):
    agent, c = api
    store = open_url(store_url)
    assert c.agent.service.register("web", service_id="web1", address="10.2.0.5", port=8080, tags=["v1", "blue"],
                                    meta={"team": "a"})
    assert c.agent.service.register("web", service_id="web2", address="10.2.0.6", port=8080, tags=["v2"])
    services = c.agent.services()
    assert services["web1"]["Service"] == "web" and services["web1"]["Port"] == 8080
    assert services["web1"]["Tags"] == ["v1", "blue"] and services["web1"]["Meta"] == {"team": "a"}
    index, catalog = c.catalog.services()
    assert catalog["web"] == ["blue", "v1", "v2"] and int(index) > 0
    _, nodes = c.catalog.service("web")
    assert sorted((n["ServiceID"], n["ServiceAddress"], n["ServicePort"]) for n in nodes) == [
        ("web1", "10.2.0.5", 8080), ("web2", "10.2.0.6", 8080)]
    assert {n["Node"] for n in nodes} == {agent.host}
    _, tagged = c.catalog.service("web", tag="v2")
    assert [n["ServiceID"] for n in tagged] == ["web2"]
    stored = EndpointRecord.from_json(store.get(endpoint_key(agent.host, "web1")).value)
    assert stored.service == "web" and stored.addresses == ("10.2.0.5",) and stored.tags == ("v1", "blue")
    assert len(_passing(c, "web")) == 2  # no checks: passing, as in Consul
    assert c.agent.service.deregister("web1")
    assert "web1" not in c.agent.services()
    assert [n["ServiceID"] for n in c.catalog.service("web")[1]] == ["web2"]
    assert store.get(endpoint_key(agent.host, "web1")) is None
    assert c.agent.service.deregister("never-registered") is False  # Consul answers 404


@pytest.mark.parametrize("kwargs,words", [
    ({"name": "bad_name"}, "name"),
    ({"name": "web", "address": "300.1.2.3"}, "addresses"),
    ({"name": "web", "check": {"TTL": "0s"}}, "TTL"),
    ({"name": "web", "check": {"TTL": "-3s"}}, "TTL"),
])
def test_bad_registration_is_rejected_and_nothing_is_written(api, open_url, store_url, kwargs, words):
    agent, c = api
    store = open_url(store_url)
    with pytest.raises(consul.exceptions.BadRequest, match=words):
        c.agent.service.register(**kwargs)
    assert c.agent.services() == {}
    assert store.get_prefix("/berth/endpoints/")[0] == [] and store.get_prefix("/skydns/")[0] == []


def test_tcp_check_goes_critical_when_the_listener_goes_away(api, open_url, store_url):
    agent, c = api
    store = open_url(store_url)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    try:
        c.agent.service.register("db", service_id="db1", address="127.0.0.1", port=port,
                                 check=consul.Check.tcp("127.0.0.1", port, "200ms", timeout="1s"))
        assert wait_until(lambda: _passing(c, "db"))
    finally:
        listener.close()
    assert wait_until(lambda: _status(c, "db") == ["critical"])
    assert _passing(c, "db") == []
    key = endpoint_key(agent.host, "db1")
    assert wait_until(lambda: EndpointRecord.from_json(store.get(key).value).health is Health.CRITICAL)
    checks = c.agent.checks()
    assert checks["service:db1"]["Status"] == "critical" and "TCP connect" in checks["service:db1"]["Output"]


class _Switchable(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_http_check_follows_the_status_code(api):
    agent, c = api
    handler = type("Handler", (_Switchable,), {"status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/health"
        c.agent.service.register("api", service_id="api1", address="127.0.0.1", port=server.server_address[1],
                                 check=consul.Check.http(url, "200ms"))
        assert wait_until(lambda: _status(c, "api") == ["passing"])
        handler.status = 429
        assert wait_until(lambda: _status(c, "api") == ["warning"])
        handler.status = 503
        assert wait_until(lambda: _status(c, "api") == ["critical"])
    finally:
        server.shutdown()
        server.server_close()


def test_ttl_check_is_driven_by_the_application_and_expires(api):
    agent, c = api
    c.agent.service.register("worker", service_id="w1", address="10.3.0.1", check=consul.Check.ttl("3s"))
    assert _status(c, "worker") == ["critical"]  # Consul's initial state for a check
    assert c.agent.check.ttl_pass("service:w1", "all good")
    assert _status(c, "worker") == ["passing"] and len(_passing(c, "worker")) == 1
    assert c.agent.check.ttl_warn("service:w1")
    assert _status(c, "worker") == ["warning"] and _passing(c, "worker") == []
    assert c.agent.check.ttl_pass("service:w1")
    assert wait_until(lambda: _status(c, "worker") == ["critical"])  # no refresh within the TTL
    assert c.agent.check.ttl_fail("service:w1", "broken") and _status(c, "worker") == ["critical"]
    assert c.agent.check.ttl_pass("no-such-check") is False  # 404, as Consul


def test_deregister_critical_service_after(api, open_url, store_url):
    agent, c = api
    store = open_url(store_url)
    check = {**consul.Check.ttl("500ms"), "DeregisterCriticalServiceAfter": "1s"}
    c.agent.service.register("flaky", service_id="f1", address="10.3.0.2", check=check)
    c.agent.service.register("steady", service_id="s1", address="10.3.0.3")
    assert wait_until(lambda: "f1" not in c.agent.services())
    assert store.get(endpoint_key(agent.host, "f1")) is None
    assert "s1" in c.agent.services()


def test_blocking_query_returns_when_the_catalog_changes(api):
    agent, c = api
    c.agent.service.register("cache", service_id="cache1", address="10.4.0.1", port=6379)
    assert c.agent.service_definition("cache1")["Port"] == 6379
    index, nodes = c.catalog.service("cache")
    assert [n["ServiceID"] for n in nodes] == ["cache1"]
    answer = {}
    waiter = threading.Thread(target=lambda: answer.update(r=c.catalog.service("cache", index=index, wait="60s")))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive()  # nothing changed yet: the query is still waiting
    c.agent.service.register("cache", service_id="cache2", address="10.4.0.2", port=6379)
    waiter.join(timeout=60)
    new_index, nodes = answer["r"]
    assert int(new_index) > int(index) and sorted(n["ServiceID"] for n in nodes) == ["cache1", "cache2"]
