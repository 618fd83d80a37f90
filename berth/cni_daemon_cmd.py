"""``berth cni-daemon``: serve CNI calls from the thin launchers (see :mod:`cni_plugins.daemon`).

Started by hand it binds its own socket. Started by systemd's socket activation (``berth-cni-daemon.socket``, or
``systemd-socket-activate``) it serves the listening socket it inherits (the ``LISTEN_FDS``/``LISTEN_PID``
protocol of sd_listen_fds(3): descriptors from 3 on) and, with ``--idle-exit``, exits when idle; the next launcher
call waits in systemd's socket until systemd starts it again.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
from typing import Optional

from store.logs import add_log_arguments, setup_from_args
from store.ops import Readiness, add_metrics_argument, listening_check, start_from_args

SD_LISTEN_FDS_START = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cni_plugins.launcher import DEFAULT_SOCKET

    parser.add_argument("--socket", default=DEFAULT_SOCKET, help=f"Unix socket path (default {DEFAULT_SOCKET})")
    parser.add_argument("--idle-exit", type=float, default=0.0, metavar="SECONDS",
                        help="when socket-activated, exit after this many seconds without a call (default: never)")
    add_log_arguments(parser)
    add_metrics_argument(parser)
    parser.add_argument("--extra-plugin", action="append", default=[], metavar="TYPE=MODULE",
                        help="also serve a plugin module that defines HANDLERS (repeatable)")


def inherited_listener(environ=os.environ) -> Optional[socket.socket]:
    """The listening Unix stream socket systemd passed to this process, or None when it passed none.

    The variables are removed, so no child takes the descriptor for its own."""
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        raise SystemExit("LISTEN_FDS is not a number") from None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(name, None)
    if count == 0:
        return None
    if count != 1:
        raise SystemExit(f"socket activation passed {count} sockets; the CNI daemon serves exactly one")
    listener = socket.socket(fileno=SD_LISTEN_FDS_START)
    accepting = listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if listener.family != socket.AF_UNIX or listener.type != socket.SOCK_STREAM or not accepting:
        raise SystemExit("socket activation passed a socket that is not a listening Unix stream socket")
    os.set_inheritable(SD_LISTEN_FDS_START, False)
    return listener


def run(args: argparse.Namespace) -> int:
    from cni_plugins.daemon import run_daemon
    from cni_plugins.invoke import IN_PROCESS

    setup_from_args(args)
    for spec in args.extra_plugin:
        plugin_type, sep, module = spec.partition("=")
        if not sep or not plugin_type or not module:
            raise SystemExit(f"--extra-plugin {spec!r}: expected TYPE=MODULE")
        IN_PROCESS[plugin_type] = module
    listener = inherited_listener()
    if listener is None and args.idle_exit:
        logging.getLogger("berth.cni-daemon").warning("--idle-exit applies only when socket-activated: ignored")
    readiness = Readiness()
    ops = start_from_args(args, readiness)  # bound first: a taken --metrics port stops us before anything else

    def on_listening(daemon) -> None:
        readiness.add("socket", listening_check(lambda: [daemon.listener], args.socket))

    readiness.add("socket", lambda: (False, "not listening yet"))
    try:
        return run_daemon(args.socket, inherited=listener, idle_exit=args.idle_exit if listener else 0.0,
                          on_listening=on_listening)
    finally:
        if ops is not None:
            ops.stop()
