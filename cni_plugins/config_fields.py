"""Field rules shared by the protocol core and every plugin's edge parser: one rule and one wording for one kind
of value (identifiers, interface names, paths, numbers), so the plugins cannot drift apart. The interface-name
rule itself is the datapath's (:func:`datapath.ifname.interface_name`, which the Docker face uses too)."""
from __future__ import annotations

import re
from collections.abc import Mapping

from cni_plugins import errors
from datapath.ifname import interface_name
from ipam import paths

# libcni's pattern for container IDs and network names, matched over the whole string (no final newline).
IDENTIFIER = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
MAX_IDENTIFIER = 200       # bytes: leaves room for "<id>-<ifname>.json" under NAME_MAX


def identifier(value: object, what: str) -> str:
    """A container ID or network name as libcni validates it, matched in full; ValueError names ``what``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what}: must be a non-empty string")
    if not IDENTIFIER.fullmatch(value):
        raise ValueError(f"invalid characters in {what}: {value!r} (letters, digits, '_', '.', '-'; "
                         "the first a letter or digit)")
    if len(value) > MAX_IDENTIFIER:
        raise ValueError(f"{what}: longer than {MAX_IDENTIFIER} characters")
    return value


def bool_field(config: Mapping[str, object], key: str, default: bool = False) -> bool:
    """A true/false config key; anything else is an error naming the key (shared by the plugins' parsers)."""
    value = config.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise errors.InvalidConfig(f"{key}: must be true or false, not {value!r}")
    return value


def int_field(config: Mapping[str, object], key: str, low: int, high: int, default: int = 0,
              field: str | None = None) -> int:
    """An integer config key within ``[low, high]`` (true/false and 1.5 are not integers)."""
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise errors.InvalidConfig(f"{field or key}: must be an integer between {low} and {high}, not {value!r}")
    return value


def path_field(config: Mapping[str, object], key: str, default: str | None, field: str | None = None
               ) -> str | None:
    """An absolute, normalised path; absent or null means ``default``; ``""``, ``0``, ``false`` are errors."""
    try:
        return paths.optional_path(config, key, default, field or key)
    except ValueError as exc:
        raise errors.InvalidConfig(str(exc)) from None


def link_name(value: object, key: str) -> str:
    """An interface name taken from the config (e.g. ``bridge``): code 7 when the kernel would refuse it."""
    try:
        return interface_name(value, key)
    except ValueError as exc:
        raise errors.InvalidConfig(str(exc)) from None
