"""``berth cni-daemon``: serve CNI calls from the thin launchers (see :mod:`cni_plugins.daemon`)."""
from __future__ import annotations

import argparse
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cni_plugins.launcher import DEFAULT_SOCKET

    parser.add_argument("--socket", default=DEFAULT_SOCKET, help=f"Unix socket path (default {DEFAULT_SOCKET})")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--extra-plugin", action="append", default=[], metavar="TYPE=MODULE",
                        help="also serve a plugin module that defines HANDLERS (repeatable)")


def run(args: argparse.Namespace) -> int:
    from cni_plugins.daemon import run_daemon
    from cni_plugins.invoke import IN_PROCESS

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for spec in args.extra_plugin:
        plugin_type, sep, module = spec.partition("=")
        if not sep or not plugin_type or not module:
            raise SystemExit(f"--extra-plugin {spec!r}: expected TYPE=MODULE")
        IN_PROCESS[plugin_type] = module
    return run_daemon(args.socket)
