"""Which build of the CNI path this is: a digest of exactly the files a plugin call can run.

The CNI daemon and each installed launcher carry it; a launcher whose digest differs from the daemon's runs the call
itself, so code from two builds never mixes in one answer (version skew during an upgrade). It covers the plugins,
the kernel datapath they drive, the IPAM library, the launcher's C source and the three modules of other rooms the
plugins import (the overlay's subnet file format, the discovery model and wire format) — and nothing else, so
editing the demo, the DNS server, the Docker face or the datastore leaves every installed launcher on the fast
path. tests/core/test_buildinfo.py checks that every module a plugin loads is listed here. Standard library only:
``python3 -m cni_plugins.buildinfo --sources`` lists the files for the Makefile's reinstall rule.
"""
from __future__ import annotations

import hashlib
import sys
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Whole packages, and single files of rooms the plugins reach into.
PACKAGES = ("cni_plugins", "datapath", "ipam")
FILES = ("overlay/__init__.py", "overlay/subnetfile.py",
         "discovery/__init__.py", "discovery/model.py", "discovery/wire.py")


def sources(root: Path = ROOT) -> list[Path]:
    """Every file the build id covers, in a fixed order."""
    found = [p for package in PACKAGES for p in (root / package).rglob("*")
             if p.suffix in (".py", ".c") and "__pycache__" not in p.parts]
    found += [root / f for f in FILES]
    return sorted(found, key=lambda p: str(p.relative_to(root)))


def digest(root: Path) -> str:
    """The build id of the tree at ``root``."""
    hasher = hashlib.sha256()
    for path in sources(root):
        hasher.update(str(path.relative_to(root)).encode() + b"\0")
        hasher.update(path.read_bytes())
    return hasher.hexdigest()


@lru_cache(maxsize=1)
def build_id() -> str:
    return digest(ROOT)


if __name__ == "__main__":
    if sys.argv[1:] == ["--sources"]:
        print("\n".join(str(p.relative_to(ROOT)) for p in sources()))
    else:
        print(build_id())
