"""Calling an IPAM executable the way a runtime does (environment + stdin), for berth-ipam and host-local alike."""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REFERENCE_CNI_DIR, plugin_path

HOST_LOCAL = REFERENCE_CNI_DIR / "host-local"


@dataclass
class Reply:
    code: int
    out: dict | None
    stderr: str

    @property
    def error_code(self) -> int | None:
        return self.out.get("code") if self.code and self.out else None


def call(executable, command: str, config: dict | bytes, container_id: str | None = "ctr1", ifname: str = "eth0",
         netns: str = "/run/netns/none", extra_env: dict | None = None, drop: tuple = ()) -> Reply:
    env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": command, "CNI_CONTAINERID": container_id or "",
           "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_PATH": f"{plugin_path('berth-ipam').parent}:/usr/lib/cni"}
    env.update(extra_env or {})
    for key in drop:
        env.pop(key, None)
    stdin = config if isinstance(config, bytes) else json.dumps(config).encode()
    proc = subprocess.run([str(executable)], input=stdin, env=env, capture_output=True, timeout=120, check=False)
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    return Reply(proc.returncode, out, proc.stderr.decode(errors="replace"))


def net_config(data_dir, version="1.0.0", name="btnet", **ipam) -> dict:
    if "ranges" not in ipam:
        ipam.setdefault("subnet", "10.77.0.0/24")
    return {"cniVersion": version, "name": name, "type": "bridge",
            "ipam": {"type": "berth-ipam", "dataDir": str(data_dir), **ipam}}


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its content, to prove an operation changed nothing."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            out[os.path.relpath(os.path.join(dirpath, f), root)] = Path(dirpath, f).read_bytes()
    return out


def network_files(data_dir, name="btnet") -> list[str]:
    return sorted(os.listdir(Path(data_dir) / name))


@pytest.fixture
def berth_ipam() -> Path:
    path = plugin_path("berth-ipam")
    if not path.exists():
        pytest.fail(f"{path} is not installed: run `make venv`")
    return path


@pytest.fixture
def host_local() -> Path:
    if not HOST_LOCAL.exists():
        pytest.fail(f"{HOST_LOCAL} is missing: install containernetworking-plugins (make deps)")
    return HOST_LOCAL


@pytest.fixture
def sandbox(netns) -> str:
    """A real network namespace path to hand over as CNI_NETNS."""
    return netns.path(netns("ipam"))
