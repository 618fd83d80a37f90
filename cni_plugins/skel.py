"""The CNI protocol core: environment and stdin parsing, version negotiation, dispatch, the error edge.

Every Berth plugin is a set of handlers behind :func:`main`; nothing here knows what a plugin does. A plugin module
defines ``HANDLERS = skel.Handlers(add=..., delete=..., check=..., gc=..., status=...)`` and
``def main(): return skel.main(HANDLERS, about="berth-x")`` — :mod:`cni_plugins.invoke` and the local CNI daemon
find ``HANDLERS`` to run the same plugin in process. :func:`dispatch` takes the environment and stdin as values and
returns the exit code and output, so a handler can serve a runtime's exec, a test, or a daemon's socket alike.
Handlers must not read ``os.environ``, change the working directory or exit the process.
"""
from __future__ import annotations

import json
import os
import re
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from cni_plugins import errors
from cni_plugins.types import LATEST_VERSION, SUPPORTED_VERSIONS, Result, ResultError, at_least, version_tuple

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
# Which environment variables each command requires (as libcni's skel).
REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
    "VERSION": (),
}
# The oldest spec version that knows each command.
MINIMUM_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
IFNAME_FORBIDDEN = re.compile(r"[/:\s]")
MAX_IFNAME = 15
# CNI_ARGS keys every Berth plugin understands; anything else needs IgnoreUnknown=1 (as libcni's LoadArgs).
KNOWN_ARGS = frozenset({"IgnoreUnknown", "IP", "MAC", "K8S_POD_NAME", "K8S_POD_NAMESPACE",
                        "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"})


@dataclass(frozen=True)
class Attachment:
    """One (container, interface) pair a runtime still uses; GC frees everything not in its list."""

    container_id: str
    ifname: str


@dataclass(frozen=True)
class RuntimeConfig:
    """Capability arguments, merged from ``runtimeConfig``, ``args.cni`` and ``CNI_ARGS`` in one place."""

    ips: tuple[str, ...] = ()
    mac: Optional[str] = None
    port_mappings: tuple[Mapping[str, Any], ...] = ()
    aliases: tuple[str, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict)  # the whole runtimeConfig, for rarer capabilities


@dataclass(frozen=True)
class Request:
    """Everything a handler may use, parsed and validated before any handler runs."""

    command: str
    container_id: str
    netns: str
    ifname: str
    args: Mapping[str, str]
    path: tuple[str, ...]
    config: Mapping[str, Any]
    raw_config: bytes
    cni_version: str
    name: str
    type: str
    prev_result: Optional[Result]
    runtime: RuntimeConfig
    valid_attachments: Optional[tuple[Attachment, ...]]
    env: Mapping[str, str]


Handler = Callable[[Request], Any]


@dataclass(frozen=True)
class Handlers:
    add: Handler
    delete: Handler
    check: Optional[Handler] = None
    gc: Optional[Handler] = None
    status: Optional[Handler] = None

    def for_command(self, command: str) -> Optional[Handler]:
        return {"ADD": self.add, "DEL": self.delete, "CHECK": self.check, "GC": self.gc,
                "STATUS": self.status}.get(command)


@dataclass(frozen=True)
class Reply:
    """What a plugin process would do: its exit code and what it writes to stdout and stderr."""

    exit_code: int
    stdout: bytes
    stderr: bytes = b""


# --- parsing -----------------------------------------------------------------------------------------------------

def parse_cni_args(raw: str) -> dict[str, str]:
    """``K=V;K2=V2`` → dict. Unknown keys are an error unless ``IgnoreUnknown`` is true (as libcni)."""
    parsed: dict[str, str] = {}
    if not raw:
        return parsed
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise errors.InvalidEnvironment(f"CNI_ARGS: invalid pair {pair!r}", "expected KEY=VALUE")
        parsed[key] = value
    ignore_unknown = parsed.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = sorted(set(parsed) - KNOWN_ARGS)
    if unknown and not ignore_unknown:
        raise errors.InvalidEnvironment(f"CNI_ARGS: unknown args {unknown}", "set IgnoreUnknown=1 to allow them")
    return parsed


def validate_container_id(container_id: str) -> None:
    if not container_id:
        raise errors.UnknownContainer("missing containerID")
    if not NAME_PATTERN.match(container_id):
        raise errors.InvalidEnvironment("invalid characters in containerID", container_id)


def validate_network_name(name: Any) -> None:
    if not name:
        raise errors.InvalidConfig("missing network name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise errors.InvalidConfig("invalid characters found in network name", str(name))


def validate_ifname(ifname: str) -> None:
    if not ifname:
        raise errors.InvalidEnvironment("interface name is empty")
    if len(ifname) > MAX_IFNAME:
        raise errors.InvalidEnvironment("interface name is too long",
                                        f"interface name should be less than {MAX_IFNAME + 1} characters")
    if ifname in (".", ".."):
        raise errors.InvalidEnvironment("interface name is . or ..")
    if IFNAME_FORBIDDEN.search(ifname):
        raise errors.InvalidEnvironment("interface name contains / or : or whitespace characters", ifname)


def negotiate_version(config: Mapping[str, Any]) -> str:
    """The spec version to speak: ``cniVersion``, else the highest of ``cniVersions`` that Berth supports."""
    version = config.get("cniVersion")
    if version is None and isinstance(config.get("cniVersions"), list):
        offered = [v for v in config["cniVersions"] if v in SUPPORTED_VERSIONS]
        if not offered:
            raise errors.IncompatibleVersion(
                "incompatible CNI versions",
                f"config offers {json.dumps(config['cniVersions'])}, plugin supports {json.dumps(list(SUPPORTED_VERSIONS))}")
        return max(offered, key=version_tuple)
    if version not in SUPPORTED_VERSIONS:
        raise errors.IncompatibleVersion(
            "incompatible CNI versions",
            f"config is {json.dumps(version if version is not None else '')}, "
            f"plugin supports {json.dumps(list(SUPPORTED_VERSIONS))}")
    return version


def _runtime_config(config: Mapping[str, Any], cni_args: Mapping[str, str], network: str) -> RuntimeConfig:
    runtime = config.get("runtimeConfig") or {}
    cni_section = (config.get("args") or {}).get("cni") or {} if isinstance(config.get("args"), Mapping) else {}
    if not isinstance(runtime, Mapping):
        raise errors.InvalidConfig("runtimeConfig: must be an object")
    if not isinstance(cni_section, Mapping):
        raise errors.InvalidConfig("args.cni: must be an object")

    ips: list[str] = []
    for source, value in (("runtimeConfig.ips", runtime.get("ips")), ("args.cni.ips", cni_section.get("ips"))):
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise errors.InvalidConfig(f"{source}: must be a list of strings")
        ips.extend(value)
    if cni_args.get("IP"):
        ips.extend(part for part in cni_args["IP"].split(",") if part)

    mac = runtime.get("mac") or cni_section.get("mac") or cni_args.get("MAC") or None
    if mac is not None and not isinstance(mac, str):
        raise errors.InvalidConfig("runtimeConfig.mac: must be a string")

    mappings = runtime.get("portMappings") or ()
    if not isinstance(mappings, (list, tuple)) or not all(isinstance(m, Mapping) for m in mappings):
        raise errors.InvalidConfig("runtimeConfig.portMappings: must be a list of objects")

    aliases_by_network = runtime.get("aliases") or {}
    if not isinstance(aliases_by_network, Mapping):
        raise errors.InvalidConfig("runtimeConfig.aliases: must be an object of network name to list")
    aliases = aliases_by_network.get(network) or ()
    if not isinstance(aliases, (list, tuple)) or not all(isinstance(a, str) for a in aliases):
        raise errors.InvalidConfig(f"runtimeConfig.aliases.{network}: must be a list of strings")

    return RuntimeConfig(ips=tuple(dict.fromkeys(ips)), mac=mac, port_mappings=tuple(mappings),
                         aliases=tuple(aliases), raw=dict(runtime))


def _valid_attachments(config: Mapping[str, Any]) -> Optional[tuple[Attachment, ...]]:
    for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
        if key in config:
            entries = config[key]
            if entries is None:  # libcni marshals an empty Go slice as null: nothing is valid any more
                return ()
            if not isinstance(entries, list):
                raise errors.InvalidConfig(f"{key}: must be a list")
            out = []
            for entry in entries:
                if not isinstance(entry, Mapping) or not isinstance(entry.get("containerID"), str):
                    raise errors.InvalidConfig(f"{key}: each entry needs a string containerID")
                out.append(Attachment(entry["containerID"], str(entry.get("ifname", ""))))
            return tuple(out)
    return None


def parse_request(env: Mapping[str, str], stdin: bytes) -> Request:
    """Validate the environment and stdin the way libcni does, in the same order, and build a :class:`Request`."""
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise errors.InvalidEnvironment("required env variables [CNI_COMMAND] missing")
    if command not in COMMANDS:
        raise errors.InvalidEnvironment(f"unknown CNI_COMMAND: {command}")
    missing = [var for var in REQUIRED_ENV[command] if not env.get(var)]
    if missing:
        raise errors.InvalidEnvironment(f"required env variables [{','.join(missing)}] missing")

    try:
        config = json.loads(stdin) if stdin.strip() else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.DecodeFailure(f"error unmarshall network config: {exc}") from None
    if not isinstance(config, dict):
        raise errors.DecodeFailure("error unmarshall network config: expected a JSON object on stdin")

    validate_network_name(config.get("name"))
    container_id = env.get("CNI_CONTAINERID", "")
    ifname = env.get("CNI_IFNAME", "")
    if command in ("ADD", "DEL", "CHECK"):
        validate_container_id(container_id)
        validate_ifname(ifname)

    version = negotiate_version(config)
    minimum = MINIMUM_VERSION.get(command)
    if minimum and not at_least(version, minimum):
        raise errors.IncompatibleVersion(f"config version does not allow {command}",
                                         f"{command} needs cniVersion {minimum} or later, config is {version}")

    plugin_type = config.get("type")
    if not isinstance(plugin_type, str) or not plugin_type:
        raise errors.InvalidConfig("missing plugin type", "the config needs a string 'type'")

    prev_result = None
    if config.get("prevResult") is not None:
        try:
            prev_result = Result.from_dict(config["prevResult"])
        except ResultError as exc:
            raise errors.DecodeFailure(f"prevResult: {exc}") from None

    cni_args = parse_cni_args(env.get("CNI_ARGS", ""))
    return Request(
        command=command, container_id=container_id, netns=env.get("CNI_NETNS", ""), ifname=ifname,
        args=cni_args, path=tuple(p for p in env.get("CNI_PATH", "").split(os.pathsep) if p),
        config=config, raw_config=bytes(stdin), cni_version=version, name=config["name"], type=plugin_type,
        prev_result=prev_result, runtime=_runtime_config(config, cni_args, config["name"]),
        valid_attachments=_valid_attachments(config) if command == "GC" else None, env=dict(env))


# --- dispatch ----------------------------------------------------------------------------------------------------

def version_reply() -> bytes:
    return json.dumps({"cniVersion": LATEST_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}).encode()


def _error_version(stdin: bytes) -> str:
    """The version to stamp on an error: the config's when it is one we speak, else the latest."""
    try:
        version = json.loads(stdin).get("cniVersion")
    except Exception:  # noqa: BLE001 - any garbage on stdin means "unknown"
        return LATEST_VERSION
    return version if version in SUPPORTED_VERSIONS else LATEST_VERSION


def as_cni_error(exc: BaseException) -> errors.CniError:
    """Map any exception to the spec's error: our own keep their code; lower layers say what they are."""
    if isinstance(exc, errors.CniError):
        return exc
    code = getattr(exc, "cni_code", None)
    if isinstance(code, int):
        return errors.CniError(str(exc) or type(exc).__name__, type(exc).__name__, code=code)
    if isinstance(exc, OSError):
        return errors.IOFailure(f"I/O failure: {exc}", type(exc).__name__)
    return errors.CniError(f"internal error: {type(exc).__name__}: {exc}", code=999)


def run_handler(handlers: Handlers, request: Request) -> Any:
    """Call the handler for ``request.command``; a command a plugin does not implement is a no-op, except ADD."""
    handler = handlers.for_command(request.command)
    if handler is None:
        return None
    return handler(request)


def dispatch(handlers: Handlers, env: Mapping[str, str], stdin: bytes) -> Reply:
    """Serve one CNI call: never raises, always returns what the process should print and its exit code."""
    command = env.get("CNI_COMMAND", "")
    try:
        if command == "VERSION":
            return Reply(0, version_reply())
        request = parse_request(env, stdin)
        outcome = run_handler(handlers, request)
        if request.command == "ADD":
            if not isinstance(outcome, Result):
                raise errors.CniError(f"internal error: ADD handler returned {type(outcome).__name__}", code=999)
            return Reply(0, json.dumps(outcome.to_dict(request.cni_version)).encode())
        return Reply(0, b"")
    except Exception as exc:  # noqa: BLE001 - the one edge where everything becomes the spec's error
        error = as_cni_error(exc)
        trace = b"" if isinstance(exc, errors.CniError) else traceback.format_exc().encode()
        return Reply(1, json.dumps(error.to_dict(_error_version(stdin))).encode(), trace)


def main(handlers: Optional[Handlers] = None, *, add: Optional[Handler] = None, delete: Optional[Handler] = None,
         check: Optional[Handler] = None, gc: Optional[Handler] = None, status: Optional[Handler] = None,
         about: str = "", env: Optional[Mapping[str, str]] = None, stdin=None, stdout=None, stderr=None,
         argv: Optional[list[str]] = None) -> int:
    """A plugin executable's whole ``main``: read env and stdin, dispatch, print, return the exit code."""
    if handlers is None:
        if add is None or delete is None:
            raise TypeError("skel.main needs handlers or at least add= and delete=")
        handlers = Handlers(add=add, delete=delete, check=check, gc=gc, status=status)
    env = os.environ if env is None else env
    stdout = sys.stdout.buffer if stdout is None else stdout
    stderr = sys.stderr.buffer if stderr is None else stderr
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--version"], ["--help"], ["-h"]):
        stderr.write(f"{about}\nCNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}\n".encode())
        return 0
    if env.get("CNI_COMMAND") == "VERSION":
        data = b""
    else:
        data = (sys.stdin.buffer if stdin is None else stdin).read()
    reply = dispatch(handlers, env, data)
    stdout.write(reply.stdout)
    stdout.flush()
    if reply.stderr:
        stderr.write(reply.stderr)
    return reply.exit_code
