"""The kernel's rule for an interface name, for both faces (a CNI ``CNI_IFNAME`` or ``bridge``, a Docker
``-o berth.bridge``): checked before any netlink request, so a bad name is the caller's error, not the kernel's."""
from __future__ import annotations

from ipam import paths

IFNAMSIZ = 16              # the kernel's buffer, NUL included: a name has at most 15 bytes
# What the kernel's dev_valid_name refuses, byte by byte (its isspace() covers 0xa0 too), plus NUL.
_IFNAME_FORBIDDEN_BYTES = frozenset(b"/: \t\n\v\f\r\xa0\0")


def interface_name(value: object, what: str) -> str:
    """A Linux interface name: at most 15 bytes (not characters), not ``.``/``..``, no ``/``, ``:`` or space."""
    encoded = paths.utf8_text(value, what, "interface name")
    if len(encoded) >= IFNAMSIZ:
        raise ValueError(f"{what}: {value!r} is too long: {len(encoded)} bytes, the kernel allows {IFNAMSIZ - 1}")
    if value in (".", ".."):
        raise ValueError(f"{what}: cannot be . or ..")
    if any(b in _IFNAME_FORBIDDEN_BYTES for b in encoded) or any(c.isspace() for c in value):
        raise ValueError(f"{what}: {value!r} contains / or : or whitespace characters")
    return value
