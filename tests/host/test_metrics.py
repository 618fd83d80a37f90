"""Every daemon's operations endpoint for real: the agent, two dnsd (one forwarding to the other, with two worker
processes), and the CNI daemon run as processes with ``--metrics`` on loopback and ``--log-format json``; the
tests do real work through them (a Consul registration, DNS questions, CNI calls through the launcher), scrape,
and check the counters moved by exactly that work, that ``promtool check metrics`` has nothing to say, that a
real Prometheus scrapes every target, and that every log line is one JSON object. The overlay daemon, which needs
namespaces, has its own test (root) at the end."""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import tempfile
import threading
import urllib.request
from pathlib import Path

import pytest
from dnslib import DNSRecord

from berth.install_cni import write_python_launchers
from discovery.model import EndpointRecord
from tests.conftest import REPO_ROOT, VENV_BIN
from tests.discovery.conftest import AgentProcess
from tests.overlay.conftest import make_sim, sqlite_url  # noqa: F401 - fixtures
from tests.host.ops_harness import (PROMETHEUS, PROMTOOL, http_get, prometheus, promtool_check, samples, scrape,
                                    value)
from tests.ports import free_port
from tests.waiting import stop_process, wait_until

pytestmark = [pytest.mark.service,
              pytest.mark.skipif(not (PROMTOOL and PROMETHEUS), reason="needs Debian's prometheus package")]
ZONE = "berth.internal"
UPSTREAM_ZONE = "bt-up.test"
WORKERS = 2


class Daemon:
    """A ``berth`` daemon with its stdout read for its readiness lines and its stderr in a log file."""

    def __init__(self, name: str, argv: list[str], workdir: Path, metrics: str) -> None:
        self.name, self.metrics = name, metrics
        self.log = workdir / f"{name}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(VENV_BIN / "berth"), *argv, "--metrics", metrics,
                                          "--log-format", "json"], stdout=subprocess.PIPE, stderr=log,
                                         stdin=subprocess.DEVNULL, text=True, cwd=REPO_ROOT,
                                         env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))

    def read_line(self) -> str:
        line = self.proc.stdout.readline()
        assert line, f"{self.name} exited: {self.log.read_text()[-3000:]}"
        return line

    def ready(self) -> bool:
        return http_get(f"http://{self.metrics}/ready")[0] == 200

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc.stdout.close()


def start_dns(name: str, workdir: Path, *args: str) -> tuple[Daemon, int]:
    daemon = Daemon(name, ["dns", "--listen", "127.0.0.1:0", *args], workdir, f"127.0.0.1:{free_port()}")
    port = int(daemon.read_line().split()[3].rpartition(":")[2])
    assert daemon.read_line().startswith("dnsd: forwarding")
    return daemon, port


@pytest.fixture(scope="module")
def world():
    workdir = Path(tempfile.mkdtemp(prefix="bt-metrics-"))
    made: dict = {"workdir": workdir}
    try:
        store = f"sqlite:///{workdir / 'berth.db'}"
        agent_metrics = f"127.0.0.1:{free_port()}"
        (workdir / "agent").mkdir()
        agent = AgentProcess(store, workdir / "agent", "bthost", 5.0,
                             ("--metrics", agent_metrics, "--log-format", "json"))
        made["agent"] = agent.start()
        agent.metrics, agent.name = agent_metrics, "agent"
        records = workdir / "upstream.json"
        records.write_text(json.dumps([EndpointRecord(id="u1/eth0", name="btup", addresses=("10.93.0.7",),
                                                      network="btnet").to_dict()]))
        made["upstream"], upstream_port = start_dns("dns-upstream", workdir, "--records", str(records),
                                                    "--zone", UPSTREAM_ZONE, "--no-forward")
        made["dns"], made["dns_port"] = start_dns(
            "dns", workdir, "--store", store, "--workers", str(WORKERS), "--upstream", f"127.0.0.1:{upstream_port}",
            "--upstream-timeout", "1", "--cache-bytes", "4000")
        socket_path = workdir / "run" / "cni.sock"
        cni = Daemon("cni-daemon", ["cni-daemon", "--socket", str(socket_path)], workdir,
                     f"127.0.0.1:{free_port()}")
        made["cni"], made["cni_socket"] = cni, socket_path
        for daemon in (made["dns"], made["upstream"], cni):
            wait_until(daemon.ready, what=f"{daemon.name} ready")
        wait_until(lambda: http_get(f"http://{agent_metrics}/ready")[0] == 200, what="agent ready")
        yield made
    finally:
        for key in ("cni", "dns", "upstream"):
            if key in made:
                made[key].stop()
        if "agent" in made:
            made["agent"].stop()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


def consul(world, method: str, path: str, body: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{world['agent'].http_port}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(request, timeout=30) as reply:
        return reply.status, dict(reply.headers), reply.read()


def ask(port: int, name: str, qtype: str = "A", qclass: str = "IN", tcp: bool = False) -> DNSRecord:
    return DNSRecord.parse(DNSRecord.question(name, qtype, qclass).send("127.0.0.1", port, tcp=tcp, timeout=10))


def ask_on_one_connection(port: int, name: str, count: int) -> list[DNSRecord]:
    """``count`` questions over one TCP connection (so one worker answers them all)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        replies = []
        for _ in range(count):
            packet = DNSRecord.question(name, "A").pack()
            conn.sendall(struct.pack("!H", len(packet)) + packet)
            size = struct.unpack("!H", recv_exactly(conn, 2))[0]
            replies.append(DNSRecord.parse(recv_exactly(conn, size)))
        return replies


def recv_exactly(conn: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        assert chunk, "dnsd closed the connection"
        data += chunk
    return data


# -- the agent ------------------------------------------------------------------------------------------------------

def test_agent_counts_registrations_store_calls_and_waiting_blocking_queries(world):
    metrics = world["agent"].metrics
    before = scrape(metrics)
    code, headers, _ = consul(world, "GET", "/v1/catalog/services")
    index = headers["X-Consul-Index"]
    waiting: list = []
    blocked = threading.Thread(target=lambda: waiting.append(consul(world, "GET",
                                                                    f"/v1/catalog/services?index={index}&wait=20s")))
    blocked.start()
    try:
        wait_until(lambda: value(scrape(metrics), "berth_agent_blocking_queries_waiting") == 1,
                   what="the blocking query counted as waiting")
        consul(world, "PUT", "/v1/agent/service/register", {"Name": "btweb", "ID": "btweb1",
                                                             "Address": "127.0.0.1", "Port": 8080})
    finally:
        blocked.join(30)
    assert waiting and waiting[0][0] == 200  # the registration answered it
    consul(world, "PUT", "/v1/agent/service/register", {"Name": "btgone", "ID": "btgone1", "Address": "127.0.0.2"})
    consul(world, "PUT", "/v1/agent/service/deregister/btgone1")
    runs_before = value(before, "berth_agent_anti_entropy_runs_total", result="ok")

    def after_anti_entropy() -> str | None:
        text = scrape(metrics)
        return text if value(text, "berth_agent_anti_entropy_runs_total", result="ok") > runs_before else None
    after = wait_until(after_anti_entropy, what="an anti-entropy run")
    assert value(after, "berth_agent_registrations_total") - value(before, "berth_agent_registrations_total") == 2
    assert value(after, "berth_agent_deregistrations_total") - value(before, "berth_agent_deregistrations_total") == 1
    assert value(after, "berth_agent_endpoints") - value(before, "berth_agent_endpoints") == 1
    assert value(after, "berth_agent_blocking_queries_waiting") == 0
    assert value(after, "berth_agent_store_call_duration_seconds_count", operation="txn") > \
        value(before, "berth_agent_store_call_duration_seconds_count", operation="txn")
    assert value(after, "berth_agent_store_errors_total") == 0
    assert value(after, "process_resident_memory_bytes") > 0


# -- dnsd -------------------------------------------------------------------------------------------------------------

def dns_total(text: str) -> float:
    return value(text, "berth_dns_queries_total")


def test_dns_counts_every_question_over_all_workers_with_cache_and_forwarding(world):
    port, metrics = world["dns_port"], world["dns"].metrics
    consul(world, "PUT", "/v1/agent/service/register", {"Name": "btdns", "ID": "btdns1", "Address": "127.0.0.3"})
    name = f"btdns.service.{ZONE}"
    wait_until(lambda: ask(port, name).rr, what="the agent's registration in DNS")  # the view has it
    before = scrape(metrics)
    assert value(before, "berth_dns_workers", state="answering") == WORKERS
    sent = 0
    for _ in range(20):  # from new source ports each time: spread over both workers by SO_REUSEPORT
        assert ask(port, name).rr
        sent += 1
    assert all(reply.rr for reply in ask_on_one_connection(port, name, 2))  # one worker: a miss, then a hit
    sent += 2
    forwarded = ask(port, f"btup.{UPSTREAM_ZONE}")
    assert forwarded.header.rcode == 0 and str(forwarded.rr[0].rdata) == "10.93.0.7"
    refused = ask(port, name, qclass="CH")
    assert refused.header.rcode == 5
    sent += 2
    after = scrape(metrics)
    assert dns_total(after) - dns_total(before) == sent  # every question once, whichever worker took it
    delta = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
    assert delta("berth_dns_queries_total", type="A", rcode="NOERROR") == 23
    assert delta("berth_dns_queries_total", type="A", rcode="REFUSED") == 1
    assert delta("berth_dns_cache_hits_total", cache="answers_udp") >= 20 - WORKERS
    assert delta("berth_dns_cache_hits_total", cache="answers_tcp") >= 1
    assert delta("berth_dns_cache_misses_total", cache="upstream") == 1
    assert delta("berth_dns_forward_duration_seconds_count") == 1
    assert value(after, "berth_dns_cache_entries", cache="answers_udp") >= 1
    assert value(after, "berth_dns_cache_size_bytes", cache="answers_udp") > 0
    assert value(after, "berth_dns_worker_resident_memory_bytes") > value(after, "process_resident_memory_bytes")
    assert value(after, "berth_dns_worker_cpu_seconds_total") > 0
    assert ask(port, f"btup.{UPSTREAM_ZONE}").header.rcode == 0  # from the upstream cache, if the same worker
    again = scrape(metrics)
    upstream_lookups = sum(value(again, f"berth_dns_cache_{kind}_total", cache="upstream") -
                           value(before, f"berth_dns_cache_{kind}_total", cache="upstream") for kind in ("hits", "misses"))
    assert upstream_lookups == 2

    for index in range(40):  # more names than a 4000-byte cache per worker holds
        assert ask(port, f"btnone{index}.{ZONE}").header.rcode == 3
    last = scrape(metrics)
    assert value(last, "berth_dns_cache_evictions_total", cache="answers_udp") > 0
    assert value(last, "berth_dns_queries_total", type="A", rcode="NXDOMAIN") >= 40


def test_dns_counts_a_forward_that_no_upstream_answers(world):
    port, metrics = world["dns_port"], world["dns"].metrics
    before = scrape(metrics)
    world["upstream"].stop()  # the last test of the module that needs it
    assert ask(port, f"btother.{UPSTREAM_ZONE}").header.rcode == 2  # SERVFAIL
    after = scrape(metrics)
    assert value(after, "berth_dns_forward_failures_total", reason="no_answer") - \
        value(before, "berth_dns_forward_failures_total", reason="no_answer") == 1
    assert value(after, "berth_dns_queries_total", type="A", rcode="SERVFAIL") - \
        value(before, "berth_dns_queries_total", type="A", rcode="SERVFAIL") == 1


# -- the CNI daemon ---------------------------------------------------------------------------------------------------

def cni_call(world, launcher: Path, command: str, config: bytes) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command, "CNI_CONTAINERID": "btmetrics1",
           "CNI_NETNS": "/run/netns/btnone", "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
           "BERTH_CNI_SOCKET": str(world["cni_socket"])}
    return subprocess.run([str(launcher)], input=config, env=env, capture_output=True, timeout=60)


def test_cni_daemon_counts_calls_by_plugin_command_and_code(world):
    workdir, metrics = world["workdir"], world["cni"].metrics
    [launcher] = write_python_launchers(workdir, {"berth-ipam": "cni_plugins.ipam_plugin"},
                                        extra_paths=(str(REPO_ROOT),))
    config = json.dumps({"cniVersion": "1.0.0", "name": "btnet", "type": "bridge",
                         "ipam": {"type": "berth-ipam", "subnet": "10.94.0.0/24",
                                  "dataDir": str(workdir / "ipam")}}).encode()
    before = scrape(metrics)
    added = cni_call(world, launcher, "ADD", config)
    assert added.returncode == 0 and json.loads(added.stdout)["ips"][0]["address"].startswith("10.94.0."), added
    bad = cni_call(world, launcher, "ADD", b"{not json")
    assert bad.returncode != 0 and json.loads(bad.stdout)["code"] == 6
    assert cni_call(world, launcher, "DEL", config).returncode == 0
    after = scrape(metrics)
    delta = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
    assert delta("berth_cni_calls_total", plugin="berth-ipam", command="ADD", code="0") == 1  # served by the daemon
    assert delta("berth_cni_calls_total", plugin="berth-ipam", command="ADD", code="6") == 1
    assert delta("berth_cni_calls_total", plugin="berth-ipam", command="DEL", code="0") == 1
    assert delta("berth_cni_call_duration_seconds_count", plugin="berth-ipam", command="ADD") == 2
    assert value(after, "berth_cni_calls_in_flight") == 0


# -- every daemon: lint, health, readiness, Prometheus, logs --------------------------------------------------------

def daemons(world) -> list:
    return [world["agent"], world["dns"], world["cni"]]


def test_every_daemon_passes_promtool_and_answers_health_and_readiness(world):
    for daemon in daemons(world):
        text = scrape(daemon.metrics)
        promtool_check(text)
        assert any(name.startswith("berth_") for name, _ in samples(text)), daemon.name
        assert http_get(f"http://{daemon.metrics}/health") == (200, "ok\n")
        code, body = http_get(f"http://{daemon.metrics}/ready")
        doc = json.loads(body)
        assert code == 200 and doc["ready"] and all(check["ok"] for check in doc["checks"].values()), doc
    checks = json.loads(http_get(f"http://{world['agent'].metrics}/ready")[1])["checks"]
    assert {"store", "socket", "http", "agent"} <= set(checks)


def test_a_real_prometheus_scrapes_every_daemon(world):
    targets = {daemon.name: daemon.metrics for daemon in daemons(world)}
    with prometheus(targets, world["workdir"] / "prometheus") as api:
        def scraped() -> dict | None:
            up = api.targets_up()
            return up if len(up) == len(targets) and "unknown" not in up.values() else None
        health = wait_until(scraped, what="every target scraped")
        assert health == dict.fromkeys(targets, "up")
        for expression in ("berth_cni_calls_in_flight", "berth_dns_workers", "berth_agent_registrations_total"):
            assert wait_until(lambda: api.query(expression), what=f"{expression} in Prometheus")
        assert {r["metric"]["job"] for r in api.query("up == 1")} == set(targets)


def test_readiness_fails_when_a_daemons_socket_is_gone(world):
    socket_path = world["cni_socket"]
    moved = socket_path.with_name("moved.sock")
    os.rename(socket_path, moved)
    try:
        code, body = http_get(f"http://{world['cni'].metrics}/ready")
        assert code == 503 and not json.loads(body)["checks"]["socket"]["ok"]
        assert http_get(f"http://{world['cni'].metrics}/health")[0] == 200  # alive all the same
    finally:
        os.rename(moved, socket_path)


def test_every_log_line_is_one_json_object(world):
    logs = [world["agent"].log, world["dns"].log, world["cni"].log]
    for path in logs:
        lines = path.read_text().splitlines()
        assert lines, path
        for line in lines:
            doc = json.loads(line)
            assert {"time", "level", "logger", "message"} <= set(doc), line
            assert doc["time"].endswith("Z") and doc["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    dns_messages = [json.loads(line)["message"] for line in world["dns"].log.read_text().splitlines()]
    assert any(m.startswith("dnsd: listening on") for m in dns_messages)  # the readiness line is logged too


def test_a_taken_or_bad_metrics_address_stops_a_daemon_with_a_clear_error(world, tmp_path):
    taken = world["agent"].metrics  # in use by the running agent
    for argv in (["dns", "--records", str(tmp_path / "none.json"), "--listen", "127.0.0.1:0", "--metrics", taken],
                 ["cni-daemon", "--socket", str(tmp_path / "run" / "cni.sock"), "--metrics", taken],
                 ["agent", "--store", f"sqlite:///{tmp_path / 'x.db'}", "--socket", str(tmp_path / "a.sock"),
                  "--state-dir", str(tmp_path / "state"), "--metrics", "127.0.0.1:port"]):
        done = subprocess.run([str(VENV_BIN / "berth"), *argv], capture_output=True, text=True, timeout=60,
                              cwd=REPO_ROOT)
        assert done.returncode != 0 and "--metrics" in done.stderr, (argv, done.stderr)
    assert not (tmp_path / "a.sock").exists() and not (tmp_path / "run" / "cni.sock").exists()


@pytest.mark.etcd
def test_an_agent_whose_store_dies_counts_store_errors_and_is_no_longer_ready(tmp_path):
    from tests.etcd_harness import start_etcd

    metrics = f"127.0.0.1:{free_port()}"
    with start_etcd(1) as cluster:
        agent = AgentProcess(cluster.url, tmp_path, "btetcd", 5.0, ("--metrics", metrics))
        agent.start()
        try:
            assert http_get(f"http://{metrics}/ready")[0] == 200
            assert value(scrape(metrics), "berth_agent_store_errors_total") == 0
            cluster.kill(0)

            def failing() -> str | None:
                text = scrape(metrics)
                return text if value(text, "berth_agent_store_errors_total") > 0 else None
            text = wait_until(failing, what="store errors counted")
            assert value(text, "berth_agent_anti_entropy_runs_total", result="error") > 0
            def not_ready() -> tuple[int, str] | None:
                answer = http_get(f"http://{metrics}/ready")
                return answer if answer[0] == 503 else None
            code, body = wait_until(not_ready, what="the agent no longer ready")
            assert json.loads(body)["checks"]["store"]["ok"] is False
            assert http_get(f"http://{metrics}/health")[0] == 200  # alive, and says so
        finally:
            agent.kill()


# -- the overlay daemon (in simulated hosts: namespaces, VXLAN) -------------------------------------------------------

@pytest.mark.root
def test_overlay_counts_its_peer_and_routes_and_prometheus_scrapes_it(make_sim, sqlite_url, tmp_path):  # noqa: F811
    metrics = f"127.0.0.1:{free_port()}"  # inside each host's own namespace, so the same port on every host
    sim = make_sim(sqlite_url, hosts=2, daemon_args=("--metrics", metrics, "--log-format", "json"))
    first = sim.hosts[0]
    def with_peer() -> str | None:
        text = scrape(metrics, first.netns)
        return text if value(text, "berth_overlay_peers") == 1 else None
    text = wait_until(with_peer, what="the overlay's peer counted")
    assert value(text, "berth_overlay_routes") == 1 and value(text, "berth_overlay_fdb_entries") == 1
    assert value(text, "berth_overlay_neighbours") == 1
    assert value(text, "berth_overlay_reconcile_duration_seconds_count", trigger="start") == 1
    assert value(text, "berth_overlay_reconcile_errors_total") == 0
    promtool_check(text)
    code, body = http_get(f"http://{metrics}/ready", first.netns)
    assert code == 200 and set(json.loads(body)["checks"]) == {"lease", "store", "device"}, body
    for line in first.log_path.read_text().splitlines():
        assert {"time", "level", "logger", "message"} <= set(json.loads(line)), line
    with prometheus({"overlay": metrics}, tmp_path / "prometheus", netns=first.netns) as api:
        wait_until(lambda: api.targets_up() == {"overlay": "up"}, what="the overlay target up")
        assert wait_until(lambda: api.query("berth_overlay_peers == 1"), what="berth_overlay_peers in Prometheus")
