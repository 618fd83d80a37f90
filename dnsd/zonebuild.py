"""Keeping the zone current as the view changes: each revision's :class:`~dnsd.names.ZoneIndex` is made from the
previous one by applying only the endpoints that changed, so one registration among 10,000 endpoints costs the
records of one endpoint, not a rebuild of all of them.

Record sets count how many endpoints contribute each record (two instances on one address share an address name;
every instance of a service shares its name), so removing one endpoint removes exactly what no other still holds.
Indexes already handed out are never changed: an update copies the top-level tables (a C-speed dict copy) and
each name's record sets before it first touches them (copy on write), so readers on other threads keep a whole,
consistent index while the next one is made.
"""
from __future__ import annotations

from typing import Mapping

from discovery.model import EndpointRecord, Health

from .names import Entry, ZoneConfig, ZoneIndex, address_type, endpoint_entries
from .records import NS, SOA, Record, Soa

RrSets = dict[int, dict[Record, int]]  # rtype -> record -> how many endpoints hold it


class _Tables:
    """One update's copies of the builder's tables; ``fresh`` names are this update's own and need no copy."""

    def __init__(self, forward: dict, reverse: dict, below: dict[str, int], zone: str) -> None:
        self.forward, self.reverse, self.below = forward, reverse, below
        self.suffix = "." + zone
        self.copied: set[tuple[bool, str]] = set()

    def _rrsets(self, is_reverse: bool, name: str, create: bool) -> RrSets | None:
        table = self.reverse if is_reverse else self.forward
        rrsets = table.get(name)
        if (is_reverse, name) in self.copied:
            return rrsets
        if rrsets is None:
            if not create:
                return None
            rrsets = table[name] = {}
            if not is_reverse:
                self._count_below(name, +1)
        else:
            rrsets = table[name] = {rtype: dict(records) for rtype, records in rrsets.items()}
        self.copied.add((is_reverse, name))
        return rrsets

    def add(self, entry: Entry) -> None:
        is_reverse, record = entry
        rrset = self._rrsets(is_reverse, record.name, True).setdefault(record.rtype, {})
        rrset[record] = rrset.get(record, 0) + 1

    def remove(self, entry: Entry) -> None:
        is_reverse, record = entry
        rrsets = self._rrsets(is_reverse, record.name, False)
        rrset = rrsets.get(record.rtype) if rrsets is not None else None
        if rrset is None or record not in rrset:
            return
        if rrset[record] > 1:
            rrset[record] -= 1
            return
        del rrset[record]
        if not rrset:
            del rrsets[record.rtype]
        if not rrsets:
            del (self.reverse if is_reverse else self.forward)[record.name]
            self.copied.discard((is_reverse, record.name))
            if not is_reverse:
                self._count_below(record.name, -1)

    def _count_below(self, name: str, step: int) -> None:
        """Keep, for every ancestor inside the zone, how many names with records lie below it (empty
        non-terminals answer NODATA, not NXDOMAIN)."""
        while name.endswith(self.suffix):
            name = name.partition(".")[2]
            count = self.below.get(name, 0) + step
            if count:
                self.below[name] = count
            else:
                self.below.pop(name, None)

    def set_soa(self, record: Record) -> None:
        rrsets = self._rrsets(False, record.name, True)
        rrsets[SOA] = {record: 1}


class ZoneBuilder:
    """Owns the current tables and each endpoint's entries; :meth:`update` returns the index for a revision."""

    def __init__(self, config: ZoneConfig) -> None:
        self.config = config
        self._endpoints: dict[str, tuple[EndpointRecord, tuple[Entry, ...]]] = {}
        self._forward: dict[str, RrSets] = {}
        self._reverse: dict[str, RrSets] = {}
        self._below: dict[str, int] = {}
        self._started = False

    def _apex_entries(self) -> list[Entry]:
        z, cfg = self.config.zone, self.config
        ns_name = f"ns.{z}"
        return [(False, Record(z, NS, cfg.ttl, ns_name))] + [
            (False, Record(ns_name, address_type(a), cfg.ttl, a)) for a in cfg.nameserver_addresses]

    def update(self, records: Mapping[str, EndpointRecord], revision: int) -> ZoneIndex:
        live = {key: r for key, r in records.items() if r.health != Health.CRITICAL}
        old = self._endpoints
        gone = [k for k, (r, _) in old.items() if k not in live or (live[k] is not r and live[k] != r)]
        new = [k for k in live if k not in old] + [k for k in gone if k in live]
        if not self._started or len(gone) + len(new) > max(64, len(live) // 4):
            tables = _Tables({}, {}, {}, self.config.zone)  # a big change: afresh is cheaper
            for entry in self._apex_entries():
                tables.add(entry)
            old.clear()
            gone, new = [], list(live)
            self._started = True
        else:
            tables = _Tables(self._forward.copy(), self._reverse.copy(), self._below.copy(), self.config.zone)
        for key in gone:
            for entry in old.pop(key)[1]:
                tables.remove(entry)
        for key in sorted(new, key=lambda k: live[k].id):
            record = live[key]
            entries = endpoint_entries(record, self.config.zone, self.config.ttl)
            old[key] = (record, entries)
            for entry in entries:
                tables.add(entry)
        z, cfg = self.config.zone, self.config
        soa = Record(z, SOA, cfg.negative_ttl,
                     Soa(f"ns.{z}", f"hostmaster.{z}", revision % 2**32, 3600, 600, 86400, cfg.negative_ttl))
        tables.set_soa(soa)
        self._forward, self._reverse, self._below = tables.forward, tables.reverse, tables.below
        return ZoneIndex.from_tables(cfg, revision, tables.forward, tables.reverse, tables.below)
