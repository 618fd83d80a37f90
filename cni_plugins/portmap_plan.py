"""The portmap plugin's config and rule plan, pure.

``runtimeConfig.portMappings`` and the container's addresses from ``prevResult`` become abstract firewall rules
(:mod:`cni_plugins.firewall`); a host port another attachment already holds is a conflict found here, before any
rule is written.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from cni_plugins.config_fields import bool_field
from cni_plugins import codes, errors
from cni_plugins.firewall import Dnat, Rule, SnatToContainer, tag_of
from cni_plugins.types import IPAddress, Result
from ipam.record import Record

PROTOCOLS = ("tcp", "udp", "sctp")
BACKENDS = ("nftables", "iptables")
PORT_TAKEN = codes.PORT_TAKEN  # a host port is already mapped by another container


class PortMapping(Record):
    host_port: int
    container_port: int
    protocol: str
    host_ip: IPAddress | None


class PortmapConfig(Record):
    name: str
    cni_version: str
    snat: bool
    masq_all: bool
    backend: str
    mappings: tuple[PortMapping, ...]


def _port(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise errors.InvalidConfig(f"{field}: must be a port between 1 and 65535, not {value!r}")
    return value


def parse_mapping(raw: Mapping[str, object], index: int) -> PortMapping:
    field = f"runtimeConfig.portMappings[{index}]"
    protocol = raw.get("protocol")
    protocol = "tcp" if protocol is None or protocol == "" else protocol
    if not isinstance(protocol, str) or protocol.lower() not in PROTOCOLS:
        raise errors.InvalidConfig(f"{field}.protocol: must be one of {list(PROTOCOLS)}, not {raw.get('protocol')!r}")
    protocol = protocol.lower()
    host_ip = None
    if raw.get("hostIP") is not None and raw.get("hostIP") != "":
        if not isinstance(raw["hostIP"], str):
            raise errors.InvalidConfig(f"{field}.hostIP: {raw['hostIP']!r} is not an address string")
        try:
            host_ip = ipaddress.ip_address(raw["hostIP"])
        except ValueError:
            raise errors.InvalidConfig(f"{field}.hostIP: {raw['hostIP']!r} is not an address") from None
        if host_ip.is_unspecified:
            host_ip = None  # 0.0.0.0 / :: mean every address, as no hostIP does
    return PortMapping(host_port=_port(raw.get("hostPort"), f"{field}.hostPort"),
                       container_port=_port(raw.get("containerPort"), f"{field}.containerPort"),
                       protocol=protocol, host_ip=host_ip)


def _flag(config: Mapping[str, object], key: str, default: bool) -> bool:
    return bool_field(config, key, default)


def parse(config: Mapping[str, object], cni_version: str, mappings: Iterable[Mapping[str, object]]) -> PortmapConfig:
    backend = config.get("backend")
    backend = "nftables" if backend is None or backend == "" else backend
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise errors.InvalidConfig(f"backend: must be one of {list(BACKENDS)}, not {backend!r}")
    parsed = tuple(dict.fromkeys(parse_mapping(m, i) for i, m in enumerate(mappings)))
    return PortmapConfig(name=str(config.get("name")), cni_version=cni_version, snat=_flag(config, "snat", True),
                         masq_all=_flag(config, "masqAll", False), backend=backend, mappings=parsed)


def container_ips(prev: Result, ifname: str) -> tuple[IPAddress, ...]:
    """The container's addresses: those of ``prevResult`` on an interface inside the sandbox (or unassigned)."""
    out = []
    for ip in prev.ips:
        if ip.interface is not None:
            iface = prev.interfaces[ip.interface]
            if not iface.sandbox:
                continue
        out.append(ip.address.ip)
    return tuple(out)


def plan_rules(cfg: PortmapConfig, addresses: Iterable[IPAddress]) -> list[Rule]:
    rules: list[Rule] = []
    for address in addresses:
        for m in cfg.mappings:
            if m.host_ip is not None and m.host_ip.version != address.version:
                continue
            rules.append(Dnat(protocol=m.protocol, host_port=m.host_port, host_ip=m.host_ip, container_ip=address,
                              container_port=m.container_port))
            if cfg.snat:
                if address.version == 4:
                    rules.append(SnatToContainer("localhost", m.protocol, address, m.container_port))
                rules.append(SnatToContainer("hairpin", m.protocol, address, m.container_port))
            if cfg.masq_all:
                rules.append(SnatToContainer("all", m.protocol, address, m.container_port))
    return list(dict.fromkeys(rules))


def _claim(comment: str) -> tuple[str, int, str] | None:
    """``... dnat tcp/8080/*`` → ("tcp", 8080, "*"); None for other rules."""
    words = comment.split(" ")
    if len(words) < 6 or words[4] != "dnat":
        return None
    protocol, port, host_ip = words[5].split("/", 2)
    return protocol, int(port), host_ip


def conflicts(cfg: PortmapConfig, tag: str, existing_comments: Iterable[str]) -> list[str]:
    """Host ports of ``cfg`` already held by another attachment: same protocol and port, overlapping host IP."""
    taken: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for comment in existing_comments:
        claim = _claim(comment)
        if claim and tag_of(comment) != tag:
            taken.setdefault(claim[:2], []).append((claim[2], tag_of(comment).split(" ")[2]))
    out = []
    for m in cfg.mappings:
        wanted = str(m.host_ip) if m.host_ip else "*"
        for held_ip, owner in taken.get((m.protocol, m.host_port), []):
            if "*" in (held_ip, wanted) or held_ip == wanted:
                out.append(f"{m.protocol} host port {m.host_port}"
                           f"{'' if wanted == '*' else ' on ' + wanted} is already mapped by container {owner}")
                break
    return out
