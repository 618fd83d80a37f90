"""Who may use dnsd as a recursive resolver (BCP 140: never an open resolver).

Authoritative answers go to anyone; recursion (forwarding) only to clients inside networks that come from
configuration, never from data a non-root user can write: loopback, the networks dnsd listens on (the container
bridges whose gateway it serves), the subnets Berth's overlay manages (its network configuration and subnet
leases in the store, written only by ``berth overlay``), and ``--allow`` ranges. An endpoint registered through the
agent's API is data: its address gains nothing.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable, Iterable

LOOPBACK = ("127.0.0.0/8", "::1/128")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def no_managed_networks() -> tuple[Network, ...]:
    return ()


@dataclass(frozen=True)
class RecursionPolicy:
    """``networks`` fixed at start-up; ``managed`` returns the store's current Berth-managed subnets."""

    networks: tuple[Network, ...] = tuple(map(ipaddress.ip_network, LOOPBACK))
    managed: Callable[[], tuple[Network, ...]] = no_managed_networks

    @classmethod
    def from_cidrs(cls, cidrs: Iterable[str],
                   managed: Callable[[], tuple[Network, ...]] = no_managed_networks) -> "RecursionPolicy":
        return cls(tuple(ipaddress.ip_network(c, strict=False) for c in cidrs), managed)

    def allows(self, client: str) -> bool:
        try:
            address = ipaddress.ip_address(client.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in (*self.networks, *self.managed()))
