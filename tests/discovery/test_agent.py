"""The agent as a real process over real stores: leases, restarts, anti-entropy."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from discovery import wire
from discovery.model import endpoint_key
from discovery.view import DiscoveryView
from tests.conftest import VENV_BIN, run
from tests.discovery.conftest import register_config, run_register
from tests.waiting import wait_until


def add(agent, cid: str, name: str, netns: str | None = None) -> str:
    config = register_config("btnet", agent.socket, agent.spool_dir)
    kwargs = {"netns": netns} if netns else {}
    code, out, err = run_register("ADD", config, container_id=cid, name=name, **kwargs)
    assert code == 0, (out, err)
    return endpoint_key(agent.host, f"{cid}/eth0")


def test_killed_agent_endpoints_expire_and_come_back_on_restart(store_url, agents, open_url):
    store = open_url(store_url)
    agent = agents(store_url)
    # another host sharing the store: its endpoints must not be touched (a long TTL, so that a keep-alive late on
    # a loaded machine cannot make its record blink while the test looks)
    other_host = agents(store_url, ttl=30)
    keys = [add(agent, f"dd0{i}", f"svc{i}") for i in range(3)]
    other = add(other_host, "dd09", "elsewhere")
    with DiscoveryView(store) as view:  # a reader elsewhere: it must see them go and come back
        assert set(keys) | {other} <= set(view.records())
        agent.kill()  # SIGKILL: no chance to clean up; only the lease can remove the records
        assert view.wait_until(lambda recs: not set(keys) & set(recs), timeout=30)
        assert other in view.records()
        agent.start()
        assert view.wait_until(lambda recs: set(keys) <= set(recs), timeout=30)
        assert view.records()[keys[0]].name == "svc0"


def test_lost_lease_is_replaced_and_everything_rewritten(store_url, agents, open_url):
    store = open_url(store_url)
    agent = agents(store_url)
    key = add(agent, "ee01", "web")
    lease = store.get(key).lease
    assert lease
    store.revoke_lease(lease)  # as if the store had expired it (a long pause, a partition): the key goes too
    kv = wait_until(lambda: (kv := store.get(key)) and kv.lease != lease and kv)
    assert kv is not None and kv.lease != 0


def test_anti_entropy_restores_a_deleted_record(store_url, agents, open_url):
    store = open_url(store_url)
    agent = agents(store_url)
    key = add(agent, "ff01", "web")
    store.delete(key)
    assert wait_until(lambda: store.get(key)) is not None


def test_anti_entropy_removes_records_the_agent_does_not_own(store_url, agents, open_url):
    store = open_url(store_url)
    agent = agents(store_url)
    add(agent, "ff02", "web")
    stray = endpoint_key(agent.host, "gone/eth0")
    store.put(stray, b'{"id": "gone/eth0", "name": "ghost", "addresses": ["10.9.9.9"]}')
    assert wait_until(lambda: store.get(stray) is None)


@pytest.mark.root
def test_endpoint_whose_netns_is_gone_is_removed(store_url, agents, open_url, netns):
    store = open_url(store_url)
    agent = agents(store_url)
    ns = netns("disc")
    key = add(agent, "ab01", "short-lived", netns=f"/run/netns/{ns}")
    survivor = add(agent, "ab02", "long-lived")
    assert store.get(key) is not None
    run("ip", "netns", "del", ns)  # the container died and no DEL reached the agent
    assert wait_until(lambda: store.get(key) is None)
    assert store.get(survivor) is not None
    assert wire.call(agent.socket, {"op": "check", "id": "ab01/eth0"})["registered"] is False


def test_restart_keeps_local_endpoints_even_when_the_store_lost_them(store_url, agents, open_url):
    store = open_url(store_url)
    agent = agents(store_url, ttl=30)  # a long lease: only anti-entropy can bring the record back
    key = add(agent, "ac01", "persisted")
    agent.kill()
    store.delete(key)
    agent.start()
    assert store.get(key) is not None  # the start-up reconcile runs before the agent says ready


@pytest.mark.parametrize("ttl", ["0", "-5", "soon"])
def test_agent_refuses_a_ttl_that_is_not_positive_and_creates_nothing(tmp_path, ttl):
    db, sock, state = tmp_path / "b.db", tmp_path / "a.sock", tmp_path / "state"
    proc = run(str(VENV_BIN / "berth"), "agent", "--store", f"sqlite:///{db}", "--socket", str(sock),
               "--state-dir", str(state), "--http", "127.0.0.1:0", f"--ttl={ttl}", check=False)
    assert proc.returncode == 2 and "--ttl" in proc.stderr
    assert not db.exists() and not sock.exists() and not state.exists()


@pytest.mark.root
def test_agent_socket_refuses_non_root_clients(store_url, agents):
    workdir = Path(tempfile.mkdtemp(prefix="bt-sock-"))
    try:
        workdir.chmod(0o755)  # the directory lets anyone reach the socket; the socket itself must not
        agent = agents(store_url, workdir=workdir)
        script = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
                  "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(3)\n")
        proc = subprocess.run(["/usr/bin/python3", "-c", script, agent.socket], user=65534, capture_output=True)
        assert proc.returncode == 3, proc.stderr
        assert wire.call(agent.socket, {"op": "ping"})["ok"] is True
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.etcd
@pytest.mark.slow
def test_registrations_during_a_store_outage_are_written_when_it_returns(agents, open_url):
    pytest.importorskip("store.etcd")
    from tests.etcd_harness import start_etcd
    with start_etcd(1) as cluster:
        agent = agents(cluster.url)
        before = add(agent, "ba01", "before")
        cluster.kill(0)
        during = add(agent, "ba02", "during")  # succeeds: kept by the agent (or spooled), never refused
        assert wire.call(agent.socket, {"op": "check", "id": "ba02/eth0"})["registered"] is True
        cluster.restart(0)
        store = open_url(cluster.url)
        assert wait_until(lambda: store.get(during) and store.get(before))


def test_agent_reports_a_taken_http_port_clearly(store_url, agents, tmp_path):
    first = agents(store_url)
    proc = run(str(VENV_BIN / "berth"), "agent", "--store", store_url, "--socket", str(tmp_path / "b.sock"),
               "--state-dir", str(tmp_path / "b-state"), "--http", f"127.0.0.1:{first.http_port}", check=False)
    assert proc.returncode == 1 and "Address already in use" in proc.stderr
    assert not (tmp_path / "b.sock").exists()
