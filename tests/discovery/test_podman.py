"""End to end under a real podman: a container on a network whose conflist ends in berth-register appears in the
store with its name, aliases and address; removing the container removes the record."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from discovery.model import ENDPOINTS_PREFIX, EndpointRecord
from tests.conftest import REFERENCE_CNI_DIR, VENV_BIN, run, unique_name
from tests.discovery.conftest import wait_for

pytestmark = [pytest.mark.root, pytest.mark.podman, pytest.mark.slow]
BUSYBOX = shutil.which("busybox") or "/bin/busybox"


class Podman:
    """podman with its own config, storage and network dir, calling the plugins in a test-made conflist."""

    def __init__(self, work: Path, short: Path) -> None:
        self.work = work
        self.short = short  # podman wants its runroot path under 50 characters
        self.netdir = work / "net.d"
        self.netdir.mkdir()
        conf = work / "containers.conf"
        conf.write_text(
            "[network]\nnetwork_backend = \"cni\"\n"
            f"cni_plugin_dirs = [\"{VENV_BIN}\", \"{REFERENCE_CNI_DIR}\"]\n"
            f"network_config_dir = \"{self.netdir}\"\n"
            "[containers]\ndefault_ulimits = []\n[engine]\nruntime = \"runc\"\n")
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.rootfs = work / "rootfs"
        (self.rootfs / "bin").mkdir(parents=True)
        shutil.copy(BUSYBOX, self.rootfs / "bin" / "busybox")
        for applet in ("sh", "sleep"):
            (self.rootfs / "bin" / applet).symlink_to("busybox")

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["podman", "--root", str(self.short / "root"), "--runroot", str(self.short / "run"),
                               *args], env=self.env, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc


@pytest.fixture
def podman(tmp_path, host_links):
    if not shutil.which("podman") or not Path(BUSYBOX).exists():
        pytest.skip("podman and busybox-static are needed")
    short = Path(tempfile.mkdtemp(prefix="bt-pm-", dir="/tmp"))
    pm = Podman(tmp_path, short)
    try:
        yield pm
    finally:
        names = pm("ps", "-aq", check=False).stdout.split()
        if names:
            pm("rm", "-f", "-t", "0", *names, check=False)
        shutil.rmtree(short, ignore_errors=True)


def test_container_on_a_berth_register_network_is_registered_and_removed(podman, agents, open_url, tmp_path,
                                                                          host_links):
    url = f"sqlite:///{tmp_path / 'berth.db'}"
    agent = agents(url, ttl=30)
    store = open_url(url)
    network, bridge = unique_name("net"), unique_name("br")
    host_links.append(bridge)
    subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
    conflist = {"cniVersion": "1.0.0", "name": network, "plugins": [
        {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": f"{subnet}.0/24"}]],
                  "dataDir": str(tmp_path / "ipam")}},
        {"type": "berth-register", "agentSocket": agent.socket, "spoolDir": agent.spool_dir,
         "capabilities": {"aliases": True, "portMappings": True}},
    ]}
    (podman.netdir / f"{network}.conflist").write_text(json.dumps(conflist))
    name = unique_name("ctr")
    podman("run", "-d", "--name", name, "--network", network, "--network-alias", "web",
           "--network-alias", "www", "--rootfs", str(podman.rootfs), "/bin/sleep", "300")
    cid = podman("inspect", "--format", "{{.Id}}", name).stdout.strip()

    def records():
        return [EndpointRecord.from_json(kv.value) for kv in store.get_prefix(ENDPOINTS_PREFIX)[0]]
    [record] = wait_for(records, timeout=20)
    assert record.name == name and record.container_id == cid and record.network == network
    assert set(record.aliases) >= {"web", "www"}
    assert record.addresses and record.addresses[0].startswith(subnet + ".")
    inside = podman("exec", name, "/bin/busybox", "ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert f"{record.addresses[0]}/24" in inside
    podman("rm", "-f", "-t", "0", name)
    assert wait_for(lambda: not records(), timeout=20) is not None
