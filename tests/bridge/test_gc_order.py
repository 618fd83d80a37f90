"""A GC through the CNI daemon while an ADD of the same network is half done: the GC waits for it, and what the
ADD reserved survives, though the runtime's list of valid attachments (made before the ADD finished) omits it.

A real ``berth cni-daemon`` and the launchers of this build, in a test-made host namespace (``nsenter --net``
keeps the daemon and the launchers in one mount namespace, as the daemon requires). The bridge's IPAM is a
delegate that is the real berth-ipam, except that the ADD of container ``held`` waits at a gate after its address
is reserved: the ADD is held mid-way.
"""
from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.bridge.conftest import reservations
from tests.conftest import VENV_BIN
from tests.waiting import stop_process, wait_until

pytestmark = [pytest.mark.root, pytest.mark.service]

SLOW_IPAM = """#!/bin/sh
# berth-ipam, except that container "held"'s ADD waits for a gate once its address is reserved
out=$({berth_ipam})
rc=$?
if [ "$CNI_COMMAND" = ADD ] && [ "$CNI_CONTAINERID" = held ]; then
    touch {reached}
    while [ ! -e {gate} ]; do sleep 0.05; done
fi
printf '%s\\n' "$out"
exit $rc
"""


class DaemonHost:
    """A private ``berth cni-daemon`` in the test's host namespace, and launchers that reach it."""

    def __init__(self, work, host: str) -> None:
        self.launchers, self.delegates = work / "cni-bin", work / "delegates"
        self.socket, self.log = work / "run" / "cni.sock", work / "daemon.log"
        self.gate, self.reached = self.delegates / "held.gate", self.delegates / "held.reached"
        self.in_host = ["nsenter", f"--net=/run/netns/{host}"]
        self.started: list[subprocess.Popen] = []
        self.delegates.mkdir()
        script = self.delegates / "bt-slow-ipam"
        script.write_text(SLOW_IPAM.format(berth_ipam=VENV_BIN / "berth-ipam", gate=self.gate, reached=self.reached))
        script.chmod(0o755)
        subprocess.run([str(VENV_BIN / "berth"), "install-cni", "--dir", str(self.launchers), "--socket",
                        str(self.socket), "--launcher", "python"], check=True, capture_output=True)
        with open(self.log, "wb") as log:
            self.daemon = subprocess.Popen([*self.in_host, str(VENV_BIN / "berth"), "cni-daemon", "--socket",
                                            str(self.socket), "--log-level", "INFO"], stderr=log)
        wait_until(lambda: self.socket.exists() or self.daemon.poll() is not None, timeout=60,
                   what="the CNI daemon's socket")
        assert self.daemon.poll() is None, self.log.read_text()

    def start(self, command: str, config: dict, container_id: str = "", netns: str = "") -> subprocess.Popen:
        """berth-bridge ``command`` as a runtime execs it, answered by the daemon (never run in process)."""
        env = {"CNI_COMMAND": command, "CNI_PATH": str(self.delegates), "CNI_IFNAME": "eth0",
               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "BERTH_CNI_SOCKET": str(self.socket),
               "CNI_CONTAINERID": container_id, "CNI_NETNS": netns}
        proc = subprocess.Popen([*self.in_host, str(self.launchers / "berth-bridge")], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env={k: v for k, v in env.items() if v})
        proc.stdin.write(json.dumps(config).encode())
        proc.stdin.close()
        self.started.append(proc)
        return proc

    def stop(self) -> int:
        """Stop everything; the number of calls the daemon says it served."""
        self.gate.touch()
        for proc in self.started:
            stop_process(proc)
        stop_process(self.daemon, grace=30)
        found = re.findall(r"stopped after serving (\d+) calls", self.log.read_text(errors="replace"))
        return int(found[-1]) if found else -1


@pytest.fixture
def daemon_host(tmp_path, host):
    made = DaemonHost(tmp_path, host)
    try:
        yield made
    finally:
        made.stop()


def finished(proc: subprocess.Popen) -> tuple[int, dict]:
    out = proc.stdout.read()
    return proc.wait(60), json.loads(out) if out.strip() else {}


def test_a_gc_waits_for_an_add_of_its_network_in_flight_and_keeps_what_it_reserved(daemon_host, container,
                                                                                    make_conf, ipam_dir):
    conf = make_conf(ipam_type="bt-slow-ipam", cniVersion="1.1.0")
    other = make_conf(subnets=("10.231.2.0/24",), ipam_type="bt-slow-ipam", cniVersion="1.1.0")
    held_ns, stale_ns = container(), container()
    code, out = finished(daemon_host.start("ADD", conf, "stale", stale_ns))
    assert code == 0, out
    held = daemon_host.start("ADD", conf, "held", held_ns)
    wait_until(lambda: daemon_host.reached.exists() or held.poll() is not None,
               timeout=60, what="the held ADD reserving its address")
    assert held.poll() is None and len(reservations(ipam_dir, conf["name"])) == 2
    # the runtime's list, made before "held" finished, names neither attachment
    gc = daemon_host.start("GC", {**conf, "cni.dev/valid-attachments": []})
    other_gc = daemon_host.start("GC", {**other, "cni.dev/valid-attachments": []})
    assert finished(other_gc)[0] == 0  # another network's GC does not wait for this network's ADD
    assert gc.poll() is None  # the gate is still shut: this network's GC cannot have run
    daemon_host.gate.touch()
    code, result = finished(held)
    assert code == 0, result
    assert finished(gc)[0] == 0
    held_address = result["ips"][0]["address"].split("/")[0]
    assert reservations(ipam_dir, conf["name"]) == [held_address]  # "stale" freed, "held" kept
    assert finished(daemon_host.start("DEL", conf, "held", held_ns))[0] == 0
    assert reservations(ipam_dir, conf["name"]) == []
    assert daemon_host.stop() == 5  # every call was the daemon's: none fell back to run in process
