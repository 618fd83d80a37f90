"""The iptables backend (``ipMasqBackend``/``backend: iptables``), for hosts that still manage NAT with iptables.

Rules live in Berth's own chains of the ``nat`` table (``BERTH-MASQ``, ``BERTH-HOSTPORT-DNAT``,
``BERTH-HOSTPORT-MASQ``), jumped to from the built-in chains once. This path runs the iptables commands as
processes; it is the compatibility option, nftables is the fast default.
"""
from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterable

from datapath import filelock
from datapath.errors import FirewallError
from datapath.firewall import (Backend, Dnat, Masquerade, Rule, SnatToContainer, TaggedRule,
                               comment_for, family_of, tag_of)

LOCK_PATH = "/run/berth/iptables.lock"
CHAINS = {
    "nat": {"BERTH-MASQ": [("POSTROUTING", [])]},
    "portmap": {
        "BERTH-HOSTPORT-DNAT": [("PREROUTING", ["-m", "addrtype", "--dst-type", "LOCAL"]),
                                ("OUTPUT", ["-m", "addrtype", "--dst-type", "LOCAL"])],
        "BERTH-HOSTPORT-MASQ": [("POSTROUTING", [])],
    },
}
_COMMENT = re.compile(r'--comment (?:"((?:[^"\\]|\\.)*)"|(\S+))')


def _locked():
    """Serialise Berth's own check-then-add of chains and jumps between processes and threads."""
    return filelock.held(LOCK_PATH)


def _tool(family: int) -> str:
    return "iptables" if family == 4 else "ip6tables"


def _ipt(family: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([_tool(family), "-w", "-t", "nat", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise FirewallError(f"{_tool(family)} {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def _port(protocol: str, port: int) -> list[str]:
    return ["-p", protocol, "--dport", str(port)]


def render(rule: Rule) -> tuple[str, list[str]]:
    """(chain, match and target arguments) for one abstract rule."""
    if isinstance(rule, Masquerade):
        return "BERTH-MASQ", ["-s", str(rule.source), "!", "-d", str(rule.subnet), "-m", "addrtype", "!",
                              "--dst-type", "MULTICAST", "-j", "MASQUERADE"]
    if isinstance(rule, Dnat):
        dest = f"{rule.container_ip}:{rule.container_port}" if family_of(rule) == 4 \
            else f"[{rule.container_ip}]:{rule.container_port}"
        host = ["-d", str(rule.host_ip)] if rule.host_ip else []
        return "BERTH-HOSTPORT-DNAT", host + _port(rule.protocol, rule.host_port) + [
            "-j", "DNAT", "--to-destination", dest]
    assert isinstance(rule, SnatToContainer)
    target = ["-d", str(rule.container_ip)] + _port(rule.protocol, rule.container_port) + ["-j", "MASQUERADE"]
    if rule.source == "localhost":
        return "BERTH-HOSTPORT-MASQ", ["-s", "127.0.0.0/8"] + target
    if rule.source == "hairpin":
        return "BERTH-HOSTPORT-MASQ", ["-s", str(rule.container_ip)] + target
    return "BERTH-HOSTPORT-MASQ", ["-m", "conntrack", "--ctstate", "DNAT"] + target


class IptablesBackend(Backend):
    def __init__(self, role: str) -> None:
        self.chains = CHAINS[role]

    def _ensure_chains(self, family: int) -> None:
        for chain, jumps in self.chains.items():
            _ipt(family, "-N", chain, check=False)
            for parent, match in jumps:
                rule = [parent, *match, "-j", chain]
                if _ipt(family, "-C", *rule, check=False).returncode != 0:
                    _ipt(family, "-A", *rule)

    def add(self, tag: str, rules: Iterable[Rule]) -> None:
        rules = list(rules)
        added: list[tuple[int, list[str]]] = []
        with _locked():
            for family in sorted({family_of(r) for r in rules}):
                self._ensure_chains(family)
            try:
                for rule in rules:
                    chain, args = render(rule)
                    spec = [chain, *args, "-m", "comment", "--comment", comment_for(tag, rule)]
                    _ipt(family_of(rule), "-A", *spec)
                    added.append((family_of(rule), spec))
            except FirewallError:
                for family, spec in reversed(added):
                    _ipt(family, "-D", *spec, check=False)
                raise

    def _lines(self) -> list[tuple[int, str, str]]:
        """(family, rule line, comment) of every commented rule in Berth's chains."""
        out = []
        for family in (4, 6):
            for chain in self.chains:
                proc = _ipt(family, "-S", chain, check=False)
                if proc.returncode != 0:
                    continue
                for line in proc.stdout.splitlines():
                    match = _COMMENT.search(line)
                    if line.startswith("-A ") and match:
                        comment = match.group(1) if match.group(1) is not None else match.group(2)
                        out.append((family, line, comment.replace('\\"', '"')))
        return out

    def rules(self, prefix: str) -> list[TaggedRule]:
        return [TaggedRule(comment=c) for _, _, c in self._lines() if c.startswith(prefix)]

    def remove(self, tags: Iterable[str]) -> None:
        tags = set(tags)
        with _locked():
            for family, line, comment in self._lines():
                if tag_of(comment) in tags:
                    _ipt(family, "-D", *shlex.split(line)[1:], check=False)

    def drop_table(self) -> None:
        """Remove Berth's chains and their jumps (tests and uninstall)."""
        for family in (4, 6):
            for chain, jumps in self.chains.items():
                for parent, match in jumps:
                    _ipt(family, "-D", parent, *match, "-j", chain, check=False)
                _ipt(family, "-F", chain, check=False)
                _ipt(family, "-X", chain, check=False)
