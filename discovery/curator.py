"""This host's endpoints in Apache Curator's service-discovery layout, for Java clients on the same ZooKeeper.

Curator (``curator-x-discovery``) keeps one node per instance at ``<basePath>/<service>/<instanceId>``, its
data the JSON its ``JsonInstanceSerializer`` reads: ``name``, ``id``, ``address``, ``port``, ``sslPort``,
``payload``, ``registrationTimeUTC`` (ms), ``serviceType``, ``uriSpec``, ``enabled``. Berth writes exactly those
ten fields, for one instance per endpoint (as its Consul catalogue does): the service name, the first address
(the agent's node address when the endpoint has none), the first port, ``payload`` null (Curator casts the payload
to whatever class each client chose, so anything but null would break some client), ``DYNAMIC``.

Why real znodes, written here and not through the store: the zk:// store keeps keys in its own flat tree
(``<root>/kv/<percent-encoded key>``, with a change log and application-level leases, see
:mod:`store.zookeeper`), which no Curator client reads. Curator's instances are ephemeral nodes of the owner's
session instead, so a dead agent's instances vanish when its session expires (``?session=SECONDS`` in the store
URL, 10 s by default). So the publisher writes plain ephemeral nodes with the store's own kazoo client: one
session per agent, no second connection.

What it publishes is what the store holds for this host: a :class:`DiscoveryView` of the host's endpoint prefix
(the one follower), so Curator clients, DNS and the Consul API never disagree for long. A critical endpoint's
node is *removed*, not written with ``enabled: false``: Curator's ``ServiceProvider`` skips disabled instances,
but ``ServiceDiscovery.queryForInstances`` and ``ServiceCache`` return them, and an unhealthy endpoint must drop
out of every reader's answers (as it drops out of DNS); ``warning`` stays published, as Consul's DNS does.

Convergence: each change of the view writes the difference; every ``resync`` seconds, and at once after a new
session (the old one expired, taking its nodes along), every node is read back and repaired. A node at one of our
paths owned by another session (ours before a quick restart: instance IDs are derived from host and endpoint ID)
is replaced in one ``multi`` (delete at its version, create), so a restart leaves no gap. Two live agents with the
same host name would take each other's nodes in turn: host names must be unique, as for the store's keys.
Limits: service nodes are plain persistent nodes (kazoo cannot create container nodes), so an emptied service
stays listed by ``queryForNames`` with no instances; a clean stop closes the session, so instances go at once.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Mapping

from kazoo.exceptions import BadVersionError, KazooException, NodeExistsError, NoNodeError
from kazoo.protocol.states import KazooState

from discovery.model import EndpointRecord, Health, check_dns_name
from discovery.publish import host_prefix
from discovery.view import DiscoveryView
from store.api import StoreError
from store.retry import DEFAULT_RETRY

DEFAULT_BASE_PATH = "/services"
PIPELINE = 256  # reads sent together at most
INSTANCE_NAMESPACE = uuid.UUID("5b0c8a52-4f4e-4b8e-9a61-6c7a2d0b3e11")  # instance IDs: uuid5(host, endpoint ID)
log = logging.getLogger(__name__)


def check_base_path(path: str) -> str:
    """An absolute ZooKeeper path without empty, ``.`` or ``..`` parts: ``/services``, ``/app/discovery``."""
    parts = path.split("/")
    if not path.startswith("/") or path == "/" or any(part in ("", ".", "..") for part in parts[1:]):
        raise ValueError(f"curator base path {path!r}: expected an absolute ZooKeeper path such as /services")
    return path


def instance_id(host: str, endpoint_id: str) -> str:
    """Stable across restarts, so a restarted agent takes its instances over instead of duplicating them."""
    return str(uuid.uuid5(INSTANCE_NAMESPACE, f"{host}\0{endpoint_id}"))


def instance_path(base_path: str, record: EndpointRecord) -> str:
    return f"{base_path}/{check_dns_name(record.service, 'service')}/{instance_id(record.host, record.id)}"


def instance_json(record: EndpointRecord, node_address: str, registered_ms: int) -> bytes:
    """The ServiceInstance JSON Curator's ``JsonInstanceSerializer`` reads (and writes without compatibility mode)."""
    return json.dumps({
        "name": record.service,
        "id": instance_id(record.host, record.id),
        "address": record.addresses[0] if record.addresses else node_address,
        "port": record.ports[0].port if record.ports else None,
        "sslPort": None,
        "payload": None,
        "registrationTimeUTC": registered_ms,
        "serviceType": "DYNAMIC",
        "uriSpec": None,
        "enabled": True,
    }, separators=(",", ":")).encode()


def plan_instances(records: Mapping[str, EndpointRecord], base_path: str) -> dict[str, EndpointRecord]:
    """Pure: the instance path of every endpoint that should be visible (all but critical ones)."""
    return {instance_path(base_path, record): record for record in records.values()
            if record.health is not Health.CRITICAL}


class CuratorPublisher:
    """Keeps ``<base_path>/<service>/<id>`` equal to this host's endpoints in a :class:`store.zookeeper.ZkStore`."""

    def __init__(self, store, host: str, base_path: str = DEFAULT_BASE_PATH, *, node_address: str = "127.0.0.1",
                 resync: float = 10.0) -> None:
        from store.zookeeper import ZkStore
        if not isinstance(store, ZkStore):
            raise ValueError("curator publishing needs a zk:// store (Curator's clients read ZooKeeper)")
        self.store = store
        self.calls = store.calls
        self.base_path = check_base_path(base_path)
        self.node_address = node_address
        self.resync = resync
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.view = DiscoveryView(store, host_prefix(host))
        self.view.subscribe(lambda change: self._wake.set())
        self._viewing = False
        self._published: dict[str, bytes] = {}   # what this session holds, as far as we know
        self._registered: dict[str, int] = {}    # instance path → registrationTimeUTC, kept while it is wanted
        self._parents: set[str] = set()
        self._session = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.calls.client.add_listener(self._on_state)
        self._thread = threading.Thread(target=self._run, name="curator-publisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.calls.client.remove_listener(self._on_state)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.view.stop()

    def _on_state(self, state) -> None:
        """kazoo's connection listener (its event thread: never block here)."""
        if state == KazooState.CONNECTED:
            self._wake.set()

    # -- the loop ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        delays = None
        next_verify = 0.0
        while not self._stop.is_set():
            try:
                if not self._viewing:
                    self.view.start()  # lists now: raises while the store cannot be read
                    self._viewing = True
                verify = time.monotonic() >= next_verify
                self._converge(verify)
                if verify:
                    next_verify = time.monotonic() + self.resync
                delays, pause = None, max(0.0, next_verify - time.monotonic())
            except Exception as exc:  # never dies: ZooKeeper errors are expected, anything else is logged in full
                delays = delays or DEFAULT_RETRY.delays()
                pause, next_verify = next(delays), 0.0
                log.warning("curator publishing failed (%s); retrying in %.1f s", exc, pause,
                            exc_info=not isinstance(exc, (StoreError, KazooException)))
            self._wake.wait(pause)
            self._wake.clear()

    def _converge(self, verify: bool) -> None:
        session = self._session_id()
        if session != self._session:  # a new session holds none of the old one's nodes
            self._session, self._published, verify = session, {}, True
        planned = plan_instances(self.view.records(), self.base_path)
        now_ms = int(time.time() * 1000)
        self._registered = {path: self._registered.get(path, now_ms) for path in planned}
        desired = {path: instance_json(record, self.node_address, self._registered[path])
                   for path, record in planned.items()}
        if verify:  # read every node back (pipelined): the ones that differ or are another session's get written
            kept = {path: data for path, data in self._published.items() if path not in desired}  # to remove below
            self._published = {**kept, **self._read_back(desired)}
        for path, data in desired.items():
            if self._published.get(path) != data:
                self._put(path, data)
                self._published[path] = data
        for path in [path for path in self._published if path not in desired]:
            self._remove(path)
            del self._published[path]

    # -- ZooKeeper, every call bounded by the store's deadlines ---------------------------------------------
    def _session_id(self) -> int:
        client_id = self.calls.client.client_id
        if not client_id:
            raise StoreError("zookeeper: no session (not connected)")
        return client_id[0]

    def _call(self, what: str, request):
        return self.calls.retrying(what, lambda: self.calls.wait(request(), what))

    def _read_back(self, desired: dict[str, bytes]) -> dict[str, bytes]:
        """The desired nodes that ZooKeeper holds exactly as desired, under this session."""
        paths, held = list(desired), {}
        for start in range(0, len(paths), PIPELINE):
            chunk = paths[start:start + PIPELINE]
            found = self.calls.retrying("read instances", lambda: self.calls.get_many(chunk))
            held.update({path: desired[path] for path, hit in zip(chunk, found)
                         if hit is not None and hit[0] == desired[path] and hit[1].ephemeralOwner == self._session})
        return held

    def _put(self, path: str, data: bytes) -> None:
        client = self.calls.client
        for _ in range(5):  # each round lost a race with another writer of the node
            try:
                current, stat = self._call("read instance", lambda: client.get_async(path))
            except NoNodeError:
                try:
                    self._ensure_parents(path)
                    self._call("create instance", lambda: client.create_async(path, data, ephemeral=True))
                    return
                except NodeExistsError:
                    continue
                except NoNodeError:  # a service node went away under us
                    self._parents.clear()
                    continue
            if stat.ephemeralOwner == self._session:
                if current == data:
                    return
                try:
                    self._call("update instance", lambda: client.set_async(path, data, stat.version))
                    return
                except (BadVersionError, NoNodeError):
                    continue
            transaction = client.transaction()  # another session's node (ours before a restart): take it over
            transaction.delete(path, version=stat.version)
            transaction.create(path, data, ephemeral=True)
            results = self._call("take over instance", transaction.commit_async)
            if not any(isinstance(result, Exception) for result in results):
                return
        raise StoreError(f"zookeeper: curator instance {path}: lost every race to write it")

    def _remove(self, path: str) -> None:
        client = self.calls.client
        try:
            _, stat = self._call("read instance", lambda: client.get_async(path))
            if stat.ephemeralOwner == self._session:  # another session's node is not ours to remove
                self._call("remove instance", lambda: client.delete_async(path, version=stat.version))
        except (NoNodeError, BadVersionError):
            pass

    def _ensure_parents(self, path: str) -> None:
        parts = path.split("/")[1:-1]
        for depth in range(1, len(parts) + 1):
            parent = "/" + "/".join(parts[:depth])
            if parent in self._parents:
                continue
            try:
                self._call("create service node", lambda: self.calls.client.create_async(parent, b""))
            except NodeExistsError:
                pass
            self._parents.add(parent)
