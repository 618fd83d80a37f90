"""Calling another CNI plugin (IPAM, or the bridge under the overlay) from inside a plugin.

Berth's own plugins run in process: no exec, no second interpreter start-up, the same handlers and the same
validation as their executables. Any other type is exec'd from ``CNI_PATH`` with the caller's environment, as
libcni's ``invoke`` does, and its error object comes back as a :class:`~cni_plugins.errors.CniError` with the
delegate's code.
"""
from __future__ import annotations

import contextvars
import json
import os
from collections.abc import Mapping

from cni_plugins import codes, errors, skel
from cni_plugins.types import Result, ResultError

# Plugin type → module that defines ``HANDLERS`` (a skel.Handlers).
IN_PROCESS: dict[str, str] = {
    "berth-ipam": "cni_plugins.ipam_plugin",
    "berth-bridge": "cni_plugins.bridge",
    "berth-portmap": "cni_plugins.portmap",
    "berth-register": "cni_plugins.register",
    "berth-overlay": "cni_plugins.overlay_plugin",
}
DELEGATE_TIMEOUT_SECONDS = 60.0
MAX_DELEGATION_DEPTH = 4
# The plugin types this call is already inside (per thread: each daemon call runs in its own thread).
_chain: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("berth_delegation_chain", default=())


def in_process_handlers(plugin_type: str) -> skel.Handlers | None:
    """Berth's own plugin's handlers, or None when ``plugin_type`` is not ours (or not installed here)."""
    module_name = IN_PROCESS.get(plugin_type)
    if module_name is None:
        return None
    module = __import__(module_name, fromlist=("HANDLERS",))
    return getattr(module, "HANDLERS", None)


def find_plugin(plugin_type: str, path: tuple[str, ...]) -> str:
    if "/" in plugin_type or plugin_type in (".", ".."):
        raise errors.InvalidConfig(f"plugin type {plugin_type!r} is not a plugin name")
    for directory in path:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise errors.InvalidConfig(f"failed to find plugin {plugin_type!r} in path {list(path)}")


def delegate(plugin_type: str, command: str, config: Mapping[str, object], req: skel.Request) -> Result | None:
    """Run ``command`` of plugin ``plugin_type`` with ``config`` as its stdin and ``req``'s environment.

    Returns the delegate's result for ADD, None otherwise; raises its error as a CniError.
    """
    chain = _chain.get() or (req.type,)
    if plugin_type in chain or len(chain) >= MAX_DELEGATION_DEPTH:
        raise errors.InvalidConfig(f"delegation to {plugin_type} loops back: {' -> '.join((*chain, plugin_type))}",
                                   "a plugin's ipam or delegate section must name another plugin")
    env = dict(req.env)
    env["CNI_COMMAND"] = command
    stdin = json.dumps(config).encode()
    handlers = in_process_handlers(plugin_type)
    token = _chain.set((*chain, plugin_type))
    try:
        if handlers is not None:
            return _run_in_process(handlers, command, env, stdin)
        return _run_executable(find_plugin(plugin_type, req.path), command, env, stdin)
    finally:
        _chain.reset(token)


def _run_in_process(handlers: skel.Handlers, command: str, env: dict[str, str], stdin: bytes) -> Result | None:
    request = skel.parse_request(env, stdin)
    try:
        outcome = skel.run_handler(handlers, request)
    except errors.datapath_errors.DatapathError as exc:  # the delegate's edge: its error as an executable's would be
        raise errors.from_datapath(exc) from None
    if command != "ADD":
        return None
    if not isinstance(outcome, Result):
        raise errors.CniError(f"internal error: delegate ADD returned {type(outcome).__name__}",
                               code=codes.DELEGATE_FAILED)
    return outcome


def _run_executable(executable: str, command: str, env: dict[str, str], stdin: bytes) -> Result | None:
    import subprocess  # only to exec a plugin that is not Berth's own

    try:
        proc = subprocess.run([executable], input=stdin, env=env, capture_output=True,
                              timeout=DELEGATE_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise errors.TryAgainLater(f"delegate {os.path.basename(executable)} {command} timed out") from None
    except OSError as exc:
        raise errors.IOFailure(f"cannot run delegate {executable}: {exc}") from None
    if proc.returncode != 0:
        raise _delegate_error(executable, proc)
    if command != "ADD":
        return None
    try:
        return Result.from_dict(json.loads(proc.stdout))
    except (ValueError, ResultError) as exc:
        raise errors.DecodeFailure(f"delegate {os.path.basename(executable)} printed an unreadable result: {exc}")


def _delegate_error(executable: str, proc) -> errors.CniError:
    """``proc`` is the delegate's ``subprocess.CompletedProcess``."""
    try:
        data = json.loads(proc.stdout)
        if isinstance(data, dict) and "code" in data:
            return errors.from_dict(data)
    except ValueError:
        pass
    detail = (proc.stderr or proc.stdout).decode(errors="replace").strip()[:2000]
    return errors.CniError(f"delegate {os.path.basename(executable)} failed (exit {proc.returncode})", detail,
                           code=codes.DELEGATE_FAILED)
