"""Keeping the zone current as the view changes: each revision's :class:`~dnsd.names.ZoneIndex` is made from the
previous one by applying only the endpoints that changed, so one registration among 10,000 endpoints costs the
records of one endpoint, not a rebuild of all of them.

Memory is what this module is shaped by (a view of 10,000 endpoints has some 70,000 names):

- a name's node (``names.Node``) is its one record itself in the common case, else ``{rtype: tuple}``;
- a record several endpoints contribute (two instances on one address share an address name; a shared name and
  address) is stored once and counted apart, in :attr:`ZoneBuilder._holders`, so removing one endpoint removes
  exactly what no other still holds; a record held once has no count at all;
- the builder keeps each endpoint's record, not its records: they are made again from it when it goes.

Indexes already handed out are never changed: an update copies the top-level tables (a C-speed dict copy), turns
the nodes it touches into working sets of its own (copy on write) and freezes them back before handing its
index out, so readers on other threads keep a whole, consistent index while the next one is made.
"""
from __future__ import annotations

from typing import Mapping

from discovery.model import EndpointRecord, Health

from .names import Node, ZoneConfig, ZoneIndex, address_type, endpoint_records
from .records import NS, PTR, SOA, Record, Soa

Working = dict[int, dict[Record, None]]  # a node being changed: rtype -> records (a dict keeps their order)


class _Tables:
    """One update's copies of the builder's tables; ``working`` names hold this update's own mutable nodes."""

    def __init__(self, forward: dict[str, Node], reverse: dict[str, Node], below: dict[str, int],
                 holders: dict[Record, int], zone: str) -> None:
        self.forward, self.reverse, self.below, self.holders = forward, reverse, below, holders
        self.suffix = "." + zone
        self.working: dict[bool, set[str]] = {False: set(), True: set()}

    def _working(self, is_reverse: bool, name: str, node: Node) -> Working:
        """The name's node as this update's own working set (made from the frozen one on first touch)."""
        if name in self.working[is_reverse]:
            return node
        if node.__class__ is Record:
            working = {node.rtype: {node: None}}
        else:
            working = {rtype: dict.fromkeys(records) for rtype, records in node.items()}
        (self.reverse if is_reverse else self.forward)[name] = working
        self.working[is_reverse].add(name)
        return working

    def add(self, record: Record) -> None:
        is_reverse = record.rtype == PTR
        table = self.reverse if is_reverse else self.forward
        node = table.get(record.name)
        if node is None:
            table[record.name] = record
            if not is_reverse:
                self._count_below(record.name, +1)
            return
        if node.__class__ is Record and node == record:
            self._hold(node)
            return
        working = self._working(is_reverse, record.name, node)
        first = next(iter(next(iter(working.values()))))
        if first.name is not record.name:  # one string per owner name, however many endpoints share it
            record = Record(first.name, record.rtype, record.ttl, record.rdata)
        records = working.get(record.rtype)
        if records is None:
            working[record.rtype] = {record: None}
        elif record in records:
            self._hold(record)
        else:
            records[record] = None

    def _hold(self, record: Record) -> None:
        """One more endpoint holds a record already there."""
        self.holders[record] = self.holders.get(record, 1) + 1

    def remove(self, record: Record) -> None:
        held = self.holders.get(record)
        if held is not None:  # others still hold it
            if held > 2:
                self.holders[record] = held - 1
            else:
                del self.holders[record]
            return
        is_reverse = record.rtype == PTR
        node = (self.reverse if is_reverse else self.forward).get(record.name)
        if node is None:
            return
        if node.__class__ is Record:
            if node == record:
                self._drop(is_reverse, record.name)
            return
        working = self._working(is_reverse, record.name, node)
        records = working.get(record.rtype)
        if records is None or record not in records:
            return
        del records[record]
        if not records:
            del working[record.rtype]
        if not working:
            self._drop(is_reverse, record.name)

    def _drop(self, is_reverse: bool, name: str) -> None:
        del (self.reverse if is_reverse else self.forward)[name]
        self.working[is_reverse].discard(name)
        if not is_reverse:
            self._count_below(name, -1)

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
        working = self._working(False, record.name, self.forward[record.name])
        working[SOA] = {record: None}

    def freeze(self) -> None:
        """Every working set back to an immutable node: the lone record itself, or {rtype: tuple}."""
        for is_reverse, names in self.working.items():
            table = self.reverse if is_reverse else self.forward
            for name in names:
                working = table[name]
                if len(working) == 1:
                    (records,) = working.values()
                    if len(records) == 1:
                        table[name] = next(iter(records))
                        continue
                table[name] = {rtype: tuple(records) for rtype, records in working.items()}
            names.clear()


class ZoneBuilder:
    """Owns the current tables and the endpoints they were made from; :meth:`update` returns a revision's
    index."""

    def __init__(self, config: ZoneConfig) -> None:
        self.config = config
        self._endpoints: dict[str, EndpointRecord] = {}
        self._forward: dict[str, Node] = {}
        self._reverse: dict[str, Node] = {}
        self._below: dict[str, int] = {}
        self._holders: dict[Record, int] = {}  # how many endpoints hold a record, for those more than one holds
        self._started = False

    def _apex_records(self) -> list[Record]:
        z, cfg = self.config.zone, self.config
        ns_name = f"ns.{z}"
        return [Record(z, NS, cfg.ttl, ns_name)] + [
            Record(ns_name, address_type(a), cfg.ttl, a) for a in cfg.nameserver_addresses]

    def update(self, records: Mapping[str, EndpointRecord], revision: int) -> ZoneIndex:
        try:
            return self._update(records, revision)
        except BaseException:
            self._started = False  # the shared-record counts may be half applied: the next update starts afresh
            raise

    def _update(self, records: Mapping[str, EndpointRecord], revision: int) -> ZoneIndex:
        z, cfg = self.config.zone, self.config
        live = {key: r for key, r in records.items() if r.health != Health.CRITICAL}
        old = self._endpoints
        gone = [k for k, r in old.items() if k not in live or (live[k] is not r and live[k] != r)]
        new = [k for k in live if k not in old] + [k for k in gone if k in live]
        if not self._started or len(gone) + len(new) > max(64, len(live) // 4):
            tables = _Tables({}, {}, {}, {}, z)  # a big change: afresh is cheaper
            for record in self._apex_records():
                tables.add(record)
            gone, new = [], list(live)
            self._started = True
        else:
            tables = _Tables(self._forward.copy(), self._reverse.copy(), self._below.copy(), self._holders, z)
        for key in gone:
            for record in endpoint_records(old[key], z, cfg.ttl):
                tables.remove(record)
        for key in sorted(new, key=lambda k: live[k].id):
            for record in endpoint_records(live[key], z, cfg.ttl):
                tables.add(record)
        soa = Record(z, SOA, cfg.negative_ttl,
                     Soa(f"ns.{z}", f"hostmaster.{z}", revision % 2**32, 3600, 600, 86400, cfg.negative_ttl))
        tables.set_soa(soa)
        tables.freeze()
        self._forward, self._reverse, self._below, self._holders = (tables.forward, tables.reverse, tables.below,
                                                                    tables.holders)
        self._endpoints = live  # what the tables now hold (an unchanged endpoint's record equals the one before)
        return ZoneIndex.from_tables(cfg, revision, tables.forward, tables.reverse, tables.below, soa)
