"""`berth install-units`: units systemd accepts, each daemon with only the capabilities its job needs."""
from __future__ import annotations

import configparser
import shutil
import subprocess

import pytest

from berth.install_units import METRICS_PORTS, MOUNT_NAMESPACE_OPTIONS
from tests.conftest import VENV_BIN

UNITS = ("berth-cni-daemon.socket", "berth-cni-daemon.service", "berth-agent.service", "berth-dns.service",
         "berth-overlay.service")


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    target = tmp_path_factory.mktemp("units")
    done = subprocess.run([str(VENV_BIN / "berth"), "install-units", "--dir", str(target), "--store",
                           "etcd://127.0.0.1:2379", "--iface", "bteth1", "--metrics", "127.0.0.1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return target


def parsed(path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#",))
    parser.optionxform = str
    parser.read(path)
    return parser


def test_every_unit_is_written(units):
    assert sorted(p.name for p in units.iterdir()) == sorted(UNITS)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_every_unit_passes_systemd_analyze_verify_without_a_warning(units):
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *(str(units / u) for u in UNITS)],
                          capture_output=True, text=True, timeout=120, cwd=units)
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), done.stderr + done.stdout


def test_capabilities_are_what_each_daemon_needs(units):
    bounding = {u: set(parsed(units / u)["Service"]["CapabilityBoundingSet"].split()) for u in UNITS
                if u.endswith(".service")}
    assert bounding["berth-dns.service"] == {"CAP_NET_BIND_SERVICE"}
    assert "CAP_NET_ADMIN" in bounding["berth-overlay.service"]
    assert "CAP_NET_ADMIN" in bounding["berth-cni-daemon.service"]
    assert "CAP_NET_ADMIN" not in bounding["berth-agent.service"] | bounding["berth-dns.service"]
    for unit in bounding:
        assert parsed(units / unit)["Service"]["NoNewPrivileges"] == "yes"


def test_the_cni_daemon_shares_the_launchers_mount_namespace_and_its_socket_is_root_only(units):
    service = parsed(units / "berth-cni-daemon.service")["Service"]
    assert not set(service) & set(MOUNT_NAMESPACE_OPTIONS)  # else the daemon would refuse every launcher
    socket = parsed(units / "berth-cni-daemon.socket")["Socket"]
    assert socket["ListenStream"] == "/run/berth/cni.sock"
    assert (socket["SocketUser"], socket["SocketMode"], socket["DirectoryMode"]) == ("root", "0600", "0755")
    for unit in ("berth-agent.service", "berth-dns.service", "berth-overlay.service"):
        assert parsed(units / unit)["Service"]["ProtectSystem"] == "strict"


def test_the_units_carry_the_chosen_store_and_interface(units):
    for unit in ("berth-agent.service", "berth-dns.service", "berth-overlay.service", "berth-cni-daemon.service"):
        assert "BERTH_STORE=etcd://127.0.0.1:2379" in (units / unit).read_text()
    assert "--iface bteth1" in parsed(units / "berth-overlay.service")["Service"]["ExecStart"]
    agent = parsed(units / "berth-agent.service")["Service"]["ExecStart"]
    assert agent.startswith(str(VENV_BIN / "berth"))
    # on a host the catalogue is closed to callers without a token (the management token is in a root-only file)
    assert "--acl-default-policy deny" in agent and "--acl-token-file /var/lib/berth/agent/acl-tokens.json" in agent


def test_each_daemon_serves_its_metrics_on_a_port_of_its_own(units):
    ports = {}
    for unit, daemon in (("berth-cni-daemon.service", "cni-daemon"), ("berth-agent.service", "agent"),
                         ("berth-dns.service", "dns"), ("berth-overlay.service", "overlay")):
        words = parsed(units / unit)["Service"]["ExecStart"].split()
        ports[daemon] = words[words.index("--metrics") + 1]
    assert ports == {daemon: f"127.0.0.1:{port}" for daemon, port in METRICS_PORTS.items()}
