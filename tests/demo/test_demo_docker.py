"""`berth demo --docker` end to end: the story passes, and nothing it made is left, also when stopped midway."""
from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest

from berth import demo_probe as probe
from berth.private_docker import missing
from tests.conftest import VENV_BIN

pytestmark = [pytest.mark.root, pytest.mark.docker, pytest.mark.service]
BERTH = str(VENV_BIN / "berth")


@pytest.fixture(autouse=True)
def engine_here():
    reason = missing()
    if reason:
        pytest.skip(reason)


def _nothing_left(out: str) -> None:
    workdir = re.search(r"dockerd on (/\S+)/docker\.sock", out).group(1)
    assert not Path(workdir).exists(), out
    assert probe.processes_mentioning(workdir) == {}, out


def test_docker_demo_tells_the_story_and_leaves_nothing():
    done = subprocess.run([BERTH, "demo", "--docker"], capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert re.search(r"All \d+ checks passed", out.splitlines()[-1]), out
    assert "[FAIL]" not in out
    _nothing_left(out)


def test_docker_demo_stopped_midway_cleans_up():
    proc = subprocess.Popen([BERTH, "demo", "--docker"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("3. docker run"):
                proc.send_signal(signal.SIGTERM)
                break
        lines.extend(proc.stdout)
        rc = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines)
    assert rc == 128 + signal.SIGTERM, out
    assert "[FAIL] the demo ran to the end: interrupted by SIGTERM" in out, out
    assert "[ok] engine, plugin, agent and namespaces stopped" in out, out
    _nothing_left(out)
