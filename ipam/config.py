"""host-local's IPAM configuration, parsed once into frozen range sets.

Defaults and validation follow host-local's ``Canonicalize`` (checked against Debian's /usr/lib/cni/host-local):
``rangeStart`` defaults to the subnet's first host, ``rangeEnd`` to the last address (IPv4: the one before the
broadcast), ``gateway`` to the first host; a /31, /32, /127 or /128 is too small; host bits, mixed families inside
a set and overlapping ranges are refused. Messages keep host-local's wording and add the field's path.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from . import paths
from .addresses import IPAddress, IPNetwork
from .errors import ConfigError
from .record import Record


DEFAULT_DATA_DIR = "/var/lib/cni/networks"


class Range(Record):
    """One contiguous pool inside a subnet; ``range_start`` and ``range_end`` are inclusive."""

    subnet: IPNetwork
    range_start: IPAddress
    range_end: IPAddress
    gateway: IPAddress

    @property
    def version(self) -> int:
        return self.subnet.version

    def contains(self, ip: IPAddress) -> bool:
        return (ip.version == self.version and ip in self.subnet
                and self.range_start <= ip <= self.range_end)

    def overlaps(self, other: Range) -> bool:
        if self.version != other.version:
            return False
        return (self.contains(other.range_start) or self.contains(other.range_end)
                or other.contains(self.range_start) or other.contains(self.range_end))

    def __str__(self) -> str:
        return f"{self.range_start}-{self.range_end}"


class RangeSet(Record):
    """Ranges of one family; an attachment gets one address per range set (so two sets give dual stack)."""

    ranges: tuple[Range, ...]

    @property
    def version(self) -> int:
        return self.ranges[0].version

    def contains(self, ip: IPAddress) -> bool:
        return any(r.contains(ip) for r in self.ranges)

    def range_for(self, ip: IPAddress) -> Range | None:
        return next((r for r in self.ranges if r.contains(ip)), None)

    def overlaps(self, other: RangeSet) -> bool:
        return any(a.overlaps(b) for a in self.ranges for b in other.ranges)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.ranges)


class Route(Record):
    dst: IPNetwork
    gw: IPAddress | None = None


class ClusterConfig(Record):
    """Cluster mode (``"store"`` set): blocks claimed per host over the datastore instead of files on disk."""

    store_url: str
    host: str
    block_size_v4: int = 26
    block_size_v6: int = 122
    quarantine: float | None = None              # the pool's (ipam.blocks.PoolPolicy) unless this config names it
    release_departed_after: float | None = None  # likewise: None takes what the stored pool says
    host_ttl: float = 3600.0   # seconds the host's liveness lease lasts without an operation refreshing it

    def block_size(self, version: int) -> int:
        return self.block_size_v4 if version == 4 else self.block_size_v6


class IpamConfig(Record):
    network: str
    range_sets: tuple[RangeSet, ...]
    routes: tuple[Route, ...] = ()
    data_dir: str = DEFAULT_DATA_DIR
    resolv_conf: str | None = None
    cluster: ClusterConfig | None = None


def parse_ip(value: object, field: str) -> IPAddress:
    """An address as Go's ``net.ParseIP`` takes it (no zone); an IPv4-mapped IPv6 address counts as IPv4."""
    if not isinstance(value, str):
        raise ConfigError(f"{field}: expected an IP address string, got {value!r}")
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        raise ConfigError(f"{field}: invalid IP address: {value}") from None
    if ip.version == 6 and ip.scope_id is not None:
        raise ConfigError(f"{field}: invalid IP address: {value}")
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_requested(values: Iterable[str], field: str = "ips") -> tuple[IPAddress, ...]:
    """Requested addresses (``ips`` capability, ``args.cni.ips``, ``CNI_ARGS IP=``); ``a.b.c.d/nn`` is accepted."""
    out = []
    for i, value in enumerate(values):
        text = value.split("/", 1)[0] if isinstance(value, str) else value
        ip = parse_ip(text, f"{field}[{i}]")
        if ip not in out:
            out.append(ip)
    return tuple(out)


def _parse_subnet(value: object, field: str) -> IPNetwork:
    if value is None or value == "":
        raise ConfigError(f"{field}: IP <nil> not v4 nor v6")
    if not isinstance(value, str) or "/" not in value:
        raise ConfigError(f"{field}: invalid CIDR address: {value}")
    try:
        iface = ipaddress.ip_interface(value.strip())
    except ValueError:
        raise ConfigError(f"{field}: invalid CIDR address: {value}") from None
    return iface  # type: ignore[return-value]  # an interface: the caller checks the host bits


def parse_range(raw: object, field: str) -> Range:
    """One range, canonicalized as host-local does (defaults filled, every address inside the subnet)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{field}: expected an object with 'subnet', got {raw!r}")
    iface = _parse_subnet(raw.get("subnet"), f"{field}.subnet")
    subnet = iface.network
    if subnet.prefixlen > subnet.max_prefixlen - 2:
        raise ConfigError(f"{field}.subnet: Network {subnet} too small to allocate from")
    if iface.ip != subnet.network_address:
        raise ConfigError(f"{field}.subnet: Network has host bits set. For a subnet mask of length "
                          f"{subnet.prefixlen} the network address is {subnet.network_address}")
    first = subnet.network_address + 1
    last = subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address

    def optional_ip(key: str) -> IPAddress | None:
        value = raw.get(key)
        return None if value in (None, "") else parse_ip(value, f"{field}.{key}")

    gateway = optional_ip("gateway") or first
    start, end = optional_ip("rangeStart"), optional_ip("rangeEnd")
    if start is not None:
        beyond_end = end is not None and end.version == start.version and start > end
        if start.version != subnet.version or start not in subnet or beyond_end:
            raise ConfigError(f"{field}.rangeStart: RangeStart {start} not in network {subnet}")
    else:
        start = first
    if end is not None:
        if end.version != subnet.version or end not in subnet or end < start:
            raise ConfigError(f"{field}.rangeEnd: RangeEnd {end} not in network {subnet}")
    else:
        end = last
    return Range(subnet=subnet, range_start=start, range_end=end, gateway=gateway)


def parse_range_set(raw: object, field: str, single: bool = False) -> RangeSet:
    """A list of ranges; ``single`` for host-local's old form, whose one range sits in the ipam object itself."""
    if not isinstance(raw, list):
        raise ConfigError(f"{field}: expected a list of ranges, got {raw!r}")
    if not raw:
        raise ConfigError(f"{field}: empty range set")
    ranges = tuple(parse_range(item, field if single else f"{field}[{i}]") for i, item in enumerate(raw))
    if any(r.version != ranges[0].version for r in ranges):
        raise ConfigError(f"{field}: mixed address families")
    for i, a in enumerate(ranges):
        for b in ranges[i + 1:]:
            if a.overlaps(b):
                raise ConfigError(f"{field}: subnets {a} and {b} overlap")
    return RangeSet(ranges)


def _parse_route(raw: object, field: str) -> Route:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("dst"), str):
        raise ConfigError(f"{field}: expected an object with 'dst' (a string), got {raw!r}")
    try:
        dst = ipaddress.ip_network(raw["dst"].strip(), strict=False)
    except ValueError:
        raise ConfigError(f"{field}.dst: invalid CIDR address: {raw['dst']}") from None
    gw = raw.get("gw")
    return Route(dst=dst, gw=None if gw in (None, "") else parse_ip(gw, f"{field}.gw"))


def parse_ipam_config(ipam: object, network: str, ip_ranges: object = None) -> IpamConfig:
    """Parse the ``ipam`` object of a network config (and the ``ipRanges`` capability, prepended as host-local does)."""
    if not isinstance(ipam, Mapping):
        raise ConfigError("ipam: IPAM config missing 'ipam' key")
    raw_sets: list[tuple[object, str, bool]] = []
    if ip_ranges:
        if not isinstance(ip_ranges, list):
            raise ConfigError(f"runtimeConfig.ipRanges: expected a list of range sets, got {ip_ranges!r}")
        raw_sets += [(s, f"runtimeConfig.ipRanges[{i}]", False) for i, s in enumerate(ip_ranges)]
    if ipam.get("subnet") not in (None, ""):
        single = {k: ipam.get(k) for k in ("subnet", "rangeStart", "rangeEnd", "gateway")}
        raw_sets.append(([single], "ipam", True))
    ranges = ipam.get("ranges")
    if ranges is not None:
        if not isinstance(ranges, list):
            raise ConfigError(f"ipam.ranges: expected a list of range sets, got {ranges!r}")
        raw_sets += [(s, f"ipam.ranges[{i}]", False) for i, s in enumerate(ranges)]
    if not raw_sets:
        raise ConfigError("ipam.ranges: no IP ranges specified")
    sets = []
    for i, (raw, field, single) in enumerate(raw_sets):
        try:
            sets.append(parse_range_set(raw, field, single))
        except ConfigError as err:
            raise ConfigError(f"invalid range set {i}: {err}") from None
    for i, a in enumerate(sets):
        for j, b in enumerate(sets[i + 1:], start=i + 1):
            if a.overlaps(b):
                raise ConfigError(f"range set {i} overlaps with {j}")
    routes = ipam.get("routes")
    routes = [] if routes is None else routes
    if not isinstance(routes, list):
        raise ConfigError(f"ipam.routes: expected a list, got {routes!r}")
    try:
        data_dir = paths.optional_path(ipam, "dataDir", DEFAULT_DATA_DIR, "ipam.dataDir")
        resolv_conf = paths.optional_path(ipam, "resolvConf", None, "ipam.resolvConf")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return IpamConfig(
        network=network,
        range_sets=tuple(sets),
        routes=tuple(_parse_route(r, f"ipam.routes[{i}]") for i, r in enumerate(routes)),
        data_dir=data_dir,
        resolv_conf=resolv_conf,
        cluster=None if ipam.get("store") is None else parse_cluster(ipam),
    )


BLOCK_SIZES = {4: (16, 30, "blockSize"), 6: (96, 126, "blockSizeV6")}  # Calico's bounds, a little wider


def _number(ipam: Mapping, key: str, default: float, low: float, high: float) -> float:
    value = ipam.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"ipam.{key}: expected a number of seconds from {low:g} to {high:g}, got {value!r}")
    return float(value)


def _optional_number(ipam: Mapping, key: str, low: float, high: float) -> float | None:
    return None if ipam.get(key) is None else _number(ipam, key, 0.0, low, high)


def parse_cluster(ipam: Mapping) -> ClusterConfig:
    """``store`` (a store URL, or an absolute path for the embedded SQLite file), ``host`` (default: this
    machine's hostname), ``blockSize`` / ``blockSizeV6``, ``hostTTL``, and the pool's policy ``quarantine`` and
    ``releaseDepartedAfter`` (seconds; named here, they must agree with the stored pool, else the pool's apply)."""
    url = ipam.get("store")
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"ipam.store: expected a store URL (sqlite:///path, etcd://h:p, zk://h:p), got {url!r}")
    url = url.strip()
    if url.startswith("/"):
        url = "sqlite://" + url
    if url.split(":", 1)[0] not in ("sqlite", "etcd", "zk"):
        raise ConfigError(f"ipam.store: {url!r}: unknown scheme (use sqlite:///path, etcd://h:p or zk://h:p)")
    host = ipam.get("host")
    if host is None:
        import socket
        host = socket.gethostname()
    if not isinstance(host, str) or not host or len(host) > 253 or any(c in host for c in "/\0 \t\n"):
        raise ConfigError(f"ipam.host: expected a host name without '/' or spaces, got {host!r}")
    sizes = {}
    for version, (low, high, key) in BLOCK_SIZES.items():
        value = ipam.get(key, 26 if version == 4 else 122)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"ipam.{key}: expected a prefix length from {low} to {high}, got {value!r}")
        sizes[version] = value
    return ClusterConfig(store_url=url, host=host, block_size_v4=sizes[4], block_size_v6=sizes[6],
                         quarantine=_optional_number(ipam, "quarantine", 0, 86400),
                         release_departed_after=_optional_number(ipam, "releaseDepartedAfter", 0, 30 * 86400),
                         host_ttl=_number(ipam, "hostTTL", 3600.0, 5, 7 * 86400))
