"""Property tests (hypothesis): arbitrary JSON and environment values into every plugin's ADD/DEL/CHECK/GC/STATUS,
in process and through a private CNI daemon; every answer is a success or a spec error, never 999 or a traceback.

The worker (bad_input_worker.py) runs inside a test-made host namespace with every configured path in a temporary
directory, so a valid input's bridge, veths and rules vanish with the namespace. Set BERTH_FUZZ_EXAMPLES to run more.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN

pytestmark = pytest.mark.root
WORKER = Path(__file__).with_name("bad_input_worker.py")
PLUGINS = ("berth-ipam", "berth-bridge", "berth-portmap", "berth-register", "berth-overlay")
EXAMPLES = {"in-process": 400, "daemon": 100}


@pytest.fixture(scope="module")
def private_launchers(tmp_path_factory):
    """Launchers of this build in a directory of the test's own, pointed at a socket of its own."""
    root = tmp_path_factory.mktemp("launchers")
    subprocess.run([str(VENV_BIN / "berth"), "install-cni", "--dir", str(root / "bin"),
                    "--socket", str(root / "unused.sock")], check=True, capture_output=True)
    return root / "bin"


@pytest.mark.parametrize("mode", ["in-process", "daemon"])
@pytest.mark.parametrize("plugin", PLUGINS)
def test_no_input_gets_an_internal_error(plugin, mode, netns, tmp_path, private_launchers):
    host, container = netns("host"), netns("ctr")
    work = tmp_path / "work"
    work.mkdir()
    examples = int(os.environ.get("BERTH_FUZZ_EXAMPLES", EXAMPLES[mode]))
    proc = subprocess.run(
        ["ip", "netns", "exec", host, sys.executable, str(WORKER), "--plugin", plugin, "--mode", mode,
         "--work", str(work), "--netns", netns.path(container), "--examples", str(examples),
         "--cni-bin", str(private_launchers)],
        capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    if mode == "daemon":  # the calls really went through the daemon, not the launchers' own fallback
        served = int(proc.stdout.split("daemon served ", 1)[1].split()[0])
        assert served >= examples // 2, proc.stdout
