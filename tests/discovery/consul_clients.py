"""The two Consul client libraries that are not Python packages of the venv, each run as its own process:
python-consul 0.7.1 (Debian's python3-consul, under the system interpreter) and node-consul 2 (npm ``consul``,
installed by ``make node-clients`` (part of ``make deps``) into tests/discovery/clients/node_modules)."""
from __future__ import annotations

import json
import queue
import subprocess
import threading
from pathlib import Path

import pytest

CLIENTS = Path(__file__).parent / "clients"
SYSTEM_PYTHON = "/usr/bin/python3"


def _argv(kind: str, port: int, token: str | None, job: dict) -> list[str]:
    if kind == "python-consul":
        if subprocess.run([SYSTEM_PYTHON, "-c", "import consul"], capture_output=True).returncode:
            pytest.fail("python-consul is missing: apt-get install python3-consul (make apt installs it)")
        script = [SYSTEM_PYTHON, str(CLIENTS / "python_consul_client.py")]
    elif kind == "node-consul":
        if not (CLIENTS / "node_modules" / "consul").is_dir():
            pytest.fail("node-consul is missing: run `make node-clients` (npm install in tests/discovery/clients)")
        script = ["node", str(CLIENTS / "node_consul_client.js")]
    else:
        raise ValueError(kind)
    return [*script, str(port), token or "-", json.dumps(job)]


def run_client(kind: str, port: int, job: dict, token: str | None = None, timeout: float = 120) -> list[dict]:
    """Run the client to completion; its answers, one dict per call."""
    proc = subprocess.run(_argv(kind, port, token, job), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


class BackgroundClient:
    """A client process started in the background (a blocking query, a watch, a reader loop); its answers are
    read on a thread into a queue, so waiting for the next one has a bound."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._answers: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.strip():
                self._answers.put(json.loads(line))
        self._answers.put(None)

    def next_answer(self, timeout: float = 60.0) -> dict:
        """The next answer; fails the test when none comes within ``timeout`` (that bounds a hang)."""
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no answer from {self.proc.args[:2]} within {timeout:.0f}s")
        if answer is None:
            pytest.fail(f"{self.proc.args[:2]} exited without answering: {self.proc.stderr.read()}")
        return answer

    def all_answers(self, timeout: float = 120.0) -> list[dict]:
        """Every answer, once the process has ended by itself."""
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        out = []
        while (answer := self._answers.get_nowait()) is not None:
            out.append(answer)
        assert self.proc.returncode == 0, self.proc.stderr.read()
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)
        self.proc.stdout.close()
        self.proc.stderr.close()


def start_client(kind: str, port: int, job: dict, token: str | None = None) -> BackgroundClient:
    return BackgroundClient(_argv(kind, port, token, job))
