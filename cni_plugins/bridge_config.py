"""The bridge plugin's network config, parsed once into a frozen record before any side effect.

Keys, meanings and defaults follow the reference ``bridge`` plugin so an existing conflist works unchanged;
every error names the key that is wrong. One key is Berth's own: ``ipv6SubnetViaGateway`` (cluster IPAM's IPv6
pool spans hosts; berth-overlay sets it).
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from cni_plugins.config_fields import bool_field, int_field, link_name
from cni_plugins import errors
from cni_plugins.types import DNS, ResultError
from ipam.record import Record

MAX_LINK_NAME = 15
MAX_VLAN = 4094
MASQ_BACKENDS = ("nftables", "iptables")
_MAC = re.compile(r"([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}")


class BridgeConfig(Record):
    name: str
    cni_version: str
    bridge: str = "cni0"
    is_gateway: bool = False
    is_default_gateway: bool = False
    force_address: bool = False
    ip_masq: bool = False
    ip_masq_backend: str = "nftables"
    mtu: int = 0
    hairpin_mode: bool = False
    promisc_mode: bool = False
    vlan: int = 0
    vlan_trunk: tuple[int, ...] = ()
    preserve_default_vlan: bool = True
    macspoofchk: bool = False
    enable_dad: bool = False
    port_isolation: bool = False
    disable_container_interface: bool = False
    ipv6_subnet_via_gateway: bool = False  # Berth's: see bridge_plan.subnet_via_gateway
    ipam: Mapping[str, object] | None = None
    dns: DNS = DNS()

    @property
    def vlan_filtering(self) -> bool:
        return bool(self.vlan or self.vlan_trunk)


# Berth's plugins that are not IPAM plugins: naming one as ``ipam.type`` would make the bridge call a bridge.
NOT_IPAM = ("berth-bridge", "berth-overlay", "berth-portmap", "berth-register")


def _vlan_trunk(raw: object) -> tuple[int, ...]:
    """``[{"id": 5}, {"minID": 10, "maxID": 12}]`` → ``(5, 10, 11, 12)``, each checked as the reference does."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise errors.InvalidConfig("vlanTrunk: must be a list of {id} or {minID, maxID} objects")
    ids: list[int] = []
    for entry in raw:
        if not isinstance(entry, Mapping):
            raise errors.InvalidConfig(f"vlanTrunk: entry {entry!r} must be an object")
        low, high = entry.get("minID"), entry.get("maxID")
        if low is not None or high is not None:
            for key, value in (("minID", low), ("maxID", high)):
                if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_VLAN:
                    raise errors.InvalidConfig(f"vlanTrunk.{key}: must be between 1 and {MAX_VLAN}, not {value!r}")
            if high < low:
                raise errors.InvalidConfig(f"vlanTrunk: minID {low} is greater than maxID {high}")
            ids.extend(range(low, high + 1))
        if "id" in entry:
            value = entry["id"]
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_VLAN:
                raise errors.InvalidConfig(f"vlanTrunk.id: must be between 1 and {MAX_VLAN}, not {value!r}")
            ids.append(value)
    return tuple(sorted(set(ids)))


def parse_link_name(value: object, key: str) -> str:
    return link_name(value, key)


def parse_mac(value: object, source: str) -> str:
    if not isinstance(value, str) or not _MAC.fullmatch(value):
        raise errors.InvalidConfig(f"{source}: {value!r} is not a MAC address")
    return value.lower().replace("-", ":")


def parse(config: Mapping[str, object], cni_version: str) -> BridgeConfig:
    """Validate a bridge network config (the parsed stdin) and fill the reference's defaults."""
    bridge = parse_link_name("cni0" if config.get("bridge") in (None, "") else config.get("bridge"), "bridge")
    hairpin, promisc = bool_field(config, "hairpinMode"), bool_field(config, "promiscMode")
    if hairpin and promisc:
        raise errors.InvalidConfig("hairpinMode and promiscMode: cannot set both at the same time")
    vlan = int_field(config, "vlan", 0, MAX_VLAN)
    trunk = _vlan_trunk(config.get("vlanTrunk"))
    if vlan and trunk:
        raise errors.InvalidConfig("vlan and vlanTrunk: cannot set both at the same time")
    backend = config.get("ipMasqBackend")
    backend = "nftables" if backend is None or backend == "" else backend
    if not isinstance(backend, str) or backend not in MASQ_BACKENDS:
        raise errors.InvalidConfig(f"ipMasqBackend: must be one of {list(MASQ_BACKENDS)}, not {backend!r}")
    ipam = config.get("ipam")
    if ipam is not None and not isinstance(ipam, Mapping):
        raise errors.InvalidConfig("ipam: must be an object")
    if ipam is not None and not ipam:
        ipam = None  # an empty ipam block means layer 2 only
    if ipam is not None and (not isinstance(ipam.get("type"), str) or not ipam["type"]):
        raise errors.InvalidConfig("ipam.type: must name an IPAM plugin")
    if ipam is not None and ipam["type"] in NOT_IPAM:
        raise errors.InvalidConfig(f"ipam.type: {ipam['type']} is not an IPAM plugin")
    try:
        dns = DNS.from_dict(config.get("dns"))
    except ResultError as exc:
        raise errors.InvalidConfig(str(exc)) from None
    default_gateway = bool_field(config, "isDefaultGateway")
    return BridgeConfig(
        name=str(config.get("name")), cni_version=cni_version, bridge=bridge,
        is_gateway=bool_field(config, "isGateway") or default_gateway, is_default_gateway=default_gateway,
        force_address=bool_field(config, "forceAddress"), ip_masq=bool_field(config, "ipMasq"), ip_masq_backend=backend,
        mtu=int_field(config, "mtu", 0, 65535), hairpin_mode=hairpin, promisc_mode=promisc, vlan=vlan,
        vlan_trunk=trunk, preserve_default_vlan=bool_field(config, "preserveDefaultVlan", True),
        macspoofchk=bool_field(config, "macspoofchk"), enable_dad=bool_field(config, "enabledad"),
        port_isolation=bool_field(config, "portIsolation"),
        disable_container_interface=bool_field(config, "disableContainerInterface"),
        ipv6_subnet_via_gateway=bool_field(config, "ipv6SubnetViaGateway"), ipam=ipam, dns=dns)
