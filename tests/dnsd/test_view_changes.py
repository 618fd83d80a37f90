"""A change in the view is answered correctly by the very next query (the packed-answer cache never lies)."""
from __future__ import annotations

import dataclasses

import dns.message
import dns.query
import dns.rcode

from discovery.model import EndpointRecord, Health, PortBinding

from tests.waiting import wait_until

from .conftest import sample_records, write_records

Z = "berth.internal"


def ask(port: int, name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(query, "127.0.0.1", port=port, timeout=3)
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=3)


def addresses(reply: dns.message.Message) -> list[str]:
    return sorted(r.address for rrset in reply.answer for r in rrset)


def test_added_endpoint_is_answered_at_once(live_view):
    view, server = live_view
    assert ask(server.port, f"btnew.{Z}").rcode() == dns.rcode.NXDOMAIN  # now cached as NXDOMAIN
    view.put(EndpointRecord(id="new/eth0", name="btnew", addresses=("10.89.0.77",), service="btweb"))
    assert addresses(ask(server.port, f"btnew.{Z}")) == ["10.89.0.77"]
    assert addresses(ask(server.port, f"btnew.{Z}", tcp=True)) == ["10.89.0.77"]
    assert "10.89.0.77" in addresses(ask(server.port, f"btweb.service.{Z}"))


def test_removed_endpoint_disappears_at_once(live_view):
    view, server = live_view
    assert addresses(ask(server.port, f"btweb1.{Z}")) == ["10.89.0.11"]
    view.remove("c1/eth0")
    assert ask(server.port, f"btweb1.{Z}").rcode() == dns.rcode.NXDOMAIN
    assert addresses(ask(server.port, f"btweb.service.{Z}")) == ["10.89.0.12"]


def test_health_change_moves_endpoint_out_and_back(live_view):
    view, server = live_view
    web2 = next(r for r in sample_records() if r.id == "c2/eth0")
    for _ in range(3):  # fill the cache, every rotation
        ask(server.port, f"btweb.service.{Z}")
    view.put(dataclasses.replace(web2, health=Health.CRITICAL))
    assert addresses(ask(server.port, f"btweb.service.{Z}")) == ["10.89.0.11"]
    view.put(dataclasses.replace(web2, health=Health.PASSING))
    assert addresses(ask(server.port, f"btweb.service.{Z}")) == ["10.89.0.11", "10.89.0.12"]


def test_soa_serial_follows_the_revision(live_view):
    view, server = live_view
    before = ask(server.port, Z, "SOA").answer[0][0].serial
    view.put(EndpointRecord(id="x", name="btx", addresses=("10.89.0.5",), ports=(PortBinding(1),)))
    assert ask(server.port, Z, "SOA").answer[0][0].serial > before


def test_records_file_change_reaches_the_running_process(start_dns, tmp_path):
    path = tmp_path / "records.json"
    write_records(path, sample_records())
    server = start_dns("--records", str(path), "--no-forward")
    assert addresses(ask(server.port, f"btweb1.{Z}")) == ["10.89.0.11"]
    moved = [dataclasses.replace(r, addresses=("10.89.1.11",)) if r.id == "c1/eth0" else r
             for r in sample_records()]
    write_records(path, moved)
    assert wait_until(lambda: addresses(ask(server.port, f"btweb1.{Z}")) == ["10.89.1.11"])


def test_records_file_replaced_by_one_of_the_same_size_and_mtime_is_reread(tmp_path):
    """A file replaced atomically within one tick of the file system's clock keeps its mtime; if its size is the
    same too, only the inode (and ctime) tell the versions apart. The view must follow it."""
    import os

    from dnsd.view import FileView

    path = tmp_path / "records.json"
    write_records(path, sample_records())
    before = os.stat(path)
    view = FileView(str(path), poll_interval=0.05)
    try:
        moved = [dataclasses.replace(r, addresses=("10.89.1.11",)) if r.id == "c1/eth0" else r
                 for r in sample_records()]
        write_records(path, moved)  # same length: one digit changed
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as if written in the same clock tick
        assert os.stat(path).st_size == before.st_size
        wait_until(lambda: view.records()["c1/eth0"].addresses == ("10.89.1.11",), what="the view re-reading")
    finally:
        view.stop()
