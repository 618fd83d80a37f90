"""``berth docker-plugin``: serve Docker's network and IPAM driver APIs on a Unix socket until SIGTERM.

Docker finds a v1 plugin by its socket ``/run/docker/plugins/<name>.sock``; the name is what users pass to
``docker network create -d <name> --ipam-driver <name>``.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from discovery import wire
from docker_plugin import agreement
from docker_plugin.docker_api import DockerAPI
from docker_plugin.ipam_driver import IpamDriver
from docker_plugin.names import NameRegistrar
from docker_plugin.network_driver import NetworkDriver
from docker_plugin.server import PluginServer
from docker_plugin.state import StateDir
from overlay import subnetfile

PLUGIN_DIR = "/run/docker/plugins"
DEFAULT_STATE_DIR = "/var/lib/berth/docker"
log = logging.getLogger("berth.docker_plugin")


def routes(network: NetworkDriver, ipam: IpamDriver) -> dict:
    return {
        "Plugin.Activate": lambda _r: {"Implements": ["NetworkDriver", "IpamDriver"]},
        "NetworkDriver.GetCapabilities": network.capabilities,
        "NetworkDriver.CreateNetwork": network.create_network,
        "NetworkDriver.DeleteNetwork": network.delete_network,
        "NetworkDriver.CreateEndpoint": network.create_endpoint,
        "NetworkDriver.EndpointOperInfo": network.endpoint_info,
        "NetworkDriver.DeleteEndpoint": network.delete_endpoint,
        "NetworkDriver.Join": network.join,
        "NetworkDriver.Leave": network.leave,
        "NetworkDriver.ProgramExternalConnectivity": network.program_external_connectivity,
        "NetworkDriver.RevokeExternalConnectivity": network.revoke_external_connectivity,
        "NetworkDriver.DiscoverNew": network.discover,
        "NetworkDriver.DiscoverDelete": network.discover,
        "IpamDriver.GetCapabilities": ipam.capabilities,
        "IpamDriver.GetDefaultAddressSpaces": ipam.address_spaces,
        "IpamDriver.RequestPool": ipam.request_pool,
        "IpamDriver.ReleasePool": ipam.release_pool,
        "IpamDriver.RequestAddress": ipam.request_address,
        "IpamDriver.ReleaseAddress": ipam.release_address,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="berth",
                        help="the driver name Docker users give to -d and --ipam-driver (default: berth)")
    parser.add_argument("--socket", help=f"where to listen (default: {PLUGIN_DIR}/<name>.sock)")
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                        help=f"networks, endpoints and address reservations that outlive a restart "
                             f"(default: {DEFAULT_STATE_DIR})")
    parser.add_argument("--bridge-prefix", default="berth-",
                        help="a network's bridge is this prefix and its id's start, unless -o berth.bridge= names it")
    parser.add_argument("--default-pool", default="10.212.0.0/16",
                        help="networks created without --subnet get a free /24 of this (default: 10.212.0.0/16)")
    parser.add_argument("--subnet-file", default=subnetfile.DEFAULT_SUBNET_FILE,
                        help="berth overlay's subnet file: the pool of --ipam-opt berth.overlay=true networks")
    parser.add_argument("--docker-host", default="unix:///var/run/docker.sock",
                        help="dockerd's API socket: read at start to drop what Docker forgot, and for names")
    parser.add_argument("--agent-socket", default=wire.DEFAULT_SOCKET,
                        help=f"the discovery agent's socket for container names (default {wire.DEFAULT_SOCKET})")
    parser.add_argument("--spool-dir", default=wire.DEFAULT_SPOOL_DIR,
                        help="where registrations wait while no agent listens (the agent's spool)")
    parser.add_argument("--no-names", action="store_true", help="do not register container names with the agent")
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    if os.geteuid() != 0:
        log.error("the Docker plugin creates bridges and veths: run it as root")
        return 1
    state = StateDir(args.state_dir)
    network = NetworkDriver(state, bridge_prefix=args.bridge_prefix, subnet_file=args.subnet_file)
    ipam = IpamDriver(state, default_pool=args.default_pool, subnet_file=args.subnet_file)
    network.restore()
    networks, endpoints = network.snapshot()
    held = agreement.Held(networks, endpoints, ipam.held())
    path = args.socket or os.path.join(PLUGIN_DIR, f"{args.name}.sock")
    server = PluginServer(path, routes(network, ipam))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, name="docker-plugin", daemon=True)
    thread.start()
    log.info("Docker plugin %s listening on %s (state in %s)", args.name, path, args.state_dir)
    api = DockerAPI(args.docker_host)
    threading.Thread(target=agreement.agree_with_docker, args=(network, ipam, api, args.name, held), daemon=True,
                     name="docker-forget").start()
    names = None
    if not args.no_names:
        names = NameRegistrar(api, args.name, args.agent_socket, args.spool_dir)
        names.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        if names is not None:
            names.stop()
        server.shutdown()
        server.close()
    return 0
