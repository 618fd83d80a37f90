"""Per-attachment ordering in the CNI daemon (issue 14, point 3): an ADD interrupted by a kill, then its DEL, leaves
nothing behind — links, addresses, IPAM reservations, firewall rules, agent registrations, saved overlay configs.

The worker (race_worker.py) runs inside a test-made host namespace with the launchers of this build installed in a
temporary directory. The deterministic race holds the ADD at a barrier inside the daemon, kills its launcher and
sends the DEL, which must queue behind the ADD. The slow tier kills launcher, plugin or daemon at random points of
an ADD, at least 100 times per plugin, and reports leftovers by kind (all must be zero).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN

pytestmark = pytest.mark.root
WORKER = Path(__file__).with_name("race_worker.py")
PLUGINS = ("berth-ipam", "berth-bridge", "berth-portmap", "berth-register", "berth-overlay")
KILLS = int(os.environ.get("BERTH_KILLS", "100"))


@pytest.fixture(scope="module")
def private_launchers(tmp_path_factory):
    root = tmp_path_factory.mktemp("launchers")
    subprocess.run([str(VENV_BIN / "berth"), "install-cni", "--dir", str(root / "bin"),
                    "--socket", str(root / "unused.sock")], check=True, capture_output=True)
    return root / "bin"


def run_worker(mode, plugin, netns, tmp_path, launchers, *extra):
    host, container = netns("host"), netns("ctr")
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    proc = subprocess.run(["ip", "netns", "exec", host, sys.executable, str(WORKER), "--mode", mode, "--plugin",
                           plugin, "--launchers", str(launchers), "--work", str(work), "--netns-name", container,
                           *extra], capture_output=True, text=True, timeout=3600, check=False)
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-6000:]
    report = json.loads(lines[-1])
    return proc, report


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_del_that_arrives_during_its_add_waits_and_undoes_it(plugin, netns, tmp_path, private_launchers):
    proc, report = run_worker("race", plugin, netns, tmp_path, private_launchers)
    assert report["del waited for add"] is True, report
    assert report["leftovers"] == {kind: 0 for kind in report["leftovers"]}, report
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("plugin", PLUGINS)
def test_kills_at_random_points_of_add_leave_nothing_behind(plugin, netns, tmp_path, private_launchers):
    proc, report = run_worker("kill", plugin, netns, tmp_path, private_launchers, "--kills", str(KILLS))
    print(plugin, json.dumps(report))
    assert sum(report["kills"].values()) >= KILLS
    assert report["leftovers"] == {kind: 0 for kind in report["leftovers"]}, report
    assert proc.returncode == 0, proc.stderr[-4000:]
