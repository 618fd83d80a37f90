"""``berth install-cni``: put Berth's plugin executables where runtimes look for them (a CNI bin directory).

Each executable is a copy of :mod:`cni_plugins.launcher` run with ``python -I -S``: it forwards to the CNI daemon
when one runs, and otherwise imports the plugin from this installation and runs it in process.
"""
from __future__ import annotations

import argparse
import os
import site
import sys
import tempfile
from pathlib import Path

DEFAULT_DIR = "/opt/cni/bin"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=DEFAULT_DIR, help=f"CNI bin directory (default {DEFAULT_DIR})")


def render_launcher(plugin_type: str, module: str, extra_paths: tuple[str, ...] = ()) -> str:
    """The launcher source for one plugin; ``extra_paths`` are added to its fallback import path."""
    from berth.buildinfo import build_id
    from cni_plugins import launcher, skel

    source = Path(launcher.__file__).read_text()
    site_dirs = [*extra_paths, *(d for d in site.getsitepackages() if os.path.isdir(d))]
    filled = {
        'PLUGIN = ""': f"PLUGIN = {plugin_type!r}",
        'MODULE = ""': f"MODULE = {module!r}",
        'BUILD_ID = ""': f"BUILD_ID = {build_id()!r}",
        "SITE_DIRS: list = []": f"SITE_DIRS: list = {site_dirs!r}",
        'VERSION_REPLY = b""': f"VERSION_REPLY = {skel.version_reply()!r}",
    }
    for placeholder, value in filled.items():
        if placeholder not in source:
            raise RuntimeError(f"launcher template lost its placeholder {placeholder!r}")
        source = source.replace(placeholder, value, 1)
    return f"#!{sys.executable} -IS\n{source}"


def install(directory: str) -> list[Path]:
    from cni_plugins.invoke import IN_PROCESS

    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for plugin_type, module in IN_PROCESS.items():
        path = target / plugin_type
        fd, temporary = tempfile.mkstemp(dir=target, prefix=f".{plugin_type}.")
        with os.fdopen(fd, "w") as out:
            out.write(render_launcher(plugin_type, module))
        os.chmod(temporary, 0o755)
        os.replace(temporary, path)  # atomic: a runtime never execs a half-written plugin
        written.append(path)
    return written


def run(args: argparse.Namespace) -> int:
    for path in install(args.dir):
        print(f"installed {path}")
    return 0
