"""``docker run`` to first packet: a container on a Berth network beside one on Docker's own bridge network, in
one run, on one private dockerd (20.10).

    sudo .venv/bin/python bench/docker_bench.py [--count 20]

Each round starts ``docker run -d … httpd`` on each network in turn (the order alternates) with a fixed address,
and times from the moment the CLI is started to the first TCP connection the container's httpd accepts, dialled
from the host side every millisecond; ``docker run`` returning is timed too. The engine runs in a simulated host of
its own (network and mount namespaces, berth/private_docker.py), ``--iptables=false``: Docker's bridge network
works for host-to-container traffic without its iptables rules, so both sides do the same work but for the driver.
Prints median and 90th percentile per network.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from datapath import netns  # noqa: E402
from berth.private_docker import DOCKER_CLI, IMAGE, PrivateDocker as DockerHost, missing as available  # noqa: E402

DEADLINE = 30.0


def first_accept(netns_path: str, address: str, started: float, out: dict) -> None:
    """In the simulated host: dial ``address``:80 every millisecond; record when one connection is accepted."""
    with netns.entered(netns_path):
        while time.monotonic() - started < DEADLINE:
            with socket.socket() as sock:
                sock.settimeout(0.05)
                try:
                    sock.connect((address, 80))
                except OSError:
                    time.sleep(0.001)
                    continue
            out["first"] = time.monotonic() - started
            return


def one_run(host: DockerHost, network: str, address: str, name: str) -> tuple[float, float]:
    out: dict = {}
    started = time.monotonic()
    run = subprocess.Popen([DOCKER_CLI, "run", "-d", "--name", name, "--network", network, "--ip", address,
                            "--stop-timeout", "1", IMAGE, "httpd", "-f", "-p", "80", "-h", "/www"],
                           env=host.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dialler = threading.Thread(target=first_accept, args=(host.netns_path, address, started, out))
    dialler.start()
    _, err = run.communicate(timeout=DEADLINE)
    returned = time.monotonic() - started
    dialler.join()
    if run.returncode != 0 or "first" not in out:
        raise RuntimeError(f"{network}: docker run failed or never answered: {err.decode()[-500:]}")
    host.docker("rm", "-f", name)
    return out["first"], returned


def summary(label: str, samples: list[tuple[float, float]]) -> str:
    first = sorted(s[0] * 1000 for s in samples)
    returned = sorted(s[1] * 1000 for s in samples)
    p90 = first[max(0, int(len(first) * 0.9) - 1)]
    return (f"{label:<22} first packet: median {statistics.median(first):7.1f} ms  p90 {p90:7.1f} ms   "
            f"docker run returned: median {statistics.median(returned):7.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20, help="containers per network (default 20)")
    args = parser.parse_args()
    reason = available()
    if reason:
        print(f"skipped: {reason}")
        return 0
    host = DockerHost.start()
    try:
        host.docker("network", "create", "-d", "bridge", "--subnet", "10.231.201.0/24", "btbench-docker")
        host.create_network("btbench-berth", "10.231.202.0/24")
        results: dict[str, list] = {"docker bridge": [], "berth": []}
        plan = [("docker bridge", "btbench-docker", "10.231.201.10"), ("berth", "btbench-berth", "10.231.202.10")]
        one_run(host, plan[0][1], plan[0][2], "bt-warm-a")  # first container start pays image and cache warm-up
        one_run(host, plan[1][1], plan[1][2], "bt-warm-b")
        for i in range(args.count):
            for label, network, address in (plan if i % 2 == 0 else plan[::-1]):
                results[label].append(one_run(host, network, address, f"bt-bench-{i}"))
        print(f"docker run -d httpd to first accepted connection, {args.count} containers per network "
              f"(dockerd 20.10, private, --iptables=false)")
        for label, samples in results.items():
            print(summary(label, samples))
    finally:
        host.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
