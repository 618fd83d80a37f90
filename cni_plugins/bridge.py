"""berth-bridge: a drop-in for the reference ``bridge`` CNI plugin.

The entry is a dispatcher: parse the config once (:mod:`bridge_config`), compute the desired state
(:mod:`bridge_plan`), make it real through netlink (:mod:`link_ops`) with an undo stack, and answer in the spec's
terms. Handlers touch no process-wide state, so a long-lived daemon can run them in worker threads.
"""
from __future__ import annotations

import threading

from cni_plugins import codes, errors, invoke, skel
from datapath import firewall, link_ops, netns, rtnl
from cni_plugins.bridge_config import BridgeConfig, parse, parse_mac
from cni_plugins.bridge_plan import AddPlan, build_result, check_problems, plan_add
from cni_plugins.types import Result
from ipam.record import replace

STATE_DIFFERS = codes.STATE_DIFFERS  # CHECK: the attachment is not what prevResult says


def _parse(req: skel.Request) -> BridgeConfig:
    return parse(req.config, req.cni_version)


def _config(req: skel.Request) -> BridgeConfig:
    return skel.plugin_config(req, _parse)


def _ipam(cfg: BridgeConfig, command: str, req: skel.Request) -> Result | None:
    """Run IPAM (in process when it is Berth's own, else exec'd from CNI_PATH) with the whole network config."""
    return invoke.delegate(cfg.ipam["type"], command, req.config, req)


def _ipam_speaks(cfg: BridgeConfig, command: str, req: skel.Request) -> bool:
    """GC and STATUS exist from spec 1.1.0 on: forward them only to an IPAM plugin that knows that version."""
    plugin_type = cfg.ipam["type"]
    if plugin_type in invoke.IN_PROCESS:
        return True
    import json
    import subprocess

    executable = invoke.find_plugin(plugin_type, req.path)
    proc = subprocess.run([executable], input=b"", env={**req.env, "CNI_COMMAND": "VERSION"},
                          capture_output=True, timeout=10, check=False)
    try:
        return "1.1.0" in json.loads(proc.stdout).get("supportedVersions", ())
    except (ValueError, AttributeError):
        return False


def _tag(cfg: BridgeConfig, req: skel.Request) -> str:
    return firewall.attachment_tag(cfg.name, req.container_id, req.ifname)


def _masquerade_rules(plan: AddPlan) -> list[firewall.Rule]:
    return [firewall.Masquerade(source=a.ip, subnet=a.network) for a in plan.masquerade]


def cmd_add(req: skel.Request) -> Result:
    cfg = _config(req)
    mac = parse_mac(req.runtime.mac, "mac") if req.runtime.mac else None
    if not netns.exists(req.netns):
        raise errors.InvalidEnvironment(f"failed to open netns {req.netns!r}")
    undo = link_ops.Undo()
    ipam_result = None
    try:
        if cfg.ipam is not None:
            ipam_result = _ipam(cfg, "ADD", req)
            undo.push(lambda: _ipam(cfg, "DEL", req))
            if not ipam_result.ips:
                raise errors.CniError("IPAM plugin returned missing IP config", code=codes.DELEGATE_FAILED)
        plan = plan_add(cfg, req.ifname, link_ops.new_host_veth_name(), mac, ipam_result)
        return _apply(cfg, req, plan, undo)
    except BaseException:
        undo.unwind()
        raise


def _apply(cfg: BridgeConfig, req: skel.Request, plan: AddPlan, undo: link_ops.Undo) -> Result:
    with rtnl.Rtnl() as nl:
        bridge = link_ops.ensure_bridge(nl, plan.bridge)
        if plan.bridge.gateway_addresses:
            link_ops.ensure_gateway_addresses(nl, bridge.index, plan.bridge)
        host, bridge = link_ops.create_veth(nl, req.netns, plan.port, bridge.index, undo)
        link_ops.attach_port(nl, host.index, plan.port)
    container_mac = link_ops.configure_container(req.netns, host.peer_index, plan.port, plan.container,
                                                 wait_dad=cfg.enable_dad)
    link_ops.write_host_sysctls(plan.host_sysctls)
    tag = _tag(cfg, req) if plan.masquerade or cfg.macspoofchk else ""
    if plan.masquerade:
        backend = firewall.backend_for(cfg.ip_masq_backend, "nat")
        backend.add(tag, _masquerade_rules(plan))
        undo.push(lambda: backend.remove([tag]))
    if cfg.macspoofchk:
        spoof = firewall.backend_for("nftables", "macspoof")
        spoof.add(tag, [firewall.MacSpoofCheck(host_ifname=host.name, mac=container_mac)])
        undo.push(lambda: spoof.remove([tag]))
    if host.name != plan.port.host_name:  # the drawn name was taken and create_veth chose another
        plan = replace(plan, port=replace(plan.port, host_name=host.name))
    return build_result(cfg, plan, bridge_mac=bridge.mac, host_mac=host.mac, container_mac=container_mac,
                        netns=req.netns)


def cmd_del(req: skel.Request) -> None:
    """Idempotent: a missing namespace, link or rule is success; the address is always released.

    Removing a link and removing firewall rules each wait in the kernel for an RCU grace period (~15 ms here), so
    when there are rules to remove they go on a helper thread while the link is deleted; DEL returns when both
    are done, with the first error."""
    cfg = _config(req)
    if cfg.ipam is not None:
        _ipam(cfg, "DEL", req)
    rules = None
    if cfg.ip_masq or cfg.macspoofchk:
        tag = _tag(cfg, req)
        rules = _Background(lambda: _remove_rules(cfg, tag))
    try:
        link_ops.delete_container_link(req.netns, req.ifname)
    finally:
        if rules is not None:
            rules.result()


def _remove_rules(cfg: BridgeConfig, tag: str) -> None:
    if cfg.ip_masq:
        firewall.backend_for(cfg.ip_masq_backend, "nat").remove([tag])
    if cfg.macspoofchk:
        firewall.backend_for("nftables", "macspoof").remove([tag])


class _Background:
    """A call on its own thread; :meth:`result` waits for it and raises what it raised."""

    def __init__(self, call) -> None:
        self._error: BaseException | None = None
        self._call = call
        self._thread = threading.Thread(target=self._run, name="berth-del-rules", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            self._error = exc

    def result(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def cmd_check(req: skel.Request) -> None:
    cfg = _config(req)
    if req.prev_result is None:
        raise errors.InvalidConfig("required prevResult missing")
    if cfg.ipam is not None:
        _ipam(cfg, "CHECK", req)
    if not netns.exists(req.netns):
        raise errors.InvalidEnvironment(f"failed to open netns {req.netns!r}")
    host_names = tuple(i.name for i in req.prev_result.interfaces if not i.sandbox)
    observed = link_ops.observe(req.netns, req.ifname, tuple(dict.fromkeys((cfg.bridge, *host_names))))
    problems = check_problems(cfg, req.prev_result, req.ifname, req.netns, observed)
    if cfg.ip_masq:
        tag = _tag(cfg, req)
        found = firewall.backend_for(cfg.ip_masq_backend, "nat").rules(tag + " ")
        if not found and req.prev_result.ips:
            problems.append("masquerade rules are missing")
    if problems:
        raise errors.CniError("attachment differs from prevResult: " + "; ".join(problems), code=STATE_DIFFERS)


def cmd_gc(req: skel.Request) -> None:
    """Free the NAT rules of every attachment the runtime no longer lists, then let IPAM do the same."""
    cfg = _config(req)
    valid = req.valid_attachments or ()
    keep = {firewall.attachment_tag(cfg.name, a.container_id, a.ifname) for a in valid}
    if req.valid_attachments is not None:
        firewall.gc(firewall.backend_for(cfg.ip_masq_backend, "nat"), cfg.name, keep)
        if cfg.macspoofchk:
            firewall.gc(firewall.backend_for("nftables", "macspoof"), cfg.name, keep)
    if cfg.ipam is not None and _ipam_speaks(cfg, "GC", req):
        _ipam(cfg, "GC", req)


def cmd_status(req: skel.Request) -> None:
    cfg = _config(req)
    if cfg.ipam is not None and _ipam_speaks(cfg, "STATUS", req):
        _ipam(cfg, "STATUS", req)


HANDLERS = skel.Handlers(add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc, status=cmd_status,
                         config=_parse)


def main() -> int:
    return skel.main(HANDLERS, about="berth-bridge: bridge CNI plugin")
