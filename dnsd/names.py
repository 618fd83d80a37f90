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

import ipaddress
import socket
from dataclasses import dataclass
from typing import Iterable, Union

from discovery.model import DNS_LABEL, EndpointRecord

from .records import A, AAAA, ANY, NOERROR, NS, NXDOMAIN, PTR, SRV, TXT, Answer, Record, Srv

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


def _packed(address: str) -> bytes:
    """The address' bytes: the C parser for the canonical forms the records hold, ``ipaddress`` for the rest
    (a scoped IPv6 address), so nothing here needs a cache."""
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
    except OSError:
        return ipaddress.ip_address(address).packed


def address_name(address: str, zone: str) -> str:
    """The name that resolves to this one address: ``0a59000b.addr.<zone>`` for 10.89.0.11."""
    return f"{_packed(address).hex()}.addr.{zone}"


def reverse_name(address: str) -> str:
    """``11.0.89.10.in-addr.arpa`` for 10.89.0.11; an IPv6 address' 32 nibbles, last first, in ``ip6.arpa``."""
    packed = _packed(address)
    if len(packed) == 4:
        return ".".join(map(str, reversed(packed))) + ".in-addr.arpa"
    return ".".join(reversed(packed.hex())) + ".ip6.arpa"


def endpoint_records(ep: EndpointRecord, zone: str, ttl: int) -> list[Record]:
    """Every record one endpoint contributes to the zone (PTR ones are reverse names), in the order the index
    lists them. Made again from the endpoint when it goes, so the builder keeps no copy of them; a string used
    twice (an owner name, a PTR target, an SRV target) is one object."""
    out: list[Record] = []
    add = out.append
    typed = [(address, address_type(address)) for address in ep.addresses]
    targets = [address_name(address, zone) for address in ep.addresses]
    for (address, rtype), target in zip(typed, targets):
        add(Record(target, rtype, ttl, address))
    own_name = f"{ep.name}.{zone}"
    txt = tuple(ep.txt) if ep.txt else None
    for name in ep.names:
        first = own_name if name == ep.name else f"{name}.{zone}"
        for owner in [first] + ([f"{name}.{ep.network}.{zone}"] if ep.network else []):
            for address, rtype in typed:
                add(Record(owner, rtype, ttl, address))
            if txt is not None:
                add(Record(owner, TXT, ttl, txt))
    for address in ep.addresses:
        add(Record(reverse_name(address), PTR, ttl, own_name))
    base = f"{ep.service}.service.{zone}"
    tags = sorted({t.lower() for t in ep.tags if DNS_LABEL.match(t)})
    owners = [base] + [f"{tag}.{base}" for tag in tags]
    for owner in owners:
        for address, rtype in typed:
            add(Record(owner, rtype, ttl, address))
    if not ep.addresses:
        return out  # an SRV target must resolve
    for port in ep.ports:
        srv = Srv(1, 1, port.port, targets[0])
        for owner in owners:
            add(Record(owner, SRV, ttl, srv))
        add(Record(f"_{ep.service}._{port.protocol}.service.{zone}", SRV, ttl, srv))
        for tag in tags:
            add(Record(f"_{ep.service}._{tag}.service.{zone}", SRV, ttl, srv))
    return out


# One name's records in an index: the name's only record itself (most names: a container's address, its PTR),
# else {rtype: records in the order they came}. Both are immutable, so indexes share every name nobody changed.
Node = Union[Record, dict[int, tuple[Record, ...]]]


def node_records(node: Node, qtype: int) -> tuple[Record, ...]:
    """The records of one type at a name (every type, by type, for ANY)."""
    if node.__class__ is Record:
        return (node,) if qtype == node.rtype or qtype == ANY else ()
    if qtype == ANY:
        return tuple(r for rtype in sorted(node) for r in node[rtype])
    return node.get(qtype, ())


class ZoneIndex:
    """Every name of the zone (and the reverse names of known addresses) with its records: one revision's
    snapshot, never changed once made (``zonebuild.ZoneBuilder`` makes each from the one before)."""

    def __init__(self, records: Iterable[EndpointRecord], config: ZoneConfig, revision: int) -> None:
        """An index of ``records`` built afresh (the responder updates one incrementally instead)."""
        from .zonebuild import ZoneBuilder
        built = ZoneBuilder(config).update({f"{i}": r for i, r in enumerate(records)}, revision)
        self.__dict__.update(built.__dict__)

    @classmethod
    def from_tables(cls, config: ZoneConfig, revision: int, forward: dict[str, Node], reverse: dict[str, Node],
                    below: dict[str, int], soa: Record) -> "ZoneIndex":
        index = cls.__new__(cls)
        index.config, index.zone, index.revision = config, config.zone, revision
        index._nodes, index._reverse, index._below = forward, reverse, below
        index.soa = soa
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
        node = self._nodes.get(name)
        if node is None:
            node = self._reverse.get(name)
            if node is None:
                if name in self._below:  # an empty non-terminal: names exist below it
                    return Answer(NOERROR, authority=(self.soa,))
                return Answer(NXDOMAIN, authority=(self.soa,))
        found = node_records(node, qtype)
        if not found:
            return Answer(NOERROR, authority=(self.soa,))  # NODATA, or an empty non-terminal
        if rotation and len(found) > 1:
            k = rotation % len(found)
            found = found[k:] + found[:k]
        return Answer(NOERROR, answer=found, additional=self._additional(found))

    def answer_size(self, name: str, qtype: int) -> int:
        """How many records a question's answer carries (so the caller knows how many rotations exist)."""
        node = self._nodes.get(name) or self._reverse.get(name)
        return 0 if node is None else len(node_records(node, qtype))

    def _additional(self, answer: tuple[Record, ...]) -> tuple[Record, ...]:
        targets: list[str] = []
        for record in answer:
            if record.rtype == SRV:
                targets.append(record.rdata.target)
            elif record.rtype == NS:
                targets.append(record.rdata)
        if not targets:
            return ()
        extra: list[Record] = []
        for target in dict.fromkeys(targets):
            node = self._nodes.get(target)
            if node is not None:
                extra.extend(node_records(node, A))
                extra.extend(node_records(node, AAAA))
        return tuple(extra)

    def names(self) -> list[str]:
        """Every owner name (for tests and ``--list``)."""
        return sorted(self._nodes.keys() | self._reverse.keys())
