"""A host's subnet lease: the record every host publishes and every other host reads.

One key-path function and one record schema, shared by the writer (``claim``) and the readers (``reconcile``).
The value is flannel's lease JSON (``PublicIP``, ``BackendType``, ``BackendData.VtepMAC``) and the key mirrors
flannel's ``/coreos.com/network/subnets/10.5.1.0-24``, under Berth's own prefix.
"""
from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass

from overlay.config import DEFAULT_PREFIX

_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")


class LeaseFormatError(ValueError):
    """A key or value under the subnets prefix that is not a valid lease (written by someone else, or corrupt)."""


def config_key(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}/config"


def subnets_prefix(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}/subnets/"


def subnet_key(subnet: ipaddress.IPv4Network, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{subnets_prefix(prefix)}{subnet.network_address}-{subnet.prefixlen}"


def subnet_from_key(key: str, prefix: str = DEFAULT_PREFIX) -> ipaddress.IPv4Network:
    base = subnets_prefix(prefix)
    if not key.startswith(base):
        raise LeaseFormatError(f"{key!r} is not under {base!r}")
    name = key[len(base):]
    try:
        address, _, length = name.rpartition("-")
        return ipaddress.IPv4Network((address, int(length)))
    except ValueError:
        raise LeaseFormatError(f"{key!r}: {name!r} is not ADDRESS-PREFIXLEN") from None


def valid_mac(mac: str) -> bool:
    return bool(_MAC.match(mac))


@dataclass(frozen=True)
class SubnetLease:
    """``subnet`` belongs to the host whose underlay address is ``public_ip``; its VTEP answers with ``vtep_mac``.

    ``reserved`` marks a reservation (a key without a store lease): it never expires. ``ipam_host`` is the name
    the host's cluster IPAM claims blocks under (ipam config ``host``): the join from a block's owner to the VTEP
    that routes it (``IpamHost`` in the JSON; absent in flannel's records and older Berth ones)."""

    subnet: ipaddress.IPv4Network
    public_ip: ipaddress.IPv4Address
    vtep_mac: str
    vni: int
    reserved: bool = False
    ipam_host: str = ""

    @property
    def vtep_ip(self) -> ipaddress.IPv4Address:
        """The address of the host's VXLAN device: its subnet's first address, as in flannel."""
        return self.subnet.network_address

    def to_json(self) -> bytes:
        doc = {"PublicIP": str(self.public_ip), "BackendType": "vxlan",
               "BackendData": {"VNI": self.vni, "VtepMAC": self.vtep_mac}}
        if self.reserved:
            doc["Reserved"] = True
        if self.ipam_host:
            doc["IpamHost"] = self.ipam_host
        return json.dumps(doc, sort_keys=True).encode()


def parse_lease(key: str, value: bytes, prefix: str = DEFAULT_PREFIX) -> SubnetLease:
    subnet = subnet_from_key(key, prefix)
    try:
        doc = json.loads(value)
        public_ip = ipaddress.IPv4Address(doc["PublicIP"])
        data = doc.get("BackendData") or {}
        mac = str(data.get("VtepMAC", "")).lower()
        vni = int(data.get("VNI", 0))
        ipam_host = str(doc.get("IpamHost") or "")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LeaseFormatError(f"{key}: not a subnet lease ({exc})") from None
    if mac and not valid_mac(mac):
        raise LeaseFormatError(f"{key}: VtepMAC {mac!r} is not a MAC address")
    return SubnetLease(subnet, public_ip, mac, vni, bool(doc.get("Reserved", False)), ipam_host)
