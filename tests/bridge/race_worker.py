"""Race and kill worker for issue 14, point 3: ADD interrupted, then DEL; what is left behind, counted by kind.

Run by tests/bridge/test_kill_race.py under ``ip netns exec <test host namespace>``, so its daemons, the launchers
it execs and the plugins share this namespace (the daemon answers only its own namespaces) and everything they make
vanishes with it. Modes:
  ``race``  a private daemon in this process holds the ADD at a barrier; the launcher is killed; a DEL is sent and
            must queue behind the ADD; the barrier opens; nothing may be left.
  ``kill``  ``--kills`` rounds, each killing one of launcher (daemon finishes the ADD), plugin (in process) or
            daemon (``berth cni-daemon``, restarted) at a random point of an ADD, then DEL; leftovers after each.
Prints one JSON line: {"leftovers": {kind: count}, "kills": {target: n}, ...}; exits 0 when every count is 0.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from cni_plugins import invoke, skel  # noqa: E402
from discovery import wire  # noqa: E402
from ipam.record import replace  # noqa: E402

NETWORK = "btrace"
PREV_RESULT = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
               "ips": [{"address": "10.252.1.2/24", "gateway": "10.252.1.1", "interface": 0}]}


def config(plugin: str, work: str) -> dict:
    ipam = {"type": "berth-ipam", "dataDir": f"{work}/ipam", "ranges": [[{"subnet": "10.252.0.0/16"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}
    common = {"cniVersion": "1.1.0", "name": NETWORK, "type": plugin}
    return {
        "berth-ipam": {**common, "ipam": ipam},
        "berth-bridge": {**common, "bridge": "btracebr0", "isGateway": True, "ipMasq": True, "ipam": ipam},
        "berth-portmap": {**common, "prevResult": PREV_RESULT, "runtimeConfig": {"portMappings": [
            {"hostPort": 18081, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 18082, "containerPort": 81, "protocol": "udp"}]}},
        "berth-register": {**common, "agentSocket": f"{work}/agent.sock", "spoolDir": f"{work}/spool",
                           "prevResult": PREV_RESULT},
        "berth-overlay": {**common, "subnetFile": f"{work}/subnet.env", "dataDir": f"{work}/overlay",
                          "ipam": {"dataDir": f"{work}/ipam"}, "delegate": {"bridge": "btracebr1"}},
    }[plugin]


def cni_env(command: str, container_id: str, netns: str, socket_path: str, **extra) -> dict:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
            "CNI_PATH": "/nonexistent-bt", "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAME={container_id}",
            "BERTH_CNI_SOCKET": socket_path, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **extra}


def run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60).stdout


# --- what is left ------------------------------------------------------------------------------------------------

def leftovers(plugin: str, work: str, netns_name: str, container_id: str) -> dict[str, int]:
    """Everything an attachment can leave, by kind; every count must be 0 after its DEL."""
    host_links = json.loads(run("ip", "-j", "-d", "link", "show") or "[]")
    container_links = json.loads(run("ip", "-n", netns_name, "-j", "link", "show") or "[]")
    container_addrs = json.loads(run("ip", "-n", netns_name, "-j", "addr", "show") or "[]")
    ruleset = run("nft", "list", "ruleset")
    ipam_dir = os.path.join(work, "ipam", NETWORK)
    reservations = [f for f in os.listdir(ipam_dir) if f[0].isdigit() or ":" in f] if os.path.isdir(ipam_dir) else []
    saved = os.listdir(os.path.join(work, "overlay")) if os.path.isdir(os.path.join(work, "overlay")) else []
    state = None
    for _, request in wire.spooled(os.path.join(work, "spool")):
        if not request:
            continue
        if request.get("op") == "add" and request["endpoint"]["id"] == f"{container_id}/eth0":
            state = True
        elif request.get("op") == "del" and request.get("id") == f"{container_id}/eth0":
            state = False
    return {
        "host veths": sum(1 for link in host_links if link.get("linkinfo", {}).get("info_kind") == "veth"),
        "container links": sum(1 for link in container_links if link.get("ifname") != "lo"),
        "container addresses": sum(1 for link in container_addrs if link.get("ifname") != "lo"
                                   for a in link.get("addr_info", ())),
        "ipam reservations": len(reservations),
        "firewall rules": sum(1 for line in ruleset.splitlines() if f" {container_id} " in line),
        "agent registrations": 1 if state else 0,
        "saved overlay configs": len([f for f in saved if not f.startswith(".")]),
    }


def add_up(total: dict, found: dict) -> None:
    for kind, count in found.items():
        total[kind] = total.get(kind, 0) + count


# --- the deterministic race ----------------------------------------------------------------------------------------

class HeldAdds:
    """Wraps a plugin's handlers so that ADD stops at a barrier the worker opens."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def resolve(self, plugin_type: str):
        handlers = invoke.in_process_handlers(plugin_type)
        if handlers is None:
            return None

        def held_add(req):
            self.entered.set()
            self.release.wait(120)
            return handlers.add(req)
        return replace(handlers, add=held_add)


def race(plugin: str, launchers: str, work: str, netns_name: str) -> dict:
    from cni_plugins.daemon import CniDaemon

    held = HeldAdds()
    socket_path = os.path.join(work, "race.sock")
    daemon = CniDaemon(socket_path, resolve=held.resolve)
    daemon.bind()
    serving = threading.Thread(target=daemon.serve_forever, daemon=True)
    serving.start()
    netns = f"/run/netns/{netns_name}"
    stdin = json.dumps(config(plugin, work)).encode()
    executable = os.path.join(launchers, plugin)
    container_id = "btrace1"
    try:
        add = subprocess.Popen([executable], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               env=cni_env("ADD", container_id, netns, socket_path))
        add.stdin.write(stdin)
        add.stdin.close()
        assert held.entered.wait(60), "the daemon never started the ADD"
        add.kill()
        add.wait(30)
        delete = subprocess.Popen([executable], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  env=cni_env("DEL", container_id, netns, socket_path))
        delete.stdin.write(stdin)
        delete.stdin.close()
        key = (container_id, "eth0", NETWORK)
        deadline = time.monotonic() + 60
        while daemon.order.pending(key) < 2:  # the DEL is queued behind the held ADD
            assert time.monotonic() < deadline and delete.poll() is None, "the DEL did not wait for the ADD"
            time.sleep(0.01)
        queued_while_held = delete.poll() is None
        held.release.set()
        out = delete.stdout.read()
        assert delete.wait(60) == 0, out
        deadline = time.monotonic() + 60
        while daemon.order.pending(key) or daemon.in_flight:
            assert time.monotonic() < deadline, "the daemon never finished"
            time.sleep(0.01)
        return {"leftovers": leftovers(plugin, work, netns_name, container_id),
                "del waited for add": queued_while_held, "served": daemon.calls_served}
    finally:
        held.release.set()
        daemon.stop()
        serving.join(60)


# --- random kills --------------------------------------------------------------------------------------------------

class DaemonProcess:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen([os.path.join(REPO, ".venv", "bin", "berth"), "cni-daemon", "--socket",
                                      self.socket_path, "--log-level", "WARNING"])
        deadline = time.monotonic() + 60
        while not os.path.exists(self.socket_path):
            assert self.proc.poll() is None and time.monotonic() < deadline, "cni-daemon did not start"
            time.sleep(0.02)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)
        try:
            os.unlink(self.socket_path)  # a killed daemon leaves its file; a restart replaces it anyway
        except FileNotFoundError:
            pass

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def timed_call(executable: str, env: dict, stdin: bytes) -> tuple[int, bytes, float]:
    started = time.monotonic()
    proc = subprocess.run([executable], input=stdin, env=env, capture_output=True, timeout=120, check=False)
    return proc.returncode, proc.stdout, time.monotonic() - started


def kills(plugin: str, launchers: str, work: str, netns_name: str, rounds: int, seed: int) -> dict:
    rng = random.Random(seed)
    socket_path = os.path.join(work, "kill.sock")
    daemon = DaemonProcess(socket_path)
    daemon.start()
    netns = f"/run/netns/{netns_name}"
    executable = os.path.join(launchers, plugin)
    stdin = json.dumps(config(plugin, work)).encode()
    total: dict[str, int] = {}
    counts = {"launcher": 0, "plugin": 0, "daemon": 0}
    bad_rounds = []
    try:
        # How long an ADD takes each way, so the kills land inside it.
        durations = {}
        for target, extra in (("daemon", {}), ("plugin", {"BERTH_CNI_DAEMON": "off"})):
            rc, out, took = timed_call(executable, cni_env("ADD", "btwarm", netns, socket_path, **extra), stdin)
            assert rc == 0, out
            rc, out, _ = timed_call(executable, cni_env("DEL", "btwarm", netns, socket_path, **extra), stdin)
            assert rc == 0, out
            durations[target] = took
        for i in range(rounds):
            target = rng.choices(["launcher", "plugin", "daemon"], weights=[6, 2, 2])[0]
            container_id = f"btk{i}"
            extra = {"BERTH_CNI_DAEMON": "off"} if target == "plugin" else {}
            add = subprocess.Popen([executable], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, env=cni_env("ADD", container_id, netns, socket_path,
                                                                          **extra))
            add.stdin.write(stdin)
            add.stdin.close()
            time.sleep(rng.uniform(0, 1.2 * durations["plugin" if target == "plugin" else "daemon"]))
            if target == "daemon":
                daemon.kill()
                add.wait(120)
                daemon.start()
            else:
                add.kill()
                add.wait(30)
            counts[target] += 1
            rc, out, _ = timed_call(executable, cni_env("DEL", container_id, netns, socket_path, **extra), stdin)
            found = leftovers(plugin, work, netns_name, container_id)
            if rc != 0 or any(found.values()):
                bad_rounds.append({"round": i, "target": target, "del rc": rc, "del out": out.decode()[:300],
                                   "found": {k: v for k, v in found.items() if v}})
                # start the next round clean, so one leak is counted once
                timed_call(executable, cni_env("DEL", container_id, netns, socket_path, BERTH_CNI_DAEMON="off"),
                           stdin)
            add_up(total, found)
    finally:
        daemon.stop()
    return {"leftovers": total, "kills": counts, "bad rounds": bad_rounds[:10]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("race", "kill"), required=True)
    parser.add_argument("--plugin", required=True)
    parser.add_argument("--launchers", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--netns-name", required=True)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    with open(os.path.join(args.work, "subnet.env"), "w") as handle:
        handle.write("FLANNEL_NETWORK=10.253.0.0/16\nFLANNEL_SUBNET=10.253.7.1/24\nFLANNEL_MTU=1450\n"
                     "FLANNEL_IPMASQ=false\n")
    if args.mode == "race":
        report = race(args.plugin, args.launchers, args.work, args.netns_name)
    else:
        report = kills(args.plugin, args.launchers, args.work, args.netns_name, args.kills, args.seed)
    print(json.dumps(report))
    clean = not any(report["leftovers"].values()) and report.get("del waited for add", True)
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
