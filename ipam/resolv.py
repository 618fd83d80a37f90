"""resolv.conf → the DNS settings a CNI result carries (host-local's ``resolvConf`` option)."""
from __future__ import annotations

from .record import Record


class DnsSettings(Record):
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


def parse_resolv_conf(text: str) -> DnsSettings:
    """As host-local reads it: comments and short lines skipped, the last ``domain`` wins, the rest accumulate."""
    nameservers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    domain = ""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0][0] in "#;":
            continue
        key, values = fields[0], fields[1:]
        if key == "nameserver":
            nameservers.append(values[0])
        elif key == "domain":
            domain = values[0]
        elif key == "search":
            search.extend(values)
        elif key == "options":
            options.extend(values)
    return DnsSettings(tuple(nameservers), domain, tuple(search), tuple(options))
