"""Once, at start-up, make the plugin's records agree with Docker: Docker replays nothing to a restarted plugin,
so networks and endpoints removed while it was down (or forgotten by a reset engine) were never deleted here,
and a lost state directory leaves networks Docker has that the records lack.

Only what was held before the plugin served (:class:`Held`) is judged, so nothing Docker creates meanwhile is
taken for stale. The removal order makes every crash point recoverable at the next start: a forgotten network's
kernel objects go first, then its pool, and its record last, so a crash leaves the record, which is judged
again; a pool no network record and no Docker network names (an orphan, as an older plugin that dropped the
record first could leave) is released too. Releases are by identity seen at start (a pool's token, an
address's owner), so a pool or address taken again after a crash is never freed by a repeated release.
"""
from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass
from typing import Optional

from docker_plugin.docker_api import DockerAPI, DockerUnavailable
from ipam.store import Attachment

log = logging.getLogger("berth.docker_plugin")


@dataclass(frozen=True)
class HeldPool:
    subnet: Optional[str]  # None: reservations left on disk with no pool record at all
    token: Optional[str]  # the pool record's token (None in records older than tokens)
    reservations: dict[str, Attachment]  # address → owner


@dataclass(frozen=True)
class Held:
    """What the plugin held at start, before it served."""
    networks: dict[str, tuple[str, ...]]  # network id → its subnets
    endpoints: dict[str, str]  # endpoint id → network id
    pools: dict[str, HeldPool]  # pool id → pool


@dataclass(frozen=True)
class Verdict:
    networks: tuple[str, ...]  # to remove: Docker does not list them
    endpoints: tuple[str, ...]  # to remove: no container of their (listed) network has them
    pools: tuple[str, ...]  # to release: no surviving network record and no Docker network uses them


def judge(held: Held, docker_networks: list[dict], docker_pools: set[str]) -> Verdict:
    """``docker_networks``: Docker's networks of this driver (inspected, with containers); ``docker_pools``: the
    subnets of every Docker network whose IPAM driver is this plugin (whatever its network driver)."""
    known = {n["Id"]: {c.get("EndpointID") for c in (n.get("Containers") or {}).values()} for n in docker_networks}
    forgotten = tuple(sorted(set(held.networks) - set(known)))
    endpoints = tuple(sorted(e for e, n in held.endpoints.items() if n in known and e not in known[n]))
    named = {_net(s) for n, subnets in held.networks.items() if n not in forgotten for s in subnets}
    in_use = named | {_net(s) for s in docker_pools}
    pools = tuple(sorted(p for p, pool in held.pools.items() if pool.subnet is None or _net(pool.subnet) not in in_use))
    return Verdict(forgotten, endpoints, pools)


def _net(subnet: str):
    return ipaddress.ip_network(subnet, strict=False)


def agree_with_docker(network, ipam, api: DockerAPI, driver: str, held: Held) -> None:
    """Asked from a thread of its own, after the socket serves: dockerd may be waiting for this plugin while it
    starts."""
    for attempt in range(30):
        try:
            known, pools = api.networks(driver), api.ipam_subnets(driver)
            break
        except DockerUnavailable as exc:
            if attempt == 0:
                log.info("cannot ask Docker which networks it knows yet (%s); retrying for a minute", exc)
            threading.Event().wait(2.0)
    else:
        log.warning("Docker never answered: networks it forgot are kept until it deletes them")
        return
    try:
        apply(judge(held, known, pools), network, ipam, held)
    except Exception:  # noqa: BLE001 - a daemon thread: log, keep serving
        log.exception("dropping what Docker forgot failed")
    current = network.snapshot()[0]
    for docker_network in known:
        if docker_network["Id"] in current or docker_network["Id"] in held.networks:
            continue
        try:
            adopt(network, ipam, driver, docker_network)
        except Exception:  # noqa: BLE001 - one network's failure must not stop the others
            log.exception("network %s: taking it back from Docker failed", docker_network["Id"][:12])


def apply(verdict: Verdict, network, ipam, held: Held) -> None:
    """Kernel objects, then pools and addresses, then records: see the module's docstring for why."""
    dismantled = set()
    for network_id in verdict.networks:
        log.info("network %s: Docker no longer knows it; removing", network_id[:12])
        if _step(network.dismantle_network, network_id)[0]:
            dismantled.add(network_id)  # one that failed keeps its record (and so its pool): judged again next start
    for pool_id in verdict.pools:
        if _step(ipam.release_orphan, pool_id, held.pools[pool_id], spare=dismantled)[1]:
            log.info("pool %s: no network uses it; released", pool_id)
    for network_id in sorted(dismantled):
        network.drop_network(network_id)
    for endpoint_id in verdict.endpoints:
        log.info("endpoint %s: Docker no longer knows it; removing", endpoint_id[:12])
        done, record = _step(network.dismantle_endpoint, endpoint_id)
        if done and record is not None and _step(ipam.release_held_addresses, record["addresses"], held.pools)[0]:
            network.drop_endpoint(endpoint_id)


def _step(step, *args, **kwargs) -> tuple[bool, object]:
    """One removal step: (done, its result). A failure is logged, so the steps for other networks still run."""
    try:
        return True, step(*args, **kwargs)
    except Exception:  # noqa: BLE001 - one network's failure must not stop the others
        log.exception("%s %s failed", step.__name__, args[0])
        return False, None


def adopt(network, ipam, driver: str, docker_network: dict) -> None:
    """A network Docker has and this plugin has no record of (its state directory was lost): take it back."""
    settings = docker_network.get("IPAM") or {}
    attached = (docker_network.get("Containers") or {}).values()
    addresses = [a for c in attached for a in (c.get("IPv4Address"), c.get("IPv6Address")) if a]
    configs = settings.get("Config") or []
    if settings.get("Driver") == driver:
        gateways = ipam.adopt(configs, settings.get("Options") or {}, addresses)
    else:  # another IPAM driver: its gateways are in Docker's config
        gateways = {c["Subnet"]: f"{c['Gateway']}/{c['Subnet'].split('/')[1]}" for c in configs if c.get("Gateway")}
    network.adopt(docker_network, gateways)
