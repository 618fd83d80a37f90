"""The running ``berth dns`` as dig sees it (the tool people debug DNS with)."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.skipif(shutil.which("dig") is None, reason="dig (dnsutils) is not installed")

Z = "berth.internal"


def dig(server, *args: str) -> str:
    out = subprocess.run(["dig", f"@{server.host}", "-p", str(server.port), "+time=2", "+tries=1", *args],
                         capture_output=True, text=True, timeout=20)
    return out.stdout


def section(output: str, name: str) -> list[str]:
    """The record lines of one section of dig's output."""
    match = re.search(rf";; {name} SECTION:\n(.*?)(?:\n\n|\Z)", output, re.S)
    return [line for line in match.group(1).splitlines() if line and not line.startswith(";")] if match else []


def test_a_record_is_authoritative_with_default_ttl(dns_module_server):
    out = dig(dns_module_server, f"btweb1.{Z}", "A")
    assert "status: NOERROR" in out and re.search(r"flags: qr aa", out)
    assert section(out, "ANSWER") and section(out, "ANSWER")[0].split() == [f"btweb1.{Z}.", "5", "IN", "A",
                                                                           "10.89.0.11"]


def test_nxdomain_carries_soa_with_negative_ttl(dns_module_server):
    out = dig(dns_module_server, f"btnothere.{Z}", "A")
    assert "status: NXDOMAIN" in out and "flags: qr aa" in out
    soa = section(out, "AUTHORITY")
    assert len(soa) == 1 and soa[0].split()[3] == "SOA" and soa[0].split()[-1] == "5"


def test_nodata_is_noerror_empty_with_soa(dns_module_server):
    out = dig(dns_module_server, f"btweb1.{Z}", "AAAA")
    assert "status: NOERROR" in out and "ANSWER: 0" in out
    assert section(out, "AUTHORITY")[0].split()[3] == "SOA"


def test_empty_non_terminal_is_noerror(dns_module_server):
    out = dig(dns_module_server, f"service.{Z}", "A")
    assert "status: NOERROR" in out and "ANSWER: 0" in out


def test_question_case_is_echoed(dns_module_server):
    out = dig(dns_module_server, "BtWeB1.BeRtH.InTeRnAl", "A")
    assert ";BtWeB1.BeRtH.InTeRnAl.\t" in out
    assert section(out, "ANSWER")[0].split()[-1] == "10.89.0.11"


def test_srv_with_additional_addresses(dns_module_server):
    out = dig(dns_module_server, f"_btweb._tcp.service.{Z}", "SRV")
    srv = sorted(line.split()[-4:] for line in section(out, "ANSWER"))
    web1, web2 = f"0a59000b.addr.{Z}.", f"0a59000c.addr.{Z}."  # one target per instance: its address
    assert srv == [["1", "1", "8080", web1], ["1", "1", "8080", web2]]
    extra = sorted((line.split()[0], line.split()[-1]) for line in section(out, "ADDITIONAL"))
    assert extra == [(web1, "10.89.0.11"), (web2, "10.89.0.12")]
    assert dig(dns_module_server, web2, "+short").split() == ["10.89.0.12"]


def test_reverse_lookup_v4_and_v6(dns_module_server):
    assert dig(dns_module_server, "-x", "10.89.0.12", "+short").split() == [f"btweb2.{Z}."]
    assert dig(dns_module_server, "-x", "fd89::20", "+short").split() == [f"btdb.{Z}."]


def test_consul_style_names(dns_module_server):
    assert sorted(dig(dns_module_server, f"btweb.service.{Z}", "+short").split()) == ["10.89.0.11", "10.89.0.12"]
    assert dig(dns_module_server, f"primary.btweb.service.{Z}", "+short").split() == ["10.89.0.11"]
    assert dig(dns_module_server, f"btdup.btother.{Z}", "+short").split() == ["10.90.0.31"]


def test_critical_endpoint_is_not_answered(dns_module_server):
    assert "10.89.0.66" not in dig(dns_module_server, f"btweb.service.{Z}", "+short")
    assert "status: NXDOMAIN" in dig(dns_module_server, f"btsick.{Z}")


def test_big_answer_without_edns_sets_tc_and_tcp_gets_all(dns_module_server):
    udp = dig(dns_module_server, f"btmid.service.{Z}", "+noedns", "+ignore")
    assert re.search(r"flags: qr aa tc", udp) and "ANSWER: 0" in udp
    tcp = dig(dns_module_server, f"btmid.service.{Z}", "+tcp")
    assert "ANSWER: 50" in tcp and " tc" not in tcp.split("flags:")[1].split(";")[0]


def test_edns_size_lets_the_answer_fit(dns_module_server):
    out = dig(dns_module_server, f"btmid.service.{Z}", "+bufsize=1232", "+ignore")
    assert "ANSWER: 50" in out and "udp: 1232" in out


def test_unknown_edns_version_gets_badvers(dns_module_server):
    out = dig(dns_module_server, f"btweb1.{Z}", "+edns=1", "+noednsnegotiation")
    assert "status: BADVERS" in out and "EDNS: version: 0" in out


def test_unknown_opcode_gets_notimp(dns_module_server):
    assert "status: NOTIMP" in dig(dns_module_server, f"btweb1.{Z}", "+opcode=status")


def test_nameserver_name_resolves_to_the_listen_address(dns_module_server):
    assert dig(dns_module_server, f"{Z}", "NS", "+short").split() == [f"ns.{Z}."]
    assert dig(dns_module_server, f"ns.{Z}", "+short").split() == ["127.0.0.1"]


def test_forwarding_off_refuses_other_names(dns_module_server):
    assert "status: REFUSED" in dig(dns_module_server, "example.com", "A")
