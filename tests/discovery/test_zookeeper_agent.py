"""``berth agent`` and ``berth dns`` on zk://: the agent's own tests again on ZooKeeper, a registration answered
by DNS from ZooKeeper, and registrations that keep coming while a three-member ensemble loses its leader, none
acknowledged lost."""
from __future__ import annotations

import json
import threading
import urllib.request

import dns.message
import dns.query
import pytest
from kazoo.client import KazooClient

from discovery import curator

from tests.conftest import unique_name
from tests.discovery import test_agent, test_register
from tests.discovery.test_durability import MANY, ids, register_all, wait_all_stored
from tests.dnsd.conftest import DnsProcess
from tests.waiting import wait_until
from tests.zk_harness import zk_ensemble, zk_server  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.zk, pytest.mark.service]


def addresses(port: int, name: str) -> list[str]:
    answer = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=3)
    return sorted(r.address for rrset in answer.answer for r in rrset)


def consul(agent, method: str, path: str, body: dict | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{agent.http_port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def test_a_registration_on_zk_is_answered_by_berth_dns(zk_server, agents):
    url = f"{zk_server.url}/{unique_name('root')}"
    agent = agents(url)
    server = DnsProcess(["--store", url, "--no-forward"])
    try:
        name = "bt-zkweb.service.berth.internal"
        body = {"ID": "zkweb-1", "Name": "bt-zkweb", "Address": "10.0.9.1", "Port": 80}
        assert consul(agent, "PUT", "/v1/agent/service/register", body) == 200
        wait_until(lambda: addresses(server.port, name) == ["10.0.9.1"], what=f"{name} answered from zk")
        assert consul(agent, "PUT", "/v1/agent/service/deregister/zkweb-1") == 200
        wait_until(lambda: addresses(server.port, name) == [], what=f"{name} gone")
    finally:
        server.stop()


@pytest.mark.slow
def test_registrations_while_a_three_member_zookeeper_loses_its_leader(zk_ensemble, agents, open_url):
    url = f"{zk_ensemble.url}/{unique_name('root')}"
    agent = agents(url)
    wanted = ids("zk-election", MANY)
    progress: list[str] = []
    results: list[int] = []
    worker = threading.Thread(target=lambda: results.extend(register_all(agent, wanted, progress)))
    worker.start()
    try:
        wait_until(lambda: len(progress) >= MANY // 4, timeout=60, what="registrations under way")
        zk_ensemble.kill(zk_ensemble.leader_index())  # SIGKILL mid-stream: an election follows
    finally:
        worker.join(timeout=300)
    assert results == [200] * MANY
    held = wait_all_stored(open_url(url), agent.host, wanted)
    assert len(set(held.values())) == 1  # all under the agent's one live lease
    client = KazooClient(hosts=zk_ensemble.url[len("zk://"):])
    client.start(timeout=30)
    try:  # and every one as a Curator instance, in the agent's session that lived through the election
        wait_until(lambda: {curator.instance_id(agent.host, i) for i in wanted}
                   == set(client.get_children("/services/bt-durable")), what="every Curator instance")
    finally:
        client.stop()
        client.close()


# The whole discovery suite passes with zk:// added to its store_url fixture, but takes about four minutes more;
# these are the agent's lease, anti-entropy and CNI-chain tests, the ones a store backend can break.
AGENT_CASES = [test_agent.test_killed_agent_endpoints_expire_and_come_back_on_restart,
               test_agent.test_lost_lease_is_replaced_and_everything_rewritten,
               test_agent.test_anti_entropy_restores_a_deleted_record,
               test_agent.test_anti_entropy_removes_records_the_agent_does_not_own,
               test_agent.test_restart_keeps_local_endpoints_even_when_the_store_lost_them,
               test_register.test_add_del_check_through_a_running_agent,
               test_register.test_spooled_registrations_are_delivered_when_the_agent_starts]


@pytest.mark.parametrize("case", AGENT_CASES, ids=lambda case: case.__name__.removeprefix("test_"))
def test_the_agents_own_tests_on_zk(case, zk_server, agents, open_url):
    case(f"{zk_server.url}/{unique_name('root')}", agents, open_url)
