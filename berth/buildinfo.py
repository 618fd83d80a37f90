"""Which build of Berth this is: a digest of the code that answers CNI calls.

The CNI daemon and each installed launcher carry it; a launcher whose digest differs from the daemon's runs the call
itself, so code from two different builds never mixes in one answer (version skew during an upgrade).
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGES = ("cni_plugins", "ipam", "store", "discovery", "overlay", "berth")


@lru_cache(maxsize=1)
def build_id() -> str:
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()
