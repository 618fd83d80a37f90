"""What the demo looks at: questions asked from inside a container, and the machine's state before and after.

Probes run real tools inside the namespaces (``dig``, Python's urllib, busybox ``ping``); snapshots of the root
namespace (namespaces, links, nftables tables, processes) let the demo show that it left nothing behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Iterator

from berth.interrupts import checkpoint

FETCH = ("import sys, urllib.request\n"
         "with urllib.request.urlopen(sys.argv[1], timeout=10) as r:\n"
         "    sys.stdout.write(f'{r.status} ' + r.read().decode(errors='replace'))\n")


def in_netns(netns: str, *argv: str, timeout: float = 15) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout:.0f}s")


def retry(probe, ok, timeout: float):
    """Ask again until ``ok(answer)`` or the time is up (a name or a route may take a moment to appear)."""
    deadline = time.monotonic() + timeout
    while True:
        checkpoint()
        answer = probe()
        if ok(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)


def dig(netns: str, server: str, name: str, rtype: str = "A") -> list[str]:
    done = in_netns(netns, "dig", "+short", "+time=2", "+tries=2", f"@{server}", name, rtype)
    return [line for line in done.stdout.split() if line and not line.startswith(";")] if done.returncode == 0 else []


def fetch(netns: str, url: str) -> tuple[bool, str]:
    """GET ``url`` from inside ``netns`` (its own resolv.conf applies); (ok, status and body or the error)."""
    done = in_netns(netns, sys.executable, "-I", "-c", FETCH, url)
    if done.returncode == 0:
        return True, done.stdout.strip()
    lines = (done.stderr or done.stdout).strip().splitlines()
    return False, lines[-1] if lines else f"exit {done.returncode}"


def ping(netns: str, address: str, count: int = 3) -> tuple[bool, str]:
    tool = ["busybox", "ping"] if shutil.which("busybox") else ["ping"]
    done = in_netns(netns, *tool, "-A", "-c", str(count), "-W", "1", address)  # -A: next ping on each reply
    summary = [line.strip() for line in done.stdout.splitlines() if "packets" in line or "round-trip" in line
               or "rtt" in line]
    return done.returncode == 0, "; ".join(summary) or done.stderr.strip()


def link_counters(netns: str, device: str) -> tuple[int, int]:
    """(packets sent, packets received) by ``device`` in ``netns``."""
    done = subprocess.run(["ip", "-n", netns, "-s", "-j", "link", "show", "dev", device], capture_output=True,
                          text=True)
    try:
        stats = json.loads(done.stdout)[0]["stats64"]
        return stats["tx"]["packets"], stats["rx"]["packets"]
    except (ValueError, LookupError):
        return 0, 0


# -- the machine, before and after -------------------------------------------------------------------------------

def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout
    return {link["ifname"] for link in json.loads(out or "[]")}


def berth_tables(*marks: str) -> set[str]:
    """nftables tables in the root namespace that Berth made (``berth`` in the name) and, when ``marks`` are
    given, that mention one of them (the demo's tag or addresses: another user's tables are not the demo's)."""
    if not shutil.which("nft"):
        return set()
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    tables = {line.strip() for line in out.splitlines() if "berth" in line}
    if not marks:
        return tables
    found = set()
    for table in tables:
        text = subprocess.run(["nft", "list", *table.split()], capture_output=True, text=True).stdout
        if any(mark in text for mark in marks):
            found.add(table)
    return found


def processes_mentioning(text: str) -> dict[int, str]:
    """Processes (other than this one) whose command line contains ``text``: pid -> command line."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if text in cmdline:
            found[int(pid)] = cmdline
    return found


class Snapshot:
    """What exists in the root namespace now, to compare with after the demo."""

    def __init__(self) -> None:
        self.namespaces, self.links = namespaces(), root_links()

    def new_since(self, tag: str, workdir: str, marks: tuple[str, ...] = ()) -> dict[str, list[str]]:
        """What the demo left: its own names only, since other users of the machine may come and go meanwhile."""
        return {
            "namespaces": sorted(n for n in namespaces() if n.endswith(f"-{tag}")
                                 or (n.startswith("bd-") and n not in self.namespaces)),
            "links": sorted(n for n in root_links() - self.links if n.startswith(("bd", "berth")) or tag in n),
            "nftables tables": sorted(berth_tables(tag, *marks)),
            "processes": [f"{pid}: {cmd[:100]}" for pid, cmd in processes_mentioning(workdir).items()],
        }


@contextlib.contextmanager
def capture(netns: str, iface: str, bpf: str, logfile: str, count: int = 4) -> Iterator[list[str]]:
    """tcpdump on ``iface`` in ``netns`` while the body runs; the list holds its decoded lines afterwards
    (empty when tcpdump is not installed). The process never outlives the ``with``."""
    lines: list[str] = []
    if not shutil.which("tcpdump"):
        yield lines
        return
    with open(logfile, "wb") as log:
        proc = subprocess.Popen(["ip", "netns", "exec", netns, "tcpdump", "-l", "-nn", "-T", "vxlan", "-c", str(count), "-i", iface,
                                 bpf], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20  # what the body sends before tcpdump listens is not seen
        while b"listening on" not in open(logfile, "rb").read() and time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        yield lines
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)  # until it has seen ``count`` packets (at once, when the body made them)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        text = open(logfile, "rb").read().decode(errors="replace")
        lines.extend(line for line in text.splitlines() if " > " in line)


OUTER = re.compile(r"IP (\S+)\.\d+ > (\S+)\.(\d+): VXLAN.*vni (\d+)")
INNER = re.compile(r"^IP (\S+)\.(\d+) > (\S+)\.(\d+): Flags \[([^\]]*)\]")


def vxlan_frames(lines: list[str]) -> list[str]:
    """tcpdump's VXLAN lines (outer header, then the inner packet on the next line) as one readable line each."""
    frames = []
    for outer_line, inner_line in zip(lines, lines[1:]):
        outer, inner = OUTER.search(outer_line), INNER.search(inner_line)
        if outer and inner:
            src, dst, port, vni = outer.groups()
            frames.append(f"{src} > {dst} udp/{port} VXLAN vni {vni} carrying "
                          f"{inner[1]}:{inner[2]} > {inner[3]}:{inner[4]} tcp [{inner[5]}]")
    return frames
