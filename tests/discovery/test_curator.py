"""Curator's service-discovery layout (``discovery/curator.py``): the pure mapping, then a real Curator client —
``CuratorWatch.java``, compiled once per session against Debian's jars — reading what real agents on a real
ZooKeeper publish: instances that come, go, fail their health check, and vanish with a SIGKILLed agent's session."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from discovery.curator import check_base_path, instance_id, instance_json, plan_instances
from discovery.model import EndpointRecord, Health, PortBinding
from tests.conftest import unique_name
from tests.waiting import wait_until
from tests.zk_harness import zk_server  # noqa: F401  (fixture)

JARS = Path("/usr/share/java")
CLASSPATH_JARS = ("curator-x-discovery", "curator-recipes", "curator-framework", "curator-client", "zookeeper",
                  "zookeeper-jute", "jackson-core", "jackson-databind", "jackson-annotations", "guava", "slf4j-api",
                  "slf4j-nop")
SOURCE = Path(__file__).parent / "curator" / "CuratorWatch.java"
SESSION = 4.0   # the agents' ZooKeeper session timeout (the server's least: two 2 s ticks)
WAIT = 30.0     # hang guard for what a watcher should see
CURATOR_FIELDS = {"name", "id", "address", "port", "sslPort", "payload", "registrationTimeUTC", "serviceType",
                  "uriSpec", "enabled"}


# -- pure --------------------------------------------------------------------------------------------------

def record(endpoint_id: str, health: Health = Health.PASSING, **fields) -> EndpointRecord:
    return EndpointRecord(id=endpoint_id, name="bt-web", addresses=("10.0.0.5",), host="h1", health=health, **fields)


def test_instance_json_carries_exactly_curators_fields():
    data = json.loads(instance_json(record("a", ports=(PortBinding(8080),)), "192.0.2.1", 1234))
    assert set(data) == CURATOR_FIELDS
    assert data == {"name": "bt-web", "id": instance_id("h1", "a"), "address": "10.0.0.5", "port": 8080,
                    "sslPort": None, "payload": None, "registrationTimeUTC": 1234, "serviceType": "DYNAMIC",
                    "uriSpec": None, "enabled": True}


def test_an_endpoint_without_ports_or_addresses_gets_null_port_and_the_node_address():
    bare = EndpointRecord(id="b", name="bt-web", addresses=(), ports=(PortBinding(53, "udp"),), host="h1")
    assert json.loads(instance_json(bare, "192.0.2.1", 0))["address"] == "192.0.2.1"
    assert json.loads(instance_json(record("c"), "192.0.2.1", 0))["port"] is None


def test_instance_ids_are_stable_per_host_and_endpoint():
    assert instance_id("h1", "a") == instance_id("h1", "a")
    assert len({instance_id("h1", "a"), instance_id("h2", "a"), instance_id("h1", "b")}) == 3


def test_critical_endpoints_are_not_planned_and_warning_ones_are():
    records = {"k1": record("a"), "k2": record("b", Health.WARNING), "k3": record("c", Health.CRITICAL)}
    planned = plan_instances(records, "/services")
    assert sorted(r.id for r in planned.values()) == ["a", "b"]
    assert all(path.startswith("/services/bt-web/") for path in planned)


@pytest.mark.parametrize("bad", ["services", "/", "/a//b", "/a/./b", "/a/..", "/services/"])
def test_a_bad_base_path_is_refused(bad):
    with pytest.raises(ValueError, match="curator base path"):
        check_base_path(bad)


def test_publishing_on_a_store_other_than_zk_is_refused(tmp_path):
    from discovery.curator import CuratorPublisher
    from store.api import open_store
    with open_store(f"sqlite:///{tmp_path / 'berth.db'}") as store:
        with pytest.raises(ValueError, match="needs a zk:// store"):
            CuratorPublisher(store, "h1")


# -- a real Curator client ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def curator_classes():
    """``CuratorWatch`` compiled against Debian's libcurator-discovery-java (``make apt`` installs it)."""
    missing = [name for name in CLASSPATH_JARS if not (JARS / f"{name}.jar").exists()]
    assert not missing and shutil.which("javac"), f"install libcurator-discovery-java and a JDK: missing {missing}"
    classpath = ":".join(str(JARS / f"{name}.jar") for name in CLASSPATH_JARS)
    out = Path(tempfile.mkdtemp(prefix="bt-curator-"))
    try:
        subprocess.run(["javac", "-d", str(out), "-cp", classpath, str(SOURCE)], check=True, capture_output=True,
                       timeout=120)
        yield f"{out}:{classpath}"
    finally:
        shutil.rmtree(out, ignore_errors=True)


class CuratorWatch:
    """The Java client in its own process group; ``instances`` is the last set it printed."""

    def __init__(self, classpath: str, connect: str, base_path: str, service: str) -> None:
        self.proc = subprocess.Popen(["java", "-Xshare:auto", "-cp", classpath, "CuratorWatch", connect, base_path,
                                      service], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def instances(self) -> list[dict] | None:
        printed = [line for line in self.lines if line.startswith("instances ")]
        return json.loads(printed[-1][len("instances "):]) if printed else None

    def wait_for(self, ids: set[str], what: str, timeout: float = WAIT) -> list[dict]:
        def seen():
            if self.proc.poll() is not None:
                raise AssertionError(f"CuratorWatch exited: {self.proc.stderr.read()[-3000:]}")
            current = self.instances
            return [current] if current is not None and {i["id"] for i in current} == ids else None
        return wait_until(seen, timeout=timeout, interval=0.05,
                          what=f"Curator to see {what}")[0]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def curator_watch(curator_classes):
    made: list[CuratorWatch] = []

    def _start(connect: str, base_path: str, service: str) -> CuratorWatch:
        watch = CuratorWatch(curator_classes, connect, base_path, service)
        made.append(watch)
        return watch
    yield _start
    for watch in made:
        watch.kill()


def http(agent, method: str, path: str, body: dict | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{agent.http_port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def register(agent, service_id: str, address: str, port: int, **extra) -> None:
    body = {"ID": service_id, "Name": "bt-web", "Address": address, "Port": port, **extra}
    assert http(agent, "PUT", "/v1/agent/service/register", body) == 200


@pytest.fixture
def zk_agents(zk_server, agents):
    """(``start(session=SECONDS)`` → an agent on zk:// publishing under a fresh base path, the ZooKeeper hosts,
    that base path)."""
    base = f"/{unique_name('cur')}/services"
    root = f"{zk_server.url}/{unique_name('root')}"

    def _start(session: float = SESSION):
        return agents(f"{root}?session={session:g}", extra=("--curator-base-path", base))
    return _start, zk_server.url[len("zk://"):], base


@pytest.mark.zk
@pytest.mark.service
def test_curator_client_sees_instances_come_go_and_fail_health(zk_agents, curator_watch):
    start, hosts, base = zk_agents
    agent = start()
    watch = curator_watch(hosts, base, "bt-web")
    register(agent, "web-1", "10.0.0.1", 8001)
    register(agent, "web-2", "10.0.0.2", 8002)
    seen = watch.wait_for({instance_id(agent.host, "web-1"), instance_id(agent.host, "web-2")}, "two instances")
    first = next(i for i in seen if i["id"] == instance_id(agent.host, "web-1"))
    assert set(first) == CURATOR_FIELDS  # Curator read every field and wrote them back
    assert first | {"registrationTimeUTC": 0} == {
        "name": "bt-web", "id": instance_id(agent.host, "web-1"), "address": "10.0.0.1", "port": 8001,
        "sslPort": None, "payload": None, "registrationTimeUTC": 0, "serviceType": "DYNAMIC", "uriSpec": None,
        "enabled": True}

    register(agent, "web-3", "10.0.0.3", 8003, Check={"TTL": "60s"})  # a TTL check starts critical
    register(agent, "web-4", "10.0.0.4", 8004)
    assert http(agent, "PUT", "/v1/agent/service/deregister/web-1") == 200
    two_and_four = {instance_id(agent.host, "web-2"), instance_id(agent.host, "web-4")}
    watch.wait_for(two_and_four, "web-4 added, web-1 removed, web-3 (critical) absent")
    assert http(agent, "PUT", "/v1/agent/check/pass/service:web-3") == 200
    watch.wait_for(two_and_four | {instance_id(agent.host, "web-3")}, "web-3 once its check passes")
    assert http(agent, "PUT", "/v1/agent/check/fail/service:web-3") == 200
    watch.wait_for(two_and_four, "web-3 gone again once its check fails")


@pytest.mark.zk
@pytest.mark.service
def test_a_sigkilled_agents_instances_vanish_with_its_session(zk_agents, curator_watch):
    start, hosts, base = zk_agents
    doomed, survivor = start(), start()
    watch = curator_watch(hosts, base, "bt-web")
    for index, agent in enumerate((doomed, doomed, survivor)):
        register(agent, f"web-{index}", f"10.0.1.{index}", 9000 + index)
    kept = {instance_id(survivor.host, "web-2")}
    watch.wait_for({instance_id(doomed.host, "web-0"), instance_id(doomed.host, "web-1")} | kept, "three instances")
    doomed.kill()  # SIGKILL: no session close; only the session timeout removes its nodes
    # the guard: the session timeout, plus the server's expiry tick and a loaded machine's slack
    watch.wait_for(kept, f"the killed agent's instances gone after its {SESSION:g} s session", timeout=4 * SESSION)


@pytest.mark.zk
@pytest.mark.service
@pytest.mark.slow
def test_instances_come_back_after_the_agents_session_expired(zk_agents, curator_watch):
    """The agent is stopped (SIGSTOP) past its session timeout: ZooKeeper expires the session and its nodes; on
    SIGCONT kazoo gets a new session and the publisher writes every instance again."""
    start, hosts, base = zk_agents
    agent = start()
    watch = curator_watch(hosts, base, "bt-web")
    register(agent, "web-1", "10.0.2.1", 9100)
    mine = {instance_id(agent.host, "web-1")}
    watch.wait_for(mine, "the instance")
    os.killpg(agent.proc.pid, signal.SIGSTOP)
    try:
        watch.wait_for(set(), "the frozen agent's instance gone with its expired session", timeout=4 * SESSION)
    finally:
        os.killpg(agent.proc.pid, signal.SIGCONT)
    watch.wait_for(mine, "the instance back under the agent's new session")


@pytest.mark.zk
@pytest.mark.service
def test_an_agent_restarted_at_once_takes_its_instances_over_without_a_gap(zk_agents, curator_watch):
    """SIGKILL, then a restart within the session timeout: the old session still owns the nodes (and would take
    them along when it expires), so the new agent replaces each in one multi: the node is never absent from
    ZooKeeper. (ZooKeeper reports the multi as a delete and a create, so Curator's ServiceCache may drop the
    instance for the moment it takes to read it again: what it shows at the end is checked, not each poll.)"""
    from kazoo.client import KazooClient

    start, hosts, base = zk_agents
    agent = start(session=20.0)  # long enough that the old session surely outlives the restart
    watch = curator_watch(hosts, base, "bt-web")
    register(agent, "web-1", "10.0.3.1", 9200)
    mine = instance_id(agent.host, "web-1")
    watch.wait_for({mine}, "the instance")
    client = KazooClient(hosts=hosts)
    client.start(timeout=30)
    path = f"{base}/bt-web/{mine}"
    missing, sampling = [], threading.Event()

    def sample():  # as often as ZooKeeper answers: a delete and a create made apart would show here
        while not sampling.is_set():
            if client.exists(path) is None:
                missing.append(time.monotonic())

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        old_owner = client.exists(path).ephemeralOwner
        sampler.start()
        agent.kill()
        agent.start()
        wait_until(lambda: (stat := client.exists(path)) and stat.ephemeralOwner not in (0, old_owner),
                   what="the restarted agent's session owning the instance")
        sampling.set()
        sampler.join(timeout=10)
        assert missing == [], f"the instance's node was absent {len(missing)} times during the restart"
        watch.wait_for({mine}, "the instance, under the new session, in Curator's view")
    finally:
        sampling.set()
        client.stop()
        client.close()


@pytest.mark.zk
@pytest.mark.service
def test_an_instance_node_deleted_or_changed_by_someone_else_is_repaired(zk_agents):
    from kazoo.client import KazooClient

    start, hosts, base = zk_agents
    agent = start()  # --resync 0.5: every node read back twice a second
    register(agent, "web-1", "10.0.4.1", 9300)
    path = f"{base}/bt-web/{instance_id(agent.host, 'web-1')}"
    client = KazooClient(hosts=hosts)
    client.start(timeout=30)
    try:
        original = wait_until(lambda: client.exists(path) and client.get(path)[0], what="the instance node")
        client.delete(path)
        wait_until(lambda: client.exists(path) and client.get(path)[0] == original, what="the node rewritten")
        client.set(path, b'{"name": "bt-web", "address": "192.0.2.66"}')
        wait_until(lambda: client.get(path)[0] == original, what="the node's data repaired")
    finally:
        client.stop()
        client.close()
