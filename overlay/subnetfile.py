"""The host's subnet file, in flannel's format (``KEY=VALUE`` lines) so flannel's CNI plugin could read it too.

Berth adds ``BERTH_VTEP_MAC`` (flannel's readers ignore keys they do not know) so the VTEP's MAC survives a reboot
that loses both the device and, after its TTL, the store lease: peers that still hold the old MAC in their FDB
keep working (flannel#533).
"""
from __future__ import annotations

import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SUBNET_FILE = "/run/berth/subnet.env"


class SubnetFileError(ValueError):
    pass


@dataclass(frozen=True)
class SubnetFile:
    network: ipaddress.IPv4Network
    subnet: ipaddress.IPv4Interface  # flannel writes the host's gateway address: 10.5.1.1/24
    mtu: int
    ipmasq: bool
    vtep_mac: str = ""

    def render(self) -> str:
        lines = [f"FLANNEL_NETWORK={self.network}", f"FLANNEL_SUBNET={self.subnet}",
                 f"FLANNEL_MTU={self.mtu}", f"FLANNEL_IPMASQ={'true' if self.ipmasq else 'false'}"]
        if self.vtep_mac:
            lines.append(f"BERTH_VTEP_MAC={self.vtep_mac}")
        return "\n".join(lines) + "\n"


def for_lease(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, mtu: int, ipmasq: bool,
              vtep_mac: str = "") -> SubnetFile:
    gateway = ipaddress.IPv4Interface((subnet.network_address + 1, subnet.prefixlen))
    return SubnetFile(network, gateway, mtu, ipmasq, vtep_mac)


def parse(text: str) -> SubnetFile:
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise SubnetFileError(f"line {number}: {line!r} is not KEY=VALUE")
        values[key.strip()] = value.strip()
    try:
        network = ipaddress.IPv4Network(values["FLANNEL_NETWORK"])
        subnet = ipaddress.IPv4Interface(values["FLANNEL_SUBNET"])
        mtu = int(values["FLANNEL_MTU"])
    except KeyError as exc:
        raise SubnetFileError(f"missing {exc.args[0]}") from None
    except ValueError as exc:
        raise SubnetFileError(str(exc)) from None
    ipmasq = values.get("FLANNEL_IPMASQ", "false").lower() == "true"
    return SubnetFile(network, subnet, mtu, ipmasq, values.get("BERTH_VTEP_MAC", "").lower())


def read(path: str | os.PathLike) -> SubnetFile:
    return parse(Path(path).read_text())


def read_if_present(path: str | os.PathLike) -> SubnetFile | None:
    try:
        return read(path)
    except (FileNotFoundError, SubnetFileError):
        return None


def write(path: str | os.PathLike, content: SubnetFile) -> None:
    """Atomically (rename over the old file), so a plugin never reads half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(content.render())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
