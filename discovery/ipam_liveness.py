"""Who may still hold cluster IPAM attachments, as discovery knows it: live agents (by host name) and what they
register. Cluster IPAM's judgement (:mod:`ipam.check`) takes it as a :class:`ipam.check.Liveness`; it lives here
because the keys it reads are discovery's, and ``ipam`` never imports the rooms above it."""
from __future__ import annotations

import ipaddress
import json
from typing import Mapping, Sequence

from discovery.model import ENDPOINTS_PREFIX, EndpointRecord, InvalidRecord
from discovery.publish import AGENTS_PREFIX
from ipam.check import IPAM_PREFIX, Liveness
from store.api import Store


def read_liveness(store: Store, ipam_kvs: Sequence,
                  runtime_lists: Mapping[str, frozenset[tuple[str, str]]] | None = None) -> Liveness:
    """Live IPAM hosts (from ``ipam_kvs``, a snapshot of ``/berth/ipam/``) and agents, and what live agents
    register."""
    hosts = {kv.key[len(IPAM_PREFIX + "hosts/"):] for kv in ipam_kvs if kv.key.startswith(IPAM_PREFIX + "hosts/")}
    for kv in store.get_prefix(AGENTS_PREFIX)[0]:
        try:
            hosts.add(str(json.loads(kv.value).get("host", "")))
        except (ValueError, AttributeError):
            continue
    containers, addresses = {}, {}
    for kv in store.get_prefix(ENDPOINTS_PREFIX)[0]:
        try:
            record = EndpointRecord.from_json(kv.value)
        except InvalidRecord:
            continue
        if record.container_id:
            containers[record.container_id] = record.host
        for text in record.addresses:
            try:
                addresses[ipaddress.ip_address(text)] = record.container_id or record.id
            except ValueError:
                continue
    return Liveness(frozenset(hosts), containers, addresses, dict(runtime_lists or {}))
