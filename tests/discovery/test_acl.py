"""Who may change the catalogue: tokens as py-consul, python-consul and curl send them, and container endpoints
that only the CNI chain (or the management token) may touch — checked against a real agent, a real DNS server,
and a real unprivileged user."""
from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import urllib.error
import urllib.request

import consul
import dns.message
import dns.query
import dns.reversename
import pytest

from tests.conftest import unique_name
from tests.discovery.conftest import register_config, run_register
from tests.discovery.consul_clients import run_client
from tests.dnsd.conftest import DnsProcess
from tests.waiting import wait_until

pytestmark = pytest.mark.service
ZONE = "berth.internal"


def token_file(agent) -> str:
    return os.path.join(agent.state_dir, "acl-tokens.json")


def management_token(agent) -> str:
    return json.loads(open(token_file(agent)).read())["management"]


def add_service_token(agent, secret: str, prefix: str) -> None:
    """Add a service token the way an operator would: rewrite the root-only file (0600, replaced atomically)."""
    path = token_file(agent)
    data = json.loads(open(path).read())
    data["tokens"].append({"secret": secret, "service_prefix": prefix})
    tmp = path + ".new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def http(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def deny_agent(store_url, agents):
    return agents(store_url, extra=("--acl-default-policy", "deny"))


def test_the_token_file_is_made_root_only_with_a_management_token(deny_agent):
    st = os.stat(token_file(deny_agent))
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert len(management_token(deny_agent)) >= 32
    assert management_token(deny_agent) not in deny_agent.log.read_text()  # never logged


def test_deny_refuses_py_consul_without_a_token_and_serves_it_with_one(deny_agent):
    anonymous = consul.Consul(host="127.0.0.1", port=deny_agent.http_port)
    for call in (anonymous.agent.services, anonymous.catalog.services, lambda: anonymous.health.service("web"),
                 lambda: anonymous.agent.service.register("web", service_id="web1", address="10.9.0.1")):
        with pytest.raises(consul.ACLPermissionDenied, match="Permission denied"):
            call()
    with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
        consul.Consul(host="127.0.0.1", port=deny_agent.http_port, token="f" * 32).agent.services()
    managed = consul.Consul(host="127.0.0.1", port=deny_agent.http_port, token=management_token(deny_agent))
    assert managed.agent.service.register("web", service_id="web1", address="10.9.0.1", port=80)
    assert list(managed.agent.services()) == ["web1"]
    assert managed.catalog.services()[1] == {"web": []}
    with pytest.raises(consul.ACLPermissionDenied):
        anonymous.agent.service.deregister("web1")
    assert managed.agent.service.deregister("web1")


def test_deny_with_python_consul_0_7(deny_agent):
    """python-consul 0.7.1 sends its token as ``?token=`` on catalog reads and registrations; its
    agent.services() sends none (as against Consul, it is refused under deny)."""
    register = ["agent.service.register", {"_args": ["web"], "service_id": "web1", "address": "10.9.0.1"}]
    calls = [["catalog.services", {}], ["catalog.service", {"_args": ["web"]}], register]
    refused = run_client("python-consul", deny_agent.http_port, {"calls": calls})
    assert [a.get("error") for a in refused] == ["ACLPermissionDenied"] * 3
    token = management_token(deny_agent)
    served = run_client("python-consul", deny_agent.http_port,
                        {"calls": [[register[0], {**register[1], "token": token}], *calls[:2]]}, token=token)
    assert [a.get("error") for a in served] == [None] * 3
    assert served[0]["data"] is True and served[1]["data"] == {"web": []}
    assert [n["ServiceID"] for n in served[2]["data"]] == ["web1"]
    [no_token] = run_client("python-consul", deny_agent.http_port, {"calls": [["agent.services", {}]]}, token=token)
    assert no_token.get("error") == "ACLPermissionDenied"


def test_the_token_travels_as_header_bearer_or_query(deny_agent):
    token = management_token(deny_agent)
    port = deny_agent.http_port
    assert http(port, "GET", "/v1/agent/services") == 403
    assert http(port, "GET", "/v1/agent/services", headers={"X-Consul-Token": token}) == 200
    assert http(port, "GET", "/v1/agent/services", headers={"Authorization": f"Bearer {token}"}) == 200
    assert http(port, "GET", f"/v1/agent/services?token={token}") == 200
    assert http(port, "GET", "/v1/status/leader") == 200  # as Consul: no ACL on the leader
    assert "/v1/agent/services?token=" in deny_agent.log.read_text()  # the request was logged (debug) ...
    assert token not in deny_agent.log.read_text()  # ... without its token


def test_a_service_token_writes_only_its_prefix(deny_agent):
    port = deny_agent.http_port
    managed = consul.Consul(host="127.0.0.1", port=port, token=management_token(deny_agent))
    managed.agent.service.register("db", service_id="db1", address="10.9.0.5", port=5432)
    secret = "w" + os.urandom(16).hex()
    add_service_token(deny_agent, secret, "web")
    web = consul.Consul(host="127.0.0.1", port=port, token=secret)
    assert wait_until(lambda: _try(lambda: web.agent.service.register("webapp", service_id="wa1",
                                                                      address="10.9.0.2")), what="token reload")
    with pytest.raises(consul.ACLPermissionDenied):
        web.agent.service.register("db", service_id="db2", address="10.9.0.6")
    with pytest.raises(consul.ACLPermissionDenied):
        web.agent.service.deregister("db1")
    with pytest.raises(consul.ACLPermissionDenied):  # nor take db1's ID under a name it may write
        web.agent.service.register("web", service_id="db1", address="10.9.0.7")
    assert set(web.agent.services()) == {"db1", "wa1"}  # any valid token reads
    assert web.agent.service.deregister("wa1")


def _try(action) -> bool:
    try:
        return bool(action())
    except consul.ACLPermissionDenied:
        return False


# -- container endpoints, an unprivileged user, and DNS ---------------------------------------------------
@pytest.fixture
def local_user():
    """A throw-away unprivileged user (removed again, pass or fail)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user")
    name = unique_name("u", 12)
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True,
                   capture_output=True)
    try:
        assert pwd.getpwnam(name).pw_uid != 0
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def curl_as(user: str, method: str, url: str, body: dict | None = None, token: str | None = None) -> int:
    argv = ["runuser", "-u", user, "--", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", method,
            "--max-time", "60"]
    if token:
        argv += ["-H", f"X-Consul-Token: {token}"]
    if body is not None:
        argv += ["--data-binary", "@-"]
    proc = subprocess.run(argv + [url], input=json.dumps(body).encode() if body is not None else None,
                          capture_output=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


def a_records(port: int, name: str) -> list[str]:
    answer = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=3)
    return sorted(r.address for rrset in answer.answer for r in rrset)


def ptr_records(port: int, address: str) -> list[str]:
    name = dns.reversename.from_address(address)
    answer = dns.query.udp(dns.message.make_query(name, "PTR"), "127.0.0.1", port=port, timeout=3)
    return sorted(r.target.to_text() for rrset in answer.answer for r in rrset)


@pytest.mark.root
def test_a_local_user_cannot_take_over_a_container_endpoint(store_url, agents, local_user, tmp_path):
    agent = agents(store_url)  # the default policy, allow: container endpoints are protected all the same
    cid = "btc" + os.urandom(6).hex()
    config = register_config("btnet", agent.socket, agent.spool_dir, address="10.88.0.5/24")
    config["args"] = {"cni": {"service": "btweb"}}
    code, out, err = run_register("ADD", config, container_id=cid, name="btweb1")
    assert code == 0, (out, err)
    dns_server = DnsProcess(["--store", store_url, "--no-forward", "--workers", "1"])
    try:
        port = dns_server.port
        assert wait_until(lambda: a_records(port, f"btweb1.{ZONE}") == ["10.88.0.5"])
        assert a_records(port, f"btweb.service.{ZONE}") == ["10.88.0.5"]

        base = f"http://127.0.0.1:{agent.http_port}/v1/agent/service"
        endpoint_id = f"{cid}/eth0"
        assert subprocess.run(["runuser", "-u", local_user, "--", "cat", token_file(agent)],
                              capture_output=True).returncode != 0  # the token file is not the user's to read
        attempts = [
            ("PUT", f"{base}/deregister/{endpoint_id}", None),
            ("PUT", f"{base}/register", {"ID": endpoint_id, "Name": "btweb", "Address": "6.6.6.6"}),
            ("PUT", f"{base}/register", {"ID": "btevil1", "Name": "btweb", "Address": "6.6.6.6"}),
            ("PUT", f"{base}/register", {"ID": "btevil2", "Name": "btweb1", "Address": "6.6.6.6"}),
            ("PUT", f"{base}/register", {"ID": "btevil3", "Name": "btevil", "Address": "10.88.0.5"}),  # its PTR
        ]
        assert [curl_as(local_user, m, url, body) for m, url, body in attempts] == [403] * 5
        assert curl_as(local_user, "PUT", f"{base}/register",  # a name under the service's: refused outright
                       {"ID": "btevil4", "Name": "btweb.service", "Address": "6.6.6.6"}) == 400
        assert curl_as(local_user, "PUT", f"{base}/register",
                       {"ID": "btother1", "Name": "btother", "Address": "10.77.0.1"}) == 200  # allow, elsewhere
        # the view behind DNS has caught up with everything the user sent: the container's names are unchanged
        assert wait_until(lambda: a_records(port, f"btother.{ZONE}") == ["10.77.0.1"])
        assert a_records(port, f"btweb1.{ZONE}") == ["10.88.0.5"]
        assert a_records(port, f"btweb.service.{ZONE}") == ["10.88.0.5"]
        assert ptr_records(port, "10.88.0.5") == [f"btweb1.{ZONE}."]
        assert set(consul.Consul(host="127.0.0.1", port=agent.http_port).agent.services()) == {endpoint_id,
                                                                                             "btother1"}
        # root without the token fares no better; with the management token the endpoint can be removed
        assert http(agent.http_port, "PUT", f"/v1/agent/service/deregister/{endpoint_id}") == 403
        assert http(agent.http_port, "PUT", f"/v1/agent/service/deregister/{endpoint_id}",
                    headers={"X-Consul-Token": management_token(agent)}) == 200
        assert wait_until(lambda: a_records(port, f"btweb1.{ZONE}") == [])
    finally:
        dns_server.stop()
    assert "without ACLs" in agent.log.read_text()  # the start-up log says the API is open


@pytest.mark.root
def test_a_service_token_may_add_instances_to_a_container_service(store_url, agents):
    agent = agents(store_url)
    config = register_config("btnet", agent.socket, agent.spool_dir, address="10.88.0.6/24")
    config["args"] = {"cni": {"service": "btweb"}}
    assert run_register("ADD", config, container_id="btc" + os.urandom(6).hex(), name="btweb2")[0] == 0
    anonymous = consul.Consul(host="127.0.0.1", port=agent.http_port)
    with pytest.raises(consul.ACLPermissionDenied):
        anonymous.agent.service.register("btweb", service_id="btweb-extra", address="10.88.0.99")
    secret = "s" + os.urandom(16).hex()
    add_service_token(agent, secret, "btweb")
    allowed = consul.Consul(host="127.0.0.1", port=agent.http_port, token=secret)
    assert wait_until(lambda: _try(lambda: allowed.agent.service.register(
        "btweb", service_id="btweb-extra", address="10.88.0.99")), what="token reload")
    assert sorted(n["ServiceAddress"] for n in allowed.catalog.service("btweb")[1]) == ["10.88.0.6", "10.88.0.99"]


@pytest.mark.root
def test_a_name_registered_before_its_container_is_withdrawn_unless_a_token_granted_it(store_url, agents,
                                                                                        local_user):
    """Squatting: a local user registers tomorrow's container name and address over HTTP (allowed then: no
    container holds them). When the container appears, those registrations give way; one made with a token that
    grants the name stays."""
    agent = agents(store_url)
    base = f"http://127.0.0.1:{agent.http_port}/v1/agent/service"
    assert curl_as(local_user, "PUT", f"{base}/register", {"ID": "btsquat1", "Name": "btlater", "Address": "6.6.6.6"}) \
        == 200
    assert curl_as(local_user, "PUT", f"{base}/register",
                   {"ID": "btsquat2", "Name": "btptr", "Address": "10.88.0.7"}) == 200  # the container's address
    secret = "s" + os.urandom(16).hex()
    add_service_token(agent, secret, "btlater")
    granted = consul.Consul(host="127.0.0.1", port=agent.http_port, token=secret)
    assert wait_until(lambda: _try(lambda: granted.agent.service.register(
        "btlater", service_id="btlater-extra", address="10.88.0.99")), what="token reload")
    client = consul.Consul(host="127.0.0.1", port=agent.http_port)
    assert set(client.agent.services()) == {"btsquat1", "btsquat2", "btlater-extra"}

    config = register_config("btnet", agent.socket, agent.spool_dir, address="10.88.0.7/24")
    config["args"] = {"cni": {"service": "btlater"}}
    cid = "btc" + os.urandom(6).hex()
    assert run_register("ADD", config, container_id=cid, name="btlater1")[0] == 0
    assert wait_until(lambda: set(client.agent.services()) == {f"{cid}/eth0", "btlater-extra"},
                      what="the squatters withdrawn")
    # the catalogue is the store's view: it follows the withdrawal a moment later
    assert wait_until(lambda: sorted(n["ServiceAddress"] for n in client.catalog.service("btlater")[1])
                      == ["10.88.0.7", "10.88.0.99"], what="the catalogue without the squatter")
    assert wait_until(lambda: client.catalog.service("btptr")[1] == [], what="the address squatter gone")
    assert "withdrawing HTTP registration 'btsquat1'" in agent.log.read_text()
