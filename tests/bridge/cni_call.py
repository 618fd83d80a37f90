"""Calling a CNI plugin the way a runtime does, optionally from inside a test-made "host" namespace.

Running the plugin under ``ip netns exec HOST`` keeps everything it makes on the host side — the bridge, sysctls,
nftables tables — inside a namespace the test deletes afterwards, so the real host is never touched. Reused by the
portmap and comparison tests, and by the benchmark.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from tests.conftest import REFERENCE_CNI_DIR, VENV_BIN, plugin_path

CNI_PATH = f"{VENV_BIN}:{REFERENCE_CNI_DIR}"


@dataclass
class Outcome:
    rc: int
    out: Any
    err: str

    @property
    def code(self) -> Optional[int]:
        return self.out.get("code") if isinstance(self.out, dict) and self.rc else None


def executable(plugin: str) -> str:
    """``berth-*`` from the venv, anything else from the reference plugin directory."""
    if plugin.startswith("berth-"):
        return str(plugin_path(plugin))
    return str(Path(REFERENCE_CNI_DIR) / plugin)


def cni_env(command: str, *, container_id: str = "", netns: str = "", ifname: str = "eth0",
            args: str = "IgnoreUnknown=1", cni_path: str = CNI_PATH) -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_PATH": cni_path, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    if container_id:
        env["CNI_CONTAINERID"] = container_id
    if netns:
        env["CNI_NETNS"] = netns
    if ifname:
        env["CNI_IFNAME"] = ifname
    if args:
        env["CNI_ARGS"] = args
    return env


def call(plugin: str, command: str, config: Mapping[str, Any], *, host: Optional[str] = None,
         **env_args) -> Outcome:
    """Exec ``plugin`` with ``command``; ``host`` names the namespace that plays the host."""
    argv = [executable(plugin)]
    if host:
        argv = ["ip", "netns", "exec", host] + argv
    proc = subprocess.run(argv, input=json.dumps(config).encode(), env=cni_env(command, **env_args),
                          capture_output=True, timeout=60, check=False)
    text = proc.stdout.decode()
    try:
        out = json.loads(text) if text.strip() else None
    except ValueError:
        out = text
    return Outcome(proc.returncode, out, proc.stderr.decode())


def ns_json(ns: Optional[str], *argv: str) -> Any:
    """``ip -j ...`` (inside ``ns`` when given), parsed."""
    cmd = ["ip", "-j"] + (["-n", ns] if ns else []) + list(argv)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout or "[]")


def nft_ruleset(ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"], capture_output=True, text=True,
                          check=True).stdout


def in_ns(ns: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout,
                          check=False)


def ping(ns: str, address: str) -> bool:
    """Pings from inside ``ns`` (busybox's, so no iputils is needed); any reply of three counts."""
    flag = ["-6"] if ":" in address else []
    return in_ns(ns, "busybox", "ping", *flag, "-c", "3", "-i", "0.2", "-w", "3", address).returncode == 0
