"""Docker's remote IPAM API on Berth's allocator (``ipam.allocator``) and host-local's disk layout (``ipam.disk``).

A pool is a subnet (optionally a sub-range, Docker's ``--ip-range``); its record lives in the state directory, its
reservations under ``<state dir>/ipam/<pool id>/`` exactly as berth-ipam keeps a CNI network's. Docker names no
container when it asks for an address, so each reservation's owner is a fresh token; release goes by address.
"""
from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import threading
from typing import Any, Optional

from docker_plugin.agreement import HeldPool
from docker_plugin.errors import DriverError, mapping, text
from docker_plugin.state import RECORD_ID, StateDir
from ipam.allocator import allocate
from ipam.config import Range, RangeSet, parse_range
from ipam.disk import DiskStore
from ipam.errors import IpamError
from ipam.store import Attachment
from overlay import subnetfile

LOCAL_SPACE, GLOBAL_SPACE = "berth-local", "berth-global"
GATEWAY_REQUEST = "com.docker.network.gateway"
OWNER_IFNAME = "docker"
DEFAULT_POOL_PREFIX = 24
OVERLAY_OPTION = "berth.overlay"  # --ipam-opt berth.overlay=true: the pool is this host's overlay subnet


def pool_id_for(subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """Readable and a valid file name: ``10.1.0.0_24`` (``/`` cannot name a file)."""
    return str(subnet).replace("/", "_")


def _network(value: str, field: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value)
    except ValueError as exc:
        raise DriverError(f"{field}: {exc}") from None


class IpamDriver:
    def __init__(self, state: StateDir, default_pool: str = "10.212.0.0/16",
                 subnet_file: str = subnetfile.DEFAULT_SUBNET_FILE) -> None:
        self.state = state
        self.subnet_file = subnet_file
        self.data_dir = f"{state.root}/ipam"
        self.default_pool = _network(default_pool, "default pool")
        self._lock = threading.Lock()

    # --- handlers: request dict → response dict ------------------------------------------------------------------

    def capabilities(self, _request: dict) -> dict:
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    def address_spaces(self, _request: dict) -> dict:
        return {"LocalDefaultAddressSpace": LOCAL_SPACE, "GlobalDefaultAddressSpace": GLOBAL_SPACE}

    def request_pool(self, request: dict) -> dict:
        wanted, sub_pool = text(request, "Pool", required=False), text(request, "SubPool", required=False)
        v6 = request.get("V6") is True
        overlay = overlay_requested(mapping(request, "Options"), OVERLAY_OPTION, "--ipam-opt")
        with self._lock:
            pools = [_network(p["pool"], "pool") for _, p in self.state.all("pools")]
            if overlay:
                subnet = self._overlay_subnet(wanted, v6)
            elif wanted:
                subnet = _network(wanted, "Pool")
                if (subnet.version == 6) != v6:
                    raise DriverError(f"Pool {subnet}: V6 is {v6}")
            elif v6:
                raise DriverError("Berth picks no IPv6 pool by itself: give --subnet for IPv6")
            else:
                subnet = self._free_default(pools)
            clash = next((p for p in pools if p.overlaps(subnet)), None)
            if clash is not None:
                raise DriverError(f"pool {subnet} overlaps pool {clash} of another Berth network", 409)
            record: dict[str, Any] = {"pool": str(subnet), "sub_pool": sub_pool, "gateway": "", "overlay": overlay,
                                      "token": secrets.token_hex(8)}
            self._range(record)  # validates the sub-pool before anything is kept
            pool_id = pool_id_for(subnet)
            self.state.put("pools", pool_id, record)
        return {"PoolID": pool_id, "Pool": str(subnet), "Data": {}}

    def release_pool(self, request: dict) -> dict:
        pool_id = text(request, "PoolID")
        with self._lock:
            self._release(_checked(pool_id))
        return {}

    def _release(self, pool_id: str) -> None:
        """Reservations first, the record last: a crash in between leaves a record (Docker's retry, or start-up's
        orphan sweep, releases it), never reservations a later pool of the same subnet would inherit."""
        store = DiskStore(pool_id, self.data_dir)
        shutil.rmtree(store.dir, ignore_errors=True)
        shutil.rmtree(store.index_dir, ignore_errors=True)
        self.state.delete("pools", pool_id)

    def request_address(self, request: dict) -> dict:
        pool_id = text(request, "PoolID")
        wanted = text(request, "Address", required=False)
        options = mapping(request, "Options")
        with self._lock:
            record = self._pool(pool_id)
            subnet = _network(record["pool"], "pool")
            if options.get("RequestAddressType") == GATEWAY_REQUEST:
                gateway = _address(wanted, subnet) if wanted else subnet.network_address + 1
                record["gateway"] = str(gateway)
                self._range(record)  # a gateway outside the pool is refused here
                self.state.put("pools", pool_id, record)
                return {"Address": f"{gateway}/{subnet.prefixlen}", "Data": {}}
            requested = (_address(wanted, subnet),) if wanted else ()
            store = DiskStore(pool_id, self.data_dir)
            try:
                with store.lock():
                    done = allocate(store, [RangeSet((self._range(record),))],
                                    Attachment(secrets.token_hex(8), OWNER_IFNAME), requested)
            except IpamError as exc:
                raise DriverError(str(exc), 409) from None
        return {"Address": str(done[0].address), "Data": {}}

    def release_address(self, request: dict) -> dict:
        pool_id = text(request, "PoolID")
        address = text(request, "Address")
        with self._lock:
            record = self._pool(pool_id)
            ip = _address(address.split("/")[0], _network(record["pool"], "pool"))
            store = DiskStore(pool_id, self.data_dir)
            if store.exists():
                with store.lock():
                    owner = store.reservations().get(ip)
                    if owner is not None:
                        store.release(owner, [ip])
        return {}

    def held(self) -> dict[str, HeldPool]:
        """Every pool held now with its reservations, and reservations left with no pool record: what start-up
        may judge (see :mod:`docker_plugin.agreement`)."""
        with self._lock:
            records = dict(self.state.all("pools"))
            on_disk = [n for n in _listdir(self.data_dir)
                       if RECORD_ID.match(n) and os.path.isdir(os.path.join(self.data_dir, n))]
            out = {}
            for pool_id in sorted(set(records) | set(on_disk)):
                record = records.get(pool_id)
                reservations = self._reservations(pool_id)
                out[pool_id] = HeldPool(record and record["pool"], record and record.get("token"),
                                        {str(ip): owner for ip, owner in reservations.items()})
        return out

    def release_orphan(self, pool_id: str, held: HeldPool, spare: set[str]) -> bool:
        """Release a pool judged unused, unless it changed since start (another token: released and requested
        again) or a network record other than those in ``spare`` (being removed) names its subnet now."""
        with self._lock:
            record = self.state.get("pools", _checked(pool_id))
            if (record or {}).get("token") != held.token or (record is None) != (held.subnet is None):
                return False
            if record is not None:
                subnet = _network(record["pool"], "pool")
                for network_id, network in self.state.all("networks"):
                    if network_id not in spare and any(_network(s["pool"], "pool") == subnet
                                                       for s in network["subnets"]):
                        return False
            self._release(pool_id)
        return True

    def release_held_addresses(self, addresses: list[str], held: dict[str, HeldPool]) -> None:
        """Release addresses of an endpoint Docker forgot, each only if the owner that held it at start still
        does (a repeated release after a crash must not free the address of a container that took it since)."""
        with self._lock:
            for address in addresses:
                ip = ipaddress.ip_interface(address).ip
                pool_id = pool_id_for(ipaddress.ip_interface(address).network)
                owner = held[pool_id].reservations.get(str(ip)) if pool_id in held else None
                store = DiskStore(pool_id, self.data_dir)
                if owner is not None and store.exists():
                    with store.lock():
                        store.release(owner, [ip])

    def adopt(self, configs: list[dict], options: dict, addresses: list[str]) -> dict[str, str]:
        """Take back a pool Docker still uses but this plugin lost the record of (its state directory was
        lost): the pool from Docker's IPAM config, every address Docker's containers hold reserved again.
        Returns the gateway (``a.b.c.d/len``) of each subnet."""
        gateways = {}
        overlay = overlay_requested(options or {}, OVERLAY_OPTION, "--ipam-opt")
        with self._lock:
            for config in configs:
                subnet = _network(text(config, "Subnet"), "Subnet")
                pool_id = pool_id_for(subnet)
                record = self.state.get("pools", pool_id)
                if record is None:
                    gateway = config.get("Gateway") or str(subnet.network_address + 1)
                    record = {"pool": str(subnet), "sub_pool": config.get("IPRange") or "", "gateway": gateway,
                              "overlay": overlay, "token": secrets.token_hex(8)}
                    self._range(record)
                    self.state.put("pools", pool_id, record)
                gateways[str(subnet)] = f"{record['gateway'] or subnet.network_address + 1}/{subnet.prefixlen}"
                store = DiskStore(pool_id, self.data_dir)
                with store.lock():
                    held = store.reservations()
                    for address in addresses:
                        ip = ipaddress.ip_interface(address).ip
                        if ip in subnet and ip not in held:
                            store.reserve(Attachment(secrets.token_hex(8), OWNER_IFNAME), ip, 0)
        return gateways

    # --- helpers -----------------------------------------------------------------------------------------------------

    def reserved(self, pool_id: str) -> dict:
        """address → owner token, for tests and ``berth status``-style checks."""
        return self._reservations(_checked(pool_id))

    def _reservations(self, pool_id: str) -> dict:
        store = DiskStore(pool_id, self.data_dir)
        if not store.exists():
            return {}
        with store.lock():
            return store.reservations()

    def _overlay_subnet(self, wanted: str, v6: bool):
        """The subnet ``berth overlay`` leased this host (its subnet file), so containers here are reachable from
        every host of the overlay."""
        if v6:
            raise DriverError("the overlay is IPv4 only")
        try:
            lease = subnetfile.read(self.subnet_file)
        except (OSError, subnetfile.SubnetFileError) as exc:
            raise DriverError(f"--ipam-opt {OVERLAY_OPTION}=true: cannot read the overlay's subnet file "
                              f"{self.subnet_file} ({exc}); is berth overlay running on this host?", 409) from None
        subnet = lease.subnet.network
        if wanted and _network(wanted, "Pool") != subnet:
            raise DriverError(f"--subnet {wanted}: this host's overlay subnet is {subnet}; leave --subnet out")
        return subnet

    def _pool(self, pool_id: str) -> dict:
        record = self.state.get("pools", _checked(pool_id))
        if record is None:
            raise DriverError(f"PoolID {pool_id}: no such Berth pool", 404)
        return record

    def _free_default(self, pools) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        prefix = max(DEFAULT_POOL_PREFIX, self.default_pool.prefixlen)
        for candidate in self.default_pool.subnets(new_prefix=prefix):
            if not any(p.overlaps(candidate) for p in pools):
                return candidate
        raise DriverError(f"every /{prefix} of the default pool {self.default_pool} is in use: give --subnet", 409)

    @staticmethod
    def _range(record: dict) -> Range:
        raw = {"subnet": record["pool"]}
        if record.get("gateway"):
            raw["gateway"] = record["gateway"]
        if record.get("sub_pool"):
            sub = _network(record["sub_pool"], "SubPool")
            raw["rangeStart"], raw["rangeEnd"] = str(sub.network_address), str(sub.broadcast_address)
        try:
            return parse_range(raw, "pool")
        except IpamError as exc:
            raise DriverError(str(exc)) from None


def overlay_requested(options: dict, key: str, flag: str) -> bool:
    value = options.get(key, "false")
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise DriverError(f"{flag} {key}: expected true or false, got {value!r}")


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _checked(pool_id: str) -> str:
    from docker_plugin.state import check_id
    try:
        return check_id(pool_id, "PoolID")
    except ValueError as exc:
        raise DriverError(str(exc)) from None


def _address(value: str, subnet) -> Optional[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise DriverError(f"Address: {value!r} is not an IP address") from None
    if ip not in subnet:
        raise DriverError(f"Address: {ip} is not in pool {subnet}")
    return ip
