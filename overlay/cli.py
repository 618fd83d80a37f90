"""``berth overlay``: run the host daemon, or manage the overlay's records in the store.

    berth overlay --store URL --iface IF [--subnet-file PATH] ...     the daemon (runs until SIGTERM)
    berth overlay init --store URL --network CIDR [--subnet-len N] [--vni N] [--port N]
    berth overlay reserve --store URL --subnet CIDR --public-ip IP    a subnet that never expires
    berth overlay unreserve --store URL --subnet CIDR
    berth overlay leases --store URL                                  hosts, subnets, VTEPs
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys

from store.config import default_store_url
from store.logs import add_log_arguments, setup_logging
from store.ops import add_metrics_argument
from overlay.config import DEFAULT_PORT, DEFAULT_PREFIX, DEFAULT_VNI
from overlay.subnetfile import DEFAULT_SUBNET_FILE

log = logging.getLogger("berth.overlay")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    store_default = default_store_url()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=argparse.SUPPRESS,
                        help=f"datastore URL: sqlite:///abs/path.db or etcd://host:port (default $BERTH_STORE or {store_default})")
    common.add_argument("--prefix", default=argparse.SUPPRESS,
                        help=f"key prefix of the overlay's records (default {DEFAULT_PREFIX})")
    parser.set_defaults(store=store_default, prefix=DEFAULT_PREFIX, action=None)
    parser.add_argument("--store", help=f"datastore URL: sqlite:///abs/path.db or etcd://host:port (default $BERTH_STORE or {store_default})")
    parser.add_argument("--prefix", help=f"key prefix of the overlay's records (default {DEFAULT_PREFIX})")
    parser.add_argument("--iface", help="the underlay interface (its first IPv4 address is this host's)")
    parser.add_argument("--public-ip", help="which address of --iface to use")
    parser.add_argument("--subnet-file", default=DEFAULT_SUBNET_FILE, help="where to write flannel's subnet file")
    parser.add_argument("--device", help="VXLAN device name (default berth.<VNI>)")
    parser.add_argument("--lease-ttl", type=float, default=30.0, help="seconds the subnet outlives the daemon")
    parser.add_argument("--resync-interval", type=float, default=30.0,
                        help="seconds between checks that repair kernel entries changed by others (0: never)")
    parser.add_argument("--no-ip-masq", dest="ip_masq", action="store_false",
                        help="do not masquerade traffic leaving the overlay")
    parser.add_argument("--release-on-exit", action="store_true",
                        help="on SIGTERM give the subnet back and remove the device (default: keep both)")
    parser.add_argument("--ipam-host", default="",
                        help="this host's cluster IPAM name (the ipam config's \"host\"; default the hostname): "
                             "peers route the blocks it owns to it")
    parser.add_argument("--ipam-host-ttl", type=float, default=3600.0, metavar="SECONDS",
                        help="keep cluster IPAM's liveness key of --ipam-host alive under a lease this long, as its "
                             "hostTTL (default 3600; 0: leave it to CNI calls)")
    parser.add_argument("--ipam-reclaim-interval", type=float, default=30.0, metavar="SECONDS",
                        help="this often, mark cluster IPAM hosts that departed and free their addresses once their "
                             "pool's releaseDepartedAfter has passed (default 30; 0: never)")
    parser.add_argument("--no-block-routes", dest="route_blocks", action="store_false",
                        help="do not route the cluster IPAM blocks of other hosts")
    parser.add_argument("-v", "--verbose", action="store_true", help="the same as --log-level DEBUG")
    add_log_arguments(parser)
    add_metrics_argument(parser)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")

    init = actions.add_parser("init", parents=[common], help="write the network config to the store")
    init.add_argument("--network", required=True, help="the overlay's CIDR, e.g. 10.244.0.0/16")
    init.add_argument("--subnet-len", type=int, help="prefix length of each host's subnet (default 24)")
    init.add_argument("--subnet-min", help="first subnet to hand out")
    init.add_argument("--subnet-max", help="last subnet to hand out")
    init.add_argument("--vni", type=int, default=DEFAULT_VNI)
    init.add_argument("--port", type=int, default=DEFAULT_PORT, help="VXLAN UDP port")
    init.add_argument("--mtu", type=int, default=0, help="overlay MTU (default: underlay MTU - 50)")
    init.add_argument("--direct-routing", action="store_true",
                      help="no encapsulation to hosts on the same layer-2 segment")
    init.add_argument("--force", action="store_true", help="replace a different existing config")

    reserve = actions.add_parser("reserve", parents=[common], help="keep a subnet for a host forever")
    reserve.add_argument("--subnet", required=True)
    reserve.add_argument("--public-ip", dest="reserve_ip", required=True)
    unreserve = actions.add_parser("unreserve", parents=[common], help="drop a reservation")
    unreserve.add_argument("--subnet", required=True)
    actions.add_parser("leases", parents=[common], help="list every host's subnet lease")


def run(args: argparse.Namespace) -> int:
    setup_logging("DEBUG" if getattr(args, "verbose", False) else getattr(args, "log_level", "INFO"),
                  getattr(args, "log_format", "text"))
    try:
        if args.action is None:
            return _run_daemon(args)
        return {"init": _init, "reserve": _reserve, "unreserve": _unreserve, "leases": _leases}[args.action](args)
    except (ValueError, RuntimeError) as exc:
        print(f"berth overlay: {exc}", file=sys.stderr)
        return 1


def _open(args):
    from store.api import open_store
    return open_store(args.store)


def _init(args) -> int:
    from overlay import claim
    from overlay.config import make_config

    config = make_config(args.network, args.subnet_len, args.subnet_min, args.subnet_max, args.vni, args.port,
                         args.mtu, args.direct_routing)
    store = _open(args)
    try:
        if not claim.write_config(store, args.prefix, config, force=args.force):
            print(f"berth overlay: a different network config is already stored "
                  f"(use --force to replace it): {claim.load_config(store, args.prefix)}", file=sys.stderr)
            return 1
    finally:
        store.close()
    print(f"overlay network {config.network}: /{config.subnet_len} per host "
          f"({config.subnet_count()} subnets), VNI {config.vni}, UDP port {config.port}")
    return 0


def _reserve(args) -> int:
    from overlay import claim

    store = _open(args)
    try:
        config = claim.load_config(store, args.prefix)
        lease = claim.reserve(store, args.prefix, config, ipaddress.IPv4Network(args.subnet),
                              ipaddress.IPv4Address(args.reserve_ip))
    finally:
        store.close()
    print(f"reserved {lease.subnet} for {lease.public_ip}")
    return 0


def _unreserve(args) -> int:
    from overlay import claim

    store = _open(args)
    try:
        gone = claim.unreserve(store, args.prefix, ipaddress.IPv4Network(args.subnet))
    finally:
        store.close()
    print(f"{args.subnet}: {'removed' if gone else 'no such reservation'}")
    return 0 if gone else 1


def _leases(args) -> int:
    from overlay import claim

    store = _open(args)
    try:
        leases, _ = claim.list_leases(store, args.prefix)
    finally:
        store.close()
    print(f"{'SUBNET':<20} {'HOST':<16} {'VTEP MAC':<18} KIND")
    for kv, lease in leases:
        kind = "reserved" if kv.lease == 0 else "leased"
        print(f"{str(lease.subnet):<20} {str(lease.public_ip):<16} {lease.vtep_mac or '-':<18} {kind}")
    return 0


def _run_daemon(args) -> int:
    from overlay.daemon import DaemonOptions, OverlayDaemon
    from store.ops import Readiness, start_from_args

    if not args.iface:
        log.error("--iface is required to run the daemon")
        return 2
    readiness = Readiness()
    ops = start_from_args(args, readiness)
    daemon = OverlayDaemon(DaemonOptions(
        store_url=args.store, iface=args.iface, public_ip=args.public_ip, prefix=args.prefix,
        subnet_file=args.subnet_file, device=args.device, lease_ttl=args.lease_ttl, ip_masq=args.ip_masq,
        release_on_exit=args.release_on_exit, resync_interval=args.resync_interval,
        ipam_host=args.ipam_host, route_blocks=args.route_blocks, ipam_host_ttl=args.ipam_host_ttl,
        ipam_reclaim_interval=args.ipam_reclaim_interval))
    add_readiness_checks(readiness, daemon)
    signal.signal(signal.SIGTERM, lambda *_: daemon.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: daemon.stopping.set())
    try:
        daemon.start()
        while not daemon.stopping.wait(1.0):
            pass
    finally:
        daemon.stop()
        if ops is not None:
            ops.stop()
    if daemon.failed is not None:
        log.error("stopped: %s", daemon.failed)
        return 1
    return 0


def add_readiness_checks(readiness, daemon) -> None:
    """Ready once the lease is held and the watch follows, while the store answers and the device exists."""
    import os

    def started() -> tuple[bool, str]:
        if not daemon.ready.is_set():
            return False, "claiming a subnet lease"
        return True, f"subnet {daemon.held.lease.subnet}"

    def store() -> tuple[bool, str]:
        if daemon.store is None:
            return False, "store not open yet"
        daemon.store.get("/berth/ready-probe")
        return True, "store answered"

    def device() -> tuple[bool, str]:
        name = getattr(daemon, "device", None)
        if name is None or not os.path.exists(f"/sys/class/net/{name}"):
            return False, f"VXLAN device {name or '(none yet)'} missing"
        return True, f"{name} present"

    readiness.add("lease", started)
    readiness.add("store", store)
    readiness.add("device", device)
