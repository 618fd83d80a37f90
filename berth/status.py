"""``berth status``: what the datastore says the cluster is — hosts, endpoints, address use — as tables, one JSON
document, or a picture of the topology.

One read of the store (``collect``), the daemons' health endpoints asked once (``probe_daemons``), then pure views of the snapshot it returns (``render_tables``, ``as_document``,
``as_graph``), so every view shows the same revision and each is tested without a store.

The JSON document (``--json``), version 1; keys are stable, new keys may be added:

- ``version`` (1), ``revision`` (the store revision read), ``overlay`` (``network``, ``subnetLen``, ``vni``,
  ``port``; null when no overlay network is configured)
- ``agents``: one per running discovery agent: ``host``, ``address``, ``http`` (its Consul API, "" when it
  serves none), ``acl`` (``allow``: any local user may write through the API; ``deny``; ``none``: no HTTP API),
  ``metrics`` (its ``--metrics`` address, "" when it serves none)
- ``hosts``: one per subnet lease: ``subnet``, ``underlay``, ``vtepMac``, ``vni``, ``reserved``,
  ``leaseSecondsLeft`` (seconds until the lease expires unless its daemon keeps it alive; null when reserved or
  when the store no longer knows the lease)
- ``daemons``: one per operations endpoint asked: the ``--metrics`` address each agent records, and every
  ``--daemon NAME=ADDR:PORT``: ``name``, ``address``, ``healthy`` (``/health`` answered 200), ``ready``
  (``/ready`` answered 200; null when the daemon did not answer at all), ``detail`` (what failed, or the checks
  that did not pass)
- ``endpoints``: ``id``, ``name``, ``aliases``, ``addresses``, ``host`` (the agent that wrote it), ``network``,
  ``containerId`` (empty for services registered over HTTP), ``ports`` (``"8080->80/tcp"`` or ``"80/tcp"``),
  ``health``
- ``ipam``: per overlay subnet: ``subnet``, ``underlay``, ``used`` (endpoint addresses inside it), ``capacity``
  (addresses a container can get: all but network, gateway and broadcast)
- ``clusterIpam``: per cluster IPAM network and host (``berth ipam check`` has the detail): ``network``,
  ``host``, ``blocks`` (claimed), ``held`` (addresses it holds, borrowed ones too), ``capacity`` (addresses in its
  blocks), ``live`` (its liveness key or an agent of that name is there), ``departedSince`` (when a reclaim pass
  first saw it gone, Unix seconds; null)
- ``problems``: records that could not be read, as ``"<key>: <why>"``
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from typing import Any

from berth.daemon_probe import DaemonStatus, daemon_targets, probe_daemons

DEFAULT_STORE = "sqlite:////var/lib/berth/berth.db"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=os.environ.get("BERTH_STORE", DEFAULT_STORE),
                        help=f"datastore URL (default $BERTH_STORE or {DEFAULT_STORE})")
    parser.add_argument("--overlay-prefix", default=None, help="the overlay's key prefix (default /berth/overlay)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--graph", metavar="FILE", default=None,
                        help="also draw the topology to FILE (.svg, .png or .dot; needs graphviz's dot)")
    parser.add_argument("--daemon", metavar="NAME=ADDR:PORT", action="append", default=[],
                        help="also ask this daemon's --metrics endpoint for /health and /ready (repeatable; "
                             "agents' own addresses are found in the store)")


@dataclass(frozen=True)
class HostStatus:
    subnet: ipaddress.IPv4Network
    underlay: str
    vtep_mac: str
    vni: int
    reserved: bool
    lease_left: float | None = None  # seconds; None when reserved or the store no longer knows the lease


@dataclass(frozen=True)
class EndpointStatus:
    id: str
    name: str
    aliases: tuple[str, ...]
    addresses: tuple[str, ...]
    host: str
    network: str
    container_id: str
    ports: tuple[str, ...]
    health: str


@dataclass(frozen=True)
class SubnetUsage:
    subnet: ipaddress.IPv4Network
    underlay: str
    used: int
    capacity: int


@dataclass(frozen=True)
class ClusterIpamUsage:
    network: str
    host: str
    blocks: int
    held: int
    capacity: int
    live: bool
    departed_since: float | None = None


@dataclass(frozen=True)
class ClusterStatus:
    revision: int
    overlay: dict[str, Any] | None
    hosts: tuple[HostStatus, ...]
    endpoints: tuple[EndpointStatus, ...]
    problems: tuple[str, ...]
    agents: tuple = ()  # discovery.publish.AgentRecord, one per running agent
    daemons: tuple[DaemonStatus, ...] = ()
    cluster_ipam: tuple[ClusterIpamUsage, ...] = ()

    @property
    def usage(self) -> tuple[SubnetUsage, ...]:
        rows = []
        for host in self.hosts:
            used = {a for e in self.endpoints for a in e.addresses if _inside(a, host.subnet)}
            rows.append(SubnetUsage(host.subnet, host.underlay, len(used), max(host.subnet.num_addresses - 3, 0)))
        return tuple(rows)

    def host_of(self, endpoint: EndpointStatus) -> HostStatus | None:
        """The host whose subnet holds one of the endpoint's addresses (containers on the overlay)."""
        for host in self.hosts:
            if any(_inside(a, host.subnet) for a in endpoint.addresses):
                return host
        return None


ACL_TEXT = {"allow": "none (default allow)", "deny": "tokens (default deny)", "none": "no HTTP API"}


def _inside(address: str, subnet: ipaddress.IPv4Network) -> bool:
    try:
        return ipaddress.ip_address(address) in subnet
    except ValueError:
        return False


def _port_text(port) -> str:
    inner = f"{port.port}/{port.protocol}"
    return f"{port.host_port}->{inner}" if port.host_port else inner


def collect(store, overlay_prefix: str | None = None) -> ClusterStatus:
    """Read overlay configuration, subnet leases and endpoint records from one store revision."""
    from discovery.model import ENDPOINTS_PREFIX, EndpointRecord, InvalidRecord
    from discovery.publish import AGENTS_PREFIX, AgentRecord
    from overlay.config import DEFAULT_PREFIX, ConfigError, parse_config
    from overlay.lease import LeaseFormatError, config_key, parse_lease, subnets_prefix

    prefix = overlay_prefix or DEFAULT_PREFIX
    problems: list[str] = []
    overlay = None
    config = store.get(config_key(prefix))
    if config is not None:
        try:
            net = parse_config(config.value)
            overlay = {"network": str(net.network), "subnetLen": net.subnet_len, "vni": net.vni, "port": net.port}
        except ConfigError as exc:
            problems.append(f"{config.key}: {exc}")
    leases, revision = store.get_prefix(subnets_prefix(prefix))
    hosts = []
    for kv in leases:
        try:
            lease = parse_lease(kv.key, kv.value, prefix)
        except LeaseFormatError as exc:
            problems.append(str(exc))
            continue
        left = None if lease.reserved or not kv.lease else store.lease_time_left(kv.lease)
        hosts.append(HostStatus(lease.subnet, str(lease.public_ip), lease.vtep_mac, lease.vni, lease.reserved,
                                left))
    records, revision = store.get_prefix(ENDPOINTS_PREFIX)
    endpoints = []
    for kv in records:
        try:
            record = EndpointRecord.from_json(kv.value)
        except InvalidRecord as exc:
            problems.append(f"{kv.key}: {exc}")
            continue
        endpoints.append(EndpointStatus(record.id, record.name, record.aliases, record.addresses, record.host,
                                        record.network, record.container_id,
                                        tuple(_port_text(p) for p in record.ports), record.health.value))
    agents = []
    for kv in store.get_prefix(AGENTS_PREFIX)[0]:
        try:
            agents.append(AgentRecord.from_json(kv.value))
        except ValueError as exc:
            problems.append(f"{kv.key}: {exc}")
    hosts.sort(key=lambda h: (ipaddress.ip_address(h.underlay), h.subnet))
    endpoints.sort(key=lambda e: (e.name, e.host, e.id))
    agents.sort(key=lambda a: a.host)
    return ClusterStatus(revision, overlay, tuple(hosts), tuple(endpoints), tuple(problems), tuple(agents),
                         cluster_ipam=collect_cluster_ipam(store, problems))


def collect_cluster_ipam(store, problems: list[str]) -> tuple[ClusterIpamUsage, ...]:
    """Cluster IPAM per network and host, judged as ``berth ipam check`` judges it (one read of its keys)."""
    import time

    from discovery.ipam_liveness import read_liveness
    from ipam.check import IPAM_PREFIX, judge
    from ipam.reclaim import departure_marks

    kvs, revision = store.get_prefix(IPAM_PREFIX)
    if not kvs:
        return ()
    liveness = read_liveness(store, kvs)
    report = judge(kvs, revision, liveness, time.time(), min_age=0.0)
    problems.extend(report.problems)
    marks = departure_marks(kvs)
    rows: dict[tuple[str, str], list[int]] = {}
    for usage in report.blocks:
        row = rows.setdefault((usage.network, usage.owner), [0, 0, 0])
        row[0] += 1
        row[2] += usage.capacity
    for held in report.held:
        rows.setdefault((held.network, held.record.host), [0, 0, 0])[1] += 1
    return tuple(ClusterIpamUsage(network, host, blocks, held, capacity, host in liveness.hosts,
                                  marks[host][0] if host in marks else None)
                 for (network, host), (blocks, held, capacity) in sorted(rows.items()))


def _lease_text(host: HostStatus) -> str:
    if host.reserved:
        return "reserved"
    return "expired" if host.lease_left is None else f"{host.lease_left:.0f} s left"


# -- views (pure) ---------------------------------------------------------------------------------------------------

def as_document(status: ClusterStatus) -> dict[str, Any]:
    return {
        "version": 1,
        "revision": status.revision,
        "overlay": status.overlay,
        "agents": [{"host": a.host, "address": a.address, "http": a.http, "acl": a.acl, "metrics": a.metrics}
                   for a in status.agents],
        "hosts": [{"subnet": str(h.subnet), "underlay": h.underlay, "vtepMac": h.vtep_mac, "vni": h.vni,
                   "reserved": h.reserved,
                   "leaseSecondsLeft": None if h.lease_left is None else round(h.lease_left, 1)}
                  for h in status.hosts],
        "daemons": [{"name": d.name, "address": d.address, "healthy": d.healthy, "ready": d.ready,
                     "detail": d.detail} for d in status.daemons],
        "endpoints": [{"id": e.id, "name": e.name, "aliases": list(e.aliases), "addresses": list(e.addresses),
                       "host": e.host, "network": e.network, "containerId": e.container_id, "ports": list(e.ports),
                       "health": e.health} for e in status.endpoints],
        "ipam": [{"subnet": str(u.subnet), "underlay": u.underlay, "used": u.used, "capacity": u.capacity}
                 for u in status.usage],
        "clusterIpam": [{"network": c.network, "host": c.host, "blocks": c.blocks, "held": c.held,
                         "capacity": c.capacity, "live": c.live, "departedSince": c.departed_since}
                        for c in status.cluster_ipam],
        "problems": list(status.problems),
    }


def table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as aligned columns, a rule under the first (the heading)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def render_tables(status: ClusterStatus) -> list[str]:
    out = []
    if status.overlay:
        o = status.overlay
        out.append(f"overlay {o['network']} (/{o['subnetLen']} per host, VXLAN VNI {o['vni']}, UDP {o['port']})")
    else:
        out.append("no overlay network configured")
    out.append("")
    if status.hosts:
        out += table([("host (underlay)", "subnet", "VTEP MAC", "VNI", "lease"),
                      *((h.underlay, str(h.subnet), h.vtep_mac or "-", str(h.vni), _lease_text(h))
                        for h in status.hosts)])
    else:
        out.append("no hosts (no subnet leases)")
    out.append("")
    if status.agents:
        out += table([("agent", "address", "Consul API", "ACL"),
                      *((a.host, a.address, a.http or "-", ACL_TEXT.get(a.acl, a.acl)) for a in status.agents)])
        open_apis = [a.host for a in status.agents if a.acl == "allow"]
        if open_apis:
            out.append(f"warning: {', '.join(open_apis)} run without ACLs: any local user may register and "
                       "deregister services there (berth agent --acl-default-policy deny)")
    else:
        out.append("no discovery agents running")
    out.append("")
    if status.daemons:
        out += table([("daemon", "metrics at", "health", "ready"),
                      *((d.name, d.address, "ok" if d.healthy else "no answer" if d.ready is None else "failing",
                         "yes" if d.ready else ("-" if d.ready is None else f"no: {d.detail}"))
                        for d in status.daemons)])
    else:
        out.append("no daemon health endpoints known (berth agent --metrics, or berth status --daemon NAME=ADDR)")
    out.append("")
    if status.endpoints:
        rows = [("endpoint", "aliases", "addresses", "agent", "network", "ports", "health")]
        rows += [(e.name, ", ".join(e.aliases) or "-", ", ".join(e.addresses) or "-", e.host or "-",
                  e.network or "-", ", ".join(e.ports) or "-", e.health) for e in status.endpoints]
        out += table(rows)
    else:
        out.append("no endpoints")
    if status.usage:
        out.append("")
        out += table([("subnet", "host", "used", "free"),
                      *((str(u.subnet), u.underlay, str(u.used), str(u.capacity - u.used)) for u in status.usage)])
    if status.cluster_ipam:
        out.append("")
        out += table([("cluster IPAM network", "host", "blocks", "held", "capacity", "state"),
                      *((c.network, c.host, str(c.blocks), str(c.held), str(c.capacity),
                         "live" if c.live else "departed" if c.departed_since is not None else "not live")
                        for c in status.cluster_ipam)])
    for problem in status.problems:
        out.append(f"unreadable: {problem}")
    return out


def as_graph(status: ClusterStatus):
    """The topology as a ``graphviz.Graph``: a box per host (underlay address, subnet, VTEP) holding its
    containers, VXLAN links between every pair of hosts, and services that live on no overlay subnet grouped by
    the agent that wrote them."""
    import graphviz

    vni = (status.overlay or {}).get("vni")
    graph = graphviz.Graph("berth", graph_attr={"label": "Berth cluster", "labelloc": "t", "rankdir": "LR",
                                                 "fontname": "Helvetica"},
                           node_attr={"shape": "box", "style": "rounded", "fontname": "Helvetica"},
                           edge_attr={"fontname": "Helvetica"})
    placed: dict[str, list[EndpointStatus]] = {}
    elsewhere: dict[str, list[EndpointStatus]] = {}
    for endpoint in status.endpoints:
        host = status.host_of(endpoint)
        if host is not None:
            placed.setdefault(host.underlay, []).append(endpoint)
        else:
            elsewhere.setdefault(endpoint.host or "unknown agent", []).append(endpoint)
    for index, host in enumerate(status.hosts):
        with graph.subgraph(name=f"cluster_host{index}") as box:
            box.attr(label=f"host {host.underlay}  subnet {host.subnet}", style="rounded")
            box.node(f"vtep{index}", f"VTEP {host.vtep_mac or '-'}", shape="ellipse")
            for n, endpoint in enumerate(placed.get(host.underlay, ())):
                label = "\n".join([endpoint.name, *(f"alias {a}" for a in endpoint.aliases), *endpoint.addresses])
                box.node(f"ep{index}_{n}", label)
                box.edge(f"ep{index}_{n}", f"vtep{index}", style="dotted")
    for a in range(len(status.hosts)):
        for b in range(a + 1, len(status.hosts)):
            graph.edge(f"vtep{a}", f"vtep{b}", label=f"VXLAN VNI {vni}" if vni is not None else "VXLAN",
                       penwidth="2")
    for index, (agent, endpoints) in enumerate(sorted(elsewhere.items())):
        with graph.subgraph(name=f"cluster_agent{index}") as box:
            box.attr(label=f"services of agent {agent}", style="dashed")
            for n, endpoint in enumerate(endpoints):
                box.node(f"svc{index}_{n}", "\n".join([endpoint.name, *endpoint.addresses, *endpoint.ports]))
    return graph


def draw(graph, path: str) -> None:
    """Write the picture; the format follows the file's suffix (.dot writes the graphviz source itself)."""
    suffix = os.path.splitext(path)[1].lstrip(".").lower()
    if suffix == "dot":
        with open(path, "w") as f:
            f.write(graph.source)
        return
    if suffix not in ("svg", "png", "pdf"):
        raise ValueError(f"--graph: {path!r}: the suffix must be .svg, .png, .pdf or .dot")
    dot = shutil.which("dot")
    if dot is None:
        raise ValueError("--graph: graphviz's `dot` is not installed (Debian: apt-get install graphviz)")
    # dot itself rather than graph.pipe(), which cannot bound how long it waits
    done = subprocess.run([dot, f"-T{suffix}", "-o", path], input=graph.source.encode(), capture_output=True,
                          timeout=60)
    if done.returncode != 0:
        raise ValueError(f"--graph: dot failed: {done.stderr.decode(errors='replace').strip()}")


def run(args: argparse.Namespace) -> int:
    from store.api import StoreError, open_store

    try:
        store = open_store(args.store)
        try:
            status = collect(store, args.overlay_prefix)
        finally:
            store.close()
    except (StoreError, ValueError, OSError) as exc:
        print(f"berth status: cannot read {args.store}: {exc}", file=sys.stderr)
        return 1
    try:
        status = replace(status, daemons=probe_daemons(daemon_targets(status, args.daemon)))
    except ValueError as exc:
        print(f"berth status: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(as_document(status), indent=2, sort_keys=True))
    else:
        print("\n".join(render_tables(status)))
    if args.graph:
        try:
            draw(as_graph(status), args.graph)
        except (ValueError, OSError, RuntimeError, subprocess.SubprocessError) as exc:  # graphviz's errors too
            print(f"berth status: {exc}", file=sys.stderr)
            return 1
        if not args.json:
            print(f"\ntopology drawn to {args.graph}")
    return 0
