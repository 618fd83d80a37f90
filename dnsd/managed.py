"""The subnets Berth manages, for the recursion policy (``acl``): followed from the store, the overlay's network
configuration and its hosts' subnet leases (under ``/berth/overlay/``, written only by ``berth overlay``, a root
component; the agent's API, which non-root users reach, writes endpoint records only); and, read at start-up, the
IPAM ranges of the CNI network configurations in a directory (``--cni-conf-dir``, e.g. ``/etc/cni/net.d``), from
files only root can have written.

``managed_networks`` and ``ipam_networks`` are the pure parts (store items or network configs → networks);
``ManagedNetworks`` lists, then watches, and re-lists after a watch failure, as the discovery view does.
"""
from __future__ import annotations

import json
import logging
import stat
import threading
from pathlib import Path
from typing import Iterable

from overlay.config import DEFAULT_PREFIX, ConfigError, parse_config
from overlay.lease import LeaseFormatError, config_key, subnet_from_key, subnets_prefix
from store.api import Store

from .acl import Network

log = logging.getLogger("berth.dnsd")
RETRY_DELAY = 0.5


def managed_networks(items: Iterable[tuple[str, bytes]], prefix: str = DEFAULT_PREFIX) -> tuple[Network, ...]:
    """The overlay's whole network and every leased subnet; anything unparsable under the prefix is ignored."""
    found: list[Network] = []
    for key, value in items:
        try:
            if key == config_key(prefix):
                found.append(parse_config(value).network)
            elif key.startswith(subnets_prefix(prefix)):
                found.append(subnet_from_key(key, prefix))
        except (ConfigError, LeaseFormatError):
            continue
    return tuple(sorted(set(found), key=lambda n: (n.version, n)))


IPAM_TYPES = ("berth-ipam", "host-local")


def ipam_networks(configs: Iterable[dict]) -> tuple[Network, ...]:
    """The subnets of every berth-ipam/host-local range in CNI network configs (.conflist or single .conf)."""
    from ipam.config import parse_ipam_config
    from ipam.errors import ConfigError as IpamConfigError
    found: list[Network] = []
    for config in configs:
        plugins = config.get("plugins") if isinstance(config.get("plugins"), list) else [config]
        for plugin in plugins:
            ipam = plugin.get("ipam") if isinstance(plugin, dict) else None
            if not isinstance(ipam, dict) or ipam.get("type") not in IPAM_TYPES:
                continue
            try:
                parsed = parse_ipam_config(ipam, str(config.get("name", "")))
            except IpamConfigError as exc:
                log.warning("ignoring the IPAM ranges of network %r: %s", config.get("name"), exc)
                continue
            found.extend(r.subnet for rs in parsed.range_sets for r in rs.ranges)
    return tuple(sorted(set(found), key=lambda n: (n.version, n)))


def root_only(path: Path) -> bool:
    """Owned by root and writable by nobody else: what a non-root user cannot have written."""
    info = path.lstat()
    return info.st_uid == 0 and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not stat.S_ISLNK(info.st_mode)


def read_cni_configs(directory: str) -> list[dict]:
    """The network configs in ``directory`` that only root can have written; others are skipped, said so."""
    folder = Path(directory)
    if not folder.is_dir():
        log.warning("--cni-conf-dir %s is not a directory", directory)
        return []
    if not root_only(folder):
        log.warning("ignoring %s: not owned by root, or writable by others", directory)
        return []
    configs = []
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".conflist", ".conf", ".json"):
            continue
        try:
            if not root_only(path):
                log.warning("ignoring %s: not owned by root, or writable by others", path)
                continue
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", path, exc)
            continue
        if isinstance(doc, dict):
            configs.append(doc)
    return configs


class ManagedNetworks:
    """Callable: the current managed networks (a tuple replaced whole, so readers need no lock)."""

    def __init__(self, store: Store, prefix: str = DEFAULT_PREFIX) -> None:
        self.store = store
        self.prefix = prefix
        self.networks: tuple[Network, ...] = ()
        self._items: dict[str, bytes] = {}
        self._revision = 0
        self._stopping = threading.Event()
        self._watch = None
        self._thread: threading.Thread | None = None

    def __call__(self) -> tuple[Network, ...]:
        return self.networks

    def start(self) -> "ManagedNetworks":
        self._relist()
        self._thread = threading.Thread(target=self._run, name="dnsd-managed-networks", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        watch = self._watch
        if watch is not None:
            try:
                watch.close()
            except Exception:
                log.debug("closing the managed-networks watch failed", exc_info=True)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _relist(self) -> None:
        items, revision = self.store.get_prefix(self.prefix + "/")
        self._items = {kv.key: kv.value for kv in items}
        self._revision = revision
        self._publish()

    def _publish(self) -> None:
        networks = managed_networks(self._items.items(), self.prefix)
        if networks != self.networks:
            log.info("recursion allowed for Berth-managed subnets: %s",
                     ", ".join(map(str, networks)) or "none")
        self.networks = networks

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._watch = self.store.watch_prefix(self.prefix + "/", self._revision + 1)
                for batch in self._watch:
                    if self._stopping.is_set():
                        return
                    for event in batch.events:
                        if event.kind == "put":
                            self._items[event.key] = event.value
                        else:
                            self._items.pop(event.key, None)
                    self._revision = batch.revision
                    self._publish()
                if self._stopping.is_set():
                    return
            except Exception as exc:
                if self._stopping.is_set():
                    return
                log.warning("watching %s failed (%s); re-listing", self.prefix, exc)
            if self._stopping.wait(RETRY_DELAY):
                return
            try:
                self._relist()
            except Exception as exc:
                log.warning("re-listing %s failed: %s", self.prefix, exc)
