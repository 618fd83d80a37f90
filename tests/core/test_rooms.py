"""Imports run one way between rooms: ``cni_plugins`` → ``datapath`` → ``ipam`` → ``store``, and
``docker_plugin`` → ``datapath``, ``ipam``, ``discovery``; the two faces never import each other, and the
discovery model both faces publish into imports neither.

Read from the source (every import statement, those inside functions too), so a reversed import fails here even
when no test happens to load the module that holds it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
FACES_AND_SERVICES = ("cni_plugins", "docker_plugin", "overlay", "discovery", "dnsd", "berth")
# Each room, and the rooms it must never import: everything above it.
NEVER_IMPORTS = {
    "datapath": FACES_AND_SERVICES,
    "ipam": (*FACES_AND_SERVICES, "datapath"),
    "store": (*FACES_AND_SERVICES, "datapath", "ipam"),
    "discovery": (*(r for r in FACES_AND_SERVICES if r != "discovery"), "datapath"),
    "cni_plugins": ("docker_plugin",),
    "docker_plugin": ("cni_plugins",),
}
# The one module of a face another room may import: the table of CNI codes, which the discovery agent's socket
# and the Docker face's names watcher read in its replies (standard library only, no imports at all).
SHARED_MODULES = {"cni_plugins.codes"}


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``source``, relative imports resolved against ``package``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            # ``from cni_plugins import codes`` names a module too: judge each imported name as one.
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def violations(source: str, package: str, forbidden: tuple[str, ...]) -> list[str]:
    out = []
    for line, module in imported_modules(source, package):
        room = module.split(".")[0]
        if room not in forbidden or any(module == m or module.startswith(m + ".") for m in SHARED_MODULES):
            continue
        out.append(f"line {line}: imports {module}")
    return out


def _modules(room: str) -> list[Path]:
    return sorted(p for p in (ROOT / room).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("room", sorted(NEVER_IMPORTS))
def test_no_room_imports_a_room_above_it(room):
    modules = _modules(room)
    assert modules, f"{room}/ holds no modules: the guard would check nothing"
    problems = []
    for path in modules:
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
        problems += [f"{path.relative_to(ROOT)} {v}" for v in violations(path.read_text(), package,
                                                                          NEVER_IMPORTS[room])]
    assert not problems, "imports that run the wrong way:\n" + "\n".join(problems)


@pytest.mark.parametrize("source", [
    "from cni_plugins import errors\n",
    "from cni_plugins.types import Result\n",
    "import docker_plugin.state\n",
    "def late():\n    from cni_plugins import skel\n",
])
def test_the_guard_sees_an_upward_import_wherever_it_is(source):
    assert violations(source, "datapath", NEVER_IMPORTS["datapath"])


def test_the_guard_resolves_relative_imports_and_lets_the_codes_table_through():
    assert imported_modules("from . import rtnl\nfrom .. import errors\n", "datapath.sub") == [
        (1, "datapath.sub.rtnl"), (2, "datapath.errors")]
    assert not violations("from cni_plugins import codes\n", "docker_plugin", NEVER_IMPORTS["docker_plugin"])
    assert violations("from cni_plugins import codes, errors\n", "docker_plugin", NEVER_IMPORTS["docker_plugin"])
    assert not violations("from ipam.record import Record\nimport pyroute2\n", "datapath", NEVER_IMPORTS["datapath"])
