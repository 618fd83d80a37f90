"""Consul's blocking queries and X-Consul-Index as three real clients use them: py-consul (in process),
python-consul 0.7.1 (Debian's, run by the system interpreter) and node-consul 2 (npm), each its own process."""
from __future__ import annotations

import json
import threading
import urllib.request
from collections import defaultdict

import consul
import pytest

from tests.discovery.consul_clients import run_client, start_client
from tests.waiting import wait_until

pytestmark = pytest.mark.service

# the same queries in each client's own words
CALLS = {
    "python-consul": {"services": "catalog.services", "service": "catalog.service", "health": "health.service"},
    "node-consul": {"services": "catalog.service.list", "service": "catalog.service.nodes",
                    "health": "health.service"},
}
EXTERNAL = list(CALLS)


def call(agent, kind: str, what: str, service: str | None = None, **blocking) -> tuple[int, object]:
    """One query through ``kind``'s client (its own process); ``(index, data)``."""
    args: dict = {k: str(v) for k, v in blocking.items()}
    if service is not None:
        if kind == "python-consul":
            args["_args"] = [service]
        else:
            args["service"] = service
    [answer] = run_client(kind, agent.http_port, {"calls": [[CALLS[kind][what], args]]})
    assert "error" not in answer, answer
    return int(answer["index"]), answer["data"]


@pytest.fixture
def agent(store_url, agents):
    return agents(store_url)


def waiting_in_agent(agent, path: str, count: int = 1) -> bool:
    """The agent logged that ``count`` blocking queries on ``path`` are waiting (the query reached it)."""
    return agent.log.read_text().count(f"blocking query {path} waits") >= count


@pytest.mark.parametrize("kind", EXTERNAL)
def test_index_zero_and_an_unseen_index_answer_at_once(agent, kind):
    # wait=10m: a query that blocked would outlast the client's 120 s bound and fail the test
    index, data = call(agent, kind, "services", index=0, wait="10m")
    assert index >= 1 and data == {}
    again, _ = call(agent, kind, "services", index=index + 1000, wait="10m")  # never handed out here
    assert again == index  # nothing changed: the same index names the same (empty) answer


def test_py_consul_index_zero_answers_at_once_on_an_empty_store(agent):
    c = consul.Consul(host="127.0.0.1", port=agent.http_port)
    answer = {}
    worker = threading.Thread(target=lambda: answer.update(r=c.catalog.services(index=0, wait="10m")))
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "index=0 blocked"
    index, data = answer["r"]
    assert int(index) >= 1 and data == {}


@pytest.mark.parametrize("kind", EXTERNAL)
def test_a_blocked_query_answers_when_its_own_answer_changes(agent, kind):
    c = consul.Consul(host="127.0.0.1", port=agent.http_port)
    c.agent.service.register("web", service_id="web1", address="10.5.0.1", port=80)
    index, nodes = call(agent, kind, "service", "web")
    assert [n["ServiceID"] for n in nodes] == ["web1"]
    blocked = start_client(kind, agent.http_port, {"calls": [[CALLS[kind]["service"], {
        "index": str(index), "wait": "5m", **({"_args": ["web"]} if kind == "python-consul" else {"service": "web"})}]]})
    try:
        wait_until(lambda: waiting_in_agent(agent, "/v1/catalog/service/web"), what="the query to block")
        c.agent.service.register("db", service_id="db1", address="10.5.0.9", port=5432)  # another service
        assert c.catalog.service("web")[0] == str(index)  # per-resource: web's index did not move
        c.agent.service.register("web", service_id="web2", address="10.5.0.2", port=80)
        answer = blocked.next_answer(timeout=60)  # 60 s < the 5 min wait: it answered on the change
    finally:
        blocked.stop()
    # had db woken it, the answer would not hold web2
    assert sorted(n["ServiceID"] for n in answer["data"]) == ["web1", "web2"]
    assert int(answer["index"]) > index


def test_py_consul_blocking_follows_each_service_separately(agent):
    c = consul.Consul(host="127.0.0.1", port=agent.http_port)
    c.agent.service.register("web", service_id="web1", address="10.5.0.1", port=80)
    web_index, _ = c.catalog.service("web")
    services_index, _ = c.catalog.services()
    c.agent.service.register("db", service_id="db1", address="10.5.0.9", port=5432)
    assert c.catalog.service("web")[0] == web_index
    assert c.health.service("web")[0] == c.health.service("web")[0]
    assert int(c.catalog.services()[0]) > int(services_index)


def test_node_consul_watch_on_an_empty_store_answers_first_then_follows(agent):
    c = consul.Consul(host="127.0.0.1", port=agent.http_port)
    watch = start_client("node-consul", agent.http_port,
                         {"watch": ["catalog.service.list", {"wait": "10m"}], "changes": 2})
    try:
        first = watch.next_answer(timeout=60)  # before anything is registered: index 0 is answered at once
        assert first["data"] == {} and int(first["index"]) >= 1
        c.agent.service.register("web", service_id="web1", address="10.5.0.1", port=80)
        second = watch.next_answer(timeout=60)
    finally:
        watch.stop()
    assert "web" in second["data"] and int(second["index"]) > int(first["index"])


def _raw_get(port: int, path: str) -> tuple[int, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as response:
        return int(response.headers["X-Consul-Index"]), json.loads(response.read())


def test_one_index_names_one_answer_while_registrations_run(agent, tmp_path):
    """Readers in four processes and threads, writers registering and deregistering: every (query, index)
    pair that any reader saw came with one answer, and no reader saw a query's index go back or be 0."""
    c = consul.Consul(host="127.0.0.1", port=agent.http_port)
    stop_file = tmp_path / "stop"
    readers = [
        start_client("python-consul", agent.http_port, {"until_file": str(stop_file), "calls": [
            ["catalog.services", {}], ["catalog.service", {"_args": ["web"]}],
            ["health.service", {"_args": ["web"]}]]}),
        start_client("node-consul", agent.http_port, {"until_file": str(stop_file), "calls": [
            ["catalog.service.list", {}], ["catalog.service.nodes", {"service": "web"}],
            ["health.service", {"service": "web"}], ["agent.service.list", {}]]}),
    ]
    names = {"python-consul": ["/v1/catalog/services", "/v1/catalog/service/web", "/v1/health/service/web"],
             "node-consul": ["/v1/catalog/services", "/v1/catalog/service/web", "/v1/health/service/web",
                             "/v1/agent/services"]}
    in_process: list[tuple[str, int, object]] = []
    done = threading.Event()

    def py_reader() -> None:
        while not done.is_set():
            for path in ("/v1/catalog/services", "/v1/catalog/service/web", "/v1/agent/services"):
                index, data = _raw_get(agent.http_port, path)
                in_process.append((path, index, data))
            index, data = c.catalog.service("web")
            in_process.append(("/v1/catalog/service/web", int(index), data))

    threads = [threading.Thread(target=py_reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for i in range(120):
            service = "web" if i % 2 else "db"
            c.agent.service.register(service, service_id=f"{service}{i}", address=f"10.6.{i // 250}.{i % 250 + 1}",
                                     port=8000 + i)
            if i % 5 == 4:
                c.agent.service.deregister(f"{service}{i - 2}")
    finally:
        stop_file.touch()
        done.set()
        for thread in threads:
            thread.join(timeout=120)
        answers = {}
        for reader, kind in zip(readers, names):
            answers[kind] = reader.all_answers()
    observations: list[tuple[str, str, int, str]] = []  # (reader, query, index, canonical data)
    for kind, lines in answers.items():
        queries = names[kind]
        for n, line in enumerate(lines):
            assert "error" not in line, line
            observations.append((kind, queries[n % len(queries)], int(line["index"]),
                                 json.dumps(line["data"], sort_keys=True)))
    observations += [("py", q, i, json.dumps(d, sort_keys=True)) for q, i, d in in_process]
    answers_of: dict[tuple[str, int], set[str]] = defaultdict(set)
    last: dict[tuple[str, str], int] = {}
    for reader, query, index, data in observations:
        assert index > 0
        answers_of[(query, index)].add(data)
        if reader != "py":  # the two py threads interleave in one list; each process reads in order
            assert index >= last.get((reader, query), 0), f"{reader} saw {query}'s index go back"
            last[(reader, query)] = index
    conflicting = {k: len(v) for k, v in answers_of.items() if len(v) > 1}
    assert conflicting == {}
    assert len({i for (q, i) in answers_of if q == "/v1/catalog/service/web"}) > 3  # readers did see changes
