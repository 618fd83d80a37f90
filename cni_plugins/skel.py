"""The CNI protocol core: environment and stdin parsing, version negotiation, dispatch, the error edge.

Every Berth plugin is a set of handlers behind :func:`main`; nothing here knows what a plugin does. A plugin module
defines ``HANDLERS = skel.Handlers(add=..., delete=..., check=..., gc=..., status=...)`` and
``def main(): return skel.main(HANDLERS, about="berth-x")`` — :mod:`cni_plugins.invoke` and the local CNI daemon
find ``HANDLERS`` to run the same plugin in process. The order is fixed here, for every plugin: decode stdin once
(:func:`decode_config`: size, nesting, UTF-8), validate the environment and the fields every plugin shares, then
the plugin's own parser (``Handlers.config``: its frozen record, each field checked, before any side effect),
then the handler. Bad input therefore always ends as code 4, 6 or 7 naming the field, never 999. :func:`dispatch`
takes the environment and stdin as values and returns the exit code and output, so a handler can serve a
runtime's exec, a test, or a daemon's socket alike.
Handlers must not read ``os.environ``, change the working directory or exit the process.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping

from cni_plugins import codes, config_fields, errors
from cni_plugins.types import LATEST_VERSION, SUPPORTED_VERSIONS, Result, ResultError, at_least, version_tuple
from datapath.ifname import interface_name
from ipam.record import Record, field, replace

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
MAX_STDIN = 16 << 20          # bytes of network config a plugin reads (the daemon's frame cap is the same)
MAX_DEPTH = 64                # nesting of the config's JSON; libcni's Go decoder stops at 10,000, Python's
#                               recursion far earlier, so the edge refuses what no real config needs
# CNI_ARGS keys every Berth plugin understands; anything else needs IgnoreUnknown=1 (as libcni's LoadArgs).
KNOWN_ARGS = frozenset({"IgnoreUnknown", "IP", "MAC", "K8S_POD_NAME", "K8S_POD_NAMESPACE",
                        "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"})


class Attachment(Record):
    """One (container, interface) pair a runtime still uses; GC frees everything not in its list."""

    container_id: str
    ifname: str


class RuntimeConfig(Record):
    """Capability arguments, merged from ``runtimeConfig``, ``args.cni`` and ``CNI_ARGS`` in one place."""

    ips: tuple[str, ...] = ()
    mac: str | None = None
    port_mappings: tuple[Mapping[str, object], ...] = ()
    aliases: tuple[str, ...] = ()
    raw: Mapping[str, object] = field(default_factory=dict)  # the whole runtimeConfig, for rarer capabilities


class Request(Record):
    """Everything a handler may use, parsed and validated before any handler runs."""

    command: str
    container_id: str
    netns: str
    ifname: str
    args: Mapping[str, str]
    path: tuple[str, ...]
    config: Mapping[str, object]
    raw_config: bytes
    cni_version: str
    name: str
    type: str
    prev_result: Result | None
    runtime: RuntimeConfig
    valid_attachments: tuple[Attachment, ...] | None
    env: Mapping[str, str]
    plugin_config: object = None  # what the plugin's own parser (``Handlers.config``) made of ``config``


Handler = Callable[[Request], object]


class Handlers(Record):
    add: Handler
    delete: Handler
    check: Handler | None = None
    gc: Handler | None = None
    status: Handler | None = None
    # The plugin's parser: config → its frozen record, every field checked. Run once, at the edge, before the
    # handler (and before any side effect); the handler finds the result in ``Request.plugin_config``.
    config: Handler | None = None

    def for_command(self, command: str) -> Handler | None:
        return {"ADD": self.add, "DEL": self.delete, "CHECK": self.check, "GC": self.gc,
                "STATUS": self.status}.get(command)


class Reply(Record):
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
    try:
        config_fields.identifier(container_id, "containerID")
    except ValueError as exc:
        raise errors.InvalidEnvironment(str(exc)) from None


def validate_network_name(name: object) -> None:
    if name is None or name == "":
        raise errors.InvalidConfig("missing network name")
    try:
        config_fields.identifier(name, "network name")
    except ValueError as exc:
        raise errors.InvalidConfig(str(exc)) from None


def validate_ifname(ifname: str) -> None:
    try:
        interface_name(ifname, "CNI_IFNAME")
    except ValueError as exc:
        raise errors.InvalidEnvironment(str(exc)) from None


def decode_config(stdin: bytes) -> dict[str, object]:
    """stdin → the network config object, or code 6: not JSON, not an object, too big, too deep, not UTF-8.

    The one place a config is decoded; everything after it sees only well-formed, bounded JSON values."""
    if len(stdin) > MAX_STDIN:
        raise errors.DecodeFailure(f"error unmarshall network config: larger than {MAX_STDIN} bytes")
    try:
        config = json.loads(stdin, parse_constant=_refuse_constant) if stdin.strip() else None
    except RecursionError:
        raise errors.DecodeFailure("error unmarshall network config: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.DecodeFailure(f"error unmarshall network config: {exc}") from None
    if not isinstance(config, dict):
        raise errors.DecodeFailure("error unmarshall network config: expected a JSON object on stdin")
    check_json_value(config, "network config")
    return config


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def check_json_value(value: object, what: str, max_depth: int = MAX_DEPTH) -> None:
    """Code 6 when ``value`` nests deeper than ``max_depth`` or holds a string that is not valid UTF-8 (a lone
    surrogate from a ``\\ud800`` escape). Iterative: no recursion to run out of."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                raise errors.DecodeFailure(f"{what}: nested more than {max_depth} levels deep")
            children = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in children:
                if isinstance(key, str):
                    _check_text(key, what)
                stack.append((child, depth + 1))
        elif isinstance(item, str):
            _check_text(item, what)


def _check_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.DecodeFailure(f"{what}: a string is not valid UTF-8 (lone surrogate)") from None


def _check_env_text(value: str, var: str) -> None:
    """Environment values arrive as text with undecodable bytes escaped; a result or a path cannot carry those."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.InvalidEnvironment(f"{var}: is not valid UTF-8") from None
    if "\0" in value:
        raise errors.InvalidEnvironment(f"{var}: contains a NUL character")


def negotiate_version(config: Mapping[str, object]) -> str:
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


def _object(value: object, field: str) -> Mapping[str, object]:
    """An optional JSON object: absent or null is empty; anything else but an object is code 7."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise errors.InvalidConfig(f"{field}: must be an object, not {type(value).__name__}")
    return value


def _strings(value: object, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise errors.InvalidConfig(f"{field}: must be a list of strings")
    return tuple(value)


def _runtime_config(config: Mapping[str, object], cni_args: Mapping[str, str], network: str) -> RuntimeConfig:
    runtime = _object(config.get("runtimeConfig"), "runtimeConfig")
    cni_section = _object(_object(config.get("args"), "args").get("cni"), "args.cni")

    ips = [*_strings(runtime.get("ips"), "runtimeConfig.ips"), *_strings(cni_section.get("ips"), "args.cni.ips")]
    if cni_args.get("IP"):
        ips.extend(part for part in cni_args["IP"].split(",") if part)

    macs = [(f, v) for f, v in (("runtimeConfig.mac", runtime.get("mac")), ("args.cni.mac", cni_section.get("mac")),
                                ("CNI_ARGS MAC", cni_args.get("MAC"))) if v is not None and v != ""]
    for source, value in macs:
        if not isinstance(value, str):
            raise errors.InvalidConfig(f"{source}: must be a string")
    mac = macs[0][1] if macs else None

    mappings = runtime.get("portMappings")
    if mappings is None:
        mappings = []
    if not isinstance(mappings, list) or not all(isinstance(m, Mapping) for m in mappings):
        raise errors.InvalidConfig("runtimeConfig.portMappings: must be a list of objects")

    aliases_by_network = _object(runtime.get("aliases"), "runtimeConfig.aliases")
    aliases = _strings(aliases_by_network.get(network), f"runtimeConfig.aliases.{network}")

    return RuntimeConfig(ips=tuple(dict.fromkeys(ips)), mac=mac, port_mappings=tuple(mappings),
                         aliases=aliases, raw=dict(runtime))


def _valid_attachments(config: Mapping[str, object]) -> tuple[Attachment, ...] | None:
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
                ifname = entry.get("ifname", "")
                if not isinstance(ifname, str):
                    raise errors.InvalidConfig(f"{key}: ifname must be a string")
                out.append(Attachment(entry["containerID"], ifname))
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

    for var in ("CNI_NETNS", "CNI_PATH", "CNI_ARGS"):
        _check_env_text(env.get(var, ""), var)
    if env.get("CNI_NETNS") and not env["CNI_NETNS"].startswith("/"):
        raise errors.InvalidEnvironment("CNI_NETNS: must be an absolute path", env["CNI_NETNS"])
    config = decode_config(stdin)

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
    if isinstance(exc, errors.datapath_errors.DatapathError):
        return errors.from_datapath(exc)
    if isinstance(exc, OSError):
        return errors.IOFailure(f"I/O failure: {exc}", type(exc).__name__)
    return errors.CniError(f"internal error: {type(exc).__name__}: {exc}", code=codes.INTERNAL)


def run_handler(handlers: Handlers, request: Request) -> object:
    """Call the handler for ``request.command``; a command a plugin does not implement is a no-op, except ADD."""
    handler = handlers.for_command(request.command)
    if handler is None:
        return None
    if handlers.config is not None and request.plugin_config is None:
        request = replace(request, plugin_config=handlers.config(request))
    return handler(request)


def plugin_config(req: Request, parse: Handler) -> object:
    """The config the edge parsed for this request; a handler called directly (a test) gets it parsed now."""
    return req.plugin_config if req.plugin_config is not None else parse(req)


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
                raise errors.CniError(f"internal error: ADD handler returned {type(outcome).__name__}",
                                      code=codes.INTERNAL)
            return Reply(0, json.dumps(outcome.to_dict(request.cni_version)).encode())
        return Reply(0, b"")
    except Exception as exc:  # noqa: BLE001 - the one edge where everything becomes the spec's error
        error = as_cni_error(exc)
        trace = b"" if isinstance(exc, (errors.CniError, errors.datapath_errors.DatapathError)) else _traceback()
        return Reply(1, json.dumps(error.to_dict(_error_version(stdin))).encode(), trace)


def _traceback() -> bytes:
    import traceback  # only for a failure that is not the spec's: a cost no other call pays

    return traceback.format_exc().encode()


def main(handlers: Handlers | None = None, *, add: Handler | None = None, delete: Handler | None = None,
         check: Handler | None = None, gc: Handler | None = None, status: Handler | None = None,
         about: str = "", env: Mapping[str, str] | None = None, stdin=None, stdout=None, stderr=None,
         argv: list[str] | None = None) -> int:
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
        data = (sys.stdin.buffer if stdin is None else stdin).read(MAX_STDIN + 1)
    reply = dispatch(handlers, env, data)
    stdout.write(reply.stdout)
    stdout.flush()
    if reply.stderr:
        stderr.write(reply.stderr)
    return reply.exit_code
