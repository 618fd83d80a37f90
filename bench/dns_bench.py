#!/usr/bin/env python3
"""dnsd against dnsmasq, side by side in one run, on the same 1,000 names.

    .venv/bin/python bench/dns_bench.py [--duration 10] [--workers 1,2] [--rounds 1] [--aardvark]

For each query set (the 1,000 names; the same with 10% unknown names) and each server: every answer is first
checked name by name (address, rcode), then ``dnsperf -c 4 -l DURATION`` measures queries/s, average latency and
lost queries, then a short verbose ``dnsperf`` run gives the p99 latency and the rcodes seen under load. "CPU us/q"
is the server's own CPU time (user + system, from /proc, all its processes) per answered query: on a machine that
other work shares it moves less than queries/s does.
dnsmasq gets ``--local=/ZONE/`` besides the hosts file so that it, too, answers unknown names NXDOMAIN itself,
and ``--local-ttl=5`` so that its answers carry the same TTL as dnsd's.
The ceiling row (``bench/udp_ceiling.c``, compiled with the machine's gcc) echoes every datagram with no work at
all: on a 2-core machine dnsperf and the kernel's loopback path take most of the CPU, and this is the most any
server could reach under the same dnsperf. Then each server's CPU per query at a fixed rate (``--rate``, default
20,000 q/s: ``dnsperf -Q``, so every server does the same work) and at an everyday load.

``--scale N`` (default 10,000; 0 skips it) adds the view at scale: N endpoints in a real SQLite store served by
``berth dns --store`` beside dnsmasq with the same N names in a hosts file — resident memory of each, queries/s
over all N names, and the time from writing one more endpoint to the store (what the agent does on a
registration) to dnsd's first correct answer for it, over ``--registrations`` new names.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dnslib import DNSRecord  # noqa: E402

from discovery.model import EndpointRecord  # noqa: E402

ZONE = "berth.internal"
DNSMASQ = "/usr/sbin/dnsmasq"
AARDVARK = "/usr/lib/podman/aardvark-dns"


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen
    daemon_pid: int | None = None  # aardvark-dns forks into the background

    def pids(self) -> list[int]:
        main = self.daemon_pid or self.proc.pid
        try:
            children = Path(f"/proc/{main}/task/{main}/children").read_text().split()
        except OSError:
            children = []
        return [main, *map(int, children)]

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and its worker processes so far."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.daemon_pid is not None:
            try:
                os.kill(self.daemon_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Result:
    qps: float
    avg_ms: float
    lost: int
    sent: int
    cpu_us: float = float("nan")  # server CPU per answered query


def free_port() -> int:
    """A port free for both UDP and TCP right now (dnsmasq binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def make_world(folder: Path, count: int) -> tuple[dict[str, str], list[str], list[str]]:
    """Records for dnsd, the same names in a hosts file for dnsmasq, and the two query lists."""
    expected = {f"btbench{i}.{ZONE}": f"10.{200 + i // 65025}.{i // 255 % 255}.{i % 255 + 1}" for i in range(count)}
    records = [EndpointRecord(id=f"bench{i}/eth0", name=name.split(".")[0], addresses=(addr,))
               for i, (name, addr) in enumerate(expected.items())]
    (folder / "records.json").write_text("[" + ",".join(r.to_json() for r in records) + "]")
    (folder / "hosts").write_text("".join(f"{addr} {name}\n" for name, addr in expected.items()))
    known = list(expected)
    mixed = [name if i % 10 else f"btmissing{i}.{ZONE}" for i, name in enumerate(known)]
    (folder / "known.txt").write_text("".join(f"{n} A\n" for n in known))
    (folder / "mixed.txt").write_text("".join(f"{n} A\n" for n in mixed))
    return expected, known, mixed


def start_dnsmasq(folder: Path) -> Server:
    port = free_port()
    proc = subprocess.Popen([DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts",
                             f"--addn-hosts={folder / 'hosts'}", f"--port={port}", "--listen-address=127.0.0.1",
                             "--bind-interfaces", f"--local=/{ZONE}/", "--local-ttl=5", "--pid-file="],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = Server("dnsmasq", port, proc)
    wait_until_answering(server)
    return server


def start_dnsd(folder: Path, workers: int, extra: list[str], source: list[str] | None = None,
               python: str = sys.executable, tree: Path = REPO) -> Server:
    """``berth dns`` of ``tree`` (this checkout unless told), run by ``python``."""
    source = source or ["--records", str(folder / "records.json")]
    proc = subprocess.Popen([python, "-m", "berth.cli", "dns", *source,
                             "--listen", "127.0.0.1:0", "--no-forward", "--workers", str(workers), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tree)
    line = proc.stdout.readline()
    match = re.search(r"127\.0\.0\.1:(\d+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"berth dns did not start: {line!r}")
    label = f"berth dns ({workers} worker{'s' if workers > 1 else ''}{', ' + ' '.join(extra) if extra else ''})"
    server = Server(label, int(match.group(1)), proc)
    wait_until_answering(server)
    return server


def start_ceiling(folder: Path) -> Server | None:
    """``bench/udp_ceiling.c``, compiled here: datagrams echoed back with no work at all — the most any server
    could get from this dnsperf on this machine (None without a C compiler)."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        return None
    binary = folder / "udp_ceiling"
    subprocess.run([compiler, "-O2", "-o", str(binary), str(REPO / "bench" / "udp_ceiling.c")], check=True)
    port = free_port()
    server = Server("ceiling: C echo, no lookup", port, subprocess.Popen([str(binary), str(port)]))
    deadline = time.monotonic() + 5
    while query(port, f"btbench0.{ZONE}", timeout=0.3) is None:
        if time.monotonic() > deadline:
            server.stop()
            return None
    return server


def start_aardvark(folder: Path, expected: dict[str, str]) -> Server | None:
    """aardvark-dns reads one file per network: a header with its listen address, then one container a line."""
    if not os.access(AARDVARK, os.X_OK):
        return None
    config = folder / "aardvark"
    config.mkdir(exist_ok=True)
    lines = ["127.0.0.1"] + [f"{i:064x} {addr}  {name.split('.')[0]}" for i, (name, addr) in
                             enumerate(expected.items())]
    (config / "btbench").write_text("\n".join(lines) + "\n")
    port = free_port()
    proc = subprocess.Popen([AARDVARK, "--config", str(config), "-p", str(port), "run"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc.wait(10)  # it daemonises: the child's pid lands in aardvark.pid
    pid_file = config / "aardvark.pid"
    deadline = time.monotonic() + 5
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not pid_file.exists():
        return None
    server = Server("aardvark-dns", port, proc, daemon_pid=int(pid_file.read_text().split()[0]))
    try:
        wait_until_answering(server, name="btbench0")
    except RuntimeError:
        server.stop()
        return None
    return server


def query(port: int, name: str, timeout: float = 2.0) -> DNSRecord | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(DNSRecord.question(name, "A").pack(), ("127.0.0.1", port))
        try:
            return DNSRecord.parse(sock.recv(4096))
        except socket.timeout:
            return None


def wait_until_answering(server: Server, name: str = f"btbench0.{ZONE}") -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if server.proc.poll() is not None and server.daemon_pid is None:
            raise RuntimeError(f"{server.name} exited: {server.proc.stderr.read()}")
        if query(server.port, name, timeout=0.3) is not None:
            return
    raise RuntimeError(f"{server.name} does not answer")


def verify(server: Server, names: list[str], expected: dict[str, str], short_names: bool = False) -> str:
    """Ask every name once: known names need exactly their address, unknown ones NXDOMAIN."""
    good = wrong = 0
    for name in names:
        reply = query(server.port, name.split(".")[0] if short_names else name)
        if reply is None:
            wrong += 1
            continue
        if name in expected:
            ok = reply.header.rcode == 0 and [str(rr.rdata) for rr in reply.rr] == [expected[name]]
        else:
            ok = reply.header.rcode == 3 and not reply.rr
        good += ok
        wrong += not ok
    return f"{good}/{len(names)} correct" + (f", {wrong} WRONG" if wrong else "")


def dnsperf(port: int, query_file: Path, clients: int, seconds: float, verbose: bool = False,
            rate: int | None = None) -> str:
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(query_file), "-c", str(clients),
            "-l", str(seconds)] + (["-v"] if verbose else []) + (["-Q", str(rate)] if rate else [])
    return subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout


def measure(server: Server, query_file: Path, clients: int, seconds: float, rate: int | None = None) -> Result:
    cpu_before = server.cpu_seconds()
    out = dnsperf(server.port, query_file, clients, seconds, rate=rate)
    cpu = server.cpu_seconds() - cpu_before
    completed = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))
    return Result(qps=float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1)),
                  avg_ms=1000 * float(re.search(r"Average Latency \(s\):\s+([\d.]+)", out).group(1)),
                  lost=int(re.search(r"Queries lost:\s+(\d+)", out).group(1)),
                  sent=int(re.search(r"Queries sent:\s+(\d+)", out).group(1)),
                  cpu_us=1e6 * cpu / completed if completed else float("nan"))


def light_load_cpu(server: Server, query_file: Path, clients: int, rate: int, seconds: float) -> float:
    """The server's CPU, in % of one core, while answering a steady ``rate`` queries/s (dnsperf -Q): what it
    costs at an everyday load, where busy polling must not kick in."""
    cpu_before = server.cpu_seconds()
    started = time.monotonic()
    dnsperf(server.port, query_file, clients, seconds, rate=rate)
    return 100 * (server.cpu_seconds() - cpu_before) / (time.monotonic() - started)


def tail_latency(server: Server, query_file: Path, clients: int, seconds: float) -> tuple[float, str]:
    """p99 latency and the rcodes seen, from a verbose run (verbose output slows dnsperf, so it is separate)."""
    out = dnsperf(server.port, query_file, clients, seconds, verbose=True)
    latencies, rcodes = [], {}
    for line in out.splitlines():
        if line.startswith("> "):
            fields = line.split()
            rcodes[fields[1]] = rcodes.get(fields[1], 0) + 1
            latencies.append(float(fields[-1]))
    if len(latencies) < 100:
        return float("nan"), ""
    total = sum(rcodes.values())
    return (1000 * statistics.quantiles(latencies, n=100)[98],
            " ".join(f"{k} {100 * v / total:.1f}%" for k, v in sorted(rcodes.items())))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds per dnsperf run (default 10)")
    parser.add_argument("--clients", type=int, default=4, help="dnsperf -c (default 4)")
    parser.add_argument("--names", type=int, default=1000)
    parser.add_argument("--workers", default="1,2", help="berth dns worker processes; a comma list runs one "
                        "server per count (default 1,2)")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the servers this many times; "
                        "the median qps is reported")
    parser.add_argument("--p99-seconds", type=float, default=3, help="length of the verbose run for p99")
    parser.add_argument("--rate", type=int, default=20_000, help="queries/s of the fixed-rate CPU-per-query "
                        "table (0 skips it)")
    parser.add_argument("--scale", type=int, default=10_000, help="names in the view for the scale section "
                        "(0 skips it)")
    parser.add_argument("--registrations", type=int, default=20, help="new names timed in the scale section")
    parser.add_argument("--light-rate", type=int, default=2000, help="queries/s of the light-load CPU check "
                        "(0 skips it)")
    parser.add_argument("--no-ceiling", action="store_true", help="leave out the C echo that shows the most "
                        "any server could reach here")
    parser.add_argument("--aardvark", action="store_true", help="add aardvark-dns as a third peer")
    parser.add_argument("--dnsd-arg", action="append", default=[], help="extra argument for berth dns")
    args = parser.parse_args()
    for tool in ("dnsperf", DNSMASQ):
        if shutil.which(tool) is None:
            print(f"missing {tool} (apt-get install dnsperf dnsmasq-base)", file=sys.stderr)
            return 2

    with tempfile.TemporaryDirectory(prefix="bt-dnsbench-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)  # dnsmasq reads its hosts file after dropping to an unprivileged user
        expected, known, mixed = make_world(folder, args.names)
        servers: list[Server] = []
        try:
            servers.append(start_dnsmasq(folder))
            for workers in args.workers.split(","):
                servers.append(start_dnsd(folder, int(workers), args.dnsd_arg))
            ceiling = None if args.no_ceiling else start_ceiling(folder)
            if ceiling is not None:
                servers.append(ceiling)
            if args.aardvark:
                peer = start_aardvark(folder, expected)
                if peer is None:
                    print("aardvark-dns: could not be started here; left out")
                else:
                    servers.append(peer)
            print(f"{args.names} names, dnsperf -c {args.clients} -l {args.duration:g}, {os.cpu_count()} CPUs, "
                  f"load average {os.getloadavg()[0]:.1f}")
            print("correctness (every name asked once):")
            for server in servers:
                if server is ceiling:
                    print(f"  {server.name:<28} (echoes the question: not a DNS answer, not checked)")
                    continue
                short = server.name == "aardvark-dns"
                for label, names in (("known", known), ("10% unknown", mixed)):
                    print(f"  {server.name:<28} {label:<12} {verify(server, names, expected, short)}")
            measured = [s for s in servers if s.name != "aardvark-dns"]  # it answers short names only
            for label, names_file in (("1,000 names", folder / "known.txt"),
                                      ("10% unknown names", folder / "mixed.txt")):
                runs: dict[str, list[Result]] = {s.name: [] for s in measured}
                for _ in range(args.rounds):
                    for server in measured:
                        runs[server.name].append(measure(server, names_file, args.clients, args.duration))
                tails = {s.name: tail_latency(s, names_file, args.clients, args.p99_seconds)
                         for s in measured} if args.p99_seconds > 0 else {}
                report(label, runs, tails)
            if args.rate:
                print(f"\nCPU per query at a fixed {args.rate:,} queries/s ({args.duration:g} s, dnsperf -Q):")
                print(f"  {'server':<28} {'queries/s':>10} {'CPU us/q':>8} {'% of a core':>11}")
                for server in measured:
                    if server is ceiling:
                        continue
                    result = measure(server, folder / "known.txt", args.clients, args.duration, rate=args.rate)
                    print(f"  {server.name:<28} {result.qps:>10,.0f} {result.cpu_us:>8.1f} "
                          f"{result.qps * result.cpu_us / 1e4:>10.1f}%")
            if args.light_rate:
                print(f"\nCPU at a light load ({args.light_rate:,} queries/s for 5 s, % of one core):")
                for server in measured:
                    if server is ceiling:
                        continue
                    cpu = light_load_cpu(server, folder / "known.txt", args.clients, args.light_rate, 5)
                    print(f"  {server.name:<28} {cpu:>6.1f}%")
            if any(s.name == "aardvark-dns" for s in servers):
                aardvark = next(s for s in servers if s.name == "aardvark-dns")
                short_file = folder / "short.txt"
                short_file.write_text("".join(f"{n.split('.')[0]} A\n" for n in known))
                result = measure(aardvark, short_file, args.clients, args.duration)
                print(f"\naardvark-dns (short names, same 1,000): {result.qps:,.0f} q/s, avg "
                      f"{result.avg_ms:.2f} ms, lost {result.lost}, CPU {result.cpu_us:.1f} us/q")
        finally:
            for server in servers:
                server.stop()
        if args.scale:
            scale_section(Path(tmp), args)
    return 0


def rss_mb(server: Server) -> float:
    total = 0
    for pid in server.pids():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def bench_record(i: int, prefix: str = "btbench") -> EndpointRecord:
    return EndpointRecord(id=f"{prefix}{i}/eth0", name=f"{prefix}{i}",
                          addresses=(f"10.{200 + i // 65025}.{i // 255 % 255}.{i % 255 + 1}",))


def scale_section(folder: Path, args: argparse.Namespace) -> None:
    """N names in a real store: memory, queries/s, registration-to-answer time (see the module docstring)."""
    from discovery.model import endpoint_key
    from store.api import Put, open_store

    world = folder / "scale"
    world.mkdir()
    world.chmod(0o755)
    expected, _, _ = make_world(world, args.scale)
    url = f"sqlite:///{world / 'berth.db'}"
    store = open_store(url)
    servers: list[Server] = []
    try:
        records = [bench_record(i) for i in range(args.scale)]
        for start in range(0, len(records), 100):
            store.txn([], [Put(endpoint_key("btbenchhost", r.id), r.to_json().encode())
                           for r in records[start:start + 100]])
        started = time.monotonic()
        dnsd = start_dnsd(world, 1, args.dnsd_arg, ["--store", url])
        startup = time.monotonic() - started
        servers.append(dnsd)
        servers.append(start_dnsmasq(world))
        print(f"\nscale: {args.scale:,} names in the view (berth dns --store sqlite, 1 worker; dnsmasq: hosts file)")
        for server in servers:
            print(f"  {server.name:<28} {verify(server, list(expected), expected)}")
        resting = {s.name: rss_mb(s) for s in servers}
        print(f"  {'server':<28} {'RSS MB':>7} {'queries/s':>10} {'CPU us/q':>8}")
        for server in servers:
            result = measure(server, world / "known.txt", args.clients, args.duration)
            print(f"  {server.name:<28} {resting[server.name]:>7.1f} {result.qps:>10,.0f} {result.cpu_us:>8.1f}")
        print(f"  berth dns: first answer {startup:.2f} s after start (listing {args.scale:,} records included); "
              f"RSS after the load {rss_mb(dnsd):.1f} MB")
        delays = []
        for i in range(args.registrations):
            record = bench_record(i, "btnew")
            written = time.monotonic()
            store.put(endpoint_key("btbenchhost", record.id), record.to_json().encode())
            while True:
                reply = query(dnsd.port, f"{record.name}.{ZONE}", timeout=0.5)
                if reply is not None and [str(rr.rdata) for rr in reply.rr] == list(record.addresses):
                    break
                if time.monotonic() - written > 30:
                    raise RuntimeError(f"{record.name} not answered 30 s after its registration")
            delays.append(1000 * (time.monotonic() - written))
        print(f"  registration to first correct answer ({len(delays)} new names, store write to answer): "
              f"median {statistics.median(delays):.0f} ms, max {max(delays):.0f} ms")
    finally:
        for server in servers:
            server.stop()
        store.close()


def report(label: str, runs: dict[str, list[Result]], tails: dict[str, tuple[float, str]]) -> None:
    print(f"\n{label}:")
    print(f"  {'server':<28} {'queries/s':>10} {'avg ms':>7} {'p99 ms':>7} {'lost':>6} {'CPU us/q':>8}  "
          f"{'vs dnsmasq':>10}  rcodes (under load)")
    baseline = None
    for name, results in runs.items():
        qps = statistics.median(r.qps for r in results)
        avg = statistics.median(r.avg_ms for r in results)
        lost = sum(r.lost for r in results)
        cpu = statistics.median(r.cpu_us for r in results)
        p99, rcodes = tails.get(name, (float("nan"), ""))
        if baseline is None:
            baseline = qps
        print(f"  {name:<28} {qps:>10,.0f} {avg:>7.2f} {p99:>7.2f} {lost:>6} {cpu:>8.1f}  {qps / baseline:>9.2f}x  "
              f"{rcodes}")


if __name__ == "__main__":
    sys.exit(main())
