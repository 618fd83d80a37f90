"""Delegation to another plugin: exec of the real reference host-local through CNI_PATH (no root needed)."""
import json
import os
import sys

import pytest

from cni_plugins import codes, errors, invoke, skel
from datapath import errors as datapath_errors

REFERENCE_HOST_LOCAL = "/usr/lib/cni/host-local"
pytestmark = pytest.mark.skipif(not os.path.exists(REFERENCE_HOST_LOCAL), reason="reference plugins not installed")


def request_for(tmp_path, command="ADD", container="c1", subnet="10.77.0.0/30"):
    conf = {"cniVersion": "1.0.0", "name": "btnet", "type": "btest",
            "ipam": {"type": "host-local", "dataDir": str(tmp_path), "ranges": [[{"subnet": subnet}]]}}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": "/run/netns/unused",
           "CNI_IFNAME": "eth0", "CNI_PATH": os.path.dirname(REFERENCE_HOST_LOCAL)}
    return skel.parse_request(env, json.dumps(conf).encode()), conf


def test_exec_delegate_returns_the_reference_result_and_errors_keep_their_code(tmp_path):
    req, conf = request_for(tmp_path)
    result = invoke.delegate("host-local", "ADD", conf, req)
    assert str(result.ips[0].address) == "10.77.0.2/30"
    assert (tmp_path / "btnet" / "10.77.0.2").read_text().startswith("c1")

    # /30 holds one usable address besides the gateway: the next container must get the reference's own error.
    req2, conf2 = request_for(tmp_path, container="c2")
    with pytest.raises(errors.CniError) as caught:
        invoke.delegate("host-local", "ADD", conf2, req2)
    assert "no IP addresses available" in caught.value.msg

    req_del, conf_del = request_for(tmp_path, command="DEL")
    assert invoke.delegate("host-local", "DEL", conf_del, req_del) is None
    assert not (tmp_path / "btnet" / "10.77.0.2").exists()


def test_missing_delegate_is_a_clear_config_error(tmp_path):
    req, conf = request_for(tmp_path)
    with pytest.raises(errors.InvalidConfig, match="failed to find plugin"):
        invoke.delegate("no-such-plugin", "ADD", conf, req)
    with pytest.raises(errors.InvalidConfig):
        invoke.delegate("../bin/sh", "ADD", conf, req)


def test_in_process_delegate_to_fake_plugin_runs_full_validation(tmp_path, monkeypatch):
    seen = []

    def add(req):
        seen.append(req)
        raise errors.TryAgainLater("busy")

    module = type(sys)("bt_fake_inproc")
    module.HANDLERS = skel.Handlers(add=add, delete=lambda r: None)
    monkeypatch.setitem(sys.modules, "bt_fake_inproc", module)
    monkeypatch.setitem(invoke.IN_PROCESS, "bt-fake", "bt_fake_inproc")
    req, conf = request_for(tmp_path)
    with pytest.raises(errors.TryAgainLater):
        invoke.delegate("bt-fake", "ADD", conf, req)
    assert seen[0].type == "btest" and seen[0].command == "ADD"
    bad = dict(conf, name="../x")
    with pytest.raises(errors.InvalidConfig):
        invoke.delegate("bt-fake", "ADD", bad, req)


def test_in_process_delegate_hands_back_a_datapath_error_as_the_cni_error_of_its_kind(tmp_path, monkeypatch):
    """As an exec'd delegate would print it: a caller (the overlay's GC) that collects CniErrors sees it."""
    def add(req):
        raise datapath_errors.HostConflict("br0 already exists but is not a bridge", "vxlan")

    module = type(sys)("bt_fake_datapath")
    module.HANDLERS = skel.Handlers(add=add, delete=lambda r: None)
    monkeypatch.setitem(sys.modules, "bt_fake_datapath", module)
    monkeypatch.setitem(invoke.IN_PROCESS, "bt-fake-datapath", "bt_fake_datapath")
    req, conf = request_for(tmp_path)
    with pytest.raises(errors.CniError) as info:
        invoke.delegate("bt-fake-datapath", "ADD", conf, req)
    assert info.value.code == codes.HOST_CONFLICT
    assert (info.value.msg, info.value.details) == ("br0 already exists but is not a bridge", "vxlan")
