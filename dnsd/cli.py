"""``berth dns``: run dnsd. Parses options into frozen configs at the edge, binds, then hands over to the shell."""
from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import subprocess
import sys

from .acl import LOOPBACK, RecursionPolicy
from .names import DEFAULT_ZONE, ZoneConfig
from .server import ServerOptions, bind_listener, run_workers
from .stats import Hub
from .upstream import Upstream, parse_resolv_conf
from store.logs import add_log_arguments, announce, setup_from_args
from store.ops import Readiness, add_metrics_argument, listening_check, start_from_args

log = logging.getLogger("berth.dnsd")

WILDCARDS = ("0.0.0.0", "::")
DESCRIPTION = """Serve the discovery view over DNS and forward other names upstream.

Who may recurse (have names outside the zone forwarded) is configuration, never data: clients on loopback, on the
networks of the --listen addresses (the container bridges whose gateway dnsd serves), on the subnets Berth's
overlay manages (its network configuration and subnet leases in --store, written only by `berth overlay`), in the
IPAM ranges of the root-owned CNI network configs in --cni-conf-dir, and in --allow ranges. Registering a service
(through the agent's Consul API or the CNI chain) never widens it. Every other client gets authoritative answers
for the zone and REFUSED for the rest."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", metavar="URL", help="answer from the discovery view of this datastore "
                        "(sqlite:///path.db, etcd://host:port)")
    source.add_argument("--records", metavar="FILE", help="answer from a JSON list of endpoint records "
                        "(re-read when it changes)")
    parser.add_argument("--listen", metavar="ADDR:PORT", action="append",
                        help="address to serve UDP and TCP on (repeatable; port 0 picks a free one; "
                        "default 127.0.0.1:53)")
    parser.add_argument("--zone", default=DEFAULT_ZONE, help=f"the zone answered (default {DEFAULT_ZONE})")
    parser.add_argument("--ttl", type=int, default=5, help="TTL of answers in seconds (default 5)")
    parser.add_argument("--negative-ttl", type=int, default=5, help="SOA minimum: TTL of NXDOMAIN/NODATA")
    parser.add_argument("--upstream", metavar="IP[:PORT]", action="append", default=[],
                        help="resolver for names outside the zone (repeatable; default: resolv.conf's)")
    parser.add_argument("--resolv-conf", default="/etc/resolv.conf", help="where to read upstreams from")
    parser.add_argument("--no-forward", action="store_true", help="authoritative only: REFUSED for other names")
    parser.add_argument("--allow", "--allow-recursion", dest="allow_recursion", metavar="CIDR", action="append",
                        default=[], help="client network that may use forwarding (repeatable)")
    parser.add_argument("--no-default-recursion", action="store_true",
                        help="drop the default recursion clients loopback and the listen networks")
    parser.add_argument("--no-managed-recursion", action="store_true",
                        help="drop the subnets the store says Berth's overlay manages")
    parser.add_argument("--cni-conf-dir", metavar="DIR", help="also allow the IPAM ranges (berth-ipam, host-local) "
                        "of the CNI network configs here, e.g. /etc/cni/net.d: read at start, files owned by root "
                        "and writable by nobody else only")
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--tcp-idle-timeout", type=float, default=10.0, help="seconds a TCP client has to "
                        "deliver each whole query, counted from the end of its previous one (a deadline per "
                        "message, not per read); idle connections close after it too (default 10)")
    parser.add_argument("--max-tcp-connections", type=int, default=256, help="open TCP connections per worker; "
                        "at the cap a new one closes the oldest idle one (default 256)")
    parser.add_argument("--max-tcp-per-source", type=int, default=16, help="open TCP connections per client "
                        "address (default 16)")
    parser.add_argument("--max-udp-size", type=int, default=1232, help="largest UDP answer with EDNS "
                        "(default 1232)")
    parser.add_argument("--cache-bytes", type=int, default=4 << 20, help="bytes of packed answers kept per "
                        "transport, and of upstream answers (default 4 MiB each; oldest out first)")
    parser.add_argument("--no-batch", action="store_true", help="plain recvfrom/sendto instead of "
                        "recvmmsg/sendmmsg (for comparison)")
    parser.add_argument("--upstream-timeout", type=float, default=2.0, help="seconds per upstream try")
    add_metrics_argument(parser)
    add_log_arguments(parser)


def parse_listen(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, "53"
    try:
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        raise SystemExit(f"berth dns: --listen {text!r} is not ADDR:PORT") from None


def interface_networks(hosts: list[str]) -> list[str]:
    """The networks the given local addresses live on (the container bridges when dnsd listens on a gateway)."""
    wanted = [h for h in hosts if h not in WILDCARDS]
    if not wanted:
        return []
    try:
        out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, check=True).stdout
        return networks_of(wanted, json.loads(out))
    except (OSError, subprocess.CalledProcessError, ValueError):
        return []


def networks_of(addresses: list[str], links: list[dict]) -> list[str]:
    """From ``ip -j addr`` output: the network of each interface address in ``addresses``."""
    found = []
    for link in links:
        for info in link.get("addr_info", ()):
            if info.get("local") in addresses and "prefixlen" in info:
                found.append(str(ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False)))
    return found


def make_view(args: argparse.Namespace):
    if args.records:
        from .view import FileView
        return FileView(args.records)
    from discovery.view import DiscoveryView
    from store.api import open_store
    return DiscoveryView(open_store(args.store)).start()


def make_policy(args: argparse.Namespace, static: list[str]) -> RecursionPolicy:
    """Static ranges, plus the store's managed subnets followed live (each worker process follows its own)."""
    if not args.store or args.no_managed_recursion:
        return RecursionPolicy.from_cidrs(static)
    from store.api import open_store
    from .managed import ManagedNetworks
    return RecursionPolicy.from_cidrs(static, ManagedNetworks(open_store(args.store)).start())


def run(args: argparse.Namespace) -> int:
    setup_from_args(args)
    listens = [parse_listen(text) for text in (args.listen or ["127.0.0.1:53"])]
    for name in ("cache_bytes", "max_tcp_connections", "max_tcp_per_source"):
        if getattr(args, name) < 1:
            raise SystemExit(f"berth dns: --{name.replace('_', '-')} must be at least 1")
    hosts = [host for host, _ in listens]
    zone = ZoneConfig(args.zone, args.ttl, args.negative_ttl, tuple(h for h in hosts if h not in WILDCARDS))
    cidrs = [] if args.no_default_recursion else [*LOOPBACK, *interface_networks(hosts)]
    if args.cni_conf_dir:
        from .managed import ipam_networks, read_cni_configs
        cidrs += [str(n) for n in ipam_networks(read_cni_configs(args.cni_conf_dir))]
    try:
        static = [*cidrs, *args.allow_recursion]
        RecursionPolicy.from_cidrs(static)
    except ValueError as exc:
        raise SystemExit(f"berth dns: --allow: {exc}") from None
    upstreams = [Upstream.parse(u) for u in args.upstream]
    if not upstreams and not args.no_forward:
        try:
            with open(args.resolv_conf, encoding="utf-8") as f:
                upstreams = parse_resolv_conf(f.read())
        except OSError:
            upstreams = []
        ours = {(host, port) for host, port in listens}
        upstreams = [u for u in upstreams if (u.host, u.port) not in ours]
    forwarding = bool(upstreams) and not args.no_forward
    options = ServerOptions(listen=tuple(listens), workers=max(1, args.workers),
                            tcp_idle_timeout=args.tcp_idle_timeout, max_tcp_connections=args.max_tcp_connections,
                            max_tcp_per_source=args.max_tcp_per_source, upstreams=tuple(upstreams),
                            upstream_timeout=args.upstream_timeout, batched_udp=not args.no_batch)
    readiness = Readiness()
    ops = start_from_args(args, readiness, serve=False)  # bound now, served once the workers run
    listeners = [bind_listener(host, port, options.workers) for host, port in listens]
    hub = Hub()
    if ops is not None:
        from prometheus_client import REGISTRY
        from .metrics import DnsCollector
        REGISTRY.register(DnsCollector(hub))
        add_readiness_checks(readiness, args, listeners, hub)

    def make_responder():
        from .responder import Responder
        policy = make_policy(args, static) if forwarding else RecursionPolicy(())
        return Responder(make_view(args), zone, policy, forwarding, server_udp_size=args.max_udp_size,
                         cache_bytes=args.cache_bytes)

    def ready() -> None:
        if ops is not None:
            ops.start()
        for ln in listeners:
            host = f"[{ln.host}]" if ":" in ln.host else ln.host
            announce(f"dnsd: listening on {host}:{ln.port} (udp, tcp) zone {zone.zone}.", log)
        upstream_text = ", ".join(f"{u.host}:{u.port}" for u in upstreams) if forwarding else "off"
        announce(f"dnsd: forwarding: {upstream_text}", log)

    try:
        return run_workers(listeners, make_responder, options, ready, hub)
    finally:
        if ops is not None:
            ops.stop()
        for ln in listeners:
            ln.close()


def add_readiness_checks(readiness: Readiness, args: argparse.Namespace, listeners, hub: Hub) -> None:
    """Ready while every socket is open, every worker answers, and the source of the records can be read."""
    readiness.add("sockets", listening_check(lambda: [s for ln in listeners for s in (*ln.udp, ln.tcp)]))

    def workers() -> tuple[bool, str]:
        answering = len(hub.snapshots())
        return answering == hub.expected, f"{answering} of {hub.expected} workers answering"
    readiness.add("workers", workers)
    if args.store:
        opened: list = []

        def store() -> tuple[bool, str]:
            if not opened:
                from store.api import open_store
                opened.append(open_store(args.store))
            opened[0].get("/berth/ready-probe")
            return True, "store answered"
        readiness.add("store", store)
    else:
        readiness.add("records", lambda: (os.access(args.records, os.R_OK), f"{args.records} readable"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="berth dns")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
