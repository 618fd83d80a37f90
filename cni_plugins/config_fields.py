"""Config field parsers shared by the plugins' edge parsers: one wording for one kind of mistake."""
from __future__ import annotations

from typing import Any, Mapping

from cni_plugins import errors


def bool_field(config: Mapping[str, Any], key: str, default: bool = False) -> bool:
    """A true/false config key; anything else is an error naming the key (shared by the plugins' parsers)."""
    value = config.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise errors.InvalidConfig(f"{key}: must be true or false, not {value!r}")
    return value
