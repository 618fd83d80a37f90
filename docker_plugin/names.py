"""Container names to the discovery agent: ``docker run --name web --network-alias www`` makes ``web`` and ``www``
answer in ``berth dns``, as ``berth-register`` does for CNI runtimes.

Docker tells a network driver neither names nor aliases, so a watcher thread follows dockerd's network
connect/disconnect events for this driver's networks and reads each container's settings from the engine API.
At every (re)start of the event stream it resyncs: every attached container is registered again. A disconnect
missed while the plugin was down needs no event: each registration carries the container's sandbox (its network
namespace), and the agent drops an endpoint whose namespace is gone. Registrations carry the Docker face, so a
CNI GC on a network of the same name never removes them (the agent's GC keeps to one face). They go through the
agent's socket, spooled on disk when no agent listens (the agent applies the spool when it starts), so none is lost.
"""
from __future__ import annotations

import logging
import threading
from typing import Optional

from cni_plugins import codes
from discovery import wire
from discovery.model import EndpointRecord, InvalidRecord, PortBinding, dns_label_for
from docker_plugin.docker_api import DockerAPI, DockerUnavailable

log = logging.getLogger(__name__)
IDLE_RESYNC = 60.0  # seconds without an event before the stream is reopened and everything resynced
RETRY = 2.0
FACE = "docker"


def endpoint_id(container_id: str, network_id: str) -> str:
    return f"{container_id}/{network_id[:12]}"


def build_record(container: dict, network_id: str, network_name: str) -> Optional[EndpointRecord]:
    """The endpoint one container is on one network, from ``docker inspect``; None when it has no address there."""
    container_id = container.get("Id") or ""
    settings_all = container.get("NetworkSettings") or {}
    settings = (settings_all.get("Networks") or {}).get(network_name)
    if not container_id or not settings:
        return None
    addresses = tuple(a for a in (settings.get("IPAddress"), settings.get("GlobalIPv6Address")) if a)
    if not addresses:
        return None
    given = (container.get("Name") or "").lstrip("/")
    name = dns_label_for(given) or dns_label_for(container_id[:12])
    aliases = []
    for alias in settings.get("Aliases") or ():
        label = dns_label_for(alias)
        if label and label not in (name, container_id[:12]) and label not in aliases:
            aliases.append(label)
    ports = []
    for spec, bindings in sorted((settings_all.get("Ports") or {}).items()):
        port_text, _, protocol = spec.partition("/")
        for binding in bindings or [None]:
            host_ip = (binding or {}).get("HostIp") or None
            host_port = (binding or {}).get("HostPort") or None
            ports.append(PortBinding(port=int(port_text), protocol=protocol or "tcp",
                                     host_port=int(host_port) if host_port else None,
                                     host_ip=None if host_ip in (None, "0.0.0.0", "::") else host_ip))
    return EndpointRecord(id=endpoint_id(container_id, network_id), name=name, aliases=tuple(aliases),
                          addresses=addresses, network=dns_label_for(network_name) or "docker",
                          container_id=container_id, ifname=network_id[:12], ports=tuple(dict.fromkeys(ports)),
                          meta={"containerName": given} if given and given != name else {}, tags=("docker",))


def add_request(record: EndpointRecord, sandbox: str) -> dict:
    """The agent socket's ``add`` for one container on one network (see :mod:`discovery.wire`)."""
    return {"op": "add", "endpoint": record.to_dict(), "netns": sandbox, "face": FACE}


class NameRegistrar:
    def __init__(self, api: DockerAPI, driver: str, agent_socket: str, spool_dir: str, timeout: float = 5.0) -> None:
        self.api, self.driver = api, driver
        self.agent_socket, self.spool_dir, self.timeout = agent_socket, spool_dir, timeout
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="docker-names", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                events = self.api.network_events(IDLE_RESYNC)
                self.resync()
                for event in events:
                    if self._stop.is_set():
                        return
                    self.on_event(event)
            except DockerUnavailable as exc:
                log.warning("names: %s; retrying in %.0fs", exc, RETRY)
                self._stop.wait(RETRY)
            except Exception:  # noqa: BLE001 - the watcher must outlive one bad answer
                log.exception("names: watcher failed; retrying")
                self._stop.wait(RETRY)

    def resync(self) -> None:
        for network in self.api.networks(self.driver):
            for container_id in (network.get("Containers") or {}):
                self.register(container_id, network["Id"], network["Name"])

    def on_event(self, event: dict) -> None:
        actor = event.get("Actor") or {}
        attributes = actor.get("Attributes") or {}
        if attributes.get("type") != self.driver or not actor.get("ID"):
            return
        container_id, network_id = attributes.get("container", ""), actor["ID"]
        if event.get("Action") == "connect":
            self.register(container_id, network_id, attributes.get("name", ""))
        elif event.get("Action") == "disconnect":
            self._send({"op": "del", "id": endpoint_id(container_id, network_id)})

    def register(self, container_id: str, network_id: str, network_name: str) -> bool:
        container = self.api.container(container_id)
        if container is None:
            return False
        try:
            record = build_record(container, network_id, network_name)
        except (InvalidRecord, ValueError) as exc:
            log.warning("names: container %s on %s: %s", container_id[:12], network_name, exc)
            return False
        if record is None:
            return False
        sandbox = (container.get("NetworkSettings") or {}).get("SandboxKey") or ""
        self._send(add_request(record, sandbox))
        return True

    def _send(self, request: dict) -> None:
        """To the agent, or to its spool when it cannot take it now (as berth-register does)."""
        try:
            reply = wire.call(self.agent_socket, request, self.timeout)
        except (OSError, ValueError):
            reply = None
        if reply is not None and reply.get("ok"):
            return
        if reply is not None and reply.get("code") in codes.INPUT_ERRORS:  # retrying later cannot help
            log.warning("names: the agent refused %s: %s", request.get("op"), reply.get("error"))
            return
        try:
            wire.spool(self.spool_dir, request)
        except OSError as exc:
            log.error("names: cannot spool a registration in %s: %s", self.spool_dir, exc)
