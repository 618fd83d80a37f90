"""Pure tier: the view's reconciliation, health transitions, Consul parsing and the publishing plan."""
from __future__ import annotations

import json

import pytest

from discovery import health as hc
from discovery.consul_schema import parse_registration
from discovery.model import EndpointRecord, Health, InvalidRecord, endpoint_key
from discovery.publish import Publishing, endpoint_keys, plan_change, plan_sync, skydns_path
from discovery.viewstate import ViewState


def rec(id_: str, name: str = "web", address: str = "10.0.0.2", **kw) -> EndpointRecord:
    return EndpointRecord(id=id_, name=name, addresses=(address,), host="h1", **kw)


def raw(record: EndpointRecord) -> bytes:
    return record.to_json().encode()


# -- the view ---------------------------------------------------------------------------------------------
def test_view_snapshot_then_deltas():
    view = ViewState()
    a, b = rec("a"), rec("b", "db")
    change = view.reset([("k/a", raw(a)), ("k/b", raw(b))], 10)
    assert set(change.added) == {"k/a", "k/b"} and view.revision == 10
    a2 = rec("a", address="10.0.0.9")
    change = view.apply(11, [("put", "k/a", raw(a2)), ("delete", "k/b", b""), ("put", "k/c", raw(rec("c")))])
    assert change.updated == {"k/a": a2}
    assert change.removed == {"k/b": b}
    assert set(change.added) == {"k/c"}
    assert set(view.records) == {"k/a", "k/c"} and view.revision == 11


def test_view_records_mapping_is_a_stable_snapshot():
    view = ViewState()
    view.reset([("k/a", raw(rec("a")))], 1)
    held = view.records
    view.apply(2, [("delete", "k/a", b"")])
    assert "k/a" in held and "k/a" not in view.records


def test_view_resync_reset_emits_only_the_difference():
    view = ViewState()
    a, b = rec("a"), rec("b", "db")
    view.reset([("k/a", raw(a)), ("k/b", raw(b))], 5)
    change = view.reset([("k/a", raw(a)), ("k/c", raw(rec("c")))], 9)
    assert not change.updated and set(change.added) == {"k/c"} and set(change.removed) == {"k/b"}


def test_view_put_then_delete_in_one_batch_is_no_change():
    view = ViewState()
    change = view.apply(3, [("put", "k/x", raw(rec("x"))), ("delete", "k/x", b"")])
    assert not change and not view.records


def test_view_skips_old_batches_and_invalid_values():
    view = ViewState()
    view.reset([("k/a", raw(rec("a"))), ("k/bad", b'{"id": "bad", "name": "no_underscores"}')], 7)
    assert set(view.records) == {"k/a"}
    assert not view.apply(7, [("delete", "k/a", b"")])
    assert "k/a" in view.records


# -- health ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,seconds", [("10s", 10), ("1m30s", 90), ("500ms", 0.5), ("1h", 3600),
                                          (2_000_000_000, 2.0)])
def test_durations(text, seconds):
    assert hc.parse_duration(text, "f") == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "10", "ten s", "-1s", True, None, "5s junk"])
def test_bad_durations_name_the_field(bad):
    with pytest.raises(InvalidRecord, match="Check.TTL"):
        hc.parse_duration(bad, "Check.TTL")


def test_ttl_check_goes_critical_when_not_refreshed_and_deregisters_after_deadline():
    spec = hc.CheckSpec(id="c", name="c", kind="ttl", ttl=5, deregister_after=30, initial=Health.PASSING)
    state = hc.initial_state(spec, now=100)
    assert hc.tick(spec, state, 104).status is Health.PASSING
    state = hc.observe(spec, state, Health.PASSING, "ok", 104)   # refreshed: deadline moves to 109
    assert hc.tick(spec, state, 108).status is Health.PASSING
    state = hc.tick(spec, state, 109)
    assert state.status is Health.CRITICAL and state.critical_since == 109
    assert not hc.should_deregister(spec, state, 138)
    assert hc.should_deregister(spec, hc.tick(spec, state, 139), 139)
    revived = hc.observe(spec, state, Health.PASSING, "back", 120)
    assert revived.critical_since is None and not hc.should_deregister(spec, revived, 500)


def test_probe_checks_schedule_and_keep_critical_since():
    spec = hc.CheckSpec(id="c", name="c", kind="tcp", target="127.0.0.1:1", interval=2)
    state = hc.initial_state(spec, 0)
    assert hc.due(spec, state, 0)
    state = hc.observe(spec, state, Health.CRITICAL, "refused", 1)
    assert state.critical_since == 0 and not hc.due(spec, state, 2.5) and hc.due(spec, state, 3)


def test_aggregate_is_worst():
    assert hc.aggregate([]) is Health.PASSING
    assert hc.aggregate([Health.PASSING, Health.WARNING]) is Health.WARNING
    assert hc.aggregate([Health.WARNING, Health.CRITICAL, Health.PASSING]) is Health.CRITICAL


# -- Consul registration parsing -------------------------------------------------------------------------
def test_consul_registration_any_case_with_checks():
    reg = parse_registration({"Name": "web", "ID": "web1", "Address": "10.1.0.5", "Port": 80, "Tags": ["v1"],
                              "Meta": {"a": "b"},
                              "checks": [{"tcp": "10.1.0.5:80", "interval": "1s",
                                          "DeregisterCriticalServiceAfter": "1m"},
                                         {"TTL": "15s", "CheckID": "mine"}]}, "h1", "127.0.0.1")
    assert reg.record.id == "web1" and reg.record.ports[0].port == 80 and reg.record.tags == ("v1",)
    assert [c.id for c in reg.checks] == ["service:web1:1", "mine"]
    assert reg.checks[0].deregister_after == 60 and reg.checks[1].ttl == 15


def test_consul_registration_defaults_address_and_single_check_id():
    reg = parse_registration({"name": "db", "check": {"ttl": "5s"}}, "h1", "192.0.2.1")
    assert reg.record.addresses == ("192.0.2.1",) and reg.record.id == "db"
    assert reg.checks[0].id == "service:db" and reg.checks[0].initial is Health.CRITICAL


@pytest.mark.parametrize("body,field", [
    ({"Name": "web_api"}, "name"),
    ({"Name": "web", "Address": "not-an-ip"}, "addresses"),
    ({"Name": "web", "Port": 70000}, "Port"),
    ({"Name": "web", "Check": {"TTL": "0s"}}, "TTL"),
    ({"Name": "web", "Check": {"TTL": "-5s"}}, "TTL"),
    ({"Name": "web", "Check": {"TCP": "nohost", "Interval": "1s"}}, "TCP"),
    ({"Name": "web", "Check": {"TCP": "127.0.0.1:80"}}, "Interval"),
    ({"Name": "web", "Check": {"Args": ["true"], "Interval": "1s"}}, "not supported"),
    ({"Tags": []}, "Name"),
])
def test_bad_consul_registration_names_the_field(body, field):
    with pytest.raises(InvalidRecord, match=field):
        parse_registration(body, "h1", "127.0.0.1")


# -- publishing -----------------------------------------------------------------------------------------
def test_skydns_keys_reverse_the_zone_and_drop_critical_endpoints():
    assert skydns_path("web.berth.internal") == "/skydns/internal/berth/web"
    pub = Publishing(host="h1", skydns_zone="berth.internal", dns_ttl=7)
    r = rec("c1/eth0", aliases=("www",))
    keys = endpoint_keys(r, pub)
    assert endpoint_key("h1", "c1/eth0") in keys
    sky = {k: json.loads(v) for k, v in keys.items() if k.startswith("/skydns/")}
    assert {k.rsplit("/", 1)[0] for k in sky} == {"/skydns/internal/berth/web", "/skydns/internal/berth/www"}
    assert all(v["host"] == "10.0.0.2" and v["ttl"] == 7 for v in sky.values())
    critical = EndpointRecord.from_dict({**r.to_dict(), "health": "critical"})
    assert list(endpoint_keys(critical, pub)) == [endpoint_key("h1", "c1/eth0")]
    assert list(endpoint_keys(r, Publishing(host="h1"))) == [endpoint_key("h1", "c1/eth0")]


def test_plan_sync_puts_missing_changed_and_old_lease_deletes_strays():
    desired = {"/a": b"1", "/b": b"2", "/c": b"3"}
    stored = [("/a", b"1", 7), ("/b", b"old", 7), ("/c", b"3", 6), ("/stray", b"x", 7)]
    plan = plan_sync(desired, stored, lease=7)
    assert dict(plan.puts) == {"/b": b"2", "/c": b"3"} and plan.deletes == ("/stray",)
    assert not plan_sync(desired, [(k, v, 7) for k, v in desired.items()], 7)


def test_plan_change():
    plan = plan_change({"/a": b"1", "/b": b"2"}, {"/a": b"1", "/c": b"3"})
    assert dict(plan.puts) == {"/c": b"3"} and plan.deletes == ("/b",)


@pytest.mark.parametrize("name", ["web\n", "web.\n", "a\nb", "web\r"])
def test_names_with_a_line_break_are_refused(name):
    """Matched in full: a regex `$` would accept a final newline, and such a name would reach DNS and the store."""
    with pytest.raises(InvalidRecord):
        EndpointRecord(id="x", name=name, addresses=("10.0.0.1",))
    with pytest.raises(InvalidRecord):
        EndpointRecord(id="x", name="web", aliases=(name,), addresses=("10.0.0.1",))


@pytest.mark.parametrize("address", ["fe80::1%eth0", "fd00::5%2"])
def test_an_address_with_a_zone_is_refused(address):
    """A scoped address cannot go into a DNS answer (dnslib fails to pack it), so it never enters the catalogue."""
    with pytest.raises(InvalidRecord, match="addresses.*zone"):
        EndpointRecord(id="x", name="web", addresses=(address,))
    with pytest.raises(InvalidRecord, match="zone"):
        parse_registration({"Name": "web", "Address": address}, "h1", "127.0.0.1")
