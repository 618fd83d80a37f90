"""The pure half of the discovery view: snapshot + deltas in, ``{key: EndpointRecord}`` and change sets out.

No threads, no store: :class:`ViewState` is fed a listing (``reset``) or a :class:`store.api.WatchBatch`
(``apply``) and answers what changed, so the reconciliation is unit-tested without any backend.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping

from discovery.model import EndpointRecord, InvalidRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewChange:
    """What one step changed. ``added``/``updated`` map key → new record, ``removed`` maps key → the old one."""

    revision: int
    added: Mapping[str, EndpointRecord] = field(default_factory=dict)
    updated: Mapping[str, EndpointRecord] = field(default_factory=dict)
    removed: Mapping[str, EndpointRecord] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.updated or self.removed)


def _parse(key: str, value: bytes) -> EndpointRecord | None:
    """A stored value as a record; a value that fails validation is left out of the view (and logged) rather
    than poisoning every reader."""
    try:
        return EndpointRecord.from_json(value)
    except InvalidRecord as exc:
        log.warning("ignoring invalid endpoint record at %s: %s", key, exc)
        return None


class ViewState:
    """An exact copy of the records under one prefix at ``revision``.

    ``records`` is a read-only mapping replaced (never mutated) on each change, so a reader holding it sees one
    consistent revision even while the next batch is applied.
    """

    def __init__(self) -> None:
        self._records: dict[str, EndpointRecord] = {}
        self.records: Mapping[str, EndpointRecord] = MappingProxyType(self._records)
        self.revision = 0

    def reset(self, items: Iterable[tuple[str, bytes]], revision: int) -> ViewChange:
        """Replace everything with a fresh listing; the change is the difference from what was held."""
        fresh: dict[str, EndpointRecord] = {}
        for key, value in items:
            record = _parse(key, value)
            if record is not None:
                fresh[key] = record
        added = {k: r for k, r in fresh.items() if k not in self._records}
        updated = {k: r for k, r in fresh.items() if k in self._records and self._records[k] != r}
        removed = {k: r for k, r in self._records.items() if k not in fresh}
        self._install(fresh, revision)
        return ViewChange(revision, added, updated, removed)

    def apply(self, revision: int, events: Iterable[tuple[str, str, bytes]]) -> ViewChange:
        """Apply ordered ``(kind, key, value)`` events (``kind`` is ``put`` or ``delete``) up to ``revision``.

        A resynced batch (the store re-listed after losing its place) holds exactly the difference, so it is
        applied the same way. Events at or below the current revision are already reflected and skipped by
        the caller passing only newer batches.
        """
        if revision <= self.revision:
            return ViewChange(self.revision)
        new = dict(self._records)
        added: dict[str, EndpointRecord] = {}
        updated: dict[str, EndpointRecord] = {}
        removed: dict[str, EndpointRecord] = {}
        for kind, key, value in events:
            old = new.get(key)
            record = _parse(key, value) if kind == "put" else None
            if record is None:
                if old is not None:
                    del new[key]
                    if key in added:
                        del added[key]
                    else:
                        updated.pop(key, None)
                        removed[key] = self._records[key] if key in self._records else old
                continue
            new[key] = record
            if key in self._records and key not in added:
                removed.pop(key, None)
                if self._records[key] != record:
                    updated[key] = record
                else:
                    updated.pop(key, None)
            else:
                added[key] = record
        self._install(new, revision)
        return ViewChange(revision, added, updated, removed)

    def _install(self, records: dict[str, EndpointRecord], revision: int) -> None:
        self._records = records
        self.records = MappingProxyType(records)
        self.revision = revision
