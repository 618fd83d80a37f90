"""End to end: records written to a real SQLite store are answered by a running ``berth dns --store``."""
from __future__ import annotations

import dataclasses

import dns.message
import dns.query
import dns.rcode

from discovery.model import EndpointRecord, Health, PortBinding, endpoint_key
from store.api import open_store

from tests.waiting import wait_until

Z = "berth.internal"


def ask(port: int, name: str, rdtype: str = "A") -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=3)


def addresses(port: int, name: str) -> list[str]:
    return sorted(r.address for rrset in ask(port, name).answer for r in rrset)


def test_store_records_are_served_and_followed(start_dns, tmp_path):
    url = f"sqlite:///{tmp_path / 'berth.db'}"
    store = open_store(url)
    try:
        api = EndpointRecord(id="api1/eth0", name="btapi1", service="btapi", network="btnet",
                             addresses=("10.93.0.2",), ports=(PortBinding(9000),))
        store.put(endpoint_key("bthost", api.id), api.to_json().encode())
        server = start_dns("--store", url, "--no-forward", "--workers", "2")
        assert addresses(server.port, f"btapi1.{Z}") == ["10.93.0.2"]
        srv = ask(server.port, f"_btapi._tcp.service.{Z}", "SRV")
        assert [(r.port, r.target.to_text()) for r in srv.answer[0]] == [(9000, f"0a5d0002.addr.{Z}.")]

        second = dataclasses.replace(api, id="api2/eth0", name="btapi2", addresses=("10.93.0.3",))
        store.put(endpoint_key("bthost", second.id), second.to_json().encode())
        assert wait_until(lambda: addresses(server.port, f"btapi.service.{Z}") == ["10.93.0.2", "10.93.0.3"])

        store.put(endpoint_key("bthost", api.id),
                  dataclasses.replace(api, health=Health.CRITICAL).to_json().encode())
        assert wait_until(lambda: addresses(server.port, f"btapi.service.{Z}") == ["10.93.0.3"])

        store.delete(endpoint_key("bthost", second.id))
        assert wait_until(lambda: ask(server.port, f"btapi2.{Z}").rcode() == dns.rcode.NXDOMAIN)
    finally:
        store.close()
