"""Masquerade traffic that leaves the overlay network, never traffic between containers.

The rules are flannel's, as one nftables table of Berth's own (``ip berth-overlay``), replaced atomically by one
``nft -f`` transaction so there is never a moment without them:
  container → container anywhere in the overlay: untouched (peers see the real source address);
  container → elsewhere (not multicast): masqueraded to the host's address;
  elsewhere → this host's containers: untouched;
  the host itself → a remote host's containers: masqueraded, so replies come back through the overlay.
"""
from __future__ import annotations

import ipaddress
import subprocess

TABLE = "berth-overlay"


def render(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network) -> str:
    return (
        f"table ip {TABLE} {{}}\n"
        f"delete table ip {TABLE}\n"
        f"table ip {TABLE} {{\n"
        f"  chain postrouting {{\n"
        f"    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    ip saddr {network} ip daddr {network} return\n"
        f"    ip saddr {network} ip daddr != 224.0.0.0/4 masquerade fully-random\n"
        f"    ip saddr != {network} ip daddr {subnet} return\n"
        f"    ip saddr != {network} ip daddr {network} masquerade fully-random\n"
        f"  }}\n"
        f"}}\n"
    )


def apply(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network) -> None:
    _nft(render(network, subnet))


def remove() -> None:
    _nft(f"table ip {TABLE} {{}}\ndelete table ip {TABLE}\n")


def _nft(script: str) -> None:
    done = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nft failed: {done.stderr.strip()}")
