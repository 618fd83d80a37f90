"""The overlay network's configuration, stored once in the datastore and read by every host.

The JSON uses flannel's key names (``Network``, ``SubnetLen``, ``SubnetMin``, ``SubnetMax``, ``Backend``) so a
flannel user recognises it; it is parsed once into a frozen :class:`NetworkConfig` with every field checked.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

DEFAULT_PREFIX = "/berth/overlay"
DEFAULT_VNI = 1
DEFAULT_PORT = 8472  # the Linux kernel's historical VXLAN port, flannel's default too
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


class ConfigError(ValueError):
    """The network configuration is invalid; the message names the field."""


@dataclass(frozen=True)
class NetworkConfig:
    network: ipaddress.IPv4Network
    subnet_len: int
    subnet_min: ipaddress.IPv4Network
    subnet_max: ipaddress.IPv4Network
    vni: int = DEFAULT_VNI
    port: int = DEFAULT_PORT
    mtu: int = 0  # 0: derive from the underlay interface (its MTU - 50)
    direct_routing: bool = False

    def to_json(self) -> bytes:
        doc = {
            "Network": str(self.network),
            "SubnetLen": self.subnet_len,
            "SubnetMin": str(self.subnet_min.network_address),
            "SubnetMax": str(self.subnet_max.network_address),
            "Backend": {"Type": "vxlan", "VNI": self.vni, "Port": self.port, "DirectRouting": self.direct_routing},
        }
        if self.mtu:
            doc["MTU"] = self.mtu
        return json.dumps(doc, sort_keys=True).encode()

    def subnet_count(self) -> int:
        return (int(self.subnet_max.network_address) - int(self.subnet_min.network_address)
                >> (32 - self.subnet_len)) + 1


def _network(value, field: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(str(value), strict=True)
    except ValueError as exc:
        raise ConfigError(f"{field}: {value!r} is not a network in CIDR form ({exc})") from None
    if net.version != 4:
        raise ConfigError(f"{field}: {value!r}: only IPv4 overlays are supported")
    return net


def _int(doc: dict, key: str, default: int, low: int, high: int) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{key}: {value!r} must be an integer in [{low}, {high}]")
    return value


def make_config(network: str, subnet_len: int | None = None, subnet_min: str | None = None,
                subnet_max: str | None = None, vni: int = DEFAULT_VNI, port: int = DEFAULT_PORT,
                mtu: int = 0, direct_routing: bool = False) -> NetworkConfig:
    """Validate and fill defaults, as flannel does: subnets of /24 unless the network is too small for that,
    the first and last subnet left out (they would hold the network and broadcast addresses of the whole)."""
    doc: dict = {"Network": network, "Backend": {"VNI": vni, "Port": port, "DirectRouting": direct_routing}}
    if subnet_len is not None:
        doc["SubnetLen"] = subnet_len
    if subnet_min is not None:
        doc["SubnetMin"] = subnet_min
    if subnet_max is not None:
        doc["SubnetMax"] = subnet_max
    if mtu:
        doc["MTU"] = mtu
    return parse_config(json.dumps(doc).encode())


def parse_config(raw: bytes) -> NetworkConfig:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"network config is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError("network config must be a JSON object")
    if "Network" not in doc:
        raise ConfigError("Network: missing (the overlay's CIDR, e.g. 10.244.0.0/16)")
    network = _network(doc["Network"], "Network")
    if network.prefixlen > 28:
        raise ConfigError(f"Network: {network} is too small to split into host subnets")
    default_len = 24 if network.prefixlen <= 22 else network.prefixlen + 2
    subnet_len = _int(doc, "SubnetLen", default_len, network.prefixlen + 1, 30)
    step = 1 << (32 - subnet_len)
    first = int(network.network_address)
    last = int(network.broadcast_address) + 1 - step
    smin = _subnet_bound(doc, "SubnetMin", first + step if last - first >= 2 * step else first, network, subnet_len)
    smax = _subnet_bound(doc, "SubnetMax", last - step if last - first >= 2 * step else last, network, subnet_len)
    if smin.network_address > smax.network_address:
        raise ConfigError(f"SubnetMin {smin} is above SubnetMax {smax}")
    backend = doc.get("Backend", {})
    if not isinstance(backend, dict):
        raise ConfigError("Backend: must be an object")
    kind = backend.get("Type", "vxlan")
    if kind != "vxlan":
        raise ConfigError(f"Backend.Type: {kind!r}: only 'vxlan' is supported")
    vni = _int(backend, "VNI", DEFAULT_VNI, 1, (1 << 24) - 1)
    port = _int(backend, "Port", DEFAULT_PORT, 1, 65535)
    direct = backend.get("DirectRouting", False)
    if not isinstance(direct, bool):
        raise ConfigError(f"Backend.DirectRouting: {direct!r} must be true or false")
    mtu = _int(doc, "MTU", 0, 0, 65535)
    if mtu and mtu < 576:
        raise ConfigError(f"MTU: {mtu} is below IPv4's minimum of 576")
    return NetworkConfig(network, subnet_len, smin, smax, vni, port, mtu, direct)


def _subnet_bound(doc: dict, key: str, default: int, network: ipaddress.IPv4Network,
                  subnet_len: int) -> ipaddress.IPv4Network:
    if key not in doc:
        return ipaddress.ip_network((default, subnet_len))
    try:
        address = ipaddress.IPv4Address(str(doc[key]).split("/")[0])
    except ValueError:
        raise ConfigError(f"{key}: {doc[key]!r} is not an IPv4 address") from None
    sub = ipaddress.ip_network((address, subnet_len), strict=False)
    if sub.network_address != address:
        raise ConfigError(f"{key}: {address} is not aligned to /{subnet_len}")
    if not sub.subnet_of(network):
        raise ConfigError(f"{key}: {address} is outside Network {network}")
    return sub
