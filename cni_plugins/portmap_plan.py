"""The portmap plugin's config, pure: the CNI face of :mod:`datapath.ports`.

``runtimeConfig.portMappings`` (checked by :func:`datapath.ports.parse_mapping`), the plugin's flags and backend
become a :class:`PortmapConfig`; with the container's addresses from ``prevResult`` it plans the datapath's
firewall rules (:func:`rules_for`), and the host ports another attachment holds are found before any is written.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from cni_plugins import errors
from cni_plugins.config_fields import bool_field
from cni_plugins.types import Result
from datapath.errors import InvalidInput
from datapath.firewall import Rule
from datapath.ports import PortMapping, parse_mappings, plan_rules
from ipam.addresses import IPAddress
from ipam.record import Record

BACKENDS = ("nftables", "iptables")


class PortmapConfig(Record):
    name: str
    cni_version: str
    snat: bool
    masq_all: bool
    backend: str
    mappings: tuple[PortMapping, ...]


def _flag(config: Mapping[str, object], key: str, default: bool) -> bool:
    return bool_field(config, key, default)


def parse(config: Mapping[str, object], cni_version: str, mappings: Iterable[Mapping[str, object]]) -> PortmapConfig:
    backend = config.get("backend")
    backend = "nftables" if backend is None or backend == "" else backend
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise errors.InvalidConfig(f"backend: must be one of {list(BACKENDS)}, not {backend!r}")
    try:
        parsed = parse_mappings(mappings)
    except InvalidInput as exc:
        raise errors.from_datapath(exc) from None
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


def rules_for(cfg: PortmapConfig, addresses: Iterable[IPAddress]) -> list[Rule]:
    return plan_rules(cfg.mappings, addresses, snat=cfg.snat, masq_all=cfg.masq_all)
