"""berth-register driven as a runtime drives it: a subprocess with CNI_* env and the config on stdin."""
from __future__ import annotations

import json

import pytest

from discovery import wire
from discovery.model import EndpointRecord, endpoint_key
from tests.conftest import unique_name
from tests.discovery.conftest import register_config, run_register


@pytest.fixture
def paths(tmp_path):
    return str(tmp_path / "no-agent.sock"), str(tmp_path / "spool")


def test_add_without_agent_spools_and_passes_prev_result_through(paths):
    sock, spool = paths
    config = register_config("btnet", sock, spool, aliases=["www"])
    code, out, err = run_register("ADD", config, container_id="c1", name="web")
    assert code == 0, (out, err)
    assert out["ips"] == config["prevResult"]["ips"] and out["interfaces"] == config["prevResult"]["interfaces"]
    [(path, request)] = wire.spooled(spool)
    assert request["op"] == "add" and request["endpoint"]["name"] == "web"
    assert request["endpoint"]["aliases"] == ["www"] and request["endpoint"]["addresses"] == ["10.88.0.5"]


def test_check_without_agent_answers_from_the_spool(paths):
    sock, spool = paths
    config = register_config("btnet", sock, spool)
    code, out, _ = run_register("CHECK", config, container_id="c1", name="web")
    assert code == 1 and out["code"] == 11
    assert run_register("ADD", config, container_id="c1", name="web")[0] == 0
    assert run_register("CHECK", config, container_id="c1", name="web")[0] == 0
    assert run_register("DEL", config, container_id="c1", name="web")[0] == 0
    code, out, _ = run_register("CHECK", config, container_id="c1", name="web")
    assert code == 1 and out["code"] == 3


@pytest.mark.parametrize("change,code,words", [
    (lambda c, kw: kw.update(name="___"), 7, "K8S_POD_NAME"),
    (lambda c, kw: kw.update(name=None), 4, "K8S_POD_NAME"),
    (lambda c, kw: c.update(runtimeConfig={"aliases": {"btnet": ["-bad-"]}}), 7, "aliases"),
    (lambda c, kw: c["prevResult"]["ips"][0].update(address="not-an-address/24"), 6, "address"),
    (lambda c, kw: c.pop("prevResult"), 7, "prevResult"),
    (lambda c, kw: c.update(runtimeConfig={"portMappings": [{"containerPort": 0, "hostPort": 80}]}), 7, "port"),
    (lambda c, kw: c.update(timeout=0), 7, "timeout"),
    (lambda c, kw: c.update(tags="web"), 7, "tags"),
    (lambda c, kw: c.update(args={"cni": {"service": "not_a_label"}}), 7, "service"),
])
def test_bad_input_is_a_clear_cni_error_and_nothing_is_spooled(paths, change, code, words):
    sock, spool = paths
    config = register_config("btnet", sock, spool)
    kwargs = {"container_id": "c1", "name": "web"}
    change(config, kwargs)
    rc, out, _ = run_register("ADD", config, **kwargs)
    assert rc == 1 and out["code"] == code and words in (out["msg"] + out.get("details", ""))
    assert wire.spooled(spool) == []


@pytest.mark.parametrize("container_name, dns_name", [
    ("my_app", "my-app"), ("Web.V2", "web-v2"), ("db-1", "db-1"), ("_x_", "x"), ("a" * 70, "a" * 63)])
def test_container_names_that_are_not_dns_labels_register_under_their_dns_form(paths, container_name, dns_name):
    """podman accepts names with ``_`` and ``.``; such a container must still start and be found by name."""
    sock, spool = paths
    code, out, err = run_register("ADD", register_config("btnet", sock, spool), container_id="c1",
                                  name=container_name)
    assert code == 0, (out, err)
    [(_, request)] = wire.spooled(spool)
    assert request["endpoint"]["name"] == dns_name
    assert request["endpoint"]["meta"] == ({} if dns_name == container_name else {"containerName": container_name})


def _stored(store, host, eid):
    kv = store.get(endpoint_key(host, eid))
    return EndpointRecord.from_json(kv.value) if kv else None


def test_add_del_check_through_a_running_agent(store_url, agents, open_url):
    agent = agents(store_url)
    store = open_url(store_url)
    net = "btnet"
    config = register_config(net, agent.socket, agent.spool_dir, aliases=["www", "api"],
                             port_mappings=[{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
    config["tags"] = ["prod"]
    config["args"] = {"cni": {"service": "frontend", "tags": ["v2"]}}
    code, out, err = run_register("ADD", config, container_id="cafe01", name="web")
    assert code == 0, err
    record = _stored(store, agent.host, "cafe01/eth0")  # the agent answered after writing
    assert record.name == "web" and record.aliases == ("www", "api") and record.addresses == ("10.88.0.5",)
    assert record.network == net and record.host == agent.host
    assert record.service == "frontend" and record.tags == ("prod", "v2")
    assert (record.ports[0].port, record.ports[0].host_port) == (80, 8080)
    assert run_register("CHECK", config, container_id="cafe01", name="web")[0] == 0
    assert run_register("DEL", config, container_id="cafe01", name="web")[0] == 0
    assert _stored(store, agent.host, "cafe01/eth0") is None
    code, out, _ = run_register("CHECK", config, container_id="cafe01", name="web")
    assert code == 1 and out["code"] == 3
    assert wire.spooled(agent.spool_dir) == []


def test_spooled_registrations_are_delivered_when_the_agent_starts(store_url, agents, open_url):
    agent = agents(store_url, start=False)
    store = open_url(store_url)
    config = register_config("btnet", agent.socket, agent.spool_dir)
    for cid, name in (("aa01", "one"), ("aa02", "two"), ("aa03", "three")):
        assert run_register("ADD", config, container_id=cid, name=name)[0] == 0
    assert run_register("DEL", config, container_id="aa02", name="two")[0] == 0
    assert len(wire.spooled(agent.spool_dir)) == 4
    agent.start()
    assert _stored(store, agent.host, "aa01/eth0").name == "one"
    assert _stored(store, agent.host, "aa03/eth0").name == "three"
    assert _stored(store, agent.host, "aa02/eth0") is None
    assert wire.spooled(agent.spool_dir) == []


def test_gc_removes_attachments_not_in_the_valid_list(store_url, agents, open_url):
    agent = agents(store_url)
    store = open_url(store_url)
    config = register_config("btnet", agent.socket, agent.spool_dir)
    other = register_config("btother", agent.socket, agent.spool_dir)
    for cid in ("bb01", "bb02"):
        assert run_register("ADD", config, container_id=cid, name=f"n{cid}")[0] == 0
    assert run_register("ADD", other, container_id="bb03", name="elsewhere")[0] == 0
    gc = {**register_config("btnet", agent.socket, agent.spool_dir, version="1.1.0"),
          "cni.dev/valid-attachments": [{"containerID": "bb01", "ifname": "eth0"}]}
    gc.pop("prevResult")
    code, out, err = run_register("GC", gc, netns="")
    assert code == 0, (out, err)
    assert _stored(store, agent.host, "bb01/eth0") is not None
    assert _stored(store, agent.host, "bb02/eth0") is None
    assert _stored(store, agent.host, "bb03/eth0") is not None  # another network's GC does not touch it


def test_agent_rejects_a_bad_record_and_writes_nothing(store_url, agents, open_url):
    agent = agents(store_url)
    store = open_url(store_url)
    bad = {"op": "add", "netns": "", "endpoint": {"id": "x/eth0", "name": "ok", "addresses": ["10.0.0.1", "nope"]}}
    reply = wire.call(agent.socket, bad)
    assert reply["ok"] is False and reply["code"] == 7 and "addresses" in reply["error"]
    assert store.get_prefix("/berth/endpoints/")[0] == [] and store.get_prefix("/skydns/")[0] == []
    assert wire.call(agent.socket, {"op": "check", "id": "x/eth0"})["registered"] is False


def test_a_gc_removes_only_its_own_faces_registrations_on_a_network_both_faces_name_alike(store_url, agents,
                                                                                           open_url):
    """A CNI network and a Docker network called the same: berth-register's GC must not take the Docker plugin's
    names (registered over the socket as the plugin does), nor a Docker-face GC the CNI ones."""
    from docker_plugin.names import add_request, build_record
    agent = agents(store_url)
    store = open_url(store_url)
    network_id = "5e" * 32

    def docker_name(container_id: str, name: str, older_plugin: bool = False) -> str:
        container = {"Id": container_id, "Name": f"/{name}",
                     "NetworkSettings": {"Networks": {"btshared": {"IPAddress": "10.89.0.7"}}}}
        record = build_record(container, network_id, "btshared")
        request = add_request(record, "")
        if older_plugin:  # a plugin from before faces (or its spool) says none
            request.pop("face")
        assert wire.call(agent.socket, request)["ok"]
        return record.id

    web = docker_name("dd01" * 16, "web")
    older = docker_name("dd04" * 16, "old", older_plugin=True)
    config = register_config("btshared", agent.socket, agent.spool_dir)
    for cid in ("cc01", "cc02"):
        assert run_register("ADD", config, container_id=cid, name=f"n{cid}")[0] == 0
    gc = {**register_config("btshared", agent.socket, agent.spool_dir, version="1.1.0"),
          "cni.dev/valid-attachments": [{"containerID": "cc02", "ifname": "eth0"}]}
    gc.pop("prevResult")
    code, out, err = run_register("GC", gc, netns="")
    assert code == 0, (out, err)
    assert _stored(store, agent.host, "cc01/eth0") is None and _stored(store, agent.host, "cc02/eth0") is not None
    assert _stored(store, agent.host, web).name == "web"  # the runtime's list names no Docker container
    assert _stored(store, agent.host, older).name == "old"

    api = docker_name("dd02" * 16, "api")
    reply = wire.call(agent.socket, {"op": "gc", "network": "btshared", "valid": [["dd02" * 16, network_id[:12]]],
                                     "face": "docker"})
    assert sorted(reply["removed"]) == sorted([web, older])
    assert _stored(store, agent.host, "cc02/eth0") is not None and _stored(store, agent.host, api) is not None

    refused = wire.call(agent.socket, {**add_request(build_record(
        {"Id": "dd03" * 16, "Name": "/x", "NetworkSettings": {"Networks": {"btshared": {"IPAddress": "10.89.0.9"}}}},
        network_id, "btshared"), ""), "face": "podman"})
    assert refused["ok"] is False and refused["code"] == 7 and "face" in refused["error"]
    assert _stored(store, agent.host, f"{'dd03' * 16}/{network_id[:12]}") is None
