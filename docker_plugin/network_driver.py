"""Docker's remote network-driver API: each handler reads its records, asks :mod:`network_plan` what should exist,
makes it so through :mod:`kernel` (over :mod:`datapath`), and keeps the record in the state directory before it
answers.

Handlers run under one lock: Docker calls a driver from many goroutines, and the calls that touch one network's
records must not interleave. Every removal is idempotent (Docker retries, and a restarted plugin may meet a
request for something it already removed).
"""
from __future__ import annotations

import ipaddress
import logging
import threading

from datapath.errors import DatapathError
from docker_plugin import kernel, network_plan
from docker_plugin.errors import DriverError, from_datapath, mapping
from docker_plugin.state import StateDir
from overlay import subnetfile

log = logging.getLogger(__name__)
DST_PREFIX = "eth"


class NetworkDriver:
    def __init__(self, state: StateDir, bridge_prefix: str = "berth-",
                 subnet_file: str = subnetfile.DEFAULT_SUBNET_FILE) -> None:
        self.state = state
        self.subnet_file = subnet_file
        self.bridge_prefix = bridge_prefix
        self._lock = threading.Lock()

    def capabilities(self, _request: dict) -> dict:
        return {"Scope": "local", "ConnectivityScope": "local"}

    def create_network(self, request: dict) -> dict:
        network = network_plan.plan_network(request, self.bridge_prefix)
        with self._lock:
            pools = [p for _, p in self.state.all("pools") if any(p["pool"] == s["pool"] for s in network["subnets"])]
            try:
                lease = subnetfile.read_if_present(self.subnet_file)
            except (OSError, subnetfile.SubnetFileError) as exc:
                raise DriverError(f"the overlay's subnet file {self.subnet_file}: {exc}", 409) from None
            network = network_plan.join_overlay(network, pools, lease)
            for other_id, other in self.state.all("networks"):
                if other_id != network["id"] and other["bridge"] == network["bridge"]:
                    raise DriverError(f"bridge {network['bridge']} already serves network {other_id[:12]}", 409)
            earlier = self.state.get("networks", network["id"])  # Docker repeating a create it saw fail
            network["created_bridge"] = (earlier or {}).get("created_bridge") or \
                not kernel.bridge_exists(network["bridge"])
            try:
                _kernel(lambda: kernel.ensure_bridge(network["bridge"], network["mtu"],
                                                       network_plan.gateways(network)))
                self.state.put("networks", network["id"], network)
            except BaseException:
                if network["created_bridge"]:  # refused or failed: leave no bridge behind
                    kernel.delete_link(network["bridge"])
                raise
        log.info("network %s: bridge %s, subnets %s", network["id"][:12], network["bridge"],
                 [s["pool"] for s in network["subnets"]])
        return {}

    def delete_network(self, request: dict) -> dict:
        network_id = network_plan.docker_id(request, "NetworkID")
        with self._lock:  # Docker releases the pool after this answers
            if not self._dismantle(network_id):
                return {}
            self.state.delete("networks", network_id)
        log.info("network %s deleted", network_id[:12])
        return {}

    def create_endpoint(self, request: dict) -> dict:
        with self._lock:
            network = self._network(request)
            endpoint = network_plan.plan_endpoint(request, network)
            self.state.put("endpoints", endpoint["id"], endpoint)
        if endpoint["mac_given"] or not endpoint["mac"]:
            return {}  # Docker's IPAM call gave the addresses, and the MAC when the user chose one
        return {"Interface": {"MacAddress": endpoint["mac"]}}

    def endpoint_info(self, request: dict) -> dict:
        with self._lock:
            endpoint = self._endpoint(request)
        return {"Value": {"berth.host_interface": endpoint["host"], "berth.addresses": endpoint["addresses"]}}

    def delete_endpoint(self, request: dict) -> dict:
        endpoint_id = network_plan.docker_id(request, "EndpointID")
        with self._lock:
            endpoint = self.state.get("endpoints", endpoint_id)
            if endpoint is not None:
                self._remove_endpoint(endpoint)
        return {}

    def join(self, request: dict) -> dict:
        with self._lock:
            network = self._network(request)
            endpoint = self._endpoint(request)
            _kernel(lambda: kernel.delete_port(endpoint["host"], endpoint["peer"]))  # a repeated Join starts clean
            _kernel(lambda: kernel.create_port(network["bridge"], endpoint["host"], endpoint["peer"],
                                                 network["mtu"], endpoint["mac"] or None))
            if network["masquerade"]:
                try:
                    _kernel(lambda: kernel.add_masquerade(network_plan.tag(endpoint), _addresses(endpoint),
                                                              network["masquerade_scope"]))
                except DriverError:
                    kernel.delete_port(endpoint["host"], endpoint["peer"])
                    raise
        answer: dict = {"InterfaceName": {"SrcName": endpoint["peer"], "DstPrefix": DST_PREFIX},
                        "DisableGatewayService": False}
        for gateway in network_plan.gateways(network):
            answer["Gateway" if gateway.version == 4 else "GatewayIPv6"] = str(gateway.ip)
        return answer

    def leave(self, request: dict) -> dict:
        endpoint_id = network_plan.docker_id(request, "EndpointID")
        with self._lock:
            endpoint = self.state.get("endpoints", endpoint_id)
            if endpoint is not None:
                _kernel(lambda: kernel.remove_masquerade(network_plan.tag(endpoint)))
                _kernel(lambda: kernel.delete_port(endpoint["host"], endpoint["peer"]))
        return {}

    def program_external_connectivity(self, request: dict) -> dict:
        """``-p``: DNAT rules for the endpoint's host ports; a host port already published is refused."""
        options = mapping(request, "Options")
        with self._lock:
            endpoint = self._endpoint(request)
            rules, claims = network_plan.plan_ports(endpoint, network_plan.port_mappings(options))
            _kernel(lambda: kernel.add_port_rules(network_plan.tag(endpoint), claims, rules))
        return {}

    def revoke_external_connectivity(self, request: dict) -> dict:
        endpoint_id = network_plan.docker_id(request, "EndpointID")
        with self._lock:
            endpoint = self.state.get("endpoints", endpoint_id)
            if endpoint is not None:
                _kernel(lambda: kernel.remove_port_rules(network_plan.tag(endpoint)))
        return {}

    def discover(self, _request: dict) -> dict:
        return {}  # node discovery matters to a global-scope driver; Berth's overlay finds its peers in the store

    # --- start-up ----------------------------------------------------------------------------------------------------

    def restore(self) -> None:
        """After a restart or a reboot: every kept network gets its bridge back; endpoints of a network that is
        gone, and firewall rules of endpoints that are gone, are removed."""
        with self._lock:
            networks = dict(self.state.all("networks"))
            for network in networks.values():
                try:
                    _kernel(lambda: kernel.ensure_bridge(network["bridge"], network["mtu"],
                                                           network_plan.gateways(network)))
                except DriverError as exc:  # one broken network must not keep the others from being served
                    log.error("network %s: cannot restore bridge %s: %s", network["id"][:12], network["bridge"], exc)
            endpoints = dict(self.state.all("endpoints"))
            for endpoint in endpoints.values():
                if endpoint["network"] not in networks:
                    self._remove_endpoint(endpoint)
            for network_id in networks:
                keep = [network_plan.tag(e) for e in endpoints.values() if e["network"] == network_id]
                removed = _kernel(lambda: kernel.gc_rules(network_id, keep))
                if removed:
                    log.info("network %s: removed stale rules %s", network_id[:12], removed)
        log.info("restored %d networks, %d endpoints", len(networks), len(endpoints))

    def snapshot(self) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
        """The networks (id → subnets) and endpoints (id → network) held now: what start-up may judge."""
        with self._lock:
            return ({i: tuple(s["pool"] for s in n["subnets"]) for i, n in self.state.all("networks")},
                    {i: e["network"] for i, e in self.state.all("endpoints")})

    def dismantle_network(self, network_id: str) -> bool:
        """Remove a network's endpoints, rules and bridge but keep its record: whoever removes the network
        releases its pool before :meth:`drop_network`, so a crash in between leaves a record to judge again.
        False when there is no such network."""
        with self._lock:
            return self._dismantle(network_id)

    def drop_network(self, network_id: str) -> None:
        with self._lock:
            self.state.delete("networks", network_id)

    def dismantle_endpoint(self, endpoint_id: str) -> dict | None:
        """An endpoint's veth and rules go, its record stays (its address is released before
        :meth:`drop_endpoint`); returns the record, None when there is none."""
        with self._lock:
            endpoint = self.state.get("endpoints", endpoint_id)
            if endpoint is not None:
                self._remove_endpoint(endpoint, keep_record=True)
        return endpoint

    def drop_endpoint(self, endpoint_id: str) -> None:
        with self._lock:
            self.state.delete("endpoints", endpoint_id)

    def adopt(self, docker_network: dict, gateways: dict[str, str]) -> None:
        """Take back a network Docker still has but this plugin lost the records of: the network from Docker's
        inspect (its options, subnets and the gateways IPAM kept), and an endpoint per attached container, so
        its veth, rules and address are removed with it again (veth names follow from the endpoint id)."""
        network_id = docker_network["Id"]
        options = docker_network.get("Options") or {}
        data: dict[str, list] = {"IPv4Data": [], "IPv6Data": []}
        for subnet, gateway in gateways.items():
            data["IPv6Data" if ":" in subnet else "IPv4Data"].append({"Pool": subnet, "Gateway": gateway})
        self.create_network({"NetworkID": network_id, "Options": {network_plan.GENERIC: options}, **data})
        if network_plan.OPTION_BRIDGE not in options:
            with self._lock:  # the bridge carries this plugin's name scheme: it is ours to remove
                record = self.state.get("networks", network_id)
                self.state.put("networks", network_id, {**record, "created_bridge": True})
        for attached in (docker_network.get("Containers") or {}).values():
            interface = {"Address": attached.get("IPv4Address") or "", "AddressIPv6": attached.get("IPv6Address") or "",
                         "MacAddress": attached.get("MacAddress") or ""}
            request = {"NetworkID": network_id, "EndpointID": attached.get("EndpointID") or "", "Interface": interface}
            self.create_endpoint(request)
            with self._lock:
                network, endpoint = self._network(request), self._endpoint(request)
                if network["masquerade"]:
                    _kernel(lambda: kernel.add_masquerade(network_plan.tag(endpoint), _addresses(endpoint),
                                                              network["masquerade_scope"]))
        log.info("network %s: taken back from Docker with %d endpoints", network_id[:12],
                 len(docker_network.get("Containers") or {}))

    # --- helpers -----------------------------------------------------------------------------------------------------

    def _remove_endpoint(self, endpoint: dict, keep_record: bool = False) -> None:
        _kernel(lambda: kernel.remove_port_rules(network_plan.tag(endpoint)))
        _kernel(lambda: kernel.remove_masquerade(network_plan.tag(endpoint)))
        _kernel(lambda: kernel.delete_port(endpoint["host"], endpoint["peer"]))
        if not keep_record:
            self.state.delete("endpoints", endpoint["id"])

    def _dismantle(self, network_id: str) -> bool:
        network = self.state.get("networks", network_id)
        if network is None:
            return False
        for _, endpoint in list(self.state.all("endpoints")):
            if endpoint["network"] == network_id:
                self._remove_endpoint(endpoint)
        _kernel(lambda: kernel.gc_rules(network_id, ()))
        if network.get("created_bridge", True):
            _kernel(lambda: kernel.delete_link(network["bridge"]))
        return True

    def _network(self, request: dict) -> dict:
        network_id = network_plan.docker_id(request, "NetworkID")
        network = self.state.get("networks", network_id)
        if network is None:
            raise DriverError(f"network {network_id[:12]} is not a Berth network this plugin knows", 404)
        return network

    def _endpoint(self, request: dict) -> dict:
        endpoint_id = network_plan.docker_id(request, "EndpointID")
        endpoint = self.state.get("endpoints", endpoint_id)
        if endpoint is None:
            raise DriverError(f"endpoint {endpoint_id[:12]} is not one this plugin created", 404)
        return endpoint


def _addresses(endpoint: dict) -> list:
    return [ipaddress.ip_interface(a) for a in endpoint["addresses"]]


def _kernel(call):
    """A datapath failure (netlink, firewall, a host port taken) as the driver's error, its message intact."""
    try:
        return call()
    except DatapathError as exc:
        raise from_datapath(exc) from None
    except OSError as exc:
        raise DriverError(str(exc), 500) from None
