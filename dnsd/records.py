"""Resource records as plain values, independent of any wire library, so the name scheme stays pure."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

# Type codes (RFC 1035, 3596, 2782, 6891); the name scheme needs only these.
A, NS, SOA, PTR, TXT, AAAA, SRV, OPT, ANY = 1, 2, 6, 12, 16, 28, 33, 41, 255
AXFR, IXFR = 252, 251
TYPE_NAMES = {A: "A", NS: "NS", SOA: "SOA", PTR: "PTR", TXT: "TXT", AAAA: "AAAA", SRV: "SRV", ANY: "ANY"}

# rcodes
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16


@dataclass(frozen=True, slots=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class Soa:
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


Rdata = Union[str, Srv, Soa, tuple]  # address or target name | SRV | SOA | TXT strings


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record; ``name`` is lower-case without the trailing dot."""

    name: str
    rtype: int
    ttl: int
    rdata: Rdata


@dataclass(frozen=True, slots=True)
class Answer:
    """What the name scheme says about one question (sections as record tuples)."""

    rcode: int
    authoritative: bool = True
    answer: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()
