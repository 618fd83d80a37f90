"""berth-ipam as a runtime runs it: the installed executable, environment + stdin, a real namespace path."""
import fcntl
import json
import os
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cni_plugins import codes
from tests.ipam.conftest import call, net_config, network_files, snapshot

pytestmark = pytest.mark.root


def test_add_check_del_cycle_with_routes_and_dns(berth_ipam, sandbox, tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.77.0.53\nsearch svc.example\noptions ndots:3\n")
    config = net_config(tmp_path / "data", routes=[{"dst": "0.0.0.0/0"}], resolvConf=str(resolv))
    added = call(berth_ipam, "ADD", config, netns=sandbox)
    assert added.code == 0, added.out
    assert added.out == {"cniVersion": "1.0.0", "ips": [{"address": "10.77.0.2/24", "gateway": "10.77.0.1"}],
                         "routes": [{"dst": "0.0.0.0/0"}],
                         "dns": {"nameservers": ["10.77.0.53"], "search": ["svc.example"], "options": ["ndots:3"]}}
    assert (tmp_path / "data" / "btnet" / "10.77.0.2").read_bytes() == b"ctr1\r\neth0"

    assert call(berth_ipam, "CHECK", {**config, "prevResult": added.out}, netns=sandbox).code == 0
    wrong = {**added.out, "ips": [{"address": "10.77.0.9/24", "gateway": "10.77.0.1"}]}
    assert call(berth_ipam, "CHECK", {**config, "prevResult": wrong}, netns=sandbox).error_code == codes.STATE_DIFFERS

    assert call(berth_ipam, "DEL", config, netns=sandbox).code == 0
    assert call(berth_ipam, "DEL", config, netns=sandbox).code == 0      # idempotent
    assert call(berth_ipam, "CHECK", {**config, "prevResult": added.out}, netns=sandbox).error_code == 3
    assert network_files(tmp_path / "data") == ["last_reserved_ip.0", "lock"]


def test_requested_addresses_from_every_source(berth_ipam, sandbox, tmp_path):
    config = net_config(tmp_path, ranges=[[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]])
    by_args = call(berth_ipam, "ADD", config, "c1", netns=sandbox, extra_env={"CNI_ARGS": "IP=10.77.0.40"})
    by_cap = call(berth_ipam, "ADD", {**config, "runtimeConfig": {"ips": ["fd77::40/64"]}}, "c2", netns=sandbox)
    by_cni = call(berth_ipam, "ADD", {**config, "args": {"cni": {"ips": ["10.77.0.41"]}}}, "c3", netns=sandbox)
    assert [ip["address"] for ip in by_args.out["ips"]] == ["10.77.0.40/24", "fd77::2/64"]
    assert [ip["address"] for ip in by_cap.out["ips"]] == ["10.77.0.41/24", "fd77::40/64"]
    assert by_cni.error_code == 100 and "10.77.0.41 is not available" in by_cni.out["msg"]
    assert "10.77.0.41" in network_files(tmp_path) and "fd77::41" not in network_files(tmp_path)


def _add_many(berth_ipam, config, sandbox, ids):
    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        return list(pool.map(lambda cid: call(berth_ipam, "ADD", config, cid, netns=sandbox), ids))


def test_32_parallel_adds_into_a_small_range_never_share_an_address(berth_ipam, sandbox, tmp_path):
    config = net_config(tmp_path, subnet="10.77.0.0/27")          # 29 addresses after the gateway
    ids = [f"ctr{n:02d}" for n in range(32)]
    replies = _add_many(berth_ipam, config, sandbox, ids)
    addresses = [r.out["ips"][0]["address"] for r in replies if r.code == 0]
    assert len(addresses) == len(set(addresses)) == 29
    assert sorted(r.error_code for r in replies if r.code) == [50, 50, 50]
    assert all("no IP addresses available" in r.out["msg"] for r in replies if r.code)
    with ThreadPoolExecutor(max_workers=32) as pool:
        assert all(r.code == 0 for r in pool.map(lambda c: call(berth_ipam, "DEL", config, c, netns=sandbox), ids))
    assert network_files(tmp_path) == ["last_reserved_ip.0", "lock"]


def _someone_waits_for(lock_path) -> bool:
    """A flock waiter on this file (the plugin process, or the CNI daemon's thread that runs the call for it)."""
    inode = os.stat(lock_path).st_ino
    with open("/proc/locks") as f:
        return any("->" in line and f":{inode} " in line for line in f)


def test_adds_killed_midway_leave_nothing_gc_cannot_reclaim(berth_ipam, sandbox, tmp_path):
    config = net_config(tmp_path, version="1.1.0", ranges=[[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]])
    assert call(berth_ipam, "ADD", config, "warmup", netns=sandbox).code == 0
    env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "ADD", "CNI_NETNS": sandbox, "CNI_IFNAME": "eth0",
           "CNI_PATH": "/usr/lib/cni"}
    rng = random.Random(7)
    for n in range(12):
        lock_fd = os.open(tmp_path / "btnet" / "lock", os.O_RDWR)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)          # the ADD starts, then waits for us inside its lock call
        proc = subprocess.Popen([str(berth_ipam)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env={**env, "CNI_CONTAINERID": f"killed{n}"})
        proc.stdin.write(json.dumps(config).encode())
        proc.stdin.close()
        deadline = time.monotonic() + 10
        while not _someone_waits_for(tmp_path / "btnet" / "lock") and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.002)
        os.close(lock_fd)
        time.sleep(rng.uniform(0, 0.003))           # somewhere inside the allocation
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    gc = {**config, "cni.dev/valid-attachments": [{"containerID": "warmup", "ifname": "eth0"}]}
    assert call(berth_ipam, "GC", gc, container_id=None, drop=("CNI_CONTAINERID", "CNI_IFNAME")).code == 0
    assert sorted(f for f in network_files(tmp_path) if f[0].isdigit() or ":" in f) == ["10.77.0.2", "fd77::2"]
    again = call(berth_ipam, "ADD", config, "after", netns=sandbox)
    assert again.code == 0
    assert call(berth_ipam, "DEL", config, "after", netns=sandbox).code == 0
    assert call(berth_ipam, "DEL", config, "warmup", netns=sandbox).code == 0
    assert network_files(tmp_path) == ["last_reserved_ip.0", "last_reserved_ip.1", "lock"]


def test_gc_releases_everything_not_valid_and_keeps_its_bookkeeping(berth_ipam, sandbox, tmp_path):
    config = net_config(tmp_path, version="1.1.0")
    for cid, ifname in [("a", "eth0"), ("a", "net1"), ("b", "eth0"), ("c", "eth0")]:
        assert call(berth_ipam, "ADD", config, cid, ifname, netns=sandbox).code == 0
    (tmp_path / "btnet" / "10.77.0.100").write_bytes(b"old-format-id")
    (tmp_path / "btnet" / "10.77.0.101").write_bytes(b"")

    def gc(key, attachments):
        return call(berth_ipam, "GC", {**config, key: attachments}, container_id=None,
                    drop=("CNI_CONTAINERID", "CNI_IFNAME"))

    assert gc("cni.dev/valid-attachments", [{"containerID": "a", "ifname": "eth0"},
                                            {"containerID": "c", "ifname": "eth0"}]).code == 0
    assert network_files(tmp_path) == ["10.77.0.2", "10.77.0.5", "last_reserved_ip.0", "lock"]
    assert call(berth_ipam, "DEL", config, "c", netns=sandbox).code == 0
    assert gc("cni.dev/attachments", []).code == 0                      # the older key; empty: release all
    assert network_files(tmp_path) == ["last_reserved_ip.0", "lock"]


def test_status_reports_exhaustion_and_an_unusable_data_dir(berth_ipam, sandbox, tmp_path):
    config = net_config(tmp_path / "data", version="1.1.0", subnet="10.77.0.0/29")

    def status(cfg):
        return call(berth_ipam, "STATUS", cfg, container_id=None, drop=("CNI_CONTAINERID", "CNI_IFNAME"))

    assert status(config).code == 0
    assert not (tmp_path / "data").exists()                             # STATUS creates nothing
    for n in range(5):
        assert call(berth_ipam, "ADD", config, f"c{n}", netns=sandbox).code == 0
    full = status(config)
    assert full.error_code == 50 and "exhausted" in full.out["msg"]
    assert call(berth_ipam, "DEL", config, "c3", netns=sandbox).code == 0
    assert status(config).code == 0
    (tmp_path / "not-a-dir").write_text("x")
    unusable = status(net_config(tmp_path / "not-a-dir", version="1.1.0"))
    assert unusable.error_code == 50 and "data directory unusable" in unusable.out["msg"]


BAD_INPUTS = {
    "malformed JSON": (b'{"cniVersion": "1.0.0", "name": ', {}, 6),
    "unknown cniVersion": ({"cniVersion": "9.9.9"}, {}, 1),
    "network name with ../": ({"name": "../escape"}, {}, 7),
    "16-character ifname": ({}, {"CNI_IFNAME": "eth0123456789012"}, 4),
    "missing CNI_CONTAINERID": ({}, {"drop": ("CNI_CONTAINERID",)}, 4),
    "host bits in subnet": ({"ipam_subnet": "10.77.0.1/24"}, {}, 7),
    "missing ipam": ({"ipam": None}, {}, 7),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_its_error_code_and_changes_nothing(berth_ipam, sandbox, tmp_path, case):
    config = net_config(tmp_path / "data")
    assert call(berth_ipam, "ADD", config, "existing", netns=sandbox).code == 0
    before = snapshot(tmp_path)
    change, env, code = BAD_INPUTS[case]
    if isinstance(change, bytes):
        stdin = change
    else:
        stdin = json.loads(json.dumps(config))
        if "ipam_subnet" in change:
            stdin["ipam"]["subnet"] = change["ipam_subnet"]
        else:
            stdin.update(change)
        if stdin.get("ipam") is None:
            del stdin["ipam"]
    env = dict(env)
    drop = env.pop("drop", ())
    reply = call(berth_ipam, "ADD", stdin, "newcomer", netns=sandbox, extra_env=env, drop=drop)
    assert reply.code != 0 and reply.error_code == code, reply.out
    assert set(reply.out) >= {"cniVersion", "code", "msg"}
    assert snapshot(tmp_path) == before
