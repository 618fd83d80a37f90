"""The few Docker Engine API calls the plugin makes, over dockerd's Unix socket, each with a deadline.

Only from outside a driver call: dockerd holds its network locks while it waits for the driver, so asking it
about networks from inside ``Join`` could wait on itself. The plugin asks at start-up (before it serves) and
from the names watcher's own thread.
"""
from __future__ import annotations

import http.client
import json
import socket
from typing import Any, Iterator
from urllib.parse import quote

API_VERSION = "v1.41"  # Docker 20.10; newer engines still serve it
CALL_TIMEOUT = 10.0
MAX_ANSWER = 16 << 20
MAX_EVENT = 1 << 20


class DockerUnavailable(Exception):
    """dockerd did not answer, or answered with an error."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("docker", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def socket_path(docker_host: str) -> str:
    if docker_host.startswith("unix://"):
        return docker_host[len("unix://"):]
    if docker_host.startswith("/"):
        return docker_host
    raise ValueError(f"--docker-host {docker_host!r}: only unix:// sockets are supported")


class DockerAPI:
    def __init__(self, docker_host: str) -> None:
        self.path = socket_path(docker_host)

    def _get(self, url: str, timeout: float = CALL_TIMEOUT) -> Any:
        conn = _UnixConnection(self.path, timeout)
        try:
            conn.request("GET", f"/{API_VERSION}{url}")
            answer = conn.getresponse()
            body = answer.read(MAX_ANSWER + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise DockerUnavailable(f"dockerd at {self.path}: {exc}") from None
        finally:
            conn.close()
        if answer.status == 404:
            return None
        if answer.status != 200 or len(body) > MAX_ANSWER:
            raise DockerUnavailable(f"dockerd: GET {url} answered {answer.status}")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise DockerUnavailable(f"dockerd: GET {url}: not JSON ({exc})") from None

    def networks(self, driver: str) -> list[dict]:
        """Docker's networks of ``driver`` (id, name, and the containers attached, with their endpoint ids)."""
        listed = self._get("/networks?filters=" + quote(json.dumps({"driver": [driver]}))) or []
        out = []
        for entry in listed:
            detail = self._get(f"/networks/{quote(entry['Id'])}")
            if detail is not None:
                out.append(detail)
        return out

    def ipam_subnets(self, driver: str) -> set[str]:
        """The subnets of every Docker network whose IPAM driver is ``driver``, whatever its network driver."""
        listed = self._get("/networks") or []
        return {c["Subnet"] for n in listed if (n.get("IPAM") or {}).get("Driver") == driver
                for c in (n["IPAM"].get("Config") or []) if c.get("Subnet")}

    def container(self, container_id: str) -> dict | None:
        return self._get(f"/containers/{quote(container_id)}/json")

    def network_events(self, idle_timeout: float) -> Iterator[dict]:
        """Network connect/disconnect events from now on. The request is made before this returns, so nothing
        that happens after the call is missed; the stream ends after ``idle_timeout`` quiet seconds, so the
        caller resyncs now and then and notices a dockerd that went away."""
        filters = quote(json.dumps({"type": ["network"], "event": ["connect", "disconnect"]}))
        conn = _UnixConnection(self.path, idle_timeout)
        try:
            conn.request("GET", f"/{API_VERSION}/events?filters={filters}")
            answer = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise DockerUnavailable(f"dockerd at {self.path}: events: {exc}") from None
        if answer.status != 200:
            conn.close()
            raise DockerUnavailable(f"dockerd: events answered {answer.status}")
        return _events(conn, answer)


def _events(conn: http.client.HTTPConnection, answer: http.client.HTTPResponse) -> Iterator[dict]:
    try:
        while True:
            line = answer.readline(MAX_EVENT)
            if not line:
                return
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                yield event
    except socket.timeout:
        return
    except (OSError, http.client.HTTPException) as exc:
        raise DockerUnavailable(f"events stream: {exc}") from None
    finally:
        conn.close()
