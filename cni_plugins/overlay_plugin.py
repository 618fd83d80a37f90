"""berth-overlay: flannel's CNI plugin for Berth's overlay — the host's share of the network, handed to the bridge.

The daemon (``berth overlay``) publishes the host's subnet in the subnet file; this plugin turns it into a
berth-bridge config (berth-ipam over the subnet, the overlay's MTU, a route to the whole overlay network) and
delegates. The delegated config is saved per attachment under ``dataDir`` so DEL and CHECK use exactly what ADD used
even after the subnet file changed, and GC can release attachments the runtime forgot. Unlike flannel, CHECK checks
(the address is in this host's current subnet, the bridge exists) and GC/STATUS are real.

Config keys (flannel's): ``subnetFile``, ``dataDir``, ``delegate`` (base of the bridge config, ``type`` defaults to
berth-bridge), ``ipam`` (base of the delegated IPAM config, ``type`` defaults to berth-ipam). Unless ``delegate`` says
otherwise the bridge is the containers' (default) gateway, uses the overlay's MTU, and masquerades only when the
daemon does not (``FLANNEL_IPMASQ``).

Cluster mode: when ``ipam`` has ``store``, addresses come from cluster IPAM's pool (``ipam.ranges``, kept as given)
instead of the host's subnet, and the daemon routes every host's blocks (``overlay.blocks``). The gateway is the
pool's gateway (its first address unless ``ipam.ranges`` says otherwise), the same address on every host's bridge:
it never leaves a host, because the overlay routes at layer 3 and peers' neighbour entries name VTEPs only. A
container's address carries the pool's prefix, so it ARPs for containers on other hosts; the bridge answers for
them (``proxy_arp`` on the bridge, set here after ADD: the kernel answers only for addresses routed out of another
device, so local containers still answer for themselves). IPv6 has no such answer for a whole prefix (proxy NDP
answers only for addresses listed one by one, and every ADD anywhere would change every host's list), so the
bridge routes the container's IPv6 subnet via the gateway instead (berth-bridge's ``ipv6SubnetViaGateway``, on by
default here): every pool address, local or remote, goes through the bridge, which routes it on (a local one back
onto the bridge, after which the host's redirect lets the container go direct). The pool must not overlap the
overlay's own network, and the bridge masquerades traffic leaving the pool (``ipMasq`` defaults to true; the
daemon's rules cover the overlay network only).
"""
from __future__ import annotations

import ipaddress
import json
import os
import socket
import stat
import tempfile
from collections.abc import Mapping

from cni_plugins import codes, errors, invoke, skel
from cni_plugins.config_fields import path_field
from cni_plugins.types import Result
from overlay import subnetfile
from ipam.record import Record, replace

DEFAULT_DATA_DIR = "/var/lib/cni/berth-overlay"
DEFAULT_DELEGATE = "berth-bridge"
DEFAULT_IPAM = "berth-ipam"
MAX_SUBNET_FILE = 64 << 10  # bytes: a subnet file is a handful of KEY=value lines
NOT_IPAM = ("berth-bridge", "berth-overlay", "berth-portmap", "berth-register")
STATE_DIFFERS = codes.STATE_DIFFERS  # CHECK: the attachment no longer matches the host


class OverlayConfig(Record):
    subnet_file: str
    data_dir: str
    delegate: Mapping[str, object]
    ipam: Mapping[str, object]


def parse(config: Mapping[str, object]) -> OverlayConfig:
    """Every key this plugin reads, checked before anything is read or written; the bridge and IPAM check the
    rest of what is delegated to them."""
    def path(key: str, default: str) -> str:
        return path_field(config, key, default)

    def mapping(key: str) -> Mapping[str, object]:
        value = config.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise errors.InvalidConfig(f"{key}: must be an object, not {value!r}")
        if "type" in value and (not isinstance(value["type"], str) or not value["type"]):
            raise errors.InvalidConfig(f"{key}.type: must name a plugin, not {value['type']!r}")
        return value

    delegate, ipam = mapping("delegate"), mapping("ipam")
    if delegate.get("type") == "berth-overlay":
        raise errors.InvalidConfig("delegate.type: berth-overlay cannot delegate to itself")
    if ipam.get("type") in NOT_IPAM:
        raise errors.InvalidConfig(f"ipam.type: {ipam['type']} is not an IPAM plugin")
    routes = ipam.get("routes")
    if routes is not None and (not isinstance(routes, list) or not all(isinstance(r, Mapping) for r in routes)):
        raise errors.InvalidConfig(f"ipam.routes: must be a list of route objects, not {routes!r}")
    return OverlayConfig(path("subnetFile", subnetfile.DEFAULT_SUBNET_FILE), path("dataDir", DEFAULT_DATA_DIR),
                         delegate, ipam)


def _parse(req: skel.Request) -> OverlayConfig:
    return parse(req.config)


def _config(req: skel.Request) -> OverlayConfig:
    return skel.plugin_config(req, _parse)


def cluster_mode(cfg: OverlayConfig) -> bool:
    """Addresses from cluster IPAM's pool (``ipam.store`` set) rather than this host's subnet."""
    return cfg.ipam.get("store") is not None


def delegate_config(cfg: OverlayConfig, settings: subnetfile.SubnetFile, req: skel.Request) -> dict[str, object]:
    """The bridge's network config for this host's subnet, or for the cluster pool in cluster mode (pure)."""
    conf: dict[str, object] = {k: v for k, v in cfg.delegate.items()}
    conf.setdefault("type", DEFAULT_DELEGATE)
    conf["name"] = req.name
    conf["cniVersion"] = req.cni_version
    conf.setdefault("mtu", settings.mtu)
    conf.setdefault("isGateway", True)
    conf.setdefault("isDefaultGateway", True)  # traffic leaving the overlay goes via the host, masqueraded there
    if cluster_mode(cfg):
        conf.setdefault("ipMasq", True)  # the daemon's rules know the overlay network, not the pool
        conf.setdefault("ipv6SubnetViaGateway", True)  # no proxy NDP for a prefix: see the module's docstring
        ipam = {k: v for k, v in cfg.ipam.items()}
        ipam.setdefault("type", DEFAULT_IPAM)
        conf["ipam"] = ipam
        for key in ("runtimeConfig", "args"):
            if key in req.config:
                conf[key] = req.config[key]
        return conf
    conf.setdefault("ipMasq", not settings.ipmasq)  # the daemon masquerades already when FLANNEL_IPMASQ is true
    ipam: dict[str, object] = {k: v for k, v in cfg.ipam.items() if k not in ("subnet", "rangeStart", "rangeEnd")}
    ipam.setdefault("type", DEFAULT_IPAM)
    ipam["ranges"] = [[{"subnet": str(settings.subnet.network)}]]
    routes = list(ipam.get("routes") or [])
    if not any(isinstance(r, Mapping) and r.get("dst") == str(settings.network) for r in routes):
        routes.append({"dst": str(settings.network)})
    ipam["routes"] = routes
    conf["ipam"] = ipam
    for key in ("runtimeConfig", "args"):
        if key in req.config:
            conf[key] = req.config[key]
    return conf


# -- saved delegate configs ------------------------------------------------------------------------------------

def _saved_path(cfg: OverlayConfig, container_id: str, ifname: str) -> str:
    return os.path.join(cfg.data_dir, f"{container_id}-{ifname}.json")


def _save(cfg: OverlayConfig, req: skel.Request, conf: Mapping[str, object]) -> None:
    try:
        os.makedirs(cfg.data_dir, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cfg.data_dir, prefix=".tmp-")
        with os.fdopen(fd, "w") as handle:
            json.dump({"containerID": req.container_id, "ifname": req.ifname, "delegate": conf}, handle)
        os.replace(tmp, _saved_path(cfg, req.container_id, req.ifname))
    except OSError as exc:
        raise errors.IOFailure(f"saving the delegated config under {cfg.data_dir}: {exc}") from None


def _load(cfg: OverlayConfig, container_id: str, ifname: str) -> dict[str, object] | None:
    try:
        with open(_saved_path(cfg, container_id, ifname)) as handle:
            return json.load(handle)["delegate"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise errors.IOFailure(f"reading the saved config of {container_id}/{ifname}: {exc}") from None


def _forget(cfg: OverlayConfig, container_id: str, ifname: str) -> None:
    try:
        os.unlink(_saved_path(cfg, container_id, ifname))
    except FileNotFoundError:
        pass


def _saved_attachments(cfg: OverlayConfig) -> list[tuple[str, str, dict[str, object]]]:
    found = []
    try:
        names = sorted(os.listdir(cfg.data_dir))
    except FileNotFoundError:
        return []
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            with open(os.path.join(cfg.data_dir, name)) as handle:
                doc = json.load(handle)
            found.append((doc["containerID"], doc["ifname"], doc["delegate"]))
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            continue
    return found


def _read_subnet_file(path: str) -> subnetfile.SubnetFile:
    """The subnet file, read as a bounded regular file (never a FIFO or a device that blocks or never ends)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise errors.IOFailure(f"subnetFile {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise errors.InvalidConfig(f"subnetFile {path}: is not a regular file")
        data = handle.read(MAX_SUBNET_FILE + 1)
    if len(data) > MAX_SUBNET_FILE:
        raise errors.DecodeFailure(f"subnetFile {path}: larger than {MAX_SUBNET_FILE} bytes")
    try:
        return subnetfile.parse(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise errors.DecodeFailure(f"subnetFile {path}: is not UTF-8 text") from None
    except subnetfile.SubnetFileError as exc:
        raise errors.DecodeFailure(f"subnetFile {path}: {exc}") from None


def _settings(cfg: OverlayConfig) -> subnetfile.SubnetFile:
    try:
        return _read_subnet_file(cfg.subnet_file)
    except FileNotFoundError:
        raise errors.TryAgainLater(f"no subnet file at {cfg.subnet_file}: is `berth overlay` running here?",
                                   "the overlay daemon writes it once it holds this host's subnet lease") from None


def _settings_if_present(cfg: OverlayConfig) -> subnetfile.SubnetFile | None:
    """The subnet file for DEL, GC and STATUS, which go on without one (an unreadable file counts as none)."""
    try:
        return _read_subnet_file(cfg.subnet_file)
    except (FileNotFoundError, errors.CniError):
        return None


def _with_prev_result(conf: dict[str, object], req: skel.Request) -> dict[str, object]:
    if req.config.get("prevResult") is not None:
        conf = {**conf, "prevResult": req.config["prevResult"]}
    return conf


# -- handlers ---------------------------------------------------------------------------------------------------

def _check_delegated(conf: Mapping[str, object], req: skel.Request) -> None:
    """Parse what is about to be delegated when the delegates are Berth's own, so a bad field deep in it is
    refused before this plugin saves anything (the delegates parse it again; parsing is pure)."""
    from cni_plugins import bridge_config
    from ipam.config import parse_ipam_config
    from ipam.errors import ConfigError

    if conf["type"] == DEFAULT_DELEGATE:
        bridge_config.parse(conf, req.cni_version)
    if conf["ipam"].get("type") == DEFAULT_IPAM:
        try:
            parse_ipam_config(conf["ipam"], req.name)
        except ConfigError as exc:
            raise errors.InvalidConfig(str(exc)) from None


def cmd_add(req: skel.Request) -> Result:
    cfg = _config(req)
    conf = delegate_config(cfg, _settings(cfg), req)
    _check_delegated(conf, req)
    _save(cfg, req, conf)
    try:
        result = invoke.delegate(conf["type"], "ADD", conf, req)
        if cluster_mode(cfg):
            answer_for_remote_blocks(conf.get("bridge") or "cni0")
        return result
    except BaseException:
        _forget(cfg, req.container_id, req.ifname)
        raise


def answer_for_remote_blocks(bridge: str) -> None:
    """Cluster mode: the bridge answers containers' ARP for addresses routed elsewhere (other hosts' blocks), at
    once (``proxy_delay`` 0; the default delays each answer up to 0.8 s). Both sysctls are per namespace."""
    settings = {f"/proc/sys/net/ipv4/conf/{bridge}/proxy_arp": "1",
                f"/proc/sys/net/ipv4/neigh/{bridge}/proxy_delay": "0"}
    try:
        for path, value in settings.items():
            with open(path, "w") as handle:
                handle.write(value + "\n")
    except OSError as exc:
        raise errors.IOFailure(f"bridge {bridge}: enabling proxy ARP for the cluster pool: {exc}") from None


def cmd_del(req: skel.Request) -> None:
    """Idempotent: with no saved config (ADD never ran, or DEL already did) the current subnet file stands in,
    so the bridge and IPAM still release whatever they hold; with neither there is nothing to undo."""
    cfg = _config(req)
    conf = _load(cfg, req.container_id, req.ifname)
    if conf is None:
        settings = _settings_if_present(cfg)
        if settings is None:
            return
        conf = delegate_config(cfg, settings, req)
    invoke.delegate(conf["type"], "DEL", _with_prev_result(conf, req), req)
    _forget(cfg, req.container_id, req.ifname)


def cmd_check(req: skel.Request) -> None:
    cfg = _config(req)
    if req.prev_result is None:
        raise errors.InvalidConfig("required prevResult missing")
    conf = _load(cfg, req.container_id, req.ifname)
    if conf is None:
        raise errors.CniError(f"no saved config for {req.container_id}/{req.ifname}: was ADD run here?",
                              code=STATE_DIFFERS)
    settings = _settings(cfg)
    subnet = settings.subnet.network
    for ip in [] if cluster_mode(cfg) else req.prev_result.ips:  # cluster IPAM's CHECK judges pool addresses
        address = ipaddress.ip_interface(str(ip.address)).ip
        if address.version == 4 and address not in subnet:
            raise errors.CniError(f"address {address} is outside this host's subnet {subnet}",
                                  "the host's subnet lease changed since ADD", code=STATE_DIFFERS)
    bridge = conf.get("bridge") or "cni0"
    try:
        socket.if_nametoindex(bridge)
    except OSError:
        raise errors.CniError(f"bridge {bridge!r} is missing on this host", code=STATE_DIFFERS) from None
    invoke.delegate(conf["type"], "CHECK", _with_prev_result(conf, req), req)


def cmd_gc(req: skel.Request) -> None:
    """DEL every saved attachment the runtime no longer lists, then let the bridge and IPAM collect the rest."""
    cfg = _config(req)
    failures = []
    if req.valid_attachments is not None:
        valid = {(a.container_id, a.ifname) for a in req.valid_attachments}
        for container_id, ifname, conf in _saved_attachments(cfg):
            if (container_id, ifname) in valid:
                continue
            env = {k: v for k, v in req.env.items() if k != "CNI_NETNS"}
            env.update(CNI_COMMAND="DEL", CNI_CONTAINERID=container_id, CNI_IFNAME=ifname)
            try:
                invoke.delegate(conf["type"], "DEL", conf, replace(req, env=env))
                _forget(cfg, container_id, ifname)
            except errors.CniError as exc:
                failures.append(f"{container_id}/{ifname}: {exc}")
    settings = _settings_if_present(cfg)
    if settings is not None:
        conf = delegate_config(cfg, settings, req)
        for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
            if key in req.config:
                conf[key] = req.config[key]
        invoke.delegate(conf["type"], "GC", conf, req)
    if failures:
        raise errors.CniError("GC could not release every stale attachment", "; ".join(failures),
                              code=codes.GC_INCOMPLETE)


def cmd_status(req: skel.Request) -> None:
    cfg = _config(req)
    settings = _settings_if_present(cfg)
    if settings is None:
        raise errors.NotAvailable(f"this host holds no overlay subnet lease (no readable {cfg.subnet_file})",
                                  "start `berth overlay` on this host")
    conf = delegate_config(cfg, settings, req)
    invoke.delegate(conf["type"], "STATUS", conf, req)


HANDLERS = skel.Handlers(add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc, status=cmd_status,
                         config=_parse)


def main() -> int:
    return skel.main(HANDLERS, about="berth-overlay: the host's overlay subnet, delegated to berth-bridge")
