"""The bad inputs of issue 14, one by one, through the real plugins' handlers in process (pure: each is refused
before any side effect), plus hypothesis properties of the protocol core and of the shared field rules."""
from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings, strategies as st

from cni_plugins import codes, config_fields, errors, invoke, skel
from datapath.ifname import interface_name
from ipam import paths

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/run/netns/bt-none", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/nonexistent-bt"}
PREV = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "10.250.1.2/24", "interface": 0}]}


def dispatch(plugin: str, config: dict | bytes, **env) -> tuple[int, dict]:
    stdin = config if isinstance(config, bytes) else json.dumps(config).encode()
    reply = skel.dispatch(invoke.in_process_handlers(plugin), {**ENV, **env}, stdin)
    assert b"Traceback" not in reply.stderr, reply.stderr.decode()
    return reply.exit_code, (json.loads(reply.stdout) if reply.stdout else {})


def conf(plugin: str, **keys) -> dict:
    return {"cniVersion": "1.1.0", "name": "btnet", "type": plugin, **keys}


def ipam_section(tmp_path, **keys) -> dict:
    return {"type": "berth-ipam", "dataDir": str(tmp_path / "ipam"), "ranges": [[{"subnet": "10.250.0.0/24"}]],
            **keys}


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("plugin", list(invoke.IN_PROCESS))
@pytest.mark.parametrize("where", ["top", "prevResult", "runtimeConfig", "args", "ipam"])
def test_deeply_nested_stdin_is_a_decode_error(plugin, where):
    stdin = deep(5000) if where == "top" else json.dumps(conf(plugin, **{where: "@"})).replace('"@"', deep(5000))
    rc, body = dispatch(plugin, stdin.encode())
    assert rc == 1 and body["code"] == codes.DECODE_FAILURE, body
    assert "nested" in body["msg"]


@pytest.mark.parametrize("mtu", ["abc", [1], -1, 1.5, True, 70000])
@pytest.mark.parametrize("plugin", ["berth-portmap", "berth-register", "berth-bridge"])
def test_prev_result_with_a_bad_mtu_names_the_field(plugin, mtu, tmp_path):
    prev = {**PREV, "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x", "mtu": mtu}]}
    rc, body = dispatch(plugin, conf(plugin, prevResult=prev, spoolDir=str(tmp_path)), CNI_COMMAND="CHECK")
    assert rc == 1 and body["code"] == codes.DECODE_FAILURE and "interfaces.mtu" in body["msg"], body


@pytest.mark.parametrize("routes", [True, -1, 1.5, "0.0.0.0/0", [5], [{"dst": 5}]])
def test_overlay_ipam_routes_of_the_wrong_type_are_config_errors(routes, tmp_path):
    """The issue's berth-overlay case: routes of true, -1 or 1.5 were internal errors."""
    (tmp_path / "subnet.env").write_text("FLANNEL_NETWORK=10.251.0.0/16\nFLANNEL_SUBNET=10.251.7.1/24\n"
                                         "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    config = conf("berth-overlay", subnetFile=str(tmp_path / "subnet.env"), dataDir=str(tmp_path / "saved"),
                  ipam={"routes": routes, "dataDir": str(tmp_path / "ipam")}, delegate={"bridge": "btnone0"})
    commands = ("ADD", "DEL", "GC", "STATUS") if not isinstance(routes, list) else ("ADD",)
    for command in commands:
        rc, body = dispatch("berth-overlay", config, CNI_COMMAND=command)
        assert rc == 1 and body["code"] == codes.INVALID_CONFIG and "ipam.routes" in body["msg"], (command, body)
    assert not (tmp_path / "saved").exists() and not (tmp_path / "ipam").exists()


@pytest.mark.parametrize("plugin, keys", [
    ("berth-bridge", {"ipam": {"type": "berth-bridge"}}),
    ("berth-bridge", {"ipam": {"type": "berth-overlay"}}),
    ("berth-overlay", {"delegate": {"type": "berth-overlay"}}),
    ("berth-overlay", {"ipam": {"type": "berth-overlay"}}),
])
def test_a_section_that_refers_back_to_its_plugin_is_a_config_error(plugin, keys, tmp_path):
    rc, body = dispatch(plugin, conf(plugin, subnetFile=str(tmp_path / "s.env"), dataDir=str(tmp_path / "d"),
                                     **keys))
    assert rc == 1 and body["code"] == codes.INVALID_CONFIG, body


def test_delegation_back_to_a_plugin_already_in_the_chain_is_refused():
    req = skel.parse_request(ENV, json.dumps(conf("berth-bridge")).encode())
    with pytest.raises(errors.InvalidConfig, match="loops back"):
        invoke.delegate("berth-bridge", "ADD", conf("berth-bridge"), req)


@pytest.mark.parametrize("data_dir, message", [
    ("/x" * 2000, "more than 64 components"),
    ("x/" * 100, "must be an absolute path"),
    ("", "non-empty"), (0, "non-empty"), (False, "non-empty"),
    ("/tmp/../etc", "normalised"),
])
def test_ipam_data_dir_must_be_a_usable_absolute_path(data_dir, message, tmp_path):
    rc, body = dispatch("berth-ipam", conf("berth-ipam", ipam={**ipam_section(tmp_path), "dataDir": data_dir}))
    assert rc == 1 and body["code"] == codes.INVALID_CONFIG and message in body["msg"], body


@pytest.mark.parametrize("key", ["dataDir", "subnetFile"])
@pytest.mark.parametrize("value", ["", 0, False, "rel/dir", "/a//b", "/x" * 2000])
def test_overlay_paths_must_be_usable_absolute_paths(key, value, tmp_path):
    config = conf("berth-overlay", subnetFile=str(tmp_path / "s.env"), dataDir=str(tmp_path / "d"))
    rc, body = dispatch("berth-overlay", {**config, key: value})
    assert rc == 1 and body["code"] == codes.INVALID_CONFIG and key in body["msg"], body


def test_a_binary_subnet_file_is_a_decode_error(tmp_path):
    (tmp_path / "subnet.env").write_bytes(b"\xff\xfe\x00FLANNEL\x80\x81")
    config = conf("berth-overlay", subnetFile=str(tmp_path / "subnet.env"), dataDir=str(tmp_path / "d"))
    rc, body = dispatch("berth-overlay", config)
    assert rc == 1 and body["code"] == codes.DECODE_FAILURE and "subnetFile" in body["msg"], body
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("key, value", [("spoolDir", "spool"), ("spoolDir", ""), ("spoolDir", False),
                                        ("agentSocket", "agent.sock"), ("agentSocket", 0)])
def test_register_refuses_relative_or_falsy_paths_before_writing(key, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = conf("berth-register", prevResult=PREV, agentSocket=str(tmp_path / "none.sock"),
                  spoolDir=str(tmp_path / "spool"))
    rc, body = dispatch("berth-register", {**config, key: value}, CNI_ARGS="K8S_POD_NAME=web")
    assert rc == 1 and body["code"] == codes.INVALID_CONFIG and key in body["msg"], body
    assert list(tmp_path.iterdir()) == []  # nothing written, in the working directory or anywhere else


@pytest.mark.parametrize("env, code", [
    ({"CNI_CONTAINERID": "c\n"}, codes.INVALID_ENVIRONMENT),
    ({"CNI_IFNAME": "é" * 8}, codes.INVALID_ENVIRONMENT),
    ({"CNI_IFNAME": "é" * 15}, codes.INVALID_ENVIRONMENT),
    ({"CNI_IFNAME": "eth\xa00"}, codes.INVALID_ENVIRONMENT),
    ({"CNI_NETNS": "run/netns/x"}, codes.INVALID_ENVIRONMENT),
])
def test_identifiers_and_interface_names_are_matched_in_full(env, code, tmp_path):
    rc, body = dispatch("berth-ipam", conf("berth-ipam", ipam=ipam_section(tmp_path)), **env)
    assert rc == 1 and body["code"] == code, body
    assert not (tmp_path / "ipam").exists()


def test_a_network_name_ending_in_a_newline_is_refused(tmp_path):
    rc, body = dispatch("berth-ipam", {**conf("berth-ipam", ipam=ipam_section(tmp_path)), "name": "n\n"})
    assert rc == 1 and body["code"] == codes.INVALID_CONFIG and "network name" in body["msg"], body


def test_the_bridge_name_follows_the_kernels_rule(tmp_path):
    rc, body = dispatch("berth-bridge", conf("berth-bridge", bridge="é" * 8, ipam=ipam_section(tmp_path)))
    assert rc == 1 and body["code"] == codes.INVALID_CONFIG and "bridge" in body["msg"], body


def test_stdin_over_the_cap_is_a_decode_error():
    rc, body = dispatch("berth-ipam", b" " * (skel.MAX_STDIN + 1))
    assert rc == 1 and body["code"] == codes.DECODE_FAILURE


# --- properties ---------------------------------------------------------------------------------------------------

LIBCNI = re.compile(r"\A[a-zA-Z0-9][a-zA-Z0-9_.\-]*\Z")  # Go's $ is \z: no final newline allowed


@given(st.text(max_size=30))
def test_identifier_accepts_exactly_what_libcni_does(text):
    try:
        config_fields.identifier(text, "containerID")
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == bool(LIBCNI.match(text) and len(text) <= config_fields.MAX_IDENTIFIER)


@given(st.text(max_size=20))
def test_interface_names_the_kernel_would_refuse_are_refused(text):
    try:
        interface_name(text, "CNI_IFNAME")
    except ValueError:
        return
    raw = text.encode()
    assert 0 < len(raw) <= 15 and text not in (".", "..")
    assert not set(raw) & set(b"/: \t\n\v\f\r\xa0\0")


@given(st.text(max_size=80))
def test_an_accepted_path_is_absolute_and_normalised(text):
    try:
        value = paths.absolute_path(text, "dataDir")
    except ValueError:
        return
    import os
    assert value.startswith("/") and os.path.normpath(value) == value and len(value.split("/")) <= 65


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=15)
env_values = st.dictionaries(
    st.sampled_from(["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH", "CNI_ARGS"]),
    st.text(st.characters(blacklist_characters="\0"), max_size=20) | st.sampled_from(["ADD", "DEL", "GC"]),
    max_size=6)


@settings(max_examples=400, deadline=None)
@given(env_values, json_values | st.dictionaries(st.sampled_from(
    ["cniVersion", "name", "type", "prevResult", "runtimeConfig", "args", "cni.dev/valid-attachments"]),
    json_values, max_size=7))
def test_the_protocol_core_answers_any_env_and_config_with_a_spec_error_or_a_request(env, config):
    """skel's edge alone (a handler that does nothing): whatever arrives, parse_request either builds a Request or
    raises a CniError with a spec code; nothing else escapes."""
    stdin = json.dumps(config).encode()
    reply = skel.dispatch(skel.Handlers(add=lambda r: None, delete=lambda r: None), env, stdin)
    if reply.exit_code:
        body = json.loads(reply.stdout)
        # ADD's no-op handler returns no result: that one 999 is the handler's bug, not the input's
        assert body["code"] != codes.INTERNAL or "ADD handler returned" in body["msg"], body
