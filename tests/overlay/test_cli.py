"""``berth overlay`` as a user types it: init, reserve, leases, and the errors they give."""
from __future__ import annotations

import subprocess
import sys

from overlay import claim
from overlay.config import parse_config
from store.api import open_store


def berth(*argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "berth.cli", "overlay", *argv], capture_output=True, text=True,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env})


def test_init_writes_the_config_once(sqlite_url):
    done = berth("init", "--store", sqlite_url, "--network", "10.250.0.0/16", "--vni", "9", "--port", "4789")
    assert done.returncode == 0, done.stderr
    assert "10.250.0.0/16" in done.stdout and "254 subnets" in done.stdout
    store = open_store(sqlite_url)
    try:
        config = parse_config(store.get("/berth/overlay/config").value)
    finally:
        store.close()
    assert (str(config.network), config.vni, config.port) == ("10.250.0.0/16", 9, 4789)
    assert berth("init", "--store", sqlite_url, "--network", "10.250.0.0/16", "--vni", "9",
                 "--port", "4789").returncode == 0  # the same config again is fine
    refused = berth("init", "--store", sqlite_url, "--network", "10.251.0.0/16")
    assert refused.returncode == 1 and "already stored" in refused.stderr
    assert berth("init", "--store", sqlite_url, "--network", "10.251.0.0/16", "--force").returncode == 0


def test_bad_input_is_a_clear_error_and_writes_nothing(sqlite_url):
    for argv, words in ((["--network", "10.250.0.1/16"], "Network"), (["--network", "10.250.0.0/16",
                        "--subnet-len", "8"], "SubnetLen"), (["--network", "10.250.0.0/16", "--vni", "0"], "VNI")):
        done = berth("init", "--store", sqlite_url, *argv)
        assert done.returncode == 1 and words in done.stderr, done.stderr
    store = open_store(sqlite_url)
    try:
        assert store.get("/berth/overlay/config") is None
    finally:
        store.close()


def test_without_store_flag_the_shared_default_from_berth_store_is_used(tmp_path):
    """Agent, DNS server and overlay meet in one store without each being told: $BERTH_STORE, else the default."""
    url = f"sqlite:///{tmp_path / 'default.db'}"
    assert berth("init", "--network", "10.250.0.0/16", BERTH_STORE=url).returncode == 0
    store = open_store(url)
    try:
        assert parse_config(store.get("/berth/overlay/config").value).network.with_prefixlen == "10.250.0.0/16"
    finally:
        store.close()


def test_reserve_and_list(sqlite_url):
    assert berth("init", "--store", sqlite_url, "--network", "10.250.0.0/16").returncode == 0
    done = berth("reserve", "--store", sqlite_url, "--subnet", "10.250.7.0/24", "--public-ip", "10.213.0.9")
    assert done.returncode == 0, done.stderr
    bad = berth("reserve", "--store", sqlite_url, "--subnet", "10.99.7.0/24", "--public-ip", "10.213.0.9")
    assert bad.returncode == 1 and "inside 10.250.0.0/16" in bad.stderr
    listing = berth("leases", "--store", sqlite_url).stdout.splitlines()
    assert listing[1].split() == ["10.250.7.0/24", "10.213.0.9", "-", "reserved"]
    store = open_store(sqlite_url)
    try:
        leases, _ = claim.list_leases(store, "/berth/overlay")
        assert [kv.lease for kv, _lease in leases] == [0]  # no store lease: it never expires
    finally:
        store.close()
    assert berth("unreserve", "--store", sqlite_url, "--subnet", "10.250.7.0/24").returncode == 0
    assert berth("leases", "--store", sqlite_url).stdout.splitlines()[1:] == []
