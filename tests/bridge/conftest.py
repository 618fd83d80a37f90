"""Fixtures for the bridge tests: a namespace playing the host, a private IPAM data dir, config builders."""
from __future__ import annotations

import os
import secrets

import pytest

from tests.conftest import unique_name


@pytest.fixture
def host(netns):
    """A namespace that plays the host: the plugin runs inside it, so its bridge and rules vanish with it."""
    return netns("host")


@pytest.fixture
def container(netns):
    """``container()`` → the path of a fresh container namespace."""
    return lambda: netns.path(netns("ctr"))


@pytest.fixture
def ipam_dir(tmp_path):
    path = tmp_path / "ipam"
    path.mkdir()
    return str(path)


@pytest.fixture
def make_conf(ipam_dir):
    """``make_conf(subnets=["10.231.1.0/24"], **keys)`` → a bridge network config using host-local in a temp dir."""
    def build(*, subnets=("10.231.1.0/24",), plugin="berth-bridge", ipam_type="host-local", version="1.0.0",
              bridge=None, **keys):
        conf = {"cniVersion": version, "name": "btnet-" + secrets.token_hex(3), "type": plugin,
                "bridge": bridge or unique_name("br")}
        if subnets is not None:
            conf["ipam"] = {"type": ipam_type, "dataDir": ipam_dir,
                            "ranges": [[{"subnet": s}] for s in subnets]}
        conf.update(keys)
        return conf
    return build


def reservations(ipam_dir: str, network: str) -> list[str]:
    """Addresses host-local holds for ``network`` (its files are named by address)."""
    path = os.path.join(ipam_dir, network)
    if not os.path.isdir(path):
        return []
    return sorted(f for f in os.listdir(path) if f[0].isdigit() or ":" in f)
