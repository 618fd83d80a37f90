"""Two machines given one host name: their agents would delete each other's endpoints (anti-entropy removes what a
host's agent does not hold). The agent record carries the machine ID, so a second machine's agent refuses to
start, and an agent that finds another machine's record under its name stops writing until the clash is gone.
The other machine is a real agent process in a private mount namespace with its own /etc/machine-id."""
from __future__ import annotations

import json
import subprocess
import threading

import pytest

from discovery.model import endpoint_key
from discovery.publish import AgentRecord, agent_key
from store.machine import machine_id
from tests.conftest import VENV_BIN
from tests.discovery.test_agent import add
from tests.waiting import wait_until

pytestmark = [pytest.mark.root, pytest.mark.service]  # a private mount namespace


def test_an_agent_on_another_machine_with_a_name_in_use_refuses_to_start(store_url, agents, open_url, tmp_path):
    store = open_url(store_url)
    first = agents(store_url)
    key = add(first, "ff10", "web")
    other_id = tmp_path / "machine-id"
    other_id.write_text("0123456789abcdef0123456789abcdef\n")
    argv = [str(VENV_BIN / "berth"), "agent", "--store", store_url, "--socket", str(tmp_path / "other.sock"),
            "--no-http", "--host", first.host, "--state-dir", str(tmp_path / "other")]
    done = subprocess.run(["unshare", "-m", "sh", "-c", f'mount --bind {other_id} /etc/machine-id && exec "$@"',
                           "sh", *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "another machine" in done.stderr and machine_id() in done.stderr
    assert store.get(key) is not None  # the first machine's endpoint is untouched
    assert json.loads(store.get(agent_key(first.host)).value)["machine"] != "0123456789abcdef0123456789abcdef"


def test_an_agent_that_finds_another_machines_record_under_its_name_writes_nothing_until_it_goes(
        store_url, agents, open_url):
    store = open_url(store_url)
    agent = agents(store_url)
    add(agent, "ff11", "web")
    # another machine's agent came up with this name at the same moment (neither saw the other at its start)
    lease = store.grant_lease(60).id
    foreign = AgentRecord(agent.host, "10.9.9.1", "", "none", machine="0123456789abcdef0123456789abcdef")
    store.put(agent_key(agent.host), foreign.to_json(), lease=lease)
    theirs = endpoint_key(agent.host, "theirs/eth0")
    store.put(theirs, b'{"id": "theirs/eth0", "name": "theirs", "addresses": ["10.9.9.9"]}', lease=lease)
    wait_until(lambda: "used by the agent of another machine" in agent.log.read_text(),
               what="the agent noticing the clash")
    threading.Event().wait(2.0)  # four anti-entropy passes (--resync 0.5): without the guard the key goes in one
    assert store.get(theirs) is not None and store.get(agent_key(agent.host)).value == foreign.to_json()
    store.revoke_lease(lease)  # the other machine's agent is gone: this one writes its own record again
    wait_until(lambda: (kv := store.get(agent_key(agent.host))) is not None
               and json.loads(kv.value)["machine"] != foreign.machine, what="the agent's own record back")
