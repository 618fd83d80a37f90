"""The protocol core: environment validation, version negotiation, dispatch and every error code (pure)."""
import ipaddress
import json

import pytest

from cni_plugins import codes, errors, skel, types
from datapath import errors as datapath_errors

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/usr/lib/cni"}


def config(version="1.1.0", **extra):
    return json.dumps({"cniVersion": version, "name": "net1", "type": "berth-test", **extra}).encode()


class Recorder:
    """Handlers that remember the request they got and answer with a fixed address."""

    def __init__(self, raise_on=None):
        self.requests = []
        self.raise_on = raise_on or {}

    def _handle(self, req):
        self.requests.append(req)
        if req.command in self.raise_on:
            raise self.raise_on[req.command]
        if req.command == "ADD":
            return types.Result(req.cni_version,
                                ips=[types.IPConfig(ipaddress.ip_interface("10.9.0.2/24"))])
        return None

    @property
    def handlers(self):
        return skel.Handlers(add=self._handle, delete=self._handle, check=self._handle, gc=self._handle,
                             status=self._handle)


def call(env, stdin, recorder=None):
    recorder = recorder or Recorder()
    reply = skel.dispatch(recorder.handlers, env, stdin)
    body = json.loads(reply.stdout) if reply.stdout else None
    return reply.exit_code, body, recorder


def test_version_reports_exactly_the_supported_versions():
    code, body, rec = call({"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"0.4.0"}')
    assert code == 0
    assert body == {"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}
    assert rec.requests == []


@pytest.mark.parametrize("version", types.SUPPORTED_VERSIONS)
def test_add_result_is_rendered_in_the_requested_version(version):
    code, body, rec = call(ENV, config(version))
    assert code == 0
    assert body["cniVersion"] == version
    assert ("version" in body["ips"][0]) is (version < "1.0.0")
    assert rec.requests[0].cni_version == version


def test_cniversions_list_negotiates_highest_common_version():
    stdin = json.dumps({"cniVersions": ["0.3.1", "1.0.0", "7.0.0"], "name": "n", "type": "t"}).encode()
    code, body, rec = call(ENV, stdin)
    assert code == 0 and body["cniVersion"] == "1.0.0"


def test_cniversions_without_any_common_version_is_error_1():
    stdin = json.dumps({"cniVersions": ["0.1.0", "7.0.0"], "name": "n", "type": "t"}).encode()
    code, body, rec = call(ENV, stdin)
    assert (code, body["code"]) == (1, 1) and rec.requests == []


@pytest.mark.parametrize("env_change, stdin, expected_code, msg_part", [
    ({"CNI_COMMAND": None}, config(), 4, "[CNI_COMMAND] missing"),
    ({"CNI_COMMAND": "FROB"}, config(), 4, "unknown CNI_COMMAND"),
    ({"CNI_CONTAINERID": None}, config(), 4, "[CNI_CONTAINERID] missing"),
    ({"CNI_CONTAINERID": None, "CNI_IFNAME": None}, config(), 4, "[CNI_CONTAINERID,CNI_IFNAME] missing"),
    ({"CNI_NETNS": None}, config(), 4, "[CNI_NETNS] missing"),
    ({"CNI_PATH": None}, config(), 4, "[CNI_PATH] missing"),
    ({"CNI_CONTAINERID": "../etc"}, config(), 4, "invalid characters in containerID"),
    ({"CNI_CONTAINERID": "-lead"}, config(), 4, "invalid characters in containerID"),
    ({"CNI_IFNAME": "a" * 16}, config(), 4, "too long"),
    ({"CNI_IFNAME": ".."}, config(), 4, ". or .."),
    ({"CNI_IFNAME": "eth/0"}, config(), 4, "whitespace"),
    ({"CNI_IFNAME": "eth 0"}, config(), 4, "whitespace"),
    ({"CNI_IFNAME": "eth:0"}, config(), 4, "whitespace"),
    ({"CNI_ARGS": "FOO=bar"}, config(), 4, "unknown args"),
    ({"CNI_ARGS": "garbage"}, config(), 4, "invalid pair"),
    ({}, b'{"cniVersion": "1.0.0", "name": "n"', 6, "unmarshall"),
    ({}, b"", 6, "unmarshall"),
    ({}, b"[1, 2]", 6, "unmarshall"),
    ({}, json.dumps({"cniVersion": "1.0.0", "name": "../evil", "type": "t"}).encode(), 7, "network name"),
    ({}, json.dumps({"cniVersion": "1.0.0", "type": "t"}).encode(), 7, "missing network name"),
    ({}, json.dumps({"cniVersion": "1.0.0", "name": "n"}).encode(), 7, "type"),
    ({}, config("0.2.0"), 1, "incompatible CNI versions"),
    ({}, config("2.0.0"), 1, "incompatible CNI versions"),
    ({}, json.dumps({"name": "n", "type": "t"}).encode(), 1, "incompatible CNI versions"),
    ({"CNI_COMMAND": "CHECK"}, config("0.3.1"), 1, "does not allow CHECK"),
    ({"CNI_COMMAND": "GC"}, config("1.0.0"), 1, "does not allow GC"),
    ({"CNI_COMMAND": "STATUS"}, config("0.4.0"), 1, "does not allow STATUS"),
    ({}, config(prevResult={"cniVersion": "1.0.0", "ips": [{"address": "bad"}]}), 6, "prevResult"),
    ({}, config(runtimeConfig={"portMappings": "80:80"}), 7, "portMappings"),
    ({}, config(runtimeConfig={"ips": "10.0.0.1"}), 7, "runtimeConfig.ips"),
])
def test_bad_input_gets_the_spec_error_and_no_handler_runs(env_change, stdin, expected_code, msg_part):
    env = dict(ENV)
    for key, value in env_change.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    code, body, rec = call(env, stdin)
    assert code == 1
    assert body["code"] == expected_code
    assert msg_part in body["msg"]
    assert body["cniVersion"] in types.SUPPORTED_VERSIONS
    assert rec.requests == []


@pytest.mark.parametrize("raised, expected_code", [
    (errors.UnsupportedField("field vlanTrunk not supported"), 2),
    (errors.UnknownContainer("no such container"), 3),
    (errors.IOFailure("disk"), 5),
    (errors.InvalidConfig("bad"), 7),
    (errors.TryAgainLater("locked"), 11),
    (errors.NotAvailable("exhausted"), 50),
    (errors.NotAvailableLimited("broken"), 51),
    (errors.CniError("plugin specific", code=120), 120),
    (PermissionError(13, "denied"), 5),
    (RuntimeError("bug"), 999),
])
def test_handler_exceptions_become_the_spec_error_object(raised, expected_code):
    code, body, _ = call(ENV, config("1.0.0"), Recorder(raise_on={"ADD": raised}))
    assert code == 1
    assert body["code"] == expected_code
    assert body["cniVersion"] == "1.0.0"
    assert isinstance(body["msg"], str) and body["msg"]


@pytest.mark.parametrize("error, expected_code", [
    (datapath_errors.LinkError("add veth: File exists"), codes.IO_FAILURE),
    (datapath_errors.FirewallError("nftables refused"), codes.IO_FAILURE),
    (datapath_errors.HostConflict("br0 already exists but is not a bridge"), codes.HOST_CONFLICT),
    (datapath_errors.PortConflict("tcp host port 8080 is already mapped"), codes.PORT_TAKEN),
    (datapath_errors.InvalidInput("hostPort: must be a port"), codes.INVALID_CONFIG),
])
def test_datapath_errors_get_their_cni_code_at_the_edge(error, expected_code):
    code, body, _ = call(ENV, config(), Recorder(raise_on={"ADD": error}))
    assert code == 1 and body["code"] == expected_code and body["msg"] == error.msg


def test_del_check_gc_status_print_nothing_on_success():
    for command in ("DEL", "CHECK", "GC", "STATUS"):
        env = dict(ENV, CNI_COMMAND=command)
        reply = skel.dispatch(Recorder().handlers, env, config("1.1.0"))
        assert (reply.exit_code, reply.stdout) == (0, b"")


def test_del_does_not_need_a_netns_but_gc_and_status_need_no_container():
    assert call({k: v for k, v in ENV.items() if k != "CNI_NETNS"} | {"CNI_COMMAND": "DEL"}, config())[0] == 0
    assert call({"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, config())[0] == 0
    assert call({"CNI_COMMAND": "STATUS", "CNI_PATH": "/x"}, config())[0] == 0


def test_request_carries_parsed_args_capabilities_and_prev_result():
    prev = {"cniVersion": "0.4.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [{"version": "4", "address": "10.9.0.7/24", "interface": 0}]}
    stdin = config("1.0.0", prevResult=prev, args={"cni": {"ips": ["10.9.0.9"], "mac": "02:00:00:00:00:09"}},
                   runtimeConfig={"ips": ["10.9.0.8/24"], "portMappings": [{"hostPort": 8080, "containerPort": 80,
                                                                             "protocol": "tcp"}],
                                  "aliases": {"net1": ["web", "www"], "other": ["x"]}})
    env = dict(ENV, CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=web-1;IP=10.9.0.10,10.9.0.8/24;FOO=bar",
               CNI_PATH="/opt/cni/bin:/usr/lib/cni")
    code, _, rec = call(env, stdin)
    assert code == 0
    req = rec.requests[0]
    assert req.args["K8S_POD_NAME"] == "web-1"
    assert req.path == ("/opt/cni/bin", "/usr/lib/cni")
    assert req.runtime.ips == ("10.9.0.8/24", "10.9.0.9", "10.9.0.10")
    assert req.runtime.mac == "02:00:00:00:00:09"
    assert req.runtime.port_mappings[0]["hostPort"] == 8080
    assert req.runtime.aliases == ("web", "www")
    assert req.prev_result.ips[0].address == ipaddress.ip_interface("10.9.0.7/24")
    assert req.prev_result.interfaces[0].sandbox == "/run/netns/x"
    assert req.name == "net1" and req.type == "berth-test"


def test_mac_from_cni_args_when_no_capability():
    code, _, rec = call(dict(ENV, CNI_ARGS="MAC=02:00:00:00:00:01"), config())
    assert rec.requests[0].runtime.mac == "02:00:00:00:00:01"


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_gets_valid_attachments_under_either_key(key):
    stdin = config(**{key: [{"containerID": "a1", "ifname": "eth0"}, {"containerID": "b2", "ifname": "net1"}]})
    code, _, rec = call({"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, stdin)
    assert code == 0
    assert rec.requests[0].valid_attachments == (skel.Attachment("a1", "eth0"), skel.Attachment("b2", "net1"))


def test_gc_with_null_attachment_list_means_none_is_valid():
    """libcni sends an empty Go slice as ``null``: every attachment is then garbage."""
    code, _, rec = call({"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, config(**{"cni.dev/valid-attachments": None}))
    assert code == 0 and rec.requests[0].valid_attachments == ()


def test_gc_without_attachment_key_leaves_the_decision_to_the_plugin():
    code, _, rec = call({"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, config())
    assert code == 0 and rec.requests[0].valid_attachments is None


def test_gc_with_malformed_attachment_list_is_invalid_config():
    code, body, rec = call({"CNI_COMMAND": "GC", "CNI_PATH": "/x"},
                           config(**{"cni.dev/valid-attachments": [{"ifname": "eth0"}]}))
    assert body["code"] == 7 and rec.requests == []


def test_main_reads_stdin_writes_stdout_and_returns_exit_code():
    import io
    out = io.BytesIO()
    code = skel.main(Recorder().handlers, env=ENV, stdin=io.BytesIO(config("0.4.0")), stdout=out,
                     stderr=io.BytesIO(), argv=[])
    assert code == 0 and json.loads(out.getvalue())["ips"][0]["version"] == "4"
    out = io.BytesIO()
    code = skel.main(Recorder().handlers, env=dict(ENV, CNI_IFNAME=""), stdin=io.BytesIO(config()), stdout=out,
                     stderr=io.BytesIO(), argv=[])
    assert code == 1 and json.loads(out.getvalue())["code"] == 4


def test_about_text_on_version_flag():
    import io
    err = io.BytesIO()
    assert skel.main(Recorder().handlers, about="berth-test", env={}, stdout=io.BytesIO(), stderr=err,
                     argv=["--version"]) == 0
    assert b"berth-test" in err.getvalue() and b"1.1.0" in err.getvalue()
