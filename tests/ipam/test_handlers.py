"""berth-ipam's handlers in process: through invoke.delegate (as berth-bridge calls them) and from many threads at
once (as the future local daemon will). Temp data dirs only; no root needed."""
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from cni_plugins import errors, invoke, ipam_plugin, skel


def env(command, container="c1", ifname="eth0"):
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": "/run/netns/unused",
            "CNI_IFNAME": ifname, "CNI_PATH": "/usr/lib/cni"}


def bridge_config(data_dir, **ipam):
    return {"cniVersion": "1.1.0", "name": "btnet", "type": "berth-bridge",
            "ipam": {"type": "berth-ipam", "dataDir": str(data_dir), "subnet": "10.77.0.0/24", **ipam}}


def test_delegate_runs_berth_ipam_in_process_for_every_command(tmp_path):
    conf = bridge_config(tmp_path)
    parent = skel.parse_request(env("ADD"), json.dumps(conf).encode())
    result = invoke.delegate("berth-ipam", "ADD", conf, parent)
    assert [str(ip.address) for ip in result.ips] == ["10.77.0.2/24"]
    check_conf = {**conf, "prevResult": result.to_dict("1.1.0")}
    assert invoke.delegate("berth-ipam", "CHECK", check_conf, parent) is None
    assert invoke.delegate("berth-ipam", "STATUS", conf, parent) is None
    assert invoke.delegate("berth-ipam", "DEL", conf, parent) is None
    with pytest.raises(errors.UnknownContainer):
        invoke.delegate("berth-ipam", "CHECK", check_conf, parent)
    assert sorted(os.listdir(tmp_path / "btnet")) == ["last_reserved_ip.0", "lock"]


def test_the_ip_ranges_capability_comes_first_as_in_host_local(tmp_path):
    conf = {**bridge_config(tmp_path), "runtimeConfig": {"ipRanges": [[{"subnet": "10.88.0.0/24"}]]}}
    reply = skel.dispatch(ipam_plugin.HANDLERS, env("ADD"), json.dumps(conf).encode())
    assert [ip["address"] for ip in json.loads(reply.stdout)["ips"]] == ["10.88.0.2/24", "10.77.0.2/24"]


def test_handlers_called_from_many_threads_at_once_never_share_an_address(tmp_path):
    stdin = json.dumps(bridge_config(tmp_path, subnet="10.77.0.0/27")).encode()
    with ThreadPoolExecutor(max_workers=16) as pool:
        replies = list(pool.map(lambda n: skel.dispatch(ipam_plugin.HANDLERS, env("ADD", f"t{n}"), stdin), range(32)))
    addresses = [json.loads(r.stdout)["ips"][0]["address"] for r in replies if r.exit_code == 0]
    assert len(addresses) == len(set(addresses)) == 29
    assert sorted(json.loads(r.stdout)["code"] for r in replies if r.exit_code) == [50, 50, 50]
    with ThreadPoolExecutor(max_workers=16) as pool:
        dels = list(pool.map(lambda n: skel.dispatch(ipam_plugin.HANDLERS, env("DEL", f"t{n}"), stdin), range(32)))
    assert all(r.exit_code == 0 for r in dels)
    assert sorted(os.listdir(tmp_path / "btnet")) == ["last_reserved_ip.0", "lock"]


@pytest.mark.parametrize("ipam, code, words", [
    ({"resolvConf": "/nonexistent/resolv.conf"}, 5, "resolvConf"),
    ({"subnet": "10.77.0.0/31"}, 7, "too small"),
    ({"routes": "everywhere"}, 7, "ipam.routes"),
])
def test_bad_ipam_settings_fail_before_anything_is_written(tmp_path, ipam, code, words):
    stdin = json.dumps(bridge_config(tmp_path / "data", **ipam)).encode()
    reply = skel.dispatch(ipam_plugin.HANDLERS, env("ADD"), stdin)
    out = json.loads(reply.stdout)
    assert reply.exit_code == 1 and out["code"] == code and words in out["msg"]
    assert not (tmp_path / "data").exists()


def test_gc_without_a_list_of_valid_attachments_refuses_rather_than_releasing_everything(tmp_path):
    stdin = json.dumps(bridge_config(tmp_path)).encode()
    assert skel.dispatch(ipam_plugin.HANDLERS, env("ADD"), stdin).exit_code == 0
    reply = skel.dispatch(ipam_plugin.HANDLERS, {"CNI_COMMAND": "GC", "CNI_PATH": "/usr/lib/cni"}, stdin)
    assert json.loads(reply.stdout)["code"] == 7
    assert "10.77.0.2" in os.listdir(tmp_path / "btnet")
