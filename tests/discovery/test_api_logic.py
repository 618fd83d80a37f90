"""The HTTP face's pure decisions: body framing, routing, indexes, blocking parameters, check states, ACL rules
and state file names — no sockets, no agent."""
from __future__ import annotations

import json
import os
import stat
from email.message import Message

import pytest

from discovery import acl as acl_mod
from discovery.acl import ANONYMOUS, MANAGEMENT, Acl, AclError, Identity, parse_tokens, presented_token
from discovery.consul_api import HttpError, match, parse_blocking, parse_json
from discovery.consul_index import IndexBook, digest, query_key
from discovery.consul_schema import check_service_id
from discovery.health import CheckSpec, initial_state, observe, tick
from discovery.http_server import BadRequest, body_length
from discovery.local import LocalEndpoint, LocalEndpoints, legacy_file_name
from discovery.model import EndpointRecord, Health, InvalidRecord


def headers(*pairs: tuple[str, str]) -> Message:
    msg = Message()
    for name, value in pairs:
        msg[name] = value
    return msg


@pytest.mark.parametrize("pairs,expected", [
    ((), 0), ((("Content-Length", "12"),), 12), ((("Content-Length", " 7 "),), 7),
])
def test_body_length_accepts_one_plain_number(pairs, expected):
    assert body_length(headers(*pairs), 100) == expected


@pytest.mark.parametrize("pairs,code", [
    ((("Content-Length", "x"),), 400), ((("Content-Length", "-1"),), 400), ((("Content-Length", "1e3"),), 400),
    ((("Content-Length", "3"), ("Content-Length", "3")), 400), ((("Content-Length", "101"),), 413),
    ((("Transfer-Encoding", "chunked"),), 411),
])
def test_body_length_refuses_the_rest(pairs, code):
    with pytest.raises(BadRequest) as err:
        body_length(headers(*pairs), 100)
    assert err.value.code == code


def test_routes_take_the_rest_of_the_path_as_the_id():
    routes, param = match("/v1/agent/service/deregister/team/web%2F1")
    assert [r.handler for r in routes] == ["deregister"] and param == "team/web/1"
    routes, param = match("/v1/agent/service/register")
    assert [r.handler for r in routes] == ["register"] and param == ""
    routes, param = match("/v1/agent/service/a/b")
    assert [r.handler for r in routes] == ["agent_service"] and param == "a/b"
    assert match("/v2/agent/services") == ([], "")
    assert match("/v1/agent/service/")[0] == []


def test_an_index_moves_only_when_the_answer_does():
    book = IndexBook()
    web, db = query_key("/v1/catalog/service/web", {}), query_key("/v1/catalog/service/db", {"index": ["3"]})
    assert book.index_for(web, digest(b"[]"), 0) == 1  # never 0
    assert book.index_for(web, digest(b"[]"), 9) == 1  # same answer, same index, whatever the revision
    assert book.index_for(db, digest(b"[1]"), 9) == 9
    assert book.index_for(web, digest(b"[2]"), 9) == 9
    assert book.index_for(web, digest(b"[3]"), 9) == 10  # changed without a new revision: still moves on
    assert book.index_for(web, digest(b"[2]"), 9) == 11  # back to an older answer: a new index, not 9 again


def test_index_and_wait_are_not_part_of_the_query():
    assert query_key("/p", {"index": ["5"], "wait": ["1s"], "tag": ["a"]}) == query_key("/p", {"tag": ["a"]})
    assert query_key("/p", {"tag": ["a"]}) != query_key("/p", {"tag": ["b"]})


def test_an_evicted_query_starts_above_every_index_it_could_have_had():
    book = IndexBook(capacity=2)
    keys = [query_key(f"/q{i}", {}) for i in range(3)]
    book.index_for(keys[0], digest(b"a"), 5)
    book.index_for(keys[0], digest(b"b"), 5)  # 6
    book.index_for(keys[1], digest(b"a"), 5)
    book.index_for(keys[2], digest(b"a"), 5)  # evicts keys[0] at 6
    assert len(book) == 2
    assert book.index_for(keys[0], digest(b"c"), 5) == 7


@pytest.mark.parametrize("query,expected", [
    ({}, (0, 300.0)), ({"index": ["12"], "wait": ["30s"]}, (12, 30.0)), ({"wait": ["1h"]}, (0, 600.0)),
    ({"index": [""]}, (0, 300.0)),
])
def test_blocking_parameters(query, expected):
    params = parse_blocking(query)
    assert (params.index, params.wait) == expected


@pytest.mark.parametrize("query", [{"index": ["-1"]}, {"index": ["x"]}, {"wait": ["60"]}, {"wait": ["-1s"]}])
def test_bad_blocking_parameters_are_400(query):
    with pytest.raises(HttpError) as err:
        parse_blocking(query)
    assert err.value.code == 400


def test_json_depth_is_bounded():
    assert parse_json(b'{"a": {"b": [1]}}') == {"a": {"b": [1]}}
    for body in (b"[" * 17 + b"]" * 17, b"[" * 100000 + b"]" * 100000):
        with pytest.raises(HttpError, match="nested deeper"):
            parse_json(body)
    with pytest.raises(HttpError, match="decode failed"):
        parse_json(b"{nope")


def test_a_probed_check_turns_critical_when_its_first_interval_passes_without_a_result():
    spec = CheckSpec(id="c", name="c", kind="http", target="http://127.0.0.1:1/", interval=2.0, timeout=300.0,
                     initial=Health.PASSING)
    state = initial_state(spec, now=100.0)
    assert tick(spec, state, 101.9).status is Health.PASSING
    late = tick(spec, state, 102.0)
    assert late.status is Health.CRITICAL and "first interval" in late.output
    answered = observe(spec, state, Health.PASSING, "ok", 101.0)
    assert tick(spec, answered, 500.0).status is Health.PASSING  # a check that answered keeps its own result


@pytest.mark.parametrize("sid", ["web1", "a/b", "team/web/1", "x" * 512, "service:web1", "a b"])
def test_service_ids_consul_clients_can_send_back(sid):
    assert check_service_id(sid) == sid


@pytest.mark.parametrize("sid", ["", "/a", "a/", "a//b", "../x", "a/./b", "x" * 513, "a\x00b", 5])
def test_service_ids_that_cannot_be_addressed_are_refused(sid):
    with pytest.raises(InvalidRecord, match="^ID"):
        check_service_id(sid)


def test_state_files_from_before_faces_read_the_docker_plugins_registrations_as_the_docker_face():
    docker = EndpointRecord(id="c1/0123456789ab", name="web", addresses=("10.1.0.1",), container_id="c1",
                            ifname="0123456789ab", tags=("docker",))
    cni = EndpointRecord(id="c2/eth0", name="db", addresses=("10.1.0.2",), container_id="c2", ifname="eth0",
                         tags=("docker",))
    old = {k: v for k, v in LocalEndpoint(docker).to_dict().items() if k != "faces"}  # as written before faces
    assert LocalEndpoint.from_dict(old).source == "docker"
    assert LocalEndpoint.from_dict({**old, "record": cni.to_dict()}).source == "cni"
    assert LocalEndpoint.from_dict(LocalEndpoint(docker, source="cni").to_dict()).source == "cni"  # said so: kept


def test_state_files_are_named_by_digest_and_old_names_are_still_read(tmp_path):
    files = LocalEndpoints(tmp_path)
    old = EndpointRecord(id="c1/eth0", name="web", addresses=("10.1.0.1",))
    (files.dir / legacy_file_name(old.id)).write_text(json.dumps(LocalEndpoint(old).to_dict()))
    assert set(files.load()) == {"c1/eth0"}
    files.save(LocalEndpoint(old))  # rewritten under the new name, the old one removed
    names = os.listdir(files.dir)
    assert len(names) == 1 and len(names[0]) == 64 + 5
    long_id = EndpointRecord(id="%" * 512, name="web", addresses=("10.1.0.2",))
    files.save(LocalEndpoint(long_id))  # quoted, this ID would be 1,536 characters
    assert set(files.load()) == {"c1/eth0", "%" * 512}
    files.remove(long_id.id)
    files.remove(old.id)
    assert os.listdir(files.dir) == []


# -- ACL ------------------------------------------------------------------------------------------------
def test_tokens_come_from_header_bearer_or_query():
    assert presented_token({"X-Consul-Token": "a"}, {"token": ["c"]}) == "a"
    assert presented_token({"Authorization": "Bearer b"}, {}) == "b"
    assert presented_token({}, {"token": ["c"]}) == "c"
    assert presented_token({"Authorization": "Basic zzz"}, {}) is None


def test_identities_and_write_rules():
    tokens = parse_tokens({"management": "m" * 32, "tokens": [{"secret": "w" * 32, "service_prefix": "web"}]})
    assert tokens.identify("m" * 32) is MANAGEMENT
    assert tokens.identify("w" * 32) == Identity("service", "web")
    assert tokens.identify("x" * 32) is None
    web = tokens.identify("w" * 32)
    assert web.may_write_name("web") and web.may_write_name("webapp") and not web.may_write_name("db")
    assert not ANONYMOUS.may_write_name("web")


@pytest.mark.parametrize("data", [[], {"management": "short"}, {"management": "m" * 32, "tokens": [{"secret": "s"}]},
                                  {"management": "m" * 32, "tokens": [{"secret": "s" * 32}]}])
def test_bad_token_files_are_refused(data):
    with pytest.raises(ValueError, match="token file"):
        parse_tokens(data)


def test_the_token_file_is_created_root_only_and_trusted_only_so(tmp_path):
    path = tmp_path / "acl" / "tokens.json"
    acl = Acl("deny", path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    management = json.loads(path.read_text())["management"]
    assert acl.identify(management) is MANAGEMENT
    with pytest.raises(AclError, match="ACL not found"):
        acl.identify("not-a-token-at-all")
    with pytest.raises(AclError, match="Permission denied"):
        acl.check_read(ANONYMOUS)
    with pytest.raises(AclError):
        acl.check_write(ANONYMOUS, "web")
    acl.check_write(MANAGEMENT, "web")
    path.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        acl_mod.read_token_file(path)


def test_allow_lets_anonymous_write_and_deny_holds_tokens_to_their_rules(tmp_path):
    rules = Acl("allow", tmp_path / "tokens.json")
    rules.check_read(ANONYMOUS)
    rules.check_write(ANONYMOUS, "web")
    rules.check_write(Identity("service", "db"), "web")  # as Consul: the default policy covers the rest
    rules.policy = "deny"
    with pytest.raises(AclError):
        rules.check_write(Identity("service", "db"), "web")


@pytest.mark.root
def test_spooled_requests_that_another_user_could_have_placed_are_not_trusted(tmp_path):
    """A spooled request becomes a container endpoint: only files the agent's own user wrote, in a directory
    no one else may write, are applied."""
    from discovery import wire
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    request = {"op": "add", "endpoint": {"id": "c/eth0", "name": "web", "addresses": ["10.1.0.1"]}}
    (spool / "1.json").write_text(json.dumps(request))
    (spool / "2.json").write_text(json.dumps(request))
    os.chown(spool / "2.json", 65534, 65534)
    assert [r for _, r in wire.spooled(str(spool))] == [request, None]
    spool.chmod(0o777)
    assert [r for _, r in wire.spooled(str(spool))] == [None, None]


def test_container_claims_follow_the_views_changes():
    from discovery.acl import ContainerClaims
    from discovery.viewstate import ViewChange
    web = EndpointRecord(id="c1/eth0", name="btweb1", service="btweb", aliases=("www",), addresses=("10.1.0.5",),
                         container_id="c1")
    api = EndpointRecord(id="api1", name="btapi", addresses=("10.1.0.9",))  # an HTTP registration: no claim
    claims = ContainerClaims()
    claims.apply(ViewChange(1, added={"k1": web, "k2": api}))
    assert all(claims.holds_name(n) for n in ("btweb1", "btweb", "www")) and not claims.holds_name("btapi")
    assert claims.services_at("10.1.0.5") == {"btweb"} and claims.services_at("10.1.0.9") == set()
    moved = EndpointRecord(id="c1/eth0", name="btweb1", service="btweb", addresses=("10.1.0.6",), container_id="c1")
    claims.apply(ViewChange(2, updated={"k1": moved}))
    assert claims.services_at("10.1.0.5") == set() and not claims.holds_name("www")
    claims.apply(ViewChange(3, removed={"k1": moved}))
    assert not claims.holds_name("btweb") and claims.services_at("10.1.0.6") == set()


def test_http_registrations_without_a_grant_give_way_to_a_container():
    """Squatting: a name or address registered over HTTP before a container claimed it stays only when the
    registrant's token granted that name."""
    from discovery.acl import ContainerClaims, Identity, squatters
    from discovery.local import LocalEndpoint
    from discovery.viewstate import ViewChange
    web = EndpointRecord(id="c1/eth0", name="btweb1", service="btweb", aliases=("www",), addresses=("10.1.0.5",),
                         container_id="c1")
    claims = ContainerClaims()
    claims.apply(ViewChange(1, added={"k1": web}))

    def api(eid: str, service: str, address: str, who: Identity) -> LocalEndpoint:
        return LocalEndpoint(EndpointRecord(id=eid, name=service, addresses=(address,)), source="api",
                             grant=who.grant)
    anonymous, management = Identity("anonymous"), Identity("management")
    endpoints = {
        "on-name": api("on-name", "btweb", "10.9.0.1", anonymous),
        "on-alias": api("on-alias", "www", "10.9.0.2", Identity("service", "other")),
        "on-address": api("on-address", "btelse", "10.1.0.5", anonymous),
        "granted": api("granted", "btweb", "10.9.0.3", Identity("service", "btw")),
        "managed": api("managed", "btweb1", "10.1.0.5", management),
        "elsewhere": api("elsewhere", "btother", "10.9.0.4", anonymous),
        "c1/eth0": LocalEndpoint(web, source="cni"),
        "before-grants": LocalEndpoint(EndpointRecord(id="before-grants", name="btweb", addresses=("10.9.0.5",)),
                                       source="api"),  # a file from before grants were kept: accepted then
    }
    assert squatters(endpoints, claims) == ["on-address", "on-alias", "on-name"]
    assert LocalEndpoint.from_dict(endpoints["on-name"].to_dict()).grant is None  # the grant survives a restart
    assert LocalEndpoint.from_dict({"record": web.to_dict(), "source": "api"}).grant == ""
