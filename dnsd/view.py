"""What dnsd reads: a view of endpoint records with a revision.

The core depends only on this small Protocol, so tests hand it records directly and ``berth dns --store`` hands it
the discovery view that follows the datastore. The revision is how the wire layer knows its packed answers are stale.
"""
from __future__ import annotations

import logging
import threading
from typing import Iterable, Mapping, Protocol

from discovery.model import EndpointRecord

log = logging.getLogger("berth.dnsd")


class RecordView(Protocol):
    @property
    def revision(self) -> int:
        """Changes (grows) whenever the records change."""

    def records(self) -> Mapping[str, EndpointRecord]:
        """The current endpoint records by key (the shape of ``discovery.view.DiscoveryView.records()``)."""


class StaticView:
    """Records held in memory; every change bumps the revision. For tests and for ``--records FILE``."""

    def __init__(self, records: Iterable[EndpointRecord] = ()) -> None:
        self._lock = threading.Lock()
        self._records = {r.id: r for r in records}
        self.revision = 1

    def records(self) -> dict[str, EndpointRecord]:
        with self._lock:
            return dict(self._records)

    def put(self, record: EndpointRecord) -> None:
        with self._lock:
            self._records[record.id] = record
            self.revision += 1

    def remove(self, record_id: str) -> None:
        with self._lock:
            self._records.pop(record_id, None)
            self.revision += 1

    def replace(self, records: Iterable[EndpointRecord]) -> None:
        with self._lock:
            self._records = {r.id: r for r in records}
            self.revision += 1


class FileView(StaticView):
    """Records from a JSON file (a list of record objects), re-read when the file changes. For ``--records``."""

    def __init__(self, path: str, poll_interval: float = 0.2) -> None:
        self.path = path
        self._mtime = self._stat()  # before reading: a change in between is then seen at the next poll
        super().__init__(self._load(path))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, args=(poll_interval,), daemon=True)
        self._thread.start()

    @staticmethod
    def _load(path: str) -> list[EndpointRecord]:
        import json
        with open(path, encoding="utf-8") as f:
            return [EndpointRecord.from_dict(item) for item in json.load(f)]

    def _stat(self) -> tuple[int, int, int, int]:
        """What tells one version of the file from another. The inode and ctime too: a file replaced (the atomic
        way, os.replace) within one tick of the file system's clock by one of the same size has the same mtime."""
        import os
        st = os.stat(self.path)
        return st.st_ino, st.st_ctime_ns, st.st_mtime_ns, st.st_size

    def _follow(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                stamp = self._stat()
                if stamp != self._mtime:
                    self._mtime = stamp
                    self.replace(self._load(self.path))
            except (OSError, ValueError) as exc:  # a half-written file: keep the old records, try again
                log.warning("cannot read %s (keeping the records read before): %s", self.path, exc)

    def stop(self) -> None:
        self._stop.set()
