"""``berth install-cni``: put Berth's plugin executables where runtimes look for them (a CNI bin directory).

Each plugin gets a launcher that forwards the call to the CNI daemon when one runs and otherwise runs the plugin in
process from this installation. Where a C compiler exists, the launcher is the native one
(``cni_plugins/launcher.c``, libc only, ~1 ms to start) with the Python launcher beside it as its fallback; without
one, the Python launcher (a stub run by ``python -IS`` that imports ``cni_plugins/launcher.py``, installed and
compiled once beside it) is the executable itself.
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


LAUNCHER_MODULE = "berth_launcher"  # the filled-in cni_plugins/launcher.py every stub in the directory imports


def import_paths(extra_paths: tuple[str, ...] = ()) -> list[str]:
    """Where a launcher that runs a plugin itself imports from: this installation's own root (the directory that
    holds ``cni_plugins``; the source tree for an editable install) and its site-packages (pyroute2), in order."""
    import cni_plugins

    roots = [*extra_paths, str(Path(cni_plugins.__file__).resolve().parent.parent),
             *(d for d in site.getsitepackages() if os.path.isdir(d))]
    return list(dict.fromkeys(roots))


def render_launcher_module(extra_paths: tuple[str, ...] = (), socket_path: str | None = None) -> str:
    """The source of ``berth_launcher.py``: :mod:`cni_plugins.launcher` with this build's constants filled in."""
    from cni_plugins.buildinfo import build_id
    from cni_plugins import launcher, skel

    source = Path(launcher.__file__).read_text()
    filled = {
        'BUILD_ID = ""': f"BUILD_ID = {build_id()!r}",
        "IMPORT_PATHS: list = []": f"IMPORT_PATHS: list = {import_paths(extra_paths)!r}",
        'VERSION_REPLY = b""': f"VERSION_REPLY = {skel.version_reply()!r}",
        f"DEFAULT_SOCKET = {launcher.DEFAULT_SOCKET!r}".replace("'", '"'):
            f"DEFAULT_SOCKET = {(socket_path or launcher.DEFAULT_SOCKET)!r}",
    }
    for placeholder, value in filled.items():
        if placeholder not in source:
            raise RuntimeError(f"launcher template lost its placeholder {placeholder!r}")
        source = source.replace(placeholder, value, 1)
    return source


def render_launcher_stub(plugin_type: str, module: str, directory: Path) -> str:
    """One plugin's executable: import the launcher module from ``directory`` (compiled once, at install) and
    run it."""
    return (f"#!{sys.executable} -IS\n"
            f"# {plugin_type}: Berth's CNI launcher (cni_plugins/launcher.py, installed as {LAUNCHER_MODULE}.py here)\n"
            "import sys\n"
            f"sys.path.insert(0, {str(directory)!r})\n"
            f"from {LAUNCHER_MODULE} import main\n"
            f"main({plugin_type!r}, {module!r})\n")


def write_python_launchers(stub_dir: Path, plugins: dict[str, str], module_dir: Path | None = None,
                           extra_paths: tuple[str, ...] = (), socket_path: str | None = None) -> list[Path]:
    """The Python launchers of ``plugins`` (type → module): the shared module in ``module_dir`` (default
    ``stub_dir``), compiled, and one stub per plugin in ``stub_dir``; returns the stubs.

    The compiled file is checked against its source's hash, not its time stamp, so a module rewritten within the
    same second as its compilation is never run from the older code."""
    import py_compile

    module_dir = module_dir or stub_dir
    module_path = module_dir / f"{LAUNCHER_MODULE}.py"
    _write_atomically(module_path, render_launcher_module(extra_paths, socket_path).encode(), 0o644)
    py_compile.compile(str(module_path), doraise=True, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    stubs = []
    for plugin_type, module in plugins.items():
        stub = stub_dir / plugin_type
        _write_atomically(stub, render_launcher_stub(plugin_type, module, module_dir).encode())
        stubs.append(stub)
    return stubs


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
    module_dir = target / FALLBACK_SUBDIR  # beside the stubs, or (no native launcher) out of the runtime's sight
    module_dir.mkdir(exist_ok=True)
    write_python_launchers(python_dir, IN_PROCESS, module_dir, socket_path=socket_path)
    written = []
    for plugin_type in IN_PROCESS:
        if native is not None:
            _write_atomically(target / plugin_type, native)
        written.append(target / plugin_type)
    return written


def run(args: argparse.Namespace) -> int:
    for path in install(args.dir, args.launcher, args.socket):
        print(f"installed {path}")
    return 0
