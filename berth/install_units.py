"""``berth install-units``: systemd units for Berth's host daemons, with this installation's paths filled in.

Each daemon gets only the capabilities its job needs (the bounding set), and the file-system protections that fit
it. The CNI daemon is the exception on file-system protection: it answers only launchers in its own mount
namespace (a plugin run elsewhere must not be served by code that sees other files), so any option that gives the
service a mount namespace of its own (ProtectSystem, PrivateTmp, ReadWritePaths, ...) would send every call to the
slow in-process path. Its socket is systemd's (socket activation): root-only, in a root-owned directory, and the
daemon starts on the first launcher call.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_DIR = "/etc/systemd/system"
DEFAULT_STORE = "sqlite:////var/lib/berth/berth.db"
CNI_SOCKET = "/run/berth/cni.sock"
AGENT_SOCKET = "/run/berth/agent.sock"

# each daemon's --metrics port when `install-units --metrics ADDR` is given (a range of Berth's own, beside
# node_exporter's 9100 and CoreDNS's 9153)
METRICS_PORTS = {"cni-daemon": 9470, "agent": 9471, "dns": 9472, "overlay": 9473}

# Options that leave the service in the host's mount namespace (every daemon, the CNI daemon included).
COMMON_HARDENING = """NoNewPrivileges=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
SystemCallArchitectures=native"""
# Options that give the service a mount namespace of its own: for every daemon but the CNI daemon.
MOUNT_NAMESPACE_OPTIONS = ("ProtectSystem", "ProtectHome", "PrivateTmp", "ProtectKernelModules", "ProtectClock",
                           "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "PrivateDevices")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=DEFAULT_DIR, help=f"where to write the units (default {DEFAULT_DIR})")
    parser.add_argument("--store", default=DEFAULT_STORE,
                        help=f"datastore URL for every daemon (default {DEFAULT_STORE})")
    parser.add_argument("--iface", default="eth0", help="the underlay interface `berth overlay` uses (default eth0)")
    parser.add_argument("--dns-listen", default="127.0.0.1:53",
                        help="ADDR:PORT for `berth dns` (default 127.0.0.1:53)")
    parser.add_argument("--metrics", metavar="ADDR", default=None,
                        help="serve every daemon's /metrics, /health and /ready on ADDR, each on its own port: "
                             + ", ".join(f"{name} {port}" for name, port in METRICS_PORTS.items())
                             + " (default: not served)")


def berth_executable() -> str:
    """The installed ``berth`` beside this interpreter (a venv's bin), else ``python -m berth.cli``."""
    beside = Path(sys.executable).with_name("berth")
    return str(beside) if beside.exists() else f"{sys.executable} -m berth.cli"


def _service(description: str, exec_start: str, *, capabilities: str, extra_unit: str = "",
             extra_service: str = "", wanted_by: bool = True) -> str:
    sections = [
        "\n".join(["[Unit]", f"Description={description}", *filter(None, extra_unit.splitlines())]),
        "\n".join(["[Service]", "Type=simple", "EnvironmentFile=-/etc/default/berth", f"ExecStart={exec_start}",
                   "Restart=on-failure", "RestartSec=2s", "TimeoutStopSec=30s",
                   f"CapabilityBoundingSet={capabilities}", COMMON_HARDENING,
                   *filter(None, extra_service.splitlines())]),
    ]
    if wanted_by:
        sections.append("[Install]\nWantedBy=multi-user.target")
    return "\n\n".join(sections) + "\n"


def render_units(berth: str, store: str, iface: str, dns_listen: str,
                 metrics: str | None = None) -> dict[str, str]:
    """File name -> unit text. Pure: the same arguments give the same files."""
    environment = f"Environment=BERTH_STORE={store}"
    host = f"[{metrics}]" if metrics and ":" in metrics else metrics

    def ops(daemon: str) -> str:
        return f" --metrics {host}:{METRICS_PORTS[daemon]}" if metrics else ""
    state_protection = "ProtectSystem=strict\nProtectHome=yes\nPrivateTmp=yes\nProtectKernelModules=yes\n" \
                       "ProtectClock=yes\nStateDirectory=berth\nRuntimeDirectory=berth\n" \
                       "RuntimeDirectoryPreserve=yes\nRuntimeDirectoryMode=0755"
    return {
        "berth-cni-daemon.socket": f"""[Unit]
Description=Berth CNI daemon socket (the plugin launchers' fast path)

[Socket]
ListenStream={CNI_SOCKET}
SocketUser=root
SocketGroup=root
SocketMode=0600
DirectoryMode=0755
Accept=no

[Install]
WantedBy=sockets.target
""",
        "berth-cni-daemon.service": _service(
            "Berth CNI daemon: plugin handlers held warm for the launchers",
            f"{berth} cni-daemon --socket {CNI_SOCKET} --idle-exit 600{ops('cni-daemon')}",
            capabilities="CAP_NET_ADMIN CAP_NET_RAW CAP_SYS_ADMIN CAP_DAC_OVERRIDE CAP_FOWNER CAP_CHOWN",
            extra_unit="Requires=berth-cni-daemon.socket\nAfter=berth-cni-daemon.socket",
            extra_service=f"{environment}\nRestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6\n"
                          "# no ProtectSystem/PrivateTmp: the daemon must share the launchers' mount namespace",
            wanted_by=False),
        "berth-agent.service": _service(
            "Berth discovery agent: container endpoints to the datastore, Consul-compatible API",
            f"{berth} agent --socket {AGENT_SOCKET} --state-dir /var/lib/berth/agent "
            "--spool-dir /var/lib/berth/spool --acl-default-policy deny "
            f"--acl-token-file /var/lib/berth/agent/acl-tokens.json{ops('agent')}",
            capabilities="CAP_DAC_OVERRIDE CAP_FOWNER CAP_CHOWN",
            extra_unit="After=network-online.target\nWants=network-online.target",
            extra_service=f"{environment}\n{state_protection}\n"
                          "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"),
        "berth-dns.service": _service(
            "Berth DNS: container and service names from the discovery view",
            f"{berth} dns --store {store} --listen {dns_listen}{ops('dns')}",
            capabilities="CAP_NET_BIND_SERVICE",
            extra_unit="After=network-online.target berth-agent.service\nWants=network-online.target",
            extra_service=f"{environment}\n{state_protection}\n"
                          "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6"),
        "berth-overlay.service": _service(
            "Berth overlay: this host's subnet lease and VXLAN routes to every other host",
            f"{berth} overlay --iface {iface}{ops('overlay')}",
            capabilities="CAP_NET_ADMIN CAP_NET_RAW",
            extra_unit="After=network-online.target\nWants=network-online.target",
            extra_service=f"{environment}\n{state_protection}\n"  # the subnet file: /run/berth/subnet.env
                          "RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6"),
    }


def run(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    target.mkdir(parents=True, exist_ok=True)
    for name, text in render_units(berth_executable(), args.store, args.iface, args.dns_listen,
                                   args.metrics).items():
        path = target / name
        temporary = path.with_name(f".{name}.tmp")
        temporary.write_text(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
        print(path)
    print("then: systemctl daemon-reload && systemctl enable --now berth-cni-daemon.socket berth-agent "
          "berth-dns berth-overlay", file=sys.stderr)
    return 0
