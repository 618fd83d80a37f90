"""Property test worker: arbitrary JSON and environment values into one plugin's ADD/DEL/CHECK/GC/STATUS.

Run by tests/bridge/test_bad_input.py under ``ip netns exec <test host namespace>``, so whatever a valid input
makes (bridges, veths, firewall rules) lives in a namespace the test deletes; every path the configs name is under
``--work``. Mode ``in-process`` calls the plugin's handlers through ``skel.dispatch``; mode ``daemon`` starts a
private CNI daemon in this process (so it shares this process's namespaces) and execs the installed launchers,
which forward to it. Either way each answer must be a success or a spec error with a known code: never 999, never a
traceback. Exits 0 when every example passed; prints the codes seen per command.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import threading
from collections import Counter

from hypothesis import HealthCheck, given, settings, strategies as st

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from cni_plugins import codes, invoke, skel  # noqa: E402

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS")
PATH_KEYS = frozenset({"dataDir", "spoolDir", "agentSocket", "subnetFile", "resolvConf"})
KNOWN_CODES = frozenset(codes.SPEC_CODES + codes.BERTH_CODES)
PREV_RESULT = {"cniVersion": "1.1.0",
               "interfaces": [{"name": "btfzh0"}, {"name": "eth0", "sandbox": "/run/netns/x", "mtu": 1500}],
               "ips": [{"address": "10.250.1.2/24", "gateway": "10.250.1.1", "interface": 1}],
               "routes": [{"dst": "0.0.0.0/0", "gw": "10.250.1.1"}], "dns": {"nameservers": ["10.250.1.1"]}}
# Keys worth replacing beyond those of the base config, per plugin (a key absent from the base is added).
EXTRA_KEYS = {
    "berth-ipam": [("ipam", "gateway"), ("ipam", "rangeStart"), ("ipam", "subnet"), ("ipam", "resolvConf"),
                   ("runtimeConfig", "ips"), ("runtimeConfig", "ipRanges"), ("args", "cni", "ips")],
    "berth-bridge": [("mtu",), ("vlan",), ("vlanTrunk",), ("hairpinMode",), ("promiscMode",), ("ipMasqBackend",),
                     ("isDefaultGateway",), ("forceAddress",), ("macspoofchk",), ("runtimeConfig", "mac"),
                     ("dns",), ("ipam", "type"), ("ipam", "routes")],
    "berth-portmap": [("backend",), ("masqAll",), ("runtimeConfig", "portMappings", 0, "hostIP"),
                      ("runtimeConfig", "portMappings", 0, "protocol"), ("prevResult", "ips", 0, "interface")],
    "berth-register": [("timeout",), ("tags",), ("args", "cni", "service"), ("args", "cni", "tags"),
                       ("runtimeConfig", "portMappings")],
    "berth-overlay": [("ipam", "routes"), ("ipam", "type"), ("delegate", "type"), ("delegate", "mtu"),
                      ("ipam", "dataDir")],
}


def base_config(plugin: str, work: str) -> dict:
    ipam = {"type": "berth-ipam", "dataDir": f"{work}/ipam", "ranges": [[{"subnet": "10.250.0.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}
    common = {"cniVersion": "1.1.0", "name": "btfz", "type": plugin}
    if plugin == "berth-ipam":
        return {**common, "ipam": ipam}
    if plugin == "berth-bridge":
        return {**common, "bridge": "btfzbr0", "isGateway": True, "ipMasq": True, "ipam": ipam}
    if plugin == "berth-portmap":
        return {**common, "snat": True, "prevResult": PREV_RESULT,
                "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}}
    if plugin == "berth-register":
        return {**common, "agentSocket": f"{work}/agent.sock", "spoolDir": f"{work}/spool", "prevResult": PREV_RESULT,
                "runtimeConfig": {"aliases": {"btfz": ["web"]},
                                  "portMappings": [{"hostPort": 18080, "containerPort": 80}]}}
    if plugin == "berth-overlay":
        return {**common, "subnetFile": f"{work}/subnet.env", "dataDir": f"{work}/overlay",
                "ipam": {"dataDir": f"{work}/ipam-ovl"}, "delegate": {"bridge": "btfzbr1"}}
    raise ValueError(plugin)


def base_env(netns: str) -> dict:
    return {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "btfz1", "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
            "CNI_PATH": "/nonexistent-btfz", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web1",
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def key_paths(value, prefix=()):
    """Every key path of a JSON value, objects and list items alike."""
    out = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        out.append(prefix + (key,))
        out.extend(key_paths(child, prefix + (key,)))
    return out


def replaced(config: dict, path: tuple, value, delete: bool) -> dict:
    out = copy.deepcopy(config)
    node = out
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return out
    last = path[-1]
    if isinstance(node, dict) or (isinstance(node, list) and isinstance(last, int) and last < len(node)):
        if delete:
            node.pop(last, None) if isinstance(node, dict) else node.pop(last)
        else:
            node[last] = value
    return out


def reaches_a_real_path(value) -> bool:
    """Whether ``value`` names an absolute path under a path key: the test must never write outside --work."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if key in PATH_KEYS and isinstance(child, str) and child.startswith("/"):
                    return True
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
    return False


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20) | st.sampled_from(["", "abc", "é" * 8, "c\n", "1.5", "-1", "10.250.0.1", "::1/128"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
env_text = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=24) \
    | st.sampled_from(["", "c\n", "n\n", "é" * 8, "é" * 15, "a" * 16, ".", "..", "eth0:1", "x y", "../etc"])


@st.composite
def calls(draw, plugin: str, work: str, netns: str):
    """One (command, env, stdin): a valid call with one thing broken, or noise."""
    config = base_config(plugin, work)
    env = base_env(netns)
    env["CNI_COMMAND"] = draw(st.sampled_from(COMMANDS))
    kind = draw(st.sampled_from(["field", "field", "field", "env", "bytes", "json", "deep", "valid"]))
    if kind == "field":
        path = draw(st.sampled_from(key_paths(config) + EXTRA_KEYS[plugin]))
        value = draw(json_values)
        stdin_obj = replaced(config, path, value, draw(st.booleans()))
        if reaches_a_real_path(stdin_obj) and stdin_obj != config:
            stdin_obj = replaced(config, path, "relative/path", False)
        stdin = json.dumps(stdin_obj).encode()
    elif kind == "env":
        var = draw(st.sampled_from(["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS",
                                    "CNI_PATH"]))
        value = draw(env_text)
        if var == "CNI_NETNS" and value.startswith("/"):
            value = value.lstrip("/") or "x"  # never a real namespace such as /proc/1/ns/net
        if var == "CNI_PATH":
            value = value.replace("/", "_")   # never a real plugin directory
        if draw(st.booleans()):
            env.pop(var)
        else:
            env[var] = value
        stdin = json.dumps(config).encode()
    elif kind == "bytes":
        stdin = draw(st.binary(max_size=64))
    elif kind == "json":
        stdin = json.dumps(draw(json_values)).encode()
    elif kind == "deep":
        depth = draw(st.integers(60, 5000))
        where = draw(st.sampled_from(["top", "prevResult", "ipam", "runtimeConfig", "args"]))
        nested = "[" * depth + "]" * depth
        if where == "top":
            stdin = nested.encode()
        else:
            doc = json.dumps({**config, where: "@@"})
            stdin = doc.replace('"@@"', nested).encode()
    else:
        stdin = json.dumps(config).encode()
    return env, stdin


def check_reply(command: str, rc: int, out: bytes, err: bytes, seen: Counter) -> None:
    assert b"Traceback" not in err, err.decode(errors="replace")
    if rc == 0:
        if command == "ADD":
            result = json.loads(out)
            assert isinstance(result, dict) and "cniVersion" in result, out
        seen[(command, 0)] += 1
        return
    body = json.loads(out)
    assert isinstance(body, dict) and isinstance(body.get("code"), int), out
    assert body["code"] != codes.INTERNAL, body
    assert body["code"] in KNOWN_CODES, body
    assert isinstance(body.get("msg"), str) and body["msg"], body
    seen[(command, body["code"])] += 1


class InProcess:
    def __init__(self, plugin: str) -> None:
        self.handlers = invoke.in_process_handlers(plugin)

    def __call__(self, env: dict, stdin: bytes) -> tuple[int, bytes, bytes]:
        reply = skel.dispatch(self.handlers, env, stdin)
        return reply.exit_code, reply.stdout, reply.stderr


class ThroughDaemon:
    """A private daemon in this process and the installed launchers as the runtime would exec them."""

    def __init__(self, plugin: str, cni_bin: str, socket_path: str) -> None:
        from cni_plugins.daemon import CniDaemon

        self.executable = os.path.join(cni_bin, plugin)
        self.socket_path = socket_path
        self.daemon = CniDaemon(socket_path)
        self.daemon.preload()
        self.daemon.bind()
        self.thread = threading.Thread(target=self.daemon.serve_forever, daemon=True)
        self.thread.start()

    def __call__(self, env: dict, stdin: bytes) -> tuple[int, bytes, bytes]:
        proc = subprocess.run([self.executable], input=stdin, env={**env, "BERTH_CNI_SOCKET": self.socket_path},
                              capture_output=True, timeout=120, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    def close(self) -> None:
        self.daemon.stop()
        self.thread.join(60)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plugin", required=True)
    parser.add_argument("--mode", choices=("in-process", "daemon"), required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--netns", required=True)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--cni-bin", default="")
    args = parser.parse_args()
    with open(os.path.join(args.work, "subnet.env"), "w") as handle:
        handle.write("FLANNEL_NETWORK=10.251.0.0/16\nFLANNEL_SUBNET=10.251.7.1/24\nFLANNEL_MTU=1450\n"
                     "FLANNEL_IPMASQ=true\n")
    runner = (InProcess(args.plugin) if args.mode == "in-process"
              else ThroughDaemon(args.plugin, args.cni_bin, os.path.join(args.work, "cni.sock")))
    seen: Counter = Counter()

    @settings(max_examples=args.examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(calls(args.plugin, args.work, args.netns))
    def property_holds(call):
        env, stdin = call
        command = env.get("CNI_COMMAND", "")
        rc, out, err = runner(env, stdin)
        check_reply(command, rc, out, err, seen)
        if command == "ADD" and rc == 0:  # undo what a valid input made, and DEL must answer as well
            rc, out, err = runner({**env, "CNI_COMMAND": "DEL"}, stdin)
            check_reply("DEL", rc, out, err, seen)

    try:
        property_holds()
    finally:
        if isinstance(runner, ThroughDaemon):
            served = runner.daemon.calls_served
            runner.close()
            print(f"daemon served {served} calls")
    print(json.dumps({f"{c} {code}": n for (c, code), n in sorted(seen.items())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
