"""The one rule for a directory or file a config names: absolute, normalised, within the kernel's limits.

A relative path would mean the runtime's working directory when exec'd and the daemon's when forwarded, so it is
refused rather than guessed; ``a/../b`` or ``//x`` are refused rather than rewritten, so what is written is exactly
what the config says. The component cap keeps ``os.makedirs`` (recursive) and the kernel's PATH_MAX out of reach.
Lives below ``cni_plugins`` so the IPAM library and every plugin use the same rule.
"""
from __future__ import annotations

import os

PATH_MAX = 4095        # bytes, without the final NUL
NAME_MAX = 255         # bytes per component
MAX_COMPONENTS = 64


def utf8_text(value: object, field: str, kind: str) -> bytes:
    """A non-empty string that encodes as UTF-8 (names the kernel sees as bytes), encoded; else ValueError
    naming ``field`` and what it should have been (``kind``)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field}: must be a non-empty {kind}, not {value!r}")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{field}: is not valid UTF-8") from None


def absolute_path(value: object, field: str) -> str:
    """``value`` if it is a usable absolute path, else ValueError naming ``field`` (falsy values included)."""
    encoded = utf8_text(value, field, "absolute path")
    if b"\0" in encoded:
        raise ValueError(f"{field}: contains a NUL character")
    if not value.startswith("/"):
        raise ValueError(f"{field}: must be an absolute path, not {value!r}")
    if os.path.normpath(value) != value or value.startswith("//"):
        raise ValueError(f"{field}: must be a normalised path (no '.', '..', '//' or trailing '/'), "
                         f"not {value!r}; did you mean {os.path.normpath(value)!r}?")
    if len(encoded) > PATH_MAX:
        raise ValueError(f"{field}: longer than {PATH_MAX} bytes")
    parts = value.split("/")[1:]
    if len(parts) > MAX_COMPONENTS:
        raise ValueError(f"{field}: more than {MAX_COMPONENTS} components")
    if any(len(p.encode()) > NAME_MAX for p in parts):
        raise ValueError(f"{field}: a component is longer than {NAME_MAX} bytes")
    return value


def optional_path(config: object, key: str, default: str | None, field: str) -> str | None:
    """``config[key]`` checked by :func:`absolute_path`; absent or null means ``default`` (other falsy values
    such as ``""``, ``0`` or ``false`` are errors, not a silent default)."""
    value = config.get(key) if hasattr(config, "get") else None
    if value is None:
        return default
    return absolute_path(value, field)
