"""The CNI daemon started by socket activation, exactly as systemd starts it (``systemd-socket-activate`` speaks
the same LISTEN_FDS protocol; this machine's PID 1 is not systemd): the first launcher call starts the daemon and
is served by it, later calls by the same process, and after an idle period it exits and leaves the socket to its
owner."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO_ROOT, VENV_BIN
from tests.core.test_fastpath import MODULE, PLUGIN, call, cni_env, launcher, served_by, workdir  # noqa: F401
from tests.waiting import stop_process, wait_until

pytestmark = [pytest.mark.service,
              pytest.mark.skipif(not shutil.which("systemd-socket-activate"), reason="needs systemd's tools")]

IDLE_EXIT = 3.0


@pytest.fixture
def activated(workdir):  # noqa: F811
    socket_path = workdir / "run" / "cni.sock"
    socket_path.parent.mkdir(mode=0o755)
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", str(socket_path), "-E", f"PATH={os.environ.get('PATH', '/usr/bin:/bin')}",
         "-E", f"PYTHONPATH={REPO_ROOT}", str(VENV_BIN / "berth"), "cni-daemon", "--socket", str(socket_path),
         "--idle-exit", str(IDLE_EXIT), "--log-level", "INFO", "--extra-plugin", f"{PLUGIN}={MODULE}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    try:
        wait_until(socket_path.exists, what="systemd-socket-activate listening")
        yield proc, socket_path
    finally:
        stop_process(proc)


def command_line(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def test_first_call_starts_the_daemon_and_later_calls_reuse_it(launcher, activated):  # noqa: F811
    proc, socket_path = activated
    assert "cni-daemon" not in command_line(proc.pid).split(" ", 1)[0]  # nothing started before a call
    env = lambda container: cni_env("ADD", container, BERTH_CNI_SOCKET=str(socket_path))  # noqa: E731
    code, body = call(launcher, env("sa1"))
    assert code == 0 and served_by(body) == proc.pid, body  # the call that woke it was served by it
    assert "cni-daemon" in command_line(proc.pid)
    for container in ("sa2", "sa3"):
        code, body = call(launcher, env(container))
        assert code == 0 and served_by(body) == proc.pid  # no restart between calls


def test_idle_daemon_exits_and_leaves_the_socket_to_its_owner(launcher, activated):  # noqa: F811
    proc, socket_path = activated
    code, body = call(launcher, cni_env("ADD", "idle1", BERTH_CNI_SOCKET=str(socket_path)))
    assert code == 0 and served_by(body) == proc.pid
    assert wait_until(lambda: proc.poll() is not None, what="the daemon's idle exit") and proc.returncode == 0
    output = proc.stdout.read().decode(errors="replace")
    assert "idle for" in output, output
    assert socket_path.exists()  # the socket is the init system's: the daemon never removes it
    code, body = call(launcher, cni_env("ADD", "idle2", BERTH_CNI_SOCKET=str(socket_path)))
    assert code == 0 and served_by(body) != proc.pid  # nobody listens now: the launcher runs the call itself
