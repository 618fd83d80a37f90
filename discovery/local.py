"""The agent's own endpoints, persisted under its state dir so a restart (or a crash) loses nothing.

One small JSON file per endpoint, written atomically (temp file + rename), so a crash mid-write leaves either
the old or the new version, never half of one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from discovery.health import CheckSpec
from discovery.model import EndpointRecord, InvalidRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalEndpoint:
    """An endpoint this host runs. ``netns`` is set for CNI attachments (gone netns → stale endpoint)."""

    record: EndpointRecord
    netns: str = ""
    checks: tuple[CheckSpec, ...] = ()
    source: str = "cni"  # who registered it: a face over the socket (SOCKET_FACES) or "api" (the Consul HTTP API)
    grant: str | None = ""  # for "api": the names the registrant's token granted (discovery.acl.Identity.grant)

    def to_dict(self) -> dict:
        return {"record": self.record.to_dict(), "netns": self.netns, "source": self.source,
                "checks": [c.to_dict() for c in self.checks], "grant": self.grant, "faces": FACES_FORMAT}

    @classmethod
    def from_dict(cls, d: dict) -> "LocalEndpoint":
        record = EndpointRecord.from_dict(d["record"])
        source = d.get("source", "cni")
        if source == "cni" and "faces" not in d and looks_like_docker_face(record):
            source = "docker"  # written before the agent told the faces apart
        return cls(record=record, netns=d.get("netns", ""),
                   checks=tuple(CheckSpec.from_dict(c) for c in d.get("checks", ())),
                   source=source, grant=_grant(d.get("grant", "")))


SOCKET_FACES = ("cni", "docker")  # berth-register, berth docker-plugin: each GCs only its own registrations
FACES_FORMAT = 1  # files that carry it name the Docker face in "source"; older ones are told by the record


def looks_like_docker_face(record: EndpointRecord) -> bool:
    """The Docker plugin's registrations: tagged ``docker``, the interface name the network id's 12 hex digits
    and the id ``<container>/<that>`` (``docker_plugin.names.build_record``); no CNI interface is named so."""
    ifname = record.ifname or ""
    return ("docker" in record.tags and len(ifname) == 12 and all(c in "0123456789abcdef" for c in ifname)
            and record.id == f"{record.container_id}/{ifname}")


def _grant(value: object) -> str | None:
    """Files written before grants were kept count as granted: an upgrade must not withdraw what was accepted."""
    if value is None or isinstance(value, str):
        return value
    raise InvalidRecord(f"grant: {value!r} is not a name prefix")


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def file_name(endpoint_id: str) -> str:
    """A fixed-length name from a digest of the ID: no ID can reach outside the directory or exceed the file
    system's name limit (the ID itself is inside the file)."""
    return hashlib.sha256(endpoint_id.encode()).hexdigest() + ".json"


def legacy_file_name(endpoint_id: str) -> str:
    """The name earlier versions used (percent-quoted ID); still read and cleaned up."""
    return f"{quote(endpoint_id, safe='')}.json"


class LocalEndpoints:
    """``<state dir>/endpoints/<sha256 of id>.json`` (files named ``<quoted id>.json`` are read too)."""

    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.dir = Path(state_dir) / "endpoints"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, endpoint_id: str) -> Path:
        return self.dir / file_name(endpoint_id)

    def save(self, endpoint: LocalEndpoint) -> None:
        write_atomic(self._path(endpoint.record.id), json.dumps(endpoint.to_dict()).encode())
        self._remove_legacy(endpoint.record.id)

    def remove(self, endpoint_id: str) -> None:
        try:
            self._path(endpoint_id).unlink()
        except FileNotFoundError:
            pass
        self._remove_legacy(endpoint_id)

    def _remove_legacy(self, endpoint_id: str) -> None:
        name = legacy_file_name(endpoint_id)
        if name == file_name(endpoint_id) or len(name.encode()) > 255:
            return
        try:
            (self.dir / name).unlink()
        except FileNotFoundError:
            pass

    def load(self) -> dict[str, LocalEndpoint]:
        out: dict[str, LocalEndpoint] = {}
        for path in sorted(self.dir.glob("*.json")):
            try:
                endpoint = LocalEndpoint.from_dict(json.loads(path.read_bytes()))
            except (OSError, ValueError, KeyError, TypeError, InvalidRecord) as exc:
                log.warning("ignoring unreadable endpoint file %s: %s", path, exc)
                continue
            eid = endpoint.record.id
            if path.name not in (file_name(eid), legacy_file_name(eid)):
                log.warning("ignoring endpoint file %s: id %r does not match", path, eid)
                continue
            if eid in out and path.name != file_name(eid):
                continue  # both names exist (a crash between writing the new and removing the old): new wins
            out[eid] = endpoint
        return out


class LeaseFile:
    """``<state dir>/lease``: the store lease the agent's records live under, so that a restart within the TTL
    keeps that lease (and the records stay in the store without a gap) instead of granting a new one."""

    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.path = Path(state_dir) / "lease"

    def load(self) -> int:
        """The saved lease ID, or 0 when there is none (or it is unreadable: a new lease is granted)."""
        try:
            text = self.path.read_text().strip()
            lease_id = int(text, 16)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable lease file %s: %s", self.path, exc)
            return 0
        return lease_id if lease_id > 0 else 0

    def save(self, lease_id: int) -> None:
        write_atomic(self.path, f"{lease_id:x}\n".encode())
