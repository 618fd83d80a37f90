"""Overlay benchmarks: control-plane convergence and data-plane throughput, on simulated hosts.

Convergence: 16 simulated hosts (15 steady + 1 that joins again and again), one container each. Per join, the joining
host "reboots" (daemon SIGKILLed, its VXLAN device deleted, its lease deleted from the store and every peer has
forgotten it), then its daemon starts. t0 is the moment it issues the write of its lease (the daemon logs it, wall
clock), so the figure includes the store's own commit of that write. The bench then pings the joiner's container from
every steady host's container every 2 ms through raw ICMP sockets made inside those namespaces, and records each
host's first reply. A join's convergence is the last host's first reply minus t0: every other host can reach the new
host's container. Goal: p99 < 300 ms.

Throughput: iperf3 between containers on two hosts across the overlay, next to the same two host namespaces joined by
a hand-made VXLAN device (and the bare underlay), so the difference is what Berth's control plane costs.

    sudo .venv/bin/python bench/overlay_bench.py [--joins 30] [--hosts 16] [--store sqlite|etcd]...
                                                 [--iperf-seconds 5] [--skip-iperf] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from overlay.lease import subnet_key  # noqa: E402
from overlay.sim import SimCluster  # noqa: E402

WRITTEN = re.compile(r"lease (\S+) for \S+ \(.*\) written at ([0-9.]+)")


# -- helpers ------------------------------------------------------------------------------------------------------

def in_netns(netns: str, func):
    """Run ``func`` in a throwaway thread inside ``netns``; sockets made there stay in that namespace."""
    from pyroute2 import netns as pyroute2_netns

    out: dict = {}

    def body():
        try:
            pyroute2_netns.setns(netns, flags=0)
            out["value"] = func()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    payload = b"berth-bench"
    return struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, seq) + payload


def is_echo_reply(packet: bytes, source: str, ident: int) -> bool:
    header_len = (packet[0] & 0x0F) * 4
    if socket.inet_ntoa(packet[12:16]) != source or len(packet) < header_len + 8:
        return False
    kind, _code, _sum, got_ident, _seq = struct.unpack("!BBHHH", packet[header_len:header_len + 8])
    return kind == 0 and got_ident == ident


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# -- convergence ----------------------------------------------------------------------------------------------------

def time_reachability(probes: list[tuple[str, socket.socket]], target: str, deadline: float) -> dict[str, float]:
    """Ping ``target`` from every probe socket every 2 ms until each got a reply; returns first-reply times."""
    first: dict[str, float] = {}
    ident = {label: (hash(label) ^ os.getpid()) & 0xFFFF for label, _ in probes}
    by_fd = {sock.fileno(): (label, sock) for label, sock in probes}
    seq = 0
    next_send = 0.0
    while len(first) < len(probes) and time.time() < deadline:
        now = time.time()
        if now >= next_send:
            seq = (seq + 1) & 0xFFFF
            for label, sock in probes:
                if label not in first:
                    try:
                        sock.sendto(echo_request(ident[label], seq), (target, 0))
                    except OSError:
                        pass  # no route yet
            next_send = now + 0.002
        ready, _, _ = select.select([s for l, s in probes if l not in first], [], [], max(0.0, next_send - now))
        for sock in ready:
            label, _ = by_fd[sock.fileno()]
            while True:
                try:
                    packet = sock.recv(2048, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                if label not in first and is_echo_reply(packet, target, ident[label]):
                    first[label] = time.time()
    return first


def _forgotten(netns: str, subnet: str) -> bool:
    done = subprocess.run(["ip", "-n", netns, "route", "show", "proto", "77"], capture_output=True, text=True)
    return done.returncode == 0 and subnet not in done.stdout


def wait_forgotten(sim: SimCluster, steady, subnet: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    pending = list(steady)
    while pending:
        pending = [h for h in pending if not _forgotten(h.netns, subnet)]
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} hosts still route to {subnet}")
        if pending:
            time.sleep(0.02)


def convergence(hosts: int, joins: int, store_kind: str, tmp: str) -> dict:
    """``store_kind``: ``sqlite`` (the embedded store, one file shared by every host) or ``etcd`` (a real etcd
    inside the underlay namespace, reachable from the hosts only)."""
    sim = SimCluster("", lease_ttl=10.0, name_prefix="bt")
    etcd = None
    try:
        sim.create_underlay()
        if store_kind == "etcd":
            from tests.etcd_harness import ETCDCTL_BINARY, start_etcd

            etcd = start_etcd(1, host=str(sim.underlay_gateway), netns=sim.underlay_ns)
            sim.store_url = etcd.url

            def delete(key: str) -> None:
                subprocess.run(["ip", "netns", "exec", sim.underlay_ns, ETCDCTL_BINARY, "--endpoints",
                                etcd.members[0].client_url, "del", key], check=True, capture_output=True)
        else:
            from store.api import open_store

            sim.store_url = f"sqlite:///{tmp}/convergence.db"

            def delete(key: str) -> None:
                store = open_store(sim.store_url)
                try:
                    store.delete(key)
                finally:
                    store.close()
        sim.init_network("10.214.0.0/16")
        for _ in range(hosts):
            sim.add_host()
        sim.start_all(timeout=120)
        containers = [sim.add_plain_container(h) for h in sim.hosts]
        *steady, joiner = sim.hosts
        target = str(containers[-1].address.ip)
        probes = [(c.host.label, in_netns(c.netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                                                           socket.IPPROTO_ICMP)))
                  for c in containers[:-1]]
        subnet = str(joiner.subnet())
        rounds, per_host = [], []
        try:
            for _ in range(joins):
                joiner.kill(signal.SIGKILL)
                joiner.exec("ip", "link", "del", "berth.1", check=False)  # a reboot: the device is gone too
                delete(subnet_key(joiner.subnet(), sim.prefix))  # ... and its lease has expired
                wait_forgotten(sim, steady, subnet)
                joiner.start(wait=False)
                first = time_reachability(probes, target, time.time() + 15)
                joiner.wait_ready()
                match = WRITTEN.search(joiner.log_since_start())
                if match is None or match.group(1) != subnet:
                    raise RuntimeError(f"joiner did not log its lease write:\n{joiner.log_since_start()}")
                t0 = float(match.group(2))
                if len(first) < len(probes):
                    raise RuntimeError(f"only {len(first)}/{len(probes)} hosts reached the joiner")
                latencies = [(t - t0) * 1000 for t in first.values()]
                per_host.extend(latencies)
                rounds.append(max(latencies))
        finally:
            for _, sock in probes:
                sock.close()
    finally:
        sim.teardown()
        if etcd is not None:
            etcd.close()
    return {"store": store_kind, "hosts": hosts, "joins": joins,
            "all_hosts_ms": {"p50": percentile(rounds, 50), "p99": percentile(rounds, 99), "max": max(rounds)},
            "each_host_ms": {"p50": percentile(per_host, 50), "p99": percentile(per_host, 99)}}


# -- throughput ----------------------------------------------------------------------------------------------------

def iperf(server_ns: str, client_ns: str, address: str, seconds: int, attempts: int = 3) -> float:
    """TCP throughput client -> server in Gbit/s; a run that hangs (iperf3 can stall on a lost control
    connection) is killed and tried again with a fresh server."""
    last_error = ""
    for _ in range(attempts):
        server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", address],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    done = subprocess.run(["ip", "netns", "exec", client_ns, "iperf3", "-J", "--connect-timeout",
                                           "1000", "-c", address, "-t", str(seconds)], capture_output=True,
                                          text=True, timeout=seconds + 20)
                except subprocess.TimeoutExpired:
                    last_error = "iperf3 client hung"
                    break
                report = json.loads(done.stdout or "{}")
                if done.returncode == 0 and "sum_received" in report.get("end", {}):
                    return report["end"]["sum_received"]["bits_per_second"] / 1e9
                last_error = report.get("error", done.stderr)
                if server.poll() is not None:
                    break  # the one-off server is gone: start another
                time.sleep(0.05)  # the server is not listening yet
        finally:
            server.kill()
            server.wait()
    raise RuntimeError(f"iperf3 failed: {last_error}")


def throughput(store_url: str, seconds: int) -> dict:
    sim = SimCluster(store_url, lease_ttl=10.0, name_prefix="bt")
    try:
        sim.create_underlay()
        sim.init_network("10.214.0.0/16")
        a, b = sim.add_host(), sim.add_host()
        sim.start_all()
        ca, cb = sim.add_plain_container(a), sim.add_plain_container(b)
        # the hand-made VXLAN between the same two host namespaces: same MTU, static flooding to the one peer
        for host, peer, address in ((a, b, "10.215.0.1/24"), (b, a, "10.215.0.2/24")):
            for command in (
                f"link add btvx type vxlan id 4242 dstport 4790 local {host.address.ip} dev underlay0 nolearning",
                "link set btvx mtu 1450 up", f"addr add {address} dev btvx",
            ):
                subprocess.run(["ip", "-n", host.netns, *command.split()], check=True)
            subprocess.run(["bridge", "-n", host.netns, "fdb", "append", "00:00:00:00:00:00", "dev", "btvx", "dst",
                            str(peer.address.ip)], check=True)
        return {
            "overlay_containers_gbps": iperf(cb.netns, ca.netns, str(cb.address.ip), seconds),
            # host to host through Berth's VXLAN device (B's bridge address, routed over berth.1): the same path
            # as the hand-made device, so the two figures compare like with like
            "overlay_hosts_gbps": iperf(b.netns, a.netns, str(b.subnet().network_address + 1), seconds),
            "handmade_vxlan_hosts_gbps": iperf(b.netns, a.netns, "10.215.0.2", seconds),
            "bare_underlay_gbps": iperf(b.netns, a.netns, str(b.address.ip), seconds),
        }
    finally:
        sim.teardown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--joins", type=int, default=30)
    parser.add_argument("--iperf-seconds", type=int, default=5)
    parser.add_argument("--skip-iperf", action="store_true")
    parser.add_argument("--store", action="append", choices=("sqlite", "etcd"),
                        help="store(s) to measure convergence on (default: sqlite and etcd)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    args.store = args.store or ["sqlite", "etcd"]
    if os.geteuid() != 0:
        print("overlay_bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="bt-overlay-bench-") as tmp:
        for kind in args.store:
            figures[f"convergence_{kind}"] = conv = convergence(args.hosts, args.joins, kind, tmp)
            print(f"convergence on {kind}, {conv['hosts']} hosts, {conv['joins']} joins (lease written -> every "
                  f"other host reaches the new host's container): p50 {conv['all_hosts_ms']['p50']:.1f} ms, "
                  f"p99 {conv['all_hosts_ms']['p99']:.1f} ms, max {conv['all_hosts_ms']['max']:.1f} ms "
                  f"(goal p99 < 300 ms: {'met' if conv['all_hosts_ms']['p99'] < 300 else 'MISSED'})")
            print(f"  per host: p50 {conv['each_host_ms']['p50']:.1f} ms, p99 {conv['each_host_ms']['p99']:.1f} ms")
        if not args.skip_iperf:
            figures["throughput"] = tp = throughput(f"sqlite:///{tmp}/tp.db", args.iperf_seconds)
            print(f"iperf3 TCP, {args.iperf_seconds} s: overlay container->container "
                  f"{tp['overlay_containers_gbps']:.2f} Gbit/s, host->host {tp['overlay_hosts_gbps']:.2f} Gbit/s; "
                  f"hand-made VXLAN host->host "
                  f"{tp['handmade_vxlan_hosts_gbps']:.2f} Gbit/s; bare underlay {tp['bare_underlay_gbps']:.2f} Gbit/s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
