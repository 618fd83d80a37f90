"""``berth agent``: run the discovery agent (socket for berth-register, Consul-compatible HTTP API)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading

from discovery import wire
from store.config import default_store_url
from store.logs import add_log_arguments, announce, setup_from_args
from store.ops import add_metrics_argument

log = logging.getLogger("berth.agent")


def store_url(url: str, ttl: float) -> str:
    """The agent's etcd and zk calls give up within a third of the lease TTL (at least 1 s) unless the URL says
    otherwise: a keep-alive that waits longer is too late anyway, and a registration must not stall."""
    if url.startswith(("etcd:", "zk:")) and "timeout=" not in url:
        return f"{url}{'&' if '?' in url else '?'}timeout={max(1.0, ttl / 3):g}"
    return url


def _addr(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not ADDR:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be greater than 0")
    return number


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be a whole number of at least 1")
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=default_store_url(),
                        help="datastore URL (sqlite:///path or etcd://h:p; default $BERTH_STORE or the embedded file)")
    parser.add_argument("--socket", default=wire.DEFAULT_SOCKET, help="Unix socket for berth-register")
    parser.add_argument("--http", type=_addr, default=("127.0.0.1", 8500),
                        help="ADDR:PORT for the Consul-compatible HTTP API (port 0: any free port)")
    parser.add_argument("--no-http", action="store_true", help="do not serve the HTTP API")
    parser.add_argument("--host", default=socket.gethostname(), help="this host's name in the records")
    parser.add_argument("--address", default="127.0.0.1", help="this host's address (Consul node address)")
    parser.add_argument("--ttl", type=_positive, default=15.0, help="lease TTL in seconds")
    parser.add_argument("--state-dir", default=wire.DEFAULT_STATE_DIR, help="where local endpoints persist")
    parser.add_argument("--spool-dir", default=None, help="berth-register's spool (default STATE_DIR/spool)")
    parser.add_argument("--resync", type=_positive, default=10.0, help="anti-entropy interval in seconds")
    parser.add_argument("--skydns", choices=("auto", "on", "off"), default="auto",
                        help="publish SkyDNS keys for CoreDNS (auto: with etcd)")
    parser.add_argument("--curator", choices=("auto", "on", "off"), default="auto",
                        help="publish Apache Curator service instances (auto: with zk://; see discovery/curator.py)")
    parser.add_argument("--curator-base-path", default="/services", help="Curator's basePath for the instances")
    parser.add_argument("--zone", default="berth.internal", help="DNS zone of the SkyDNS keys (as berth dns)")
    parser.add_argument("--acl-default-policy", choices=("allow", "deny"), default="allow",
                        help="what HTTP callers without a token may do (deny: nothing; allow: as Consul's default)")
    parser.add_argument("--acl-token-file", default=None,
                        help="root-only JSON file of ACL tokens; created with a management token when absent "
                             "(default STATE_DIR/acl-tokens.json)")
    parser.add_argument("--http-max-body", type=_positive_int, default=1 << 20, help="largest request body in bytes")
    parser.add_argument("--http-max-conns", type=_positive_int, default=1024,
                        help="HTTP connections served at once; more wait in the listen queue")
    parser.add_argument("--http-read-deadline", type=_positive, default=10.0,
                        help="seconds a request's head and body may take to arrive after its first line (then 408)")
    add_log_arguments(parser)
    add_metrics_argument(parser)


def host_name_taken(store, host: str, about: bytes) -> str | None:
    """Another machine's ID if its live agent already uses ``host`` (a store that does not answer at once is no
    reason to refuse: anti-entropy checks again before every write)."""
    from discovery.publish import agent_key, name_used_elsewhere
    from store.api import StoreError
    from store.deadline import call_deadline

    try:
        with call_deadline(3.0):
            kv = store.get(agent_key(host))
    except StoreError:
        return None
    return name_used_elsewhere(kv.value if kv is not None else None, about)


def run(args: argparse.Namespace) -> int:
    setup_from_args(args)
    from discovery import metrics
    from discovery.agent import Agent
    from discovery.agent_socket import AgentSocket
    from discovery.acl import Acl
    from discovery.consul_api import ConsulApi
    from discovery.http_server import HttpLimits, StrictHttpServer
    from discovery.publish import ACL_NONE, AgentRecord
    from store.machine import machine_id
    from discovery.view import DiscoveryView
    from store.api import StoreError, open_store
    from store.ops import Readiness, listening_check, start_from_args, store_check

    skydns = args.skydns == "on" or (args.skydns == "auto" and args.store.startswith("etcd:"))
    cleanup: list = []  # undone in reverse, whatever happens
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    readiness = Readiness()
    try:
        ops = start_from_args(args, readiness)  # first: a taken port is reported before anything starts
        if ops is not None:
            cleanup.append(ops.stop)
        store = open_store(store_url(args.store, args.ttl))
        cleanup.append(store.close)
        agent = Agent(metrics.TimedStore(store), args.host, args.state_dir, args.ttl, spool_dir=args.spool_dir,
                      skydns_zone=args.zone if skydns else None, node_address=args.address,
                      resync_interval=args.resync)
        view = DiscoveryView(store)
        http = None
        if not args.no_http:  # bind first: a port already taken is reported before anything else starts
            acl = Acl(args.acl_default_policy, args.acl_token_file or os.path.join(args.state_dir, "acl-tokens.json"))
            if acl.policy == "allow":
                log.warning("HTTP API runs without ACLs (--acl-default-policy allow): any local user may register "
                            "and deregister services other than container endpoints; the management token is in %s",
                            acl.path)
            limits = HttpLimits(max_body=args.http_max_body, max_conns=args.http_max_conns,
                                read_deadline=args.http_read_deadline)
            http = StrictHttpServer(args.http, ConsulApi(agent, view, acl), limits)
            cleanup.append(http.server_close)
        agent.about = AgentRecord(args.host, args.address, f"{args.http[0]}:{http.port}" if http else "",
                                  acl.policy if http else ACL_NONE,
                                  f"{ops.server_address[0]}:{ops.port}" if ops else "", machine_id()).to_json()
        other = host_name_taken(store, args.host, agent.about)
        if other is not None:
            log.error("host name %r is in use by a live agent on another machine (machine ID %s): give this one "
                      "another --host", args.host, other)
            return 2
        metrics.ENDPOINTS.set_function(lambda: len(agent.endpoints()))
        agent.start()
        cleanup.append(agent.stop)
        if args.curator == "on" or (args.curator == "auto" and args.store.startswith("zk:")):
            from discovery.curator import CuratorPublisher
            curator = CuratorPublisher(store, args.host, args.curator_base_path, node_address=args.address,
                                       resync=args.resync)
            curator.start()
            cleanup.append(curator.stop)
        listener = AgentSocket(args.socket, agent.handle)
        listener.start()
        cleanup.append(listener.stop)
        readiness.add("store", store_check(store))
        readiness.add("socket", listening_check(lambda: [listener.socket], args.socket))
        readiness.add("agent", lambda: (agent.ready.is_set(), "this host's endpoints are in the store"
                                        if agent.ready.is_set() else "writing this host's endpoints"))
        if http is not None:
            while True:  # the catalog needs one listing; an unreachable store is retried, not fatal
                try:
                    view.start()
                    break
                except StoreError as exc:
                    log.warning("listing the store for the HTTP API failed (%s); retrying", exc)
                    if done.wait(1.0):
                        return 0
            cleanup.append(view.stop)
            http.start()
            cleanup.append(http.stop)
            readiness.add("http", listening_check(lambda: [http.socket]))
            log.info("HTTP API on %s:%d", args.http[0], http.port)
        agent.drain_spool()  # anything spooled while the socket was coming up
        while not agent.ready.wait(1.0):  # ready means every endpoint this host holds is in the store
            if done.is_set():
                return 0
            log.info("waiting for the store to take this host's endpoints before saying ready")
        announce(f"ready socket={args.socket} http={http.port if http else 0}", log)
        done.wait()
        return 0
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    finally:
        for undo in reversed(cleanup):
            try:
                undo()
            except Exception:  # keep undoing the rest
                log.exception("shutting down")
