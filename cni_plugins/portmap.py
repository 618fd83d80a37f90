"""berth-portmap: chained after the bridge, publishes host ports as DNAT rules (``docker run -p``).

Traffic to a host port is forwarded to the container whether it arrives from outside (prerouting) or from the host
itself (output; localhost works through ``route_localnet`` and a masquerade, as in the reference). Unlike the
reference, a host port another container already holds is refused with a clear error instead of being stolen.
"""
from __future__ import annotations


from cni_plugins import codes, errors, skel
from cni_plugins.portmap_plan import PortmapConfig, container_ips, parse, rules_for
from cni_plugins.types import Result
from datapath import firewall, netns, ports


def _parse(req: skel.Request) -> PortmapConfig:
    """DEL and GC remove rules by tag: stale or broken mappings must not stop them, so only ADD and CHECK read them."""
    mappings = req.runtime.port_mappings if req.command in ("ADD", "CHECK") else ()
    return parse(req.config, req.cni_version, mappings)


def _config(req: skel.Request) -> PortmapConfig:
    return skel.plugin_config(req, _parse)


def _tag(cfg: PortmapConfig, req: skel.Request) -> str:
    return firewall.attachment_tag(cfg.name, req.container_id, req.ifname)


def _enable_route_localnet(prev: Result) -> None:
    """Let 127.0.0.1 be DNATed out of the host-side interfaces (the bridge) toward the container."""
    for iface in prev.interfaces:
        if iface.sandbox:
            continue
        key = f"net/ipv4/conf/{iface.name}/route_localnet"
        try:
            if netns.read_sysctl(key) != "1":
                netns.write_sysctl(key, "1")
        except FileNotFoundError:
            continue  # an interface that is gone, or one the result names without a host link
        except OSError as exc:
            raise errors.IOFailure(f"could not set {key}: {exc}") from None


def _prev(req: skel.Request) -> Result:
    if req.prev_result is None:
        raise errors.InvalidConfig("portmap must be chained after a plugin that returns a result (no prevResult)")
    return req.prev_result


def cmd_add(req: skel.Request) -> Result:
    cfg = _config(req)
    prev = _prev(req)
    if not cfg.mappings:
        return prev
    addresses = container_ips(prev, req.ifname)
    rules = rules_for(cfg, addresses)
    if not rules:
        return prev
    tag = _tag(cfg, req)
    backend = firewall.backend_for(cfg.backend, "portmap")
    ports.publish(backend, tag, rules, lambda existing: ports.conflicts(cfg.mappings, tag, existing))
    if cfg.snat and any(a.version == 4 for a in addresses):
        try:
            _enable_route_localnet(prev)
        except errors.CniError:
            backend.remove([tag])
            raise
    return prev


def cmd_del(req: skel.Request) -> None:
    """Remove this attachment's rules by tag: needs neither the mappings (which may be stale) nor prevResult."""
    cfg = _config(req)
    firewall.backend_for(cfg.backend, "portmap").remove([_tag(cfg, req)])


def cmd_check(req: skel.Request) -> None:
    cfg = _config(req)
    prev = _prev(req)
    expected = {firewall.comment_for(_tag(cfg, req), r) for r in rules_for(cfg, container_ips(prev, req.ifname))}
    present = {r.comment for r in firewall.backend_for(cfg.backend, "portmap").rules(_tag(cfg, req) + " ")}
    missing = sorted(expected - present)
    if missing:
        raise errors.CniError(f"port mapping rules are missing: {missing}", code=codes.STATE_DIFFERS)


def cmd_gc(req: skel.Request) -> None:
    """Remove the rules of every attachment of this network that the runtime no longer lists."""
    if req.valid_attachments is None:
        return
    cfg = _config(req)
    keep = {firewall.attachment_tag(cfg.name, a.container_id, a.ifname) for a in req.valid_attachments}
    firewall.gc(firewall.backend_for(cfg.backend, "portmap"), cfg.name, keep)


HANDLERS = skel.Handlers(add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc,
                         config=_parse)


def main() -> int:
    return skel.main(HANDLERS, about="berth-portmap: host port mapping CNI plugin")
