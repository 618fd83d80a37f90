"""What a cold call loads (issue 16): with no CNI daemon, a common bridge ADD and DEL (the bridge already there) and
an IPAM ADD and DEL run without pyroute2 and without the standard modules that made a cold call ten times the Go
reference's time. Speed itself is measured in bench/fastpath_bench.py; this checks the imports, which decide it.

Each call runs the installed Python launcher — what the native launcher execs when no daemon answers — under
``python -X importtime``, which names every module the process imported.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.bridge.cni_call import call, cni_env
from tests.conftest import CNI_BIN

# Kept off the common path on purpose, each for what it cost a cold call here.
HEAVY = {
    "pyroute2": "netlink goes through datapath.rtnl; pyroute2 only for a new bridge, VLANs, CHECK",
    "dataclasses": "value classes are ipam.record's (dataclasses compile code for every class at import)",
    "typing": "annotations need no typing import",
    "logging": "plugins do not log",
    "subprocess": "only for exec'ing a plugin that is not Berth's own, or the firewall tools",
    "hashlib": "only to tag firewall rules",
}
IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \| *(\S+)$", re.M)


def python_launcher(plugin: str) -> Path:
    beside_native = CNI_BIN / ".berth-python" / plugin
    launcher = beside_native if beside_native.exists() else CNI_BIN / plugin
    if not launcher.exists() or not launcher.read_bytes().startswith(b"#!"):
        pytest.skip(f"no Python launcher for {plugin} in {CNI_BIN} (make venv installs them)")
    return launcher


def cold_call(plugin: str, command: str, config: dict, host: str | None = None, **env_args):
    """Run one call with no daemon through the Python launcher; returns (stdout, names of the modules loaded)."""
    launcher = python_launcher(plugin)
    interpreter = launcher.read_text().splitlines()[0][2:].split()
    argv = [*interpreter, "-X", "importtime", str(launcher)]
    if host:
        argv = ["ip", "netns", "exec", host, *argv]
    env = dict(cni_env(command, **env_args), BERTH_CNI_DAEMON="off")
    proc = subprocess.run(argv, input=json.dumps(config).encode(), env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, (proc.stdout[-500:], proc.stderr[-2000:])
    modules = set(IMPORTED.findall(proc.stderr.decode(errors="replace")))
    assert "cni_plugins.skel" in modules, "importtime listed nothing: the check would prove nothing"
    return proc.stdout, modules


def heavy_in(modules: set[str]) -> dict[str, str]:
    return {name: why for name, why in HEAVY.items() if any(m == name or m.startswith(name + ".") for m in modules)}


@pytest.mark.root
def test_common_bridge_add_and_del_load_no_heavy_module(host, container, make_conf):
    conf = make_conf(ipam_type="berth-ipam")
    first = call("berth-bridge", "ADD", conf, host=host, container_id="btcold1", netns=container())
    assert first.rc == 0, first.out  # the network's first ADD makes the bridge (through pyroute2: allowed)
    netns = container()
    out, modules = cold_call("berth-bridge", "ADD", conf, host, container_id="btcold2", netns=netns)
    assert json.loads(out)["ips"][0]["address"].startswith("10.231.1.")
    assert heavy_in(modules) == {}
    _, modules = cold_call("berth-bridge", "DEL", conf, host, container_id="btcold2", netns=netns)
    assert heavy_in(modules) == {}


def test_ipam_add_and_del_load_no_heavy_module(tmp_path):
    conf = {"cniVersion": "1.0.0", "name": "btcold", "type": "berth-bridge",
            "ipam": {"type": "berth-ipam", "subnet": "10.232.7.0/24", "dataDir": str(tmp_path)}}
    out, modules = cold_call("berth-ipam", "ADD", conf, container_id="btcold3", netns="/run/netns/btcold")
    assert json.loads(out)["ips"][0]["address"] == "10.232.7.2/24"
    assert heavy_in(modules) == {}
    _, modules = cold_call("berth-ipam", "DEL", conf, container_id="btcold3", netns="/run/netns/btcold")
    assert heavy_in(modules) == {}
    assert not (tmp_path / "btcold" / "10.232.7.2").exists()
