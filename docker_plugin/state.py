"""Records that must outlive the plugin process: Docker never replays networks or endpoints to a restarted plugin.

One JSON file per record under ``<state dir>/<kind>/<id>.json``, written to a temporary file, flushed and renamed,
so a crash leaves either the old record or the new one. The directory is root's alone (0700); a record file that
another user owns or could write is refused rather than trusted.
"""
from __future__ import annotations

import json
import os
import re
import stat
from typing import Any, Iterator

KINDS = ("networks", "endpoints", "pools")
RECORD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")
MAX_RECORD = 256 << 10


class StateError(Exception):
    """The state directory cannot be used, or holds a record we must not trust."""


def check_id(record_id: str, what: str) -> str:
    if not isinstance(record_id, str) or not RECORD_ID.match(record_id):
        raise ValueError(f"{what}: {record_id!r} is not a valid id")
    return record_id


class StateDir:
    def __init__(self, root: str) -> None:
        self.root = root
        for kind in ("", *KINDS):
            path = os.path.join(root, kind)
            os.makedirs(path, mode=0o700, exist_ok=True)
            self._check_private(path)

    @staticmethod
    def _check_private(path: str) -> None:
        info = os.lstat(path)
        if info.st_uid != os.geteuid() or info.st_mode & 0o022 or (stat.S_ISLNK(info.st_mode)):
            raise StateError(f"{path}: must be owned by uid {os.geteuid()} and not writable by others")

    def _path(self, kind: str, record_id: str) -> str:
        assert kind in KINDS
        return os.path.join(self.root, kind, check_id(record_id, kind) + ".json")

    def put(self, kind: str, record_id: str, record: dict[str, Any]) -> None:
        path = self._path(kind, record_id)
        tmp = f"{path}.tmp.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        dir_fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def get(self, kind: str, record_id: str) -> dict[str, Any] | None:
        path = self._path(kind, record_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            self._check_private(path)
            data = f.read(MAX_RECORD + 1)
        if len(data) > MAX_RECORD:
            raise StateError(f"{path}: larger than {MAX_RECORD} bytes")
        try:
            record = json.loads(data)
        except ValueError as exc:
            raise StateError(f"{path}: not JSON ({exc})") from None
        if not isinstance(record, dict):
            raise StateError(f"{path}: not a JSON object")
        return record

    def delete(self, kind: str, record_id: str) -> None:
        try:
            os.unlink(self._path(kind, record_id))
        except FileNotFoundError:
            pass

    def all(self, kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
        folder = os.path.join(self.root, kind)
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".json"):
                continue
            record_id = name[:-len(".json")]
            record = self.get(kind, record_id)
            if record is not None:
                yield record_id, record
