"""The build id names the CNI path only: every module a plugin call can load is in it, and nothing else is."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

from cni_plugins import buildinfo

LOAD_EVERYTHING = """
import importlib, json, sys
from cni_plugins import invoke
for module in [*invoke.IN_PROCESS.values(), "cni_plugins.daemon", "cni_plugins.launcher", "datapath.firewall_nft",
               "datapath.firewall_iptables", "cni_plugins.bridge_config", "ipam.resolv"]:
    importlib.import_module(module)
root = sys.argv[1]
print(json.dumps(sorted(m.__file__[len(root) + 1:] for m in list(sys.modules.values())
                        if getattr(m, "__file__", None) and m.__file__.startswith(root + "/")
                        and "/.venv/" not in m.__file__)))
"""


def test_every_module_the_plugins_load_is_in_the_build_id():
    root = str(buildinfo.ROOT)
    out = subprocess.run([sys.executable, "-c", LOAD_EVERYTHING, root], capture_output=True, text=True,
                         check=True, cwd=root).stdout
    loaded = set(json.loads(out))
    covered = {str(p.relative_to(buildinfo.ROOT)) for p in buildinfo.sources()}
    assert loaded - covered == set()
    assert not any(name.startswith(("berth/", "store/", "dnsd/", "docker_plugin/")) for name in loaded)


def test_editing_another_room_keeps_the_id_and_editing_the_cni_path_changes_it(tmp_path):
    for package in ("cni_plugins", "datapath", "ipam", "overlay", "discovery", "berth", "store", "docker_plugin"):
        shutil.copytree(buildinfo.ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    before = buildinfo.digest(tmp_path)
    assert before == buildinfo.build_id()
    (tmp_path / "berth" / "demo_text.py").write_text("# the demo's words changed\n")
    with open(tmp_path / "store" / "__init__.py", "a") as handle:
        handle.write("# a datastore edit\n")
    with open(tmp_path / "discovery" / "agent.py", "a") as handle:
        handle.write("# an agent edit\n")
    with open(tmp_path / "docker_plugin" / "server.py", "a") as handle:
        handle.write("# a Docker face edit\n")
    assert buildinfo.digest(tmp_path) == before
    with open(tmp_path / "datapath" / "link_ops.py", "a") as handle:
        handle.write("# a datapath edit\n")
    after_datapath = buildinfo.digest(tmp_path)
    assert after_datapath != before
    with open(tmp_path / "ipam" / "config.py", "a") as handle:
        handle.write("# an IPAM edit\n")
    assert buildinfo.digest(tmp_path) not in (before, after_datapath)


def test_the_makefile_reinstalls_launchers_from_the_same_list():
    makefile = (buildinfo.ROOT / "Makefile").read_text()
    assert "-m cni_plugins.buildinfo --sources" in makefile
    listed = subprocess.run([sys.executable, "-m", "cni_plugins.buildinfo", "--sources"], capture_output=True,
                            text=True, check=True, cwd=buildinfo.ROOT).stdout.split()
    assert listed == [str(p.relative_to(buildinfo.ROOT)) for p in buildinfo.sources()]
