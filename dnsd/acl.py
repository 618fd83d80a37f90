"""Who may use dnsd as a recursive resolver (BCP 140: never an open resolver).

Authoritative answers go to anyone; recursion (forwarding) only to clients inside the allowed networks — by default
loopback, the networks dnsd listens on (the container bridges) and every address of an endpoint in the view.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable

LOOPBACK = ("127.0.0.0/8", "::1/128")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class RecursionPolicy:
    networks: tuple[Network, ...] = field(default_factory=lambda: tuple(map(ipaddress.ip_network, LOOPBACK)))
    allow_endpoints: bool = True  # addresses of endpoints in the view may recurse too

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str], allow_endpoints: bool = True) -> "RecursionPolicy":
        return cls(tuple(ipaddress.ip_network(c, strict=False) for c in cidrs), allow_endpoints)

    def allows(self, client: str, endpoint_addresses: frozenset[str] = frozenset()) -> bool:
        try:
            address = ipaddress.ip_address(client.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if self.allow_endpoints and str(address) in endpoint_addresses:
            return True
        return any(address in network for network in self.networks)
