"""``berth install-cni``: put Berth's plugin executables where runtimes look for them (a CNI bin directory).

Each plugin gets a launcher that forwards the call to the CNI daemon when one runs and otherwise runs the plugin in
process from this installation. Where a C compiler exists, the launcher is the native one
(``cni_plugins/launcher.c``, libc only, ~1 ms to start) with the Python launcher beside it as its fallback; without
one, the Python launcher (``cni_plugins/launcher.py`` under ``python -IS``) is the executable itself.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_DIR = "/opt/cni/bin"
FALLBACK_SUBDIR = ".berth-python"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=DEFAULT_DIR, help=f"CNI bin directory (default {DEFAULT_DIR})")
    parser.add_argument("--socket", default=None,
                        help="the CNI daemon's socket the launchers use when BERTH_CNI_SOCKET is unset "
                             "(default /run/berth/cni.sock)")
    parser.add_argument("--launcher", choices=("auto", "native", "python"), default="auto",
                        help="native needs a C compiler; auto uses it when present (default)")


def render_launcher(plugin_type: str, module: str, extra_paths: tuple[str, ...] = (),
                    socket_path: str | None = None) -> str:
    """The Python launcher's source for one plugin; ``extra_paths`` are added to its fallback import path."""
    from cni_plugins.buildinfo import build_id
    from cni_plugins import launcher, skel

    source = Path(launcher.__file__).read_text()
    site_dirs = [*extra_paths, *(d for d in site.getsitepackages() if os.path.isdir(d))]
    filled = {
        'PLUGIN = ""': f"PLUGIN = {plugin_type!r}",
        'MODULE = ""': f"MODULE = {module!r}",
        'BUILD_ID = ""': f"BUILD_ID = {build_id()!r}",
        "SITE_DIRS: list = []": f"SITE_DIRS: list = {site_dirs!r}",
        'VERSION_REPLY = b""': f"VERSION_REPLY = {skel.version_reply()!r}",
        f"DEFAULT_SOCKET = {launcher.DEFAULT_SOCKET!r}".replace("'", '"'):
            f"DEFAULT_SOCKET = {(socket_path or launcher.DEFAULT_SOCKET)!r}",
    }
    for placeholder, value in filled.items():
        if placeholder not in source:
            raise RuntimeError(f"launcher template lost its placeholder {placeholder!r}")
        source = source.replace(placeholder, value, 1)
    return f"#!{sys.executable} -IS\n{source}"


def _write_atomically(path: Path, data: bytes, mode: int = 0o755) -> None:
    """A runtime must never exec a half-written plugin: write beside it, then rename over it."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def find_compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc")


def build_native_launcher(fallback_dir: Path, compiler: str, socket_path: str | None = None) -> bytes:
    """Compile ``launcher.c`` with this build's id and fallback directory baked in; returns the binary."""
    from cni_plugins.buildinfo import build_id
    from cni_plugins import skel

    source = Path(__file__).resolve().parent.parent / "cni_plugins" / "launcher.c"
    with tempfile.TemporaryDirectory(prefix="berth-launcher-") as workdir:
        header = Path(workdir) / "config.h"
        # JSON string escapes are valid C string escapes for this ASCII text.
        header.write_text(
            f"#define BERTH_BUILD_ID {json.dumps(build_id())}\n"
            f"#define BERTH_FALLBACK_DIR {json.dumps(str(fallback_dir))}\n"
            f"#define BERTH_VERSION_REPLY {json.dumps(skel.version_reply().decode())}\n"
            + (f"#define BERTH_DEFAULT_SOCKET {json.dumps(socket_path)}\n" if socket_path else ""))
        binary = Path(workdir) / "launcher"
        subprocess.run([compiler, "-O2", "-Wall", "-include", str(header), "-o", str(binary), str(source)],
                       check=True, capture_output=True)
        return binary.read_bytes()


def install(directory: str, launcher: str = "auto", socket_path: str | None = None) -> list[Path]:
    from cni_plugins.invoke import IN_PROCESS

    target = Path(directory).resolve()
    target.mkdir(parents=True, exist_ok=True)
    compiler = find_compiler() if launcher != "python" else None
    if launcher == "native" and compiler is None:
        raise SystemExit("install-cni: --launcher native needs a C compiler (cc or gcc)")
    python_dir = target / FALLBACK_SUBDIR if compiler else target
    python_dir.mkdir(exist_ok=True)
    native = build_native_launcher(python_dir, compiler, socket_path) if compiler else None
    written = []
    for plugin_type, module in IN_PROCESS.items():
        _write_atomically(python_dir / plugin_type, render_launcher(plugin_type, module, socket_path=socket_path).encode())
        if native is not None:
            _write_atomically(target / plugin_type, native)
        written.append(target / plugin_type)
    return written


def run(args: argparse.Namespace) -> int:
    for path in install(args.dir, args.launcher, args.socket):
        print(f"installed {path}")
    return 0
