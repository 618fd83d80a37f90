"""The name scheme: endpoint records → the zone's names, and a question → an answer. Pure: no I/O, no clock.

Names (``Z`` is the zone, default ``berth.internal``), built only from endpoints that are not critical:

- ``<name>.Z`` and ``<name>.<network>.Z``: A/AAAA (and TXT) for every container name and alias;
- ``<service>.service.Z`` and ``<tag>.<service>.service.Z``: A/AAAA per endpoint, SRV per port (Consul style);
- ``_<service>._<proto>.service.Z`` (RFC 2782) and Consul's ``_<service>._<tag>.service.Z``: one SRV per instance
  and port, each with its own target ``<hex-address>.addr.Z`` (Consul's ``<hex>.addr.<dc>.consul``: the instance's
  first address, 8 hex digits for IPv4, 32 for IPv6) whose A/AAAA, in the additional section and asked directly, is
  that one address — so an SRV consumer (HAProxy's ``server-template``) sees every instance, even when instances
  share a name (Consul registrations are named after their service) or a host name;
- PTR in ``in-addr.arpa``/``ip6.arpa`` for every address, pointing at ``<name>.Z``;
- SOA and NS at the apex; the SOA serial is the view's revision and its minimum is the negative TTL (RFC 2308).
"""
from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Iterable

from discovery.model import DNS_LABEL, EndpointRecord

from .records import A, AAAA, ANY, NOERROR, NS, NXDOMAIN, PTR, SOA, SRV, TXT, Answer, Record, Srv

DEFAULT_ZONE = "berth.internal"
REVERSE_SUFFIXES = ("in-addr.arpa", "ip6.arpa")


@dataclass(frozen=True)
class ZoneConfig:
    zone: str = DEFAULT_ZONE
    ttl: int = 5
    negative_ttl: int = 5
    nameserver_addresses: tuple[str, ...] = ()  # A/AAAA of ns.<zone>, when the server knows where it listens

    def __post_init__(self) -> None:
        zone = self.zone.rstrip(".").lower()
        if not zone or any(not DNS_LABEL.match(label) for label in zone.split(".")):
            raise ValueError(f"zone: {self.zone!r} is not a DNS name")
        object.__setattr__(self, "zone", zone)
        for name in ("ttl", "negative_ttl"):
            if not 0 <= getattr(self, name) <= 2**31 - 1:
                raise ValueError(f"{name}: {getattr(self, name)!r} is out of range")


def normalise(name: str) -> str:
    """Lower-case, without the trailing dot (the form every index key uses)."""
    return name.rstrip(".").lower()


def address_type(address: str) -> int:
    return AAAA if ":" in address else A


@functools.lru_cache(maxsize=65536)
def address_name(address: str, zone: str) -> str:
    """The name that resolves to this one address: ``0a59000b.addr.<zone>`` for 10.89.0.11."""
    return f"{ipaddress.ip_address(address).packed.hex()}.addr.{zone}"


Entry = tuple[bool, Record]  # (a reverse name?, the record)



def endpoint_entries(ep: EndpointRecord, zone: str, ttl: int) -> tuple[Entry, ...]:
    """Every record one endpoint contributes to the zone, in the order the index lists them."""
    out: list[Entry] = []

    def add(name: str, rtype: int, rdata, reverse: bool = False) -> None:
        out.append((reverse, Record(name, rtype, ttl, rdata)))

    typed = [(address, address_type(address)) for address in ep.addresses]
    for address, rtype in typed:
        add(address_name(address, zone), rtype, address)
    for name in ep.names:
        for owner in [f"{name}.{zone}"] + ([f"{name}.{ep.network}.{zone}"] if ep.network else []):
            for address, rtype in typed:
                add(owner, rtype, address)
            if ep.txt:
                add(owner, TXT, tuple(ep.txt))
    for address in ep.addresses:
        add(reverse_name(address), PTR, f"{ep.name}.{zone}", reverse=True)
    base = f"{ep.service}.service.{zone}"
    tags = sorted({t.lower() for t in ep.tags if DNS_LABEL.match(t)})
    owners = [base] + [f"{tag}.{base}" for tag in tags]
    for owner in owners:
        for address, rtype in typed:
            add(owner, rtype, address)
    if not ep.addresses:
        return tuple(out)  # an SRV target must resolve
    target = address_name(ep.addresses[0], zone)
    for port in ep.ports:
        srv = Srv(1, 1, port.port, target)
        for owner in owners:
            add(owner, SRV, srv)
        add(f"_{ep.service}._{port.protocol}.service.{zone}", SRV, srv)
        for tag in tags:
            add(f"_{ep.service}._{tag}.service.{zone}", SRV, srv)
    return tuple(out)


@functools.lru_cache(maxsize=65536)
def reverse_name(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer


class ZoneIndex:
    """Every name of the zone (and the reverse names of known addresses) with its record sets: one revision's
    snapshot, never changed once made (``zonebuild.ZoneBuilder`` makes each from the one before)."""

    def __init__(self, records: Iterable[EndpointRecord], config: ZoneConfig, revision: int) -> None:
        """An index of ``records`` built afresh (the responder updates one incrementally instead)."""
        from .zonebuild import ZoneBuilder
        built = ZoneBuilder(config).update({f"{i}": r for i, r in enumerate(records)}, revision)
        self.__dict__.update(built.__dict__)

    @classmethod
    def from_tables(cls, config: ZoneConfig, revision: int, forward: dict, reverse: dict,
                    below: dict[str, int]) -> "ZoneIndex":
        index = cls.__new__(cls)
        index.config, index.zone, index.revision = config, config.zone, revision
        index._nodes, index._reverse, index._below = forward, reverse, below
        index.soa = next(iter(forward[config.zone][SOA]))
        return index

    # -- answering ------------------------------------------------------------------------------------------
    def in_zone(self, name: str) -> bool:
        return name == self.zone or name.endswith("." + self.zone)

    def is_authoritative_for(self, name: str, qtype: int) -> bool:
        """Inside the zone, or a PTR question for an address we know (other reverse names go upstream)."""
        return self.in_zone(name) or (name in self._reverse and qtype in (PTR, ANY))

    def lookup(self, name: str, qtype: int, rotation: int = 0) -> Answer | None:
        """The answer for ``name`` (normalised) and ``qtype``; None when the name is not ours.

        ``rotation`` rotates a multi-record answer set, so callers can hand out every endpoint first in turn."""
        if not self.is_authoritative_for(name, qtype):
            return None
        rrsets = self._nodes.get(name)
        if rrsets is None:
            rrsets = self._reverse.get(name)
            if rrsets is None:
                if name in self._below:  # an empty non-terminal: names exist below it
                    return Answer(NOERROR, authority=(self.soa,))
                return Answer(NXDOMAIN, authority=(self.soa,))
        if qtype == ANY:
            found = [r for rtype in sorted(rrsets) for r in rrsets[rtype]]
        else:
            found = list(rrsets.get(qtype, ()))
        if not found:
            return Answer(NOERROR, authority=(self.soa,))  # NODATA, or an empty non-terminal
        if rotation and len(found) > 1:
            k = rotation % len(found)
            found = found[k:] + found[:k]
        return Answer(NOERROR, answer=tuple(found), additional=tuple(self._additional(found)))

    def answer_size(self, name: str, qtype: int) -> int:
        """How many records a question's answer carries (so the caller knows how many rotations exist)."""
        rrsets = self._nodes.get(name) or self._reverse.get(name) or {}
        if qtype == ANY:
            return sum(len(v) for v in rrsets.values())
        return len(rrsets.get(qtype, ()))

    def _additional(self, answer: list[Record]) -> list[Record]:
        targets: list[str] = []
        for record in answer:
            if record.rtype == SRV:
                targets.append(record.rdata.target)
            elif record.rtype == NS:
                targets.append(record.rdata)
        extra: list[Record] = []
        for target in dict.fromkeys(targets):
            rrsets = self._nodes.get(target, {})
            extra.extend(rrsets.get(A, ()))
            extra.extend(rrsets.get(AAAA, ()))
        return extra

    def names(self) -> list[str]:
        """Every owner name (for tests and ``--list``)."""
        return sorted(n for n, rrsets in {**self._nodes, **self._reverse}.items() if rrsets)
