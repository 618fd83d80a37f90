"""``berth``: the command line that ties the rooms together.

Each subcommand lives in its own module and is imported only when chosen, so ``berth --help`` stays instant and
one room's heavy imports never slow another's command.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, help). Each module provides ``add_arguments(parser)`` and ``run(args) -> int``.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("berth.demo", "run Berth's main job end to end on this machine, then clean up"),
    "agent": ("discovery.cli", "run the discovery agent: endpoints to the datastore, Consul-compatible API"),
    "install-cni": ("berth.install_cni", "install Berth's CNI plugin executables into a CNI bin directory"),
    "install-units": ("berth.install_units", "write systemd units for Berth's daemons (socket-activated CNI daemon)"),
    "cni-daemon": ("berth.cni_daemon_cmd", "serve CNI calls from the plugin launchers over a Unix socket"),
    "overlay": ("overlay.cli", "the VXLAN overlay host daemon, and its records in the store"),
    "dns": ("dnsd.cli", "serve the discovery view over DNS (and forward other names upstream)"),
    "ipam": ("berth.ipam_check", "cluster IPAM: `berth ipam check` reports pool use, leaks, duplicates; frees leaks"),
    "docker-plugin": ("docker_plugin.cli", "Docker's network and IPAM driver (docker network create -d berth)"),
    "status": ("berth.status", "show the cluster as the datastore holds it: hosts, endpoints, address use, a picture"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="berth", description="Berth: container networking and discovery")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text)
        sub.set_defaults(_module=module_name)
        chosen = (argv if argv is not None else sys.argv[1:])[:1]
        if chosen == [name]:
            importlib.import_module(module_name).add_arguments(sub)
    args = parser.parse_args(argv)
    return importlib.import_module(args._module).run(args)


if __name__ == "__main__":
    sys.exit(main())
