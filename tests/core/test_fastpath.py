"""The thin launcher and the CNI daemon: same answers either way, and every way the daemon can fail falls back.

A small echo plugin (``tests/core/echo_plugin.py``) stands in for the real plugins here so these mechanics run
without root; the plugins' own tests drive the real ones through both paths.
"""
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from berth.install_cni import LAUNCHER_MODULE, build_native_launcher, find_compiler, write_python_launchers
from tests.conftest import REPO_ROOT, VENV_BIN

PLUGIN = "bt-echo"
MODULE = "tests.core.echo_plugin"
CONFIG = json.dumps({"cniVersion": "1.0.0", "name": "btnet", "type": PLUGIN}).encode()


def cni_env(command="ADD", container="c1", **extra):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": "/run/netns/none",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.update(extra)
    return env


@pytest.fixture
def workdir():
    path = Path(tempfile.mkdtemp(prefix="bt-fastpath-"))
    os.chmod(path, 0o755)  # the non-root test runs the launcher as nobody
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture(params=["python", "native"])
def launcher(request, workdir):
    """The plugin executable as `berth install-cni` lays it out: the Python launcher, or the native one with the
    Python launcher beside it as its fallback."""
    module_dir = workdir / ".berth-python"
    module_dir.mkdir()
    python_dir = module_dir if request.param == "native" else workdir
    [python_launcher] = write_python_launchers(python_dir, {PLUGIN: MODULE}, module_dir,
                                               extra_paths=(str(REPO_ROOT),))
    if request.param == "python":
        return python_launcher
    compiler = find_compiler()
    if compiler is None:
        pytest.skip("no C compiler: the native launcher is not installed on this machine either")
    native = workdir / PLUGIN
    native.write_bytes(build_native_launcher(python_dir, compiler))
    native.chmod(0o755)
    return native


class DaemonProcess:
    def __init__(self, socket_path: Path):
        self.socket_path = socket_path
        self.log = socket_path.parent.parent / "daemon.log"
        self.proc = None

    def start(self):
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "berth"), "cni-daemon", "--socket", str(self.socket_path), "--log-level", "INFO",
                 "--extra-plugin", f"{PLUGIN}={MODULE}"], env=env, cwd=REPO_ROOT, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.socket_path.exists():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError("cni-daemon exited at start")
            time.sleep(0.02)
        raise RuntimeError("cni-daemon did not start")

    def calls_served(self) -> int:
        """Stop the daemon and return how many calls it says it served (its last log line)."""
        self.stop()
        found = re.findall(r"stopped after serving (\d+) calls", self.log.read_text(errors="replace"))
        assert found, self.log.read_text(errors="replace")[-2000:]
        return int(found[-1])

    def stop(self, signum=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def daemon(workdir):
    d = DaemonProcess(workdir / "run" / "cni.sock")
    try:
        yield d.start()
    finally:
        d.stop(signal.SIGKILL)


def call(launcher, env, stdin=CONFIG, **kwargs):
    proc = subprocess.run([str(launcher)], input=stdin, env=env, capture_output=True, timeout=30, **kwargs)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout else None


def served_by(body):
    return int(body["dns"]["options"][0].split(":")[1])


def test_without_daemon_the_launcher_runs_the_plugin_in_process(launcher, workdir):
    code, body = call(launcher, cni_env(BERTH_CNI_SOCKET=str(workdir / "absent.sock")))
    assert code == 0 and body["ips"][0]["address"].startswith("10.88.0.")


def test_daemon_and_in_process_give_identical_answers(launcher, daemon):
    for command, container, stdin in [("ADD", "c1", CONFIG), ("ADD", "c2", CONFIG),
                                      ("ADD", "c3", b"{not json"), ("DEL", "c1", CONFIG),
                                      ("ADD", "bad/id", CONFIG), ("CHECK", "c1", CONFIG)]:
        via_daemon = call(launcher, cni_env(command, container, BERTH_CNI_SOCKET=str(daemon.socket_path)), stdin)
        in_process = call(launcher, cni_env(command, container, BERTH_CNI_DAEMON="off"), stdin)
        if via_daemon[1] and "dns" in via_daemon[1]:
            assert served_by(via_daemon[1]) == daemon.proc.pid
            assert served_by(in_process[1]) != daemon.proc.pid
            for body in (via_daemon[1], in_process[1]):
                body["dns"].pop("options")
        assert via_daemon == in_process, (command, container)


def test_version_is_answered_without_daemon_or_imports(launcher):
    code, body = call(launcher, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}')
    assert code == 0 and body["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def test_parallel_calls_through_daemon_all_answered_correctly(launcher, daemon):
    env = lambda i: cni_env("ADD", f"par{i}", BERTH_CNI_SOCKET=str(daemon.socket_path))  # noqa: E731
    procs = [subprocess.Popen([str(launcher)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env(i))
             for i in range(16)]
    outputs = [json.loads(p.communicate(CONFIG, timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert all(body["ips"][0]["address"].startswith("10.88.0.") for body in outputs)
    # A launcher may run its call itself when the daemon is slow to accept (a loaded machine): every answer is
    # still right, and the daemon's own count says which ones it served.
    via_daemon = [body for body in outputs if served_by(body) == daemon.proc.pid]
    assert via_daemon, "no call reached the daemon"
    assert daemon.calls_served() == len(via_daemon)


def test_stale_socket_file_from_dead_daemon_falls_back_without_hanging(launcher, workdir):
    stale = workdir / "stale.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(stale))
    listener.close()  # the file stays, nobody listens: like a daemon killed with SIGKILL
    code, body = call(launcher, cni_env(BERTH_CNI_SOCKET=str(stale)))
    assert code == 0 and body["ips"]


def test_launcher_of_another_build_falls_back_instead_of_mixing_code(launcher, daemon, workdir):
    # the native launcher carries the build id itself; the Python one in the module its stub imports
    native = not launcher.read_bytes().startswith(b"#!")
    carrier = launcher if native else workdir / ".berth-python" / f"{LAUNCHER_MODULE}.py"
    data = carrier.read_bytes()
    daemon_build_id = __import__("cni_plugins.buildinfo").buildinfo.build_id().encode()
    assert daemon_build_id in data
    carrier.write_bytes(data.replace(daemon_build_id, b"0" * len(daemon_build_id)))
    code, body = call(launcher, cni_env(BERTH_CNI_SOCKET=str(daemon.socket_path)))
    assert code == 0 and served_by(body) != daemon.proc.pid


def start_held_add(launcher, daemon, workdir, container):
    """An ADD the daemon has accepted and is running, held until ``gate`` exists: (process, gate)."""
    gate, started = workdir / "gate", workdir / "started"
    env = cni_env("ADD", container, BERTH_CNI_SOCKET=str(daemon.socket_path), BT_HOLD_UNTIL=str(gate),
                  BT_STARTED_FILE=str(started))
    proc = subprocess.Popen([str(launcher)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    proc.stdin.write(CONFIG)
    proc.stdin.close()
    deadline = time.monotonic() + 20
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert started.exists(), "the daemon never started the held ADD"
    return proc, gate


def test_daemon_killed_mid_add_reports_try_again_and_del_still_works(launcher, daemon, workdir):
    proc, _ = start_held_add(launcher, daemon, workdir, "held")
    daemon.stop(signal.SIGKILL)
    body = json.loads(proc.stdout.read())
    assert proc.wait(10) == 1 and body["code"] == 11
    # The runtime's DEL now reaches no daemon and runs in process.
    code, _ = call(launcher, cni_env("DEL", "held", BERTH_CNI_SOCKET=str(daemon.socket_path)))
    assert code == 0


def test_graceful_restart_completes_calls_in_flight(launcher, daemon, workdir):
    proc, gate = start_held_add(launcher, daemon, workdir, "inflight")
    old_pid = daemon.proc.pid
    daemon.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    while daemon.socket_path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not daemon.socket_path.exists(), "a stopping daemon withdraws its socket"
    # While the old daemon drains, a new call must not wait for it: it runs in process.
    code, body = call(launcher, cni_env("ADD", "during", BERTH_CNI_SOCKET=str(daemon.socket_path)))
    assert code == 0 and served_by(body) != old_pid
    gate.touch()
    raw = proc.stdout.read()
    assert proc.wait(10) == 0, raw
    assert served_by(json.loads(raw)) == old_pid
    assert daemon.proc.wait(10) == 0


def _as_nobody_try_daemon(socket_path) -> str:
    """In a child process running as nobody: what happens when it speaks the protocol to the daemon."""
    from cni_plugins import launcher as wire

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        outcome = b"answered"
        try:
            os.setgid(65534)
            os.setuid(65534)
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.settimeout(10)
            client.connect(str(socket_path))
            client.sendall(wire.encode_request("x", PLUGIN, {}, CONFIG))
            if client.recv(1) == b"":
                outcome = b"closed"
        except PermissionError:
            outcome = b"permission-denied"
        except (ConnectionResetError, BrokenPipeError):  # closed while we sent (EPIPE) or after (ECONNRESET)
            outcome = b"closed"
        except OSError as exc:
            outcome = f"oserror:{exc}".encode()
        os.write(write_end, outcome)
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as result:
        return result.read().decode()


@pytest.mark.root
def test_non_root_user_cannot_drive_the_daemon(daemon):
    assert oct(daemon.socket_path.stat().st_mode & 0o777) == "0o600"
    assert _as_nobody_try_daemon(daemon.socket_path) == "permission-denied"
    # Even with the directory and file opened up, the daemon's peer-credential check refuses the call.
    os.chmod(daemon.socket_path.parent, 0o755)
    os.chmod(daemon.socket_path, 0o666)
    assert _as_nobody_try_daemon(daemon.socket_path) == "closed"


@pytest.mark.root
def test_launcher_in_another_network_namespace_runs_the_call_itself(launcher, daemon, netns):
    """A plugin exec'd inside another namespace acts on that "host": the daemon must not answer for it."""
    host = netns("host")
    env = cni_env(BERTH_CNI_SOCKET=str(daemon.socket_path))
    proc = subprocess.run(["ip", "netns", "exec", host, str(launcher)], input=CONFIG, env=env,
                          capture_output=True, timeout=30)
    assert proc.returncode == 0
    assert served_by(json.loads(proc.stdout)) != daemon.proc.pid
    same_host = call(launcher, env)
    assert served_by(same_host[1]) == daemon.proc.pid
