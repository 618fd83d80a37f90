"""Whom the launchers trust, and the daemon's bounds (issue 14, point 4), for both launchers.

Impostors here are real listeners run as ``nobody`` (uid 65534) speaking the real protocol, build id included (it
is no secret: it sits in every launcher); the daemon is the real ``berth cni-daemon`` with the echo plugin.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from cni_plugins import codes, launcher as wire
from cni_plugins.buildinfo import build_id
from cni_plugins.daemon import CniDaemon, UnsafeSocketDirectory
from tests.core.test_fastpath import (CONFIG, call, cni_env, daemon, launcher, served_by,  # noqa: F401
                                      start_held_add, workdir)
from tests.waiting import wait_until

pytestmark = [pytest.mark.root, pytest.mark.service]
NOBODY = 65534
FAKE_ANSWER = {"cniVersion": "1.0.0", "ips": [{"address": "6.6.6.6/32"}]}

IMPOSTOR = """
import os, socket, sys
sys.path.insert(0, sys.argv[3])
from cni_plugins import launcher as wire
path, mode = sys.argv[1], sys.argv[2]
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
if mode == "bind-as-root":  # the socket file is root's, but the listening process is not
    listener.bind(path); os.chmod(path, 0o777)
os.setgid(65534); os.setuid(65534)
if mode != "bind-as-root":
    listener.bind(path)
listener.listen(8)
print("ready", flush=True)
answer = open(sys.argv[4], "rb").read()
while True:
    conn, _ = listener.accept()
    with conn:
        conn.sendall(wire.encode_greeting(sys.argv[5]))
        try:
            conn.settimeout(5)
            conn.recv(1 << 20)
            conn.sendall(wire.STATUS_ACCEPTED + wire.pack_fields((0).to_bytes(4, "big"), answer, b""))
        except OSError:
            pass
"""


def start_impostor(socket_path, mode, tmp_path):
    answer = tmp_path / "answer.json"
    answer.write_text(json.dumps(FAKE_ANSWER))
    os.chmod(tmp_path, 0o755)
    os.chmod(answer, 0o644)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([sys.executable, "-c", IMPOSTOR, str(socket_path), mode, repo, str(answer), build_id()],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def stop(proc):
    proc.kill()
    proc.wait(10)


def test_a_listener_in_a_directory_another_user_owns_is_not_trusted(launcher, workdir, tmp_path):
    """The issue's case: a non-root user owns the socket directory and answers with 6.6.6.6."""
    directory = workdir / "userdir"
    directory.mkdir()
    os.chown(directory, NOBODY, NOBODY)
    impostor = start_impostor(directory / "cni.sock", "bind-as-nobody", tmp_path)
    try:
        code, body = call(launcher, cni_env(BERTH_CNI_SOCKET=str(directory / "cni.sock")))
    finally:
        stop(impostor)
    assert code == 0 and body["ips"][0]["address"].startswith("10.88.0."), body  # ran in process
    assert served_by(body) != impostor.pid


def test_a_peer_of_another_uid_is_not_trusted_even_in_a_root_directory(launcher, workdir, tmp_path):
    """SO_PEERCRED: root's directory and root's socket file, but the listening process is nobody's."""
    directory = workdir / "rootdir"
    directory.mkdir(mode=0o700)
    impostor = start_impostor(directory / "cni.sock", "bind-as-root", tmp_path)
    try:
        code, body = call(launcher, cni_env(BERTH_CNI_SOCKET=str(directory / "cni.sock")))
    finally:
        stop(impostor)
    assert code == 0 and body["ips"][0]["address"].startswith("10.88.0."), body


def test_a_group_writable_directory_is_not_trusted(launcher, daemon):
    os.chmod(daemon.socket_path.parent, 0o770)
    code, body = call(launcher, cni_env(BERTH_CNI_SOCKET=str(daemon.socket_path)))
    assert code == 0 and served_by(body) != daemon.proc.pid
    os.chmod(daemon.socket_path.parent, 0o700)
    code, body = call(launcher, cni_env(BERTH_CNI_SOCKET=str(daemon.socket_path)))
    assert code == 0 and served_by(body) == daemon.proc.pid


@pytest.mark.parametrize("owner, mode", [(0, 0o777), (0, 0o730), (NOBODY, 0o700)])
def test_the_daemon_refuses_to_start_where_another_user_could_write(workdir, owner, mode):
    directory = workdir / "sock"
    directory.mkdir()
    os.chmod(directory, mode)
    os.chown(directory, owner, owner)
    with pytest.raises(UnsafeSocketDirectory):
        CniDaemon(str(directory / "cni.sock"), build_id="x").bind()
    assert not (directory / "cni.sock").exists()


def test_a_stalled_daemon_gets_code_11_and_the_call_does_not_run_twice(launcher, daemon, workdir):
    proc, gate = start_held_add(launcher, daemon, workdir, "stalled")
    (workdir / "started").unlink()
    # The held launcher was started without a deadline of its own: run a second held ADD with a short one.
    env = cni_env("ADD", "stalled2", BERTH_CNI_SOCKET=str(daemon.socket_path), BT_HOLD_UNTIL=str(gate),
                  BT_STARTED_FILE=str(workdir / "started2"), BERTH_CNI_REPLY_TIMEOUT="1")
    second = subprocess.run([str(launcher)], input=CONFIG, env=env, capture_output=True, timeout=60)
    body = json.loads(second.stdout)
    assert second.returncode == 1 and body["code"] == codes.TRY_AGAIN_LATER, body
    assert (workdir / "started2").exists()  # the daemon did start it ...
    (workdir / "started2").unlink()
    gate.touch()
    assert proc.wait(30) == 0
    assert not (workdir / "started2").exists()  # ... and the launcher did not run it a second time


def _daemon_status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _raw_connection(socket_path) -> socket.socket:
    """A connected socket; a full listen backlog (EAGAIN) is waited out, as a flood of clients would."""
    def connected():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        try:
            sock.connect(str(socket_path))
        except BlockingIOError:
            sock.close()
            return None
        return sock
    return wait_until(connected, interval=0.01, what="a connection")


def test_an_oversized_frame_is_refused_before_it_is_read(launcher, daemon):
    rss_before = _daemon_status(daemon.proc.pid, "VmRSS")
    sock = _raw_connection(daemon.socket_path)
    greeting = sock.recv(64)
    assert greeting.startswith(wire.MAGIC)
    header = wire.MAGIC + bytes([wire.PROTOCOL_VERSION]) + wire.pack_fields(build_id().encode(), b"bt-echo", b"")
    sock.sendall(header + (300 << 20).to_bytes(4, "big"))
    chunk = b"\0" * (1 << 20)
    try:
        for _ in range(300):
            sock.sendall(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed on us: what should happen
    else:
        assert sock.recv(1) == b""  # refused, not answered
    sock.close()
    assert _daemon_status(daemon.proc.pid, "VmRSS") - rss_before < 64 << 10  # KiB: it never held the frame
    code, body = call(launcher, cni_env(BERTH_CNI_SOCKET=str(daemon.socket_path)))
    assert code == 0 and served_by(body) == daemon.proc.pid  # and it still serves


def test_stdin_over_the_cap_runs_in_process_and_is_refused(launcher, daemon):
    code, body = call(launcher, cni_env(BERTH_CNI_SOCKET=str(daemon.socket_path)),
                      stdin=CONFIG + b" " * (16 << 20))
    assert code == 1 and body["code"] == codes.DECODE_FAILURE, body


def test_slow_connections_are_capped_and_closed_after_the_request_deadline(launcher, daemon):
    from cni_plugins.daemon import MAX_CONNECTIONS

    idle = [_raw_connection(daemon.socket_path) for _ in range(300)]
    try:
        threads = wait_until(lambda: _daemon_status(daemon.proc.pid, "Threads"), what="thread count")
        assert threads <= MAX_CONNECTIONS + 16
        code, body = call(launcher, cni_env(BERTH_CNI_SOCKET=str(daemon.socket_path)))
        assert code == 0  # served, or run in process while the daemon is full: never stuck

        def all_closed() -> bool:
            for sock in idle:
                sock.settimeout(0.5)
                try:
                    while sock.recv(4096):
                        pass
                except socket.timeout:
                    return False
                except OSError:
                    pass
            return True
        wait_until(all_closed, timeout=60, what="the daemon to close idle connections")
    finally:
        for sock in idle:
            sock.close()
    code, body = call(launcher, cni_env(BERTH_CNI_SOCKET=str(daemon.socket_path)))
    assert code == 0 and served_by(body) == daemon.proc.pid


def test_an_environment_over_the_cap_runs_in_process(launcher, daemon):
    """1 MiB of environment is the frame cap: a launcher never sends more (the daemon would refuse it anyway)."""
    padding = {f"BT_PAD{i}": "x" * (120 << 10) for i in range(10)}  # execve allows 128 KiB per variable
    code, body = call(launcher, cni_env(BERTH_CNI_SOCKET=str(daemon.socket_path), **padding))
    assert code == 0 and served_by(body) != daemon.proc.pid
    code, body = call(launcher, cni_env(BERTH_CNI_SOCKET=str(daemon.socket_path)))
    assert code == 0 and served_by(body) == daemon.proc.pid
