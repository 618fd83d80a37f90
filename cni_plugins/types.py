"""Spec versions and the CNI result model, with conversion between versions in this one place.

Plugins build a :class:`Result` and never think about versions; :meth:`Result.to_dict` renders it for the version
the runtime asked for (``ips[].version`` for 0.3.x/0.4.0, the 1.1.0-only fields dropped for older versions), and
:meth:`Result.from_dict` reads a ``prevResult`` of any supported version.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from ipam.addresses import IPAddress, IPInterface, IPNetwork
from ipam.record import Record, field

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]



def version_tuple(version: str) -> tuple[int, int, int]:
    """``"1.0.0"`` → ``(1, 0, 0)``; raises ValueError for anything else."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{version!r} is not a semantic version")
    return int(parts[0]), int(parts[1]), int(parts[2])


def at_least(version: str, minimum: str) -> bool:
    return version_tuple(version) >= version_tuple(minimum)


def _is_1x(version: str) -> bool:
    return at_least(version, "1.0.0")


class ResultError(ValueError):
    """A result (or prevResult) that does not parse; the message names the field."""


def _text(data: Mapping[str, object], key: str, field: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ResultError(f"{field}: must be a string, not {value!r}")
    return value


def _int(data: Mapping[str, object], key: str, field: str, high: int) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise ResultError(f"{field}: must be an integer between 0 and {high}, not {value!r}")
    return value


def _address_text(data: Mapping[str, object], key: str, field: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ResultError(f"{field}: {value!r} is not an address string")
    return value


class Interface(Record):
    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int | None = None          # 1.1.0
    socket_path: str = ""           # 1.1.0
    pci_id: str = ""                # 1.1.0

    def to_dict(self, version: str) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name}
        if self.mac:
            out["mac"] = self.mac
        if at_least(version, "1.1.0") and self.mtu:
            out["mtu"] = self.mtu
        if self.sandbox:
            out["sandbox"] = self.sandbox
        if at_least(version, "1.1.0"):
            if self.socket_path:
                out["socketPath"] = self.socket_path
            if self.pci_id:
                out["pciID"] = self.pci_id
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "Interface":
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise ResultError("interfaces: each interface needs a string 'name'")
        return cls(name=data["name"], mac=_text(data, "mac", "interfaces.mac"),
                   sandbox=_text(data, "sandbox", "interfaces.sandbox"),
                   mtu=_int(data, "mtu", "interfaces.mtu", 65535) or None,
                   socket_path=_text(data, "socketPath", "interfaces.socketPath"),
                   pci_id=_text(data, "pciID", "interfaces.pciID"))


class IPConfig(Record):
    address: IPInterface
    gateway: IPAddress | None = None
    interface: int | None = None  # index into Result.interfaces

    @property
    def family(self) -> str:
        return str(self.address.version)

    def to_dict(self, version: str) -> dict[str, object]:
        out: dict[str, object] = {}
        if not _is_1x(version):
            out["version"] = self.family
        if self.interface is not None:
            out["interface"] = self.interface
        out["address"] = self.address.with_prefixlen
        if self.gateway is not None:
            out["gateway"] = str(self.gateway)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "IPConfig":
        if not isinstance(data, Mapping):
            raise ResultError("ips: each entry must be an object")
        text = _address_text(data, "address", "ips.address")
        try:
            address = ipaddress.ip_interface(text)
        except ValueError:
            raise ResultError(f"ips.address: {text!r} is not an address with prefix") from None
        if "/" not in text:
            raise ResultError(f"ips.address: {text!r} needs a prefix length")
        gateway = None
        if data.get("gateway") is not None and data.get("gateway") != "":
            try:
                gateway = ipaddress.ip_address(_address_text(data, "gateway", "ips.gateway"))
            except ValueError:
                raise ResultError(f"ips.gateway: {data['gateway']!r} is not an address") from None
        declared = data.get("version")
        if declared is not None and (not isinstance(declared, str) or declared != str(address.version)):
            raise ResultError(f"ips.version: {declared!r} does not match address {data['address']!r}")
        interface = data.get("interface")
        if interface is not None and (not isinstance(interface, int) or isinstance(interface, bool)
                                      or not 0 <= interface < 1 << 16):
            raise ResultError(f"ips.interface: {interface!r} is not an interface index")
        return cls(address=address, gateway=gateway, interface=interface)


class Route(Record):
    dst: IPNetwork
    gw: IPAddress | None = None
    mtu: int | None = None        # the rest: 1.1.0
    advmss: int | None = None
    priority: int | None = None
    table: int | None = None
    scope: int | None = None

    def to_dict(self, version: str) -> dict[str, object]:
        out: dict[str, object] = {"dst": self.dst.with_prefixlen}
        if self.gw is not None:
            out["gw"] = str(self.gw)
        if at_least(version, "1.1.0"):
            for key, value in (("mtu", self.mtu), ("advmss", self.advmss), ("priority", self.priority)):
                if value:
                    out[key] = value
            for key, value in (("table", self.table), ("scope", self.scope)):
                if value is not None:
                    out[key] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "Route":
        if not isinstance(data, Mapping):
            raise ResultError("routes: each entry must be an object")
        dst_text = _address_text(data, "dst", "routes.dst")
        try:
            dst = ipaddress.ip_network(dst_text, strict=False)
        except ValueError:
            raise ResultError(f"routes.dst: {dst_text!r} is not a network") from None
        gw = None
        if data.get("gw") is not None and data.get("gw") != "":
            try:
                gw = ipaddress.ip_address(_address_text(data, "gw", "routes.gw"))
            except ValueError:
                raise ResultError(f"routes.gw: {data['gw']!r} is not an address") from None
        limits = {"mtu": 65535, "advmss": 65535, "priority": 0xFFFFFFFF, "table": 0xFFFFFFFF, "scope": 255}
        ints = {key: _int(data, key, f"routes.{key}", high) for key, high in limits.items()}
        return cls(dst=dst, gw=gw, **ints)


class DNS(Record):
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out

    def __bool__(self) -> bool:
        return bool(self.nameservers or self.domain or self.search or self.options)

    @classmethod
    def from_dict(cls, data: Mapping[str, object] | None) -> "DNS":
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ResultError("dns: must be an object")

        def strings(key: str) -> tuple[str, ...]:
            value = data.get(key)
            value = () if value is None else value
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ResultError(f"dns.{key}: must be a list of strings")
            return tuple(value)

        return cls(nameservers=strings("nameservers"), domain=_text(data, "domain", "dns.domain"),
                   search=strings("search"), options=strings("options"))


class Result(Record):
    """A CNI result, independent of spec version."""

    cni_version: str = LATEST_VERSION
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = field(default_factory=DNS)

    def __post_init__(self) -> None:
        for name in ("interfaces", "ips", "routes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def to_dict(self, version: str | None = None) -> dict[str, object]:
        """The result as the spec's JSON object for ``version`` (default: the result's own)."""
        version = version or self.cni_version
        if version not in SUPPORTED_VERSIONS:
            raise ResultError(f"cannot convert a result to version {version!r}")
        out: dict[str, object] = {"cniVersion": version}
        if self.interfaces:
            out["interfaces"] = [i.to_dict(version) for i in self.interfaces]
        if self.ips:
            out["ips"] = [ip.to_dict(version) for ip in self.ips]
        if self.routes:
            out["routes"] = [r.to_dict(version) for r in self.routes]
        out["dns"] = self.dns.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "Result":
        """Parse a result of any supported version (as found in ``prevResult`` or a delegate's stdout)."""
        if not isinstance(data, Mapping):
            raise ResultError("result: must be a JSON object")
        version = data.get("cniVersion")
        version = LATEST_VERSION if version is None or version == "" else version
        if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
            raise ResultError(f"result: unsupported cniVersion {version!r}")

        def entries(key: str) -> list:
            value = data.get(key)
            value = [] if value is None else value
            if not isinstance(value, list):
                raise ResultError(f"{key}: must be a list")
            return value

        interfaces = tuple(Interface.from_dict(i) for i in entries("interfaces"))
        ips = tuple(IPConfig.from_dict(i) for i in entries("ips"))
        for ip in ips:
            if ip.interface is not None and ip.interface >= len(interfaces):
                raise ResultError(f"ips.interface: index {ip.interface} has no interface")
        return cls(cni_version=version, interfaces=interfaces, ips=ips,
                   routes=tuple(Route.from_dict(r) for r in entries("routes")), dns=DNS.from_dict(data.get("dns")))
