"""Scraping Berth's daemons as an operator would: their /metrics parsed, linted by ``promtool check metrics``, and
a real Prometheus (Debian's 2.42) scraping them, asked through its HTTP API. Used by tests/host/test_metrics.py."""
from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

from prometheus_client.parser import text_string_to_metric_families

from tests.ports import free_port
from tests.waiting import stop_process, wait_until

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")


def http_get(url: str, netns: str | None = None) -> tuple[int, str]:
    """GET ``url`` from this namespace (urllib) or from inside ``netns`` (curl there)."""
    if netns is not None:
        done = subprocess.run(["ip", "netns", "exec", netns, "curl", "-s", "-m", "20", "-w", "\n%{http_code}", url],
                              capture_output=True, text=True, timeout=30)
        body, _, code = done.stdout.rpartition("\n")
        return int(code or 0), body
    try:
        with urllib.request.urlopen(url, timeout=20) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def scrape(address: str, netns: str | None = None) -> str:
    code, body = http_get(f"http://{address}/metrics", netns)
    assert code == 200, f"/metrics on {address}: {code} {body[:500]}"
    return body


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when there are none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples(text).items() if n == name and wanted <= set(ls))


def promtool_check(text: str) -> None:
    """``promtool check metrics``: the exposition parses and follows the naming conventions (no complaint at all)."""
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), \
        f"promtool: {done.stdout}{done.stderr}"


@contextlib.contextmanager
def prometheus(targets: dict[str, str], workdir: Path, netns: str | None = None) -> Iterator["PrometheusApi"]:
    """A real Prometheus scraping ``targets`` (job name -> ADDR:PORT) every second, in ``netns`` when given."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
              "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                                 for job, target in targets.items()]}
    config_file = workdir / "prometheus.yml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    prefix = ["ip", "netns", "exec", netns] if netns else []
    log = open(workdir / "prometheus.log", "wb")
    proc = subprocess.Popen([*prefix, PROMETHEUS, f"--config.file={config_file}",
                             f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    api = PrometheusApi(f"http://127.0.0.1:{port}", netns, proc, workdir / "prometheus.log")
    try:
        wait_until(api.ready, timeout=60, what="Prometheus ready")
        yield api
    finally:
        stop_process(proc)


class PrometheusApi:
    def __init__(self, base: str, netns: str | None, proc: subprocess.Popen, log: Path) -> None:
        self.base, self.netns, self.proc, self.log = base, netns, proc, log

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited: {self.log.read_text(errors='replace')[-2000:]}"
        return http_get(f"{self.base}/-/ready", self.netns)[0] == 200

    def get(self, path: str, **params: str) -> dict:
        code, body = http_get(f"{self.base}{path}?{urllib.parse.urlencode(params)}", self.netns)
        assert code == 200, f"{path}: {code} {body[:500]}"
        doc = json.loads(body)
        assert doc["status"] == "success", doc
        return doc["data"]

    def targets_up(self) -> dict[str, str]:
        """job -> health of each active target (once every one has been scraped at least once)."""
        active = self.get("/api/v1/targets")["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in active}

    def query(self, expression: str) -> list[dict]:
        return self.get("/api/v1/query", query=expression)["result"]
