"""The agent's durability contract (``discovery/agent.py`` docstring), clause by clause, by killing real processes:
the agent (SIGKILL), a single etcd (SIGSTOP/SIGCONT, SIGKILL and restart), a three-member etcd's leader."""
from __future__ import annotations

import json
import signal
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from discovery.model import EndpointRecord
from discovery.publish import host_prefix
from discovery.view import DiscoveryView
from tests.discovery.conftest import LEASE_TTL
from tests.waiting import wait_until

RECOVERY = 30.0  # seconds the store may take to hold everything once it answers again (a hang guard)
MANY = 300       # more endpoints than one transaction may write (128 operations), so rewrites must be split


def register(port: int, service_id: str) -> int:
    """PUT /v1/agent/service/register as a Consul client does; the HTTP status."""
    body = json.dumps({"ID": service_id, "Name": "bt-durable", "Address": "10.77.0.1", "Port": 8080}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/agent/service/register", data=body, method="PUT")
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status


def register_all(agent, ids: list[str], progress: list | None = None) -> list[int]:
    def one(service_id: str) -> int:
        status = register(agent.http_port, service_id)
        if progress is not None:
            progress.append(service_id)
        return status
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, ids))


def stored(store, host: str) -> dict[str, int]:
    """The endpoint ids in the store for ``host`` → the lease each lives under."""
    items, _ = store.get_prefix(host_prefix(host))
    return {EndpointRecord.from_json(kv.value).id: kv.lease for kv in items}


def ids(tag: str, count: int) -> list[str]:
    return [f"bt-{tag}-{index}" for index in range(count)]


def wait_all_stored(store, host: str, wanted: list[str], timeout: float = RECOVERY) -> dict[str, int]:
    def complete():
        try:
            held = stored(store, host)
        except Exception:  # the store is still coming back
            return None
        return held if set(wanted) <= set(held) else None
    return wait_until(complete, timeout=timeout, what=f"all {len(wanted)} acknowledged registrations in the store")


# -- clause 1 and 3: acknowledged registrations outlive the store's outage ---------------------------------

@pytest.mark.etcd
@pytest.mark.slow
@pytest.mark.parametrize("outage", ["sigstop", "restart"])
def test_every_acknowledged_registration_is_in_etcd_after_an_outage(outage, agents, open_url):
    """etcd stalls (SIGSTOP) or dies and restarts for two lease TTLs — the agent's lease expires in it — while
    registrations keep coming; every one answered 200 is in etcd soon after etcd answers again."""
    from tests.etcd_harness import start_etcd
    with start_etcd(1) as cluster:
        agent = agents(cluster.url)
        before, during = ids("before", 40), ids("during", MANY)
        assert set(register_all(agent, before)) == {200}
        member = cluster.members[0]
        if outage == "sigstop":
            member.process.send_signal(signal.SIGSTOP)
        else:
            member.kill()
        outage_over = threading.Event()
        try:
            assert set(register_all(agent, during)) == {200}
            outage_over.wait(2 * LEASE_TTL)  # the outage's length is the condition: the lease must run out
        finally:
            if outage == "sigstop":
                member.process.send_signal(signal.SIGCONT)
            else:
                cluster.restart(0)
        store = open_url(cluster.url)
        held = wait_all_stored(store, agent.host, before + during)
        assert len(set(held.values())) == 1  # all under one lease, the agent's live one
        store.keep_alive(next(iter(held.values())))


@pytest.mark.etcd
@pytest.mark.slow
def test_registrations_while_a_three_member_etcd_loses_its_leader(agents, open_url):
    from tests.etcd_harness import start_etcd
    with start_etcd(3) as cluster:
        agent = agents(cluster.url)
        wanted = ids("election", MANY)
        progress: list[str] = []
        results: list[int] = []
        worker = threading.Thread(target=lambda: results.extend(register_all(agent, wanted, progress)))
        worker.start()
        try:
            wait_until(lambda: len(progress) >= MANY // 4, timeout=60, what="registrations under way")
            leader = cluster.leader_index()
            cluster.kill(leader)  # SIGKILL mid-stream: an election follows
        finally:
            worker.join(timeout=300)
        assert results == [200] * MANY
        store = open_url(cluster.url)
        wait_all_stored(store, agent.host, wanted)
        cluster.restart(leader)


# -- clause 5: a restarted agent is ready only with everything written -----------------------------------

def test_agent_killed_after_its_lease_ran_out_rewrites_everything_before_ready(store_url, agents, open_url):
    store = open_url(store_url)
    agent = agents(store_url)
    wanted = ids("restart", MANY)
    assert set(register_all(agent, wanted)) == {200}
    old_lease = set(stored(store, agent.host).values())
    agent.kill()  # SIGKILL: only the lease removes the records
    wait_until(lambda: not stored(store, agent.host), timeout=RECOVERY, what="the records expiring")
    agent.start()  # returns at the agent's "ready" line
    held = stored(store, agent.host)  # no waiting: ready means written
    assert set(held) == set(wanted)
    assert len(set(held.values())) == 1 and not set(held.values()) & old_lease


# -- clause 6: a restart within the TTL leaves no gap -----------------------------------------------------

def test_agent_restarted_within_the_ttl_keeps_every_record_in_the_store(store_url, agents, open_url):
    store = open_url(store_url)
    agent = agents(store_url)
    wanted = ids("quick", MANY)
    assert set(register_all(agent, wanted)) == {200}
    (lease,) = set(stored(store, agent.host).values())
    removed: list[str] = []
    with DiscoveryView(store) as view:
        view.subscribe(lambda change: removed.extend(change.removed))
        agent.kill()
        agent.start()
        held = stored(store, agent.host)
        assert set(held) == set(wanted) and set(held.values()) == {lease}  # the same lease, kept alive
        threading.Event().wait(1.5 * LEASE_TTL)  # past the old run's last renewal + TTL: a lapse would show
        assert set(stored(store, agent.host)) == set(wanted)
    assert removed == []


@pytest.mark.etcd
def test_agent_started_while_etcd_is_down_says_ready_only_with_everything_written(agents, open_url):
    from tests.etcd_harness import start_etcd
    with start_etcd(1) as cluster:
        agent = agents(cluster.url)
        wanted = ids("down", MANY)
        assert set(register_all(agent, wanted)) == {200}
        agent.kill()
        cluster.kill(0)
        starter = threading.Thread(target=agent.start, kwargs={"timeout": 120})
        starter.start()  # returns at the agent's "ready" line
        try:
            wait_until(lambda: "taking a lease failed" in agent.log.read_text(), timeout=RECOVERY,
                       what="the agent finding the store down")
            assert starter.is_alive()  # not ready: nothing can be written
        finally:
            cluster.restart(0)
            starter.join(120)
        assert agent.proc is not None and agent.proc.poll() is None
        held = stored(open_url(cluster.url), agent.host)  # no waiting: ready means written
        assert set(held) == set(wanted) and len(set(held.values())) == 1
