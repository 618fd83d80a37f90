"""Entering a network namespace in the current thread only, and always coming back.

A namespace is a per-thread property on Linux, so a handler running in a pooled worker of a long-lived daemon must
never leave its thread inside a container's namespace. :func:`entered` is the one way in: it remembers the thread's
own namespace, switches, and switches back however the block ends.

Netlink sockets stay bound to the namespace they were created in, so :func:`iproute` creates one after entering
and returns it after leaving: about a millisecond, where pyroute2's ``IPRoute(netns=...)`` forks a helper process
(about 20 ms) to do the same. Files under ``/proc/sys/net`` resolve to the namespace of the thread that opens them,
so :func:`write_sysctl` inside :func:`entered` sets a container's sysctls without a subprocess.
"""
from __future__ import annotations

import errno
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_OWN_NETNS = "/proc/thread-self/ns/net"
_libc = None  # ctypes.CDLL of libc, loaded on first use
# Held while Berth imports anything from pyroute2, and while the lazy package runs its real __init__: two threads
# importing overlapping parts of pyroute2 at once can get a half-initialised module (Python's answer to an import
# cycle across threads), and a plain ``import pyroute2`` racing the lazy registration replaces the lazy package
# under the thread that registered it (ImportError on AsyncIPRoute from 'pyroute2.iproute', seen under load).
_import_lock = threading.RLock()


class NetnsError(OSError):
    """The namespace cannot be opened or entered (gone, not a namespace, no permission)."""


class NetnsRestoreError(RuntimeError):
    """The thread could not return to its own namespace: it must not be used any more."""


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python 3.12+
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    import ctypes

    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def exists(path: str) -> bool:
    """Whether ``path`` names a network namespace that can still be entered."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


@contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the block with the current thread inside the network namespace at ``path``; always switch back."""
    own = os.open(_OWN_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NetnsError(exc.errno or errno.ENOENT, f"cannot open netns {path}: {exc.strerror}") from None
        try:
            _setns(target)
        except OSError as exc:
            raise NetnsError(exc.errno or errno.EINVAL, f"cannot enter netns {path}: {exc.strerror}") from None
        finally:
            os.close(target)
        try:
            yield
        finally:
            try:
                _setns(own)
            except OSError as exc:  # pragma: no cover - the kernel refusing our own namespace back
                raise NetnsRestoreError(f"cannot return to the thread's own netns: {exc}") from exc
    finally:
        os.close(own)


def _iproute_class():
    """pyroute2's ``IPRoute`` without paying for the package's ``__init__`` (NDB, IPDB, conntrack: ~150 ms).

    When nothing has imported pyroute2 yet, the package is registered with a lazy ``__init__``: the real one runs
    in place on the first attribute asked of the package, so every later ``from pyroute2 import X`` still works.
    """
    return from_pyroute2("pyroute2.iproute.linux", "IPRoute")


def from_pyroute2(module: str, name: str):
    """``from <module> import <name>`` for a pyroute2 module: how Berth imports anything from pyroute2. The lazy
    package is registered first (so the heavy ``__init__`` never runs for it) and the import runs under the one
    import lock (see ``_import_lock``)."""
    import importlib

    with _import_lock:
        _register_lazy_package()
        return getattr(importlib.import_module(module), name)


def register_lazy_pyroute2() -> None:
    """Let ``pyroute2.<module>`` imports skip the package's heavy ``__init__`` (see :func:`_iproute_class`)."""
    with _import_lock:
        _register_lazy_package()


def _register_lazy_package() -> None:
    if "pyroute2" not in sys.modules:
        import importlib.util
        import types

        spec = importlib.util.find_spec("pyroute2")
        if spec is not None and spec.submodule_search_locations and spec.loader is not None:
            package = types.ModuleType("pyroute2")
            package.__path__ = list(spec.submodule_search_locations)
            package.__spec__ = spec
            package.__file__ = spec.origin
            package.__loader__ = spec.loader

            progress = {"running": False, "done": False}

            def _complete(name: str):
                if importlib.util.find_spec(f"pyroute2.{name}") is not None:  # ``from pyroute2 import config``
                    return importlib.import_module(f"pyroute2.{name}")
                with _import_lock:  # other threads wait until the real __init__ has run to its end
                    if not progress["done"]:
                        if progress["running"]:  # asked from inside the real __init__ itself
                            raise AttributeError(name)
                        progress["running"] = True
                        try:
                            spec.loader.exec_module(package)  # the real __init__, in the same module object
                        finally:
                            progress["running"] = False
                        progress["done"] = True
                        if package.__dict__.get("__getattr__") is _complete:
                            del package.__dict__["__getattr__"]
                return getattr(package, name)

            package.__getattr__ = _complete
            sys.modules["pyroute2"] = package


def iproute(path: str | None = None):
    """An ``IPRoute`` socket bound to the namespace at ``path`` (the thread's own when None); caller closes it."""
    IPRoute = _iproute_class()  # heavy: imported only when a handler really talks netlink
    if path is None:
        return IPRoute()
    with entered(path):
        return IPRoute()


def write_sysctl(key: str, value: str) -> None:
    """Set a sysctl (``net/ipv4/ip_forward`` form) in the current thread's network namespace."""
    with open(f"/proc/sys/{key}", "w") as handle:
        handle.write(value)


def read_sysctl(key: str) -> str:
    with open(f"/proc/sys/{key}") as handle:
        return handle.read().strip()
