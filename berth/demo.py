"""``berth demo`` (stage 1): addresses for a handful of containers in real network namespaces, through berth-ipam.

Each "container" is a namespace ``berth-demo-...``; berth-ipam is executed exactly as a runtime would
(environment + stdin) with a dual-stack config. The addresses go on ``eth0`` (one end of a veth pair) inside each
namespace and into a table; STATUS is asked, one container is "lost" and reclaimed by GC, the rest are deleted,
and the data directory is shown to hold nothing but its bookkeeping. Everything made is removed, even when a
step fails.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

NETWORK = "berth-demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--containers", type=int, default=4, help="how many containers to start (default 4)")
    parser.add_argument("--subnet", default="10.123.0.0/24", help="IPv4 range (default 10.123.0.0/24)")
    parser.add_argument("--subnet6", default="fd12:3::/64", help="IPv6 range (default fd12:3::/64)")


def _ipam_executable() -> str:
    beside = Path(sys.executable).parent / "berth-ipam"
    return str(beside) if beside.exists() else (shutil.which("berth-ipam") or "berth-ipam")


def _ip(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, check=True)


def _cni(command: str, config: dict, container_id: str, netns: str) -> dict | None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
           "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": str(Path(_ipam_executable()).parent)}
    proc = subprocess.run([_ipam_executable()], input=json.dumps(config).encode(), env=env, capture_output=True,
                          check=False)
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    if proc.returncode != 0:
        raise RuntimeError(f"berth-ipam {command} for {container_id} failed: {out or proc.stderr.decode()}")
    return out


def _files(data_dir: str) -> list[str]:
    return sorted(os.listdir(Path(data_dir) / NETWORK))


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("berth demo creates network namespaces: run it as root (e.g. `sudo make demo`)", file=sys.stderr)
        return 1
    tag = secrets.token_hex(3)
    data_dir = tempfile.mkdtemp(prefix="berth-demo-")
    config = {"cniVersion": "1.1.0", "name": NETWORK, "type": "berth-bridge",
              "ipam": {"type": "berth-ipam", "dataDir": data_dir,
                       "ranges": [[{"subnet": args.subnet}], [{"subnet": args.subnet6}]],
                       "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}}
    namespaces: list[str] = []
    added: list[tuple[str, str]] = []
    try:
        print(f"berth-ipam: {_ipam_executable()}\ndata directory: {data_dir}\n")
        rows = [("container", "namespace", "addresses", "gateways")]
        for n in range(args.containers):
            container, namespace = f"demo-{tag}-{n}", f"berth-demo-{tag}-{n}"
            _ip("netns", "add", namespace)
            namespaces.append(namespace)
            result = _cni("ADD", config, container, f"/run/netns/{namespace}")
            added.append((container, namespace))
            _ip("-n", namespace, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
            _ip("-n", namespace, "link", "set", "peer0", "up")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            for ipc in result["ips"]:
                _ip("-n", namespace, "addr", "add", ipc["address"], "dev", "eth0", "nodad")
            rows.append((container, namespace, ", ".join(i["address"] for i in result["ips"]),
                         ", ".join(i.get("gateway", "-") for i in result["ips"])))
        print(_table(rows))
        first = namespaces[0]
        shown = _ip("-n", first, "-brief", "addr", "show", "dev", "eth0").stdout.strip()
        print(f"\ninside {first}: {shown}")
        print(f"\nreservations on disk: {_files(data_dir)}")
        _cni("STATUS", config, "", "")
        print("STATUS: berth-ipam can serve ADD (a full range or an unusable data directory would say code 50)")

        lost_container, _ = added.pop()
        valid = [{"containerID": container, "ifname": "eth0"} for container, _ in added]
        _cni("GC", {**config, "cni.dev/valid-attachments": valid}, "", "")
        print(f"\nsay the runtime lost {lost_container} in a crash: GC, given the attachments still valid, "
              f"released its addresses only:\n  {_files(data_dir)}")
        while added:
            container, namespace = added[0]
            _cni("DEL", config, container, f"/run/netns/{namespace}")
            added.pop(0)
        left = _files(data_dir)
        print(f"after DEL of every other container: {left}")
        addresses = [f for f in left if f != "lock" and not f.startswith("last_reserved_ip.")]
        print("nothing is left." if not addresses else f"LEFT BEHIND: {addresses}")
        return 0 if not addresses else 1
    except (RuntimeError, subprocess.CalledProcessError) as err:
        detail = err.stderr if isinstance(err, subprocess.CalledProcessError) else ""
        print(f"demo failed: {err} {detail}".strip(), file=sys.stderr)
        return 1
    finally:
        for container, namespace in added:
            try:
                _cni("DEL", config, container, f"/run/netns/{namespace}")
            except RuntimeError as err:
                print(f"cleanup: {err}", file=sys.stderr)
        for namespace in namespaces:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)
        shutil.rmtree(data_dir, ignore_errors=True)
