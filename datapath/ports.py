"""Host-port mapping, shared by both faces: a mapping's fields checked, the DNAT/SNAT rules that publish it
(abstract :mod:`datapath.firewall` rules), the host ports other attachments already hold, and the check-then-add
under one host-wide lock, so a host port is one container's whichever face (CNI portmap, Docker ``-p``) asked.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping

from datapath import filelock, firewall
from ipam.addresses import IPAddress
from datapath.errors import InvalidInput, PortConflict
from datapath.firewall import Dnat, Rule, SnatToContainer, tag_of
from ipam.record import Record

LOCK_PATH = "/run/berth/portmap.lock"  # the host-port lock of every face
PROTOCOLS = ("tcp", "udp", "sctp")


class PortMapping(Record):
    host_port: int
    container_port: int
    protocol: str
    host_ip: IPAddress | None


def _port(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise InvalidInput(f"{field}: must be a port between 1 and 65535, not {value!r}")
    return value


def parse_mapping(raw: Mapping[str, object], index: int) -> PortMapping:
    """One ``portMappings`` entry (CNI's shape, which the Docker face translates ``-p`` into)."""
    field = f"runtimeConfig.portMappings[{index}]"
    protocol = raw.get("protocol")
    protocol = "tcp" if protocol is None or protocol == "" else protocol
    if not isinstance(protocol, str) or protocol.lower() not in PROTOCOLS:
        raise InvalidInput(f"{field}.protocol: must be one of {list(PROTOCOLS)}, not {raw.get('protocol')!r}")
    protocol = protocol.lower()
    host_ip = None
    if raw.get("hostIP") is not None and raw.get("hostIP") != "":
        if not isinstance(raw["hostIP"], str):
            raise InvalidInput(f"{field}.hostIP: {raw['hostIP']!r} is not an address string")
        try:
            host_ip = ipaddress.ip_address(raw["hostIP"])
        except ValueError:
            raise InvalidInput(f"{field}.hostIP: {raw['hostIP']!r} is not an address") from None
        if host_ip.is_unspecified:
            host_ip = None  # 0.0.0.0 / :: mean every address, as no hostIP does
    return PortMapping(host_port=_port(raw.get("hostPort"), f"{field}.hostPort"),
                       container_port=_port(raw.get("containerPort"), f"{field}.containerPort"),
                       protocol=protocol, host_ip=host_ip)


def parse_mappings(raw: Iterable[Mapping[str, object]]) -> tuple[PortMapping, ...]:
    """Every entry, checked; a repeated mapping counts once."""
    return tuple(dict.fromkeys(parse_mapping(m, i) for i, m in enumerate(raw)))


def plan_rules(mappings: Iterable[PortMapping], addresses: Iterable[IPAddress], snat: bool = True,
               masq_all: bool = False) -> list[Rule]:
    """DNAT each mapping to each container address of its family; with ``snat``, the localhost and hairpin
    masquerades that let the host and the container itself reach the port."""
    mappings = tuple(mappings)
    rules: list[Rule] = []
    for address in addresses:
        for m in mappings:
            if m.host_ip is not None and m.host_ip.version != address.version:
                continue
            rules.append(Dnat(protocol=m.protocol, host_port=m.host_port, host_ip=m.host_ip, container_ip=address,
                              container_port=m.container_port))
            if snat:
                if address.version == 4:
                    rules.append(SnatToContainer("localhost", m.protocol, address, m.container_port))
                rules.append(SnatToContainer("hairpin", m.protocol, address, m.container_port))
            if masq_all:
                rules.append(SnatToContainer("all", m.protocol, address, m.container_port))
    return list(dict.fromkeys(rules))


def _claim(comment: str) -> tuple[str, int, str] | None:
    """``... dnat tcp/8080/*`` → ("tcp", 8080, "*"); None for other rules."""
    words = comment.split(" ")
    if len(words) < 6 or words[4] != "dnat":
        return None
    protocol, port, host_ip = words[5].split("/", 2)
    return protocol, int(port), host_ip


def conflicts(mappings: Iterable[PortMapping], tag: str, existing_comments: Iterable[str]) -> list[str]:
    """Host ports of ``mappings`` already held by another attachment: same protocol and port, overlapping host IP."""
    taken: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for comment in existing_comments:
        claim = _claim(comment)
        if claim and tag_of(comment) != tag:
            taken.setdefault(claim[:2], []).append((claim[2], tag_of(comment).split(" ")[2]))
    out = []
    for m in mappings:
        wanted = str(m.host_ip) if m.host_ip else "*"
        for held_ip, owner in taken.get((m.protocol, m.host_port), []):
            if "*" in (held_ip, wanted) or held_ip == wanted:
                out.append(f"{m.protocol} host port {m.host_port}"
                           f"{'' if wanted == '*' else ' on ' + wanted} is already mapped by container {owner}")
                break
    return out


def publish(backend: firewall.Backend, tag: str, rules: list[Rule],
            claims: Callable[[Iterable[str]], list[str]]) -> None:
    """Replace ``tag``'s port rules with ``rules`` unless ``claims(existing_comments)`` names a host port another
    attachment holds (then PortConflict, and nothing changes). Check-then-add is one critical section across
    processes, threads and both faces."""
    with filelock.held(LOCK_PATH):
        taken = claims(r.comment for r in backend.rules(firewall.TAG_PREFIX + " "))
        if taken:
            raise PortConflict("; ".join(taken), "each host port can be published by one container")
        backend.remove([tag])  # a repeated ADD replaces its own rules
        if rules:
            backend.add(tag, rules)
