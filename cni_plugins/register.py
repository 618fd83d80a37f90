"""``berth-register``: the chained CNI plugin that hands each container's endpoint to the local discovery agent.

Last in a ``.conflist`` (as podman's old dnsname plugin was). ADD builds the endpoint from ``CNI_ARGS``
``K8S_POD_NAME`` (the name), the ``aliases`` capability, ``prevResult`` (addresses) and ``portMappings``, sends it
to the agent and passes ``prevResult`` through unchanged. If no agent is listening, the request is spooled on disk
and the agent applies it when it starts: a registration is never lost and never fails a container start.
A container name that is not a DNS label (podman allows ``_`` and ``.``) is registered under its DNS form
(``my_app.v2`` → ``my-app-v2``), keeping the original in ``meta.containerName``; only input with no usable name or
addresses is an error, reported before anything is written.

Config keys (all optional): ``agentSocket`` (default ``/run/berth/agent.sock``), ``spoolDir`` (default
``/var/lib/berth/agent/spool``), ``timeout`` seconds for the agent's reply (default 5), ``tags`` (a list given to
every endpoint of the network). Per container, ``args.cni.service`` names the service (default: the container
name) and ``args.cni.tags`` adds tags.
Standard library only on this path: it runs for every container start.
"""
from __future__ import annotations

from cni_plugins import codes, errors, skel
from cni_plugins.config_fields import path_field
from discovery import wire
from discovery.model import EndpointRecord, InvalidRecord, PortBinding, dns_label_for

INPUT_ERRORS = codes.INPUT_ERRORS  # the agent rejected the request itself: retrying later cannot help
MAX_TIMEOUT = 300.0


def _options(req: skel.Request) -> tuple[str, str, float]:
    return skel.plugin_config(req, _parse_options)


def _parse_options(req: skel.Request) -> tuple[str, str, float]:
    cfg = req.config
    sock = path_field(cfg, "agentSocket", wire.DEFAULT_SOCKET)
    spool_dir = path_field(cfg, "spoolDir", wire.DEFAULT_SPOOL_DIR)
    timeout = cfg.get("timeout")
    timeout = 5 if timeout is None else timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise errors.InvalidConfig(f"timeout: {timeout!r} must be a number of seconds above 0 and at most "
                                   f"{MAX_TIMEOUT:g}")
    if len(sock.encode()) >= 108:
        raise errors.InvalidConfig(f"agentSocket: {sock!r} is longer than a Unix socket path can be (107 bytes)")
    return sock, spool_dir, float(timeout)


def endpoint_id(container_id: str, ifname: str) -> str:
    return f"{container_id}/{ifname}"


def _printable(values, field: str) -> None:
    """No whitespace or control characters in a name (a final newline is the classic way past a ``$`` regex)."""
    for value in values:
        if any(c.isspace() or not c.isprintable() for c in value):
            raise errors.InvalidConfig(f"{field}: {value!r} contains whitespace or control characters")


def build_record(req: skel.Request) -> EndpointRecord:
    """The endpoint this attachment is, validated before anything is sent or spooled."""
    _options(req)
    name = req.args.get("K8S_POD_NAME", "")
    if not name:
        raise errors.InvalidEnvironment("CNI_ARGS: K8S_POD_NAME (the container name to register) is missing")
    if req.prev_result is None:
        raise errors.InvalidConfig("prevResult: missing; berth-register must be chained after a plugin that "
                                   "assigns addresses")
    try:
        ports = []
        for i, mapping in enumerate(req.runtime.port_mappings):
            container_port = mapping.get("containerPort")
            host_port = mapping.get("hostPort")
            ports.append(PortBinding(port=container_port, protocol=str(mapping.get("protocol") or "tcp").lower(),
                                     host_port=host_port or None, host_ip=mapping.get("hostIP") or None))
        service, tags = _service_and_tags(req)
        _printable(req.runtime.aliases, f"runtimeConfig.aliases.{req.name}")
        _printable((service,), "args.cni.service")
        label = dns_label_for(name)
        if not label:
            raise errors.InvalidConfig(f"K8S_POD_NAME: {name!r} has nothing usable as a DNS name")
        return EndpointRecord(
            id=endpoint_id(req.container_id, req.ifname), name=label, aliases=req.runtime.aliases,
            meta={"containerName": name} if label != name else {},
            addresses=tuple(str(ip.address.ip) for ip in req.prev_result.ips), network=req.name,
            container_id=req.container_id, ifname=req.ifname, ports=tuple(ports), service=service, tags=tags)
    except InvalidRecord as exc:
        raise errors.InvalidConfig(f"endpoint: {exc}") from None


def _service_and_tags(req: skel.Request) -> tuple[str, tuple[str, ...]]:
    per_container = (req.config.get("args") or {}).get("cni") or {}  # objects: checked at the edge (skel)
    tags: list[str] = []
    for field, value in (("tags", req.config.get("tags")), ("args.cni.tags", per_container.get("tags"))):
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
            raise errors.InvalidConfig(f"{field}: must be a list of non-empty strings")
        tags.extend(t for t in value if t not in tags)
    service = per_container.get("service")
    service = "" if service is None else service
    if not isinstance(service, str):
        raise errors.InvalidConfig("args.cni.service: must be a string")
    return service, tuple(tags)


def _send(req: skel.Request, request: dict) -> dict | None:
    """The agent's reply, or None after spooling the request because no agent could take it."""
    sock, spool_dir, timeout = _options(req)
    try:
        reply = wire.call(sock, request, timeout)
    except (OSError, ValueError):
        reply = None
    if reply is not None and reply.get("ok"):
        return reply
    if reply is not None and reply.get("code") in INPUT_ERRORS:
        raise errors.CniError(str(reply.get("error")), code=int(reply["code"]))
    try:
        wire.spool(spool_dir, request)
    except OSError as exc:
        raise errors.IOFailure(f"spoolDir {spool_dir}: cannot keep the registration ({exc.strerror})") from None
    return None


def cmd_add(req: skel.Request):
    record = build_record(req)
    _send(req, {"op": "add", "endpoint": record.to_dict(), "netns": req.netns})
    return req.prev_result


def cmd_del(req: skel.Request) -> None:
    _options(req)
    _send(req, {"op": "del", "id": endpoint_id(req.container_id, req.ifname)})


def cmd_check(req: skel.Request) -> None:
    wanted = endpoint_id(req.container_id, req.ifname)
    sock, spool_dir, timeout = _options(req)
    try:
        registered = bool(wire.call(sock, {"op": "check", "id": wanted}, timeout).get("registered"))
    except (OSError, ValueError):
        registered = _spooled_state(spool_dir, wanted)
        if registered is None:
            raise errors.TryAgainLater(f"agent socket {sock}: no agent to ask and nothing spooled for {wanted}")
    if not registered:
        raise errors.UnknownContainer(f"endpoint {wanted} is not registered with the discovery agent")


def _spooled_state(spool_dir: str, wanted: str) -> bool | None:
    """Whether the spool, replayed, would leave ``wanted`` registered (None: the spool does not mention it)."""
    state = None
    for _, request in wire.spooled(spool_dir):
        if not request:
            continue
        if request.get("op") == "add" and (request.get("endpoint") or {}).get("id") == wanted:
            state = True
        elif request.get("op") == "del" and request.get("id") == wanted:
            state = False
    return state


def cmd_gc(req: skel.Request) -> None:
    if req.valid_attachments is None:
        return  # no list of valid attachments: nothing can be judged stale
    valid = [[a.container_id, a.ifname] for a in req.valid_attachments]
    _send(req, {"op": "gc", "network": req.name, "valid": valid})


def cmd_status(req: skel.Request) -> None:
    _options(req)  # ADD always works (it spools when no agent listens), so only bad config is "not ready"


HANDLERS = skel.Handlers(add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc, status=cmd_status,
                         config=_parse_options)


def main() -> int:
    return skel.main(HANDLERS, about="berth-register: hands container endpoints to the Berth discovery agent")


if __name__ == "__main__":
    raise SystemExit(main())
