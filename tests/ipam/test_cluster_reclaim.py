"""Cluster IPAM's pool policy, emptied blocks given back, and the departure clock behind ``releaseDepartedAfter``,
in process over the embedded SQLite file and a real etcd member, with a clock the test moves. The same reclaim
pass ``berth overlay`` runs in its loop (ipam.reclaim.reclaim_pass) is called here directly."""
from __future__ import annotations

import ipaddress
import json
import subprocess

import pytest

from cni_plugins import codes
from discovery.ipam_liveness import read_liveness
from discovery.model import EndpointRecord, endpoint_key
from ipam.errors import ConfigError
from ipam.cluster import departed_key, host_key, network_prefix
from ipam.reclaim import my_turn, reclaim_pass
from ipam.store import Attachment
from store.api import open_store
from tests.conftest import REPO_ROOT, VENV_BIN, plugin_path
from tests.etcd_harness import etcd_server  # noqa: F401  (fixture)
from tests.zk_harness import zk_server  # noqa: F401  (fixture)
from tests.ipam.test_cluster_store import Clock, added, call, cluster_store, conf, owners, take, url  # noqa: F401


def pool(url):
    with open_store(url) as store:
        return json.loads(store.get(network_prefix("btnet") + "pool").value)


def test_the_first_hosts_policy_is_the_pools_and_others_must_agree_or_leave_it_out(url, tmp_path):
    added(conf(url, tmp_path, "h1", quarantine=30, releaseDepartedAfter=600), "a0")
    assert (pool(url)["quarantine"], pool(url)["releaseDepartedAfter"]) == (30, 600)
    added(conf(url, tmp_path, "h2"), "b0")  # names neither: takes the pool's
    code, out = call("ADD", conf(url, tmp_path, "h3", quarantine=5), "c0")
    assert code and out["code"] == codes.INVALID_CONFIG and "ipam.quarantine" in out["msg"] and "30" in out["msg"]
    # `berth ipam pool` changes the stored policy; the host naming the new value is then accepted
    done = subprocess.run([str(VENV_BIN / "berth"), "ipam", "pool", "btnet", "--store", url,
                           "--quarantine", "5"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["quarantine"] == 5 and pool(url)["releaseDepartedAfter"] == 600
    added(conf(url, tmp_path, "h3", quarantine=5), "c0")


def test_the_pools_quarantine_holds_for_a_host_that_names_none(url, tmp_path):
    clock = Clock()
    first = cluster_store(url, tmp_path, clock, "h1", quarantine=120)
    held = [take(first, f"c{n}") for n in range(5)]  # the whole /29
    with first.lock():
        (freed,) = first.release(Attachment("c0", "eth0"))
    other = cluster_store(url, tmp_path, clock, "h2")
    clock.now += 60  # past the default 60 s, inside the pool's 120 s
    assert freed == held[0] and not other_can_take(other, "d0")
    clock.now += 60
    assert take(other, "d0") == freed


def other_can_take(store, container) -> bool:
    try:
        take(store, container)
    except Exception:
        return False
    return True


def test_emptied_blocks_are_given_back_but_the_last_one_is_kept(url, tmp_path):
    h1 = conf(url, tmp_path, "h1", quarantine=0)
    addresses = {f"a{n}": added(h1, f"a{n}") for n in range(20)}  # /28 blocks of 10.8.0.0/27: both claimed
    blocks = {ipaddress.ip_network(f"{ip}/28", strict=False) for ip in addresses.values()}
    assert len(blocks) == 2 and sorted(owners(url).values()) == ["h1", "h1"]
    second = max(blocks)
    for name, ip in addresses.items():
        if ip in second:
            assert call("DEL", h1, name) == (0, None)
    assert list(owners(url)) == [f"{min(blocks).network_address}_28"]  # the emptied block went back
    for name, ip in addresses.items():
        if ip not in second:
            assert call("DEL", h1, name) == (0, None)
    assert list(owners(url)) == [f"{min(blocks).network_address}_28"]  # the last one stays
    added(conf(url, tmp_path, "h2"), "b0")  # and another host claims the given-back one
    assert sorted(owners(url).values()) == ["h1", "h2"]


def test_a_borrower_rewrites_the_claim_so_its_owner_cannot_give_the_block_up_under_it(url, tmp_path):
    h1, h2 = conf(url, tmp_path, "h1"), conf(url, tmp_path, "h2")
    first = added(h1, "a0")
    added(h2, "b0")
    key = network_prefix("btnet") + f"blocks/{ipaddress.ip_network(f'{first}/28', strict=False).network_address}_28"
    with open_store(url) as store:
        before = store.get(key)
    block = ipaddress.ip_network(f"{first}/28", strict=False)  # an address of h1's block, whatever h1 picked
    wanted = str(next(a for a in block.hosts() if a != first and str(a) not in ("10.8.0.1", "10.8.0.31")))
    code, out = call("ADD", h2, "b1", runtimeConfig={"ips": [wanted]})  # borrowed from h1's block
    assert code == 0, out
    with open_store(url) as store:
        after = store.get(key)
    assert after.value == before.value and after.mod_revision > before.mod_revision


def reclaim(url, clock):
    with open_store(url) as store:
        return reclaim_pass(store, read_liveness, clock)


def test_a_departed_hosts_addresses_are_freed_once_the_grace_has_passed_unless_an_agent_vouches(url, tmp_path):
    clock = Clock()
    gone = cluster_store(url, tmp_path, clock, "h1", quarantine=30, releaseDepartedAfter=100)
    held = {f"c{n}": take(gone, f"c{n}") for n in range(5)}  # the whole /29
    with open_store(url) as store:
        assert reclaim_pass(store, read_liveness, clock) == ([], []) and store.get(departed_key("h1")) is None
        # c1's container is still registered by a live agent (the host's IPAM lease ended, its agent did not)
        vouched = EndpointRecord("c1/eth0", "web", (str(held["c1"]),), host="h9", container_id="c1", ifname="eth0")
        store.put(endpoint_key("h9", vouched.id), vouched.to_json().encode())
        store.revoke_lease(store.get(host_key("h1")).lease)
    assert reclaim(url, clock) == ([], [])  # marked departed now; the grace runs from here
    with open_store(url) as store:
        assert json.loads(store.get(departed_key("h1")).value)["since"] == clock.now
    clock.now += 99
    assert reclaim(url, clock) == ([], [])
    clock.now += 1
    freed, blocks = reclaim(url, clock)
    assert {leak.held.address for leak in freed} == {ip for c, ip in held.items() if c != "c1"} and blocks == []
    other = cluster_store(url, tmp_path, clock, "h2")
    with other.lock():
        assert other.get(Attachment("c0", "eth0")) == [] and other.get(Attachment("c1", "eth0")) == [held["c1"]]
    assert not other_can_take(other, "d0")  # freed, but in quarantine
    clock.now += 30
    assert take(other, "d0") in {ip for c, ip in held.items() if c != "c1"}


def test_a_host_that_comes_back_starts_its_departure_clock_again(url, tmp_path):
    clock = Clock()
    host = cluster_store(url, tmp_path, clock, "h1", releaseDepartedAfter=100)
    kept = take(host, "c0")
    with open_store(url) as store:
        store.revoke_lease(store.get(host_key("h1")).lease)
    reclaim(url, clock)
    clock.now += 90
    with host.lock():  # a CNI call on the host: it is back
        pass
    with open_store(url) as store:
        assert store.get(departed_key("h1")) is None
        store.revoke_lease(store.get(host_key("h1")).lease)
    reclaim(url, clock)
    clock.now += 20  # 110 s since the first mark, 20 since the second
    assert reclaim(url, clock) == ([], [])
    with host.lock():
        assert host.get(Attachment("c0", "eth0")) == [kept]


@pytest.mark.root  # a private mount namespace
def test_a_host_name_live_on_another_machine_is_refused(url, tmp_path):
    clock = Clock()
    here = cluster_store(url, tmp_path, clock, "h1")
    take(here, "c0")
    there = cluster_store(url, tmp_path / "there", clock, "h1")  # another machine configured with the same name
    there.machine = "0123456789abcdef0123456789abcdef"
    with pytest.raises(ConfigError, match=r"ipam\.host: 'h1' is live on another machine"):
        with there.lock():
            pass
    # the real plugin on a machine of its own (its /etc/machine-id bind-mounted over, in a private mount namespace)
    other_id = tmp_path / "machine-id"
    other_id.write_text("fedcba9876543210fedcba9876543210\n")
    shell = f'mount --bind {other_id} /etc/machine-id && exec {plugin_path("berth-ipam")}'
    env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "x0", "CNI_NETNS": "/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", "BERTH_CNI_DAEMON": "off"}
    config = conf(url, tmp_path / "real", "h1", ranges=[[{"subnet": "10.8.0.0/29"}]], blockSize=29)
    done = subprocess.run(["unshare", "-m", "sh", "-c", shell], input=json.dumps(config), env=env,
                          capture_output=True, text=True, timeout=60)
    reply = json.loads(done.stdout)
    assert done.returncode == 1 and reply["code"] == codes.INVALID_CONFIG and "ipam.host" in reply["msg"], reply
    with here.lock():  # the host that holds the name is not disturbed
        assert here.get(Attachment("c0", "eth0"))


def test_one_host_at_a_time_runs_the_reclaim_passes_and_another_takes_over_when_it_dies(url):
    with open_store(url) as store:
        a, b = store.grant_lease(60).id, store.grant_lease(60).id
        assert my_turn(store, "ha", a) and my_turn(store, "ha", a)  # its turn, pass after pass
        assert not my_turn(store, "hb", b)
        store.revoke_lease(a)  # ha died: its liveness lease ended
        assert my_turn(store, "hb", b) and not my_turn(store, "ha", store.grant_lease(60).id)
        assert my_turn(store, "hc", 0)  # no lease to hold the turn under: it runs (every free is a CAS)
