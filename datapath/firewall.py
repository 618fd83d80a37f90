"""Per-attachment NAT rules, described once and rendered for nftables or iptables.

Every rule carries a comment that starts with its attachment's *tag* (network, container id, interface), so DEL
finds exactly its own rules and GC finds the rules of attachments that no longer exist — without any state file.
Rules of one attachment are added in one batch, so a failure leaves none of them behind.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from ipam.addresses import IPAddress, IPNetwork
from ipam.record import Record

TAG_PREFIX = "berth"
_MAX_ID = 80  # keep comments under the 128-byte limit of both backends


def _sha256(text: str) -> str:
    import hashlib  # only when there are rules to name: OpenSSL's library is a cost on every other call

    return hashlib.sha256(text.encode()).hexdigest()


def network_key(network: str) -> str:
    return _sha256(network)[:8]


def attachment_tag(network: str, container_id: str, ifname: str) -> str:
    """``berth <net8> <container id> <ifname>``: readable, unique per attachment, fits a rule comment."""
    if len(container_id) > _MAX_ID:
        container_id = "h" + _sha256(container_id)[:40]
    return f"{TAG_PREFIX} {network_key(network)} {container_id} {ifname}"


def network_prefix(network: str) -> str:
    return f"{TAG_PREFIX} {network_key(network)} "


def tag_of(comment: str) -> str:
    """The tag part of a rule comment (the first four words)."""
    return " ".join(comment.split(" ")[:4])


# --- abstract rules ------------------------------------------------------------------------------------------------

class Masquerade(Record):
    """Traffic from a container leaving its own subnet (not multicast) is masqueraded: the bridge's ipMasq."""

    source: IPAddress
    subnet: IPNetwork


class Dnat(Record):
    """A host port forwarded to a container port: portmap."""

    protocol: str
    host_port: int
    host_ip: IPAddress | None
    container_ip: IPAddress
    container_port: int

    def describe(self) -> str:
        return f"dnat {self.protocol}/{self.host_port}/{self.host_ip or '*'}"


class SnatToContainer(Record):
    """Masquerade DNATed traffic to a container: from localhost, from the container itself (hairpin) or all."""

    source: str  # "localhost", "hairpin" or "all"
    protocol: str
    container_ip: IPAddress
    container_port: int


class MacSpoofCheck(Record):
    """Frames entering the bridge from a container's host veth must carry the container's MAC (macspoofchk)."""

    host_ifname: str
    mac: str


Rule = Masquerade | Dnat | SnatToContainer | MacSpoofCheck


class TaggedRule(Record):
    comment: str


class Backend:
    """A firewall backend (nftables, iptables). A plain base class, not a ``typing.Protocol``: importing
    ``typing`` is a cost on every cold CNI call."""

    def add(self, tag: str, rules: Iterable[Rule]) -> None:
        raise NotImplementedError

    def rules(self, prefix: str) -> list[TaggedRule]:
        raise NotImplementedError

    def remove(self, tags: Iterable[str]) -> None:
        raise NotImplementedError


def comment_for(tag: str, rule: Rule) -> str:
    if isinstance(rule, Dnat):
        return f"{tag} {rule.describe()}"
    if isinstance(rule, SnatToContainer):
        return f"{tag} snat-{rule.source} {rule.protocol}/{rule.container_port}"
    if isinstance(rule, MacSpoofCheck):
        return f"{tag} macspoof"
    return f"{tag} masq"


def family_of(rule: Rule) -> int:
    if isinstance(rule, MacSpoofCheck):
        return 0
    address = rule.source if isinstance(rule, Masquerade) else rule.container_ip
    return ipaddress.ip_address(address).version


def gc(backend: Backend, network: str, keep: Iterable[str]) -> list[str]:
    """Remove the rules of every attachment of ``network`` whose tag is not in ``keep``; returns the tags removed."""
    keep = set(keep)
    stale = sorted({tag_of(r.comment) for r in backend.rules(network_prefix(network))} - keep)
    if stale:
        backend.remove(stale)
    return stale


def backend_for(name: str, table: str) -> Backend:
    """``nftables`` (default) or ``iptables``; ``table`` is the role (``nat`` for ipMasq, ``portmap``)."""
    if name == "iptables":
        from datapath.firewall_iptables import IptablesBackend

        return IptablesBackend(table)
    from datapath.firewall_nft import NftBackend

    return NftBackend(table)
