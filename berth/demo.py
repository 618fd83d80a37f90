"""``berth demo``: Berth's whole job on one machine, told as a story, then everything undone.

Two simulated hosts (network namespaces on a private underlay) share an embedded SQLite store; each runs
``berth overlay`` (VXLAN), a discovery agent and a DNS server. A container on each host is attached by the real
plugin chain (berth-overlay -> berth-portmap -> berth-register) executed as a runtime executes it. The container on
host A then finds the one on host B by name through Berth's DNS, pings it and fetches a page from it across the
overlay, and fetches the same page through the port host B publishes. Teardown (CNI DEL, daemons, namespaces) runs
whatever happens, Ctrl-C included, and the demo shows that nothing is left. Exit status 0 only if every check passed.
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from berth import demo_probe as probe
from berth.interrupts import Interrupted, StopGuard, checkpoint
from berth.status import table
from berth.demo_world import OVERLAY, UNDERLAY, VXLAN, ZONE, DemoError, World, cni_bin_dir

HOST_PORT = 8080
VXLAN_PORT = 8472  # the overlay's default UDP port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-going", action="store_true",
                        help="play every step even after a failed check (default: stop at the first failure)")
    parser.add_argument("--docker", action="store_true",
                        help="the Docker variant: a private dockerd with Berth as its network and IPAM driver")
    parser.add_argument("--picture", default="berth-topology.svg",
                        help="where `berth status --graph` draws the two hosts (default ./berth-topology.svg; "
                             "it is kept after the teardown)")


def show(line: str) -> None:
    """Print a line of the story; a terminal that went away (SIGHUP) must not stop the clean-up."""
    try:
        print(line, flush=True)
    except OSError:
        pass


class Story:
    """Numbered steps and checks; a failed check is remembered for the exit status and the last line."""

    def __init__(self, keep_going: bool = False) -> None:
        self.started = time.monotonic()
        self.steps = 0
        self.checks = 0
        self.failures: list[str] = []
        self.keep_going = keep_going

    def step(self, title: str) -> None:
        checkpoint()
        self.steps += 1
        show(f"\n{self.steps}. {title}  [t+{self.elapsed():.1f}s]")

    def say(self, text: str = "") -> None:
        checkpoint()
        show(f"   {text}" if text else "")

    def check(self, what: str, ok: bool, detail: str = "", fatal: bool = False) -> bool:
        checkpoint()
        self.checks += 1
        show(f"   [{'ok' if ok else 'FAIL'}] {what}" + (f": {detail}" if detail else ""))
        if not ok:
            self.failures.append(what)
            if fatal and not self.keep_going:
                raise DemoError(f"cannot go on: {what}")
        return ok

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def run(args: argparse.Namespace) -> int:
    if getattr(args, "docker", False):
        from berth.demo_docker import run_docker
        return run_docker(args)
    if os.geteuid() != 0:
        print("berth demo creates network namespaces: run it as root (e.g. `sudo make demo`)", file=sys.stderr)
        return 1
    missing = [tool for tool in ("ip", "dig", "nft") if not shutil.which(tool)]
    if missing:
        print(f"berth demo needs {', '.join(missing)} (`make deps` installs them)", file=sys.stderr)
        return 1
    story = Story(keep_going=getattr(args, "keep_going", False))
    before = probe.Snapshot()
    tag = secrets.token_hex(3)
    world: World | None = None
    workdir: Path | None = None
    with StopGuard() as guard:  # Ctrl-C, SIGTERM or a closed terminal at any moment: stop, then clean up
        try:
            workdir = Path(tempfile.mkdtemp(prefix=f"berth-demo-{tag}-"))
            world = World(workdir, tag)
            show(f"Berth demo {tag}: two hosts, one overlay, containers that find each other by name.")
            show(f"Everything below lives in network namespaces named bd-*-{tag} and in {workdir}.")
            try:
                play(world, story, os.path.abspath(getattr(args, "picture", "berth-topology.svg")))
            except Exception as exc:  # every failure still reaches the teardown and the exit status
                story.check("the demo ran to the end", False, f"{type(exc).__name__}: {exc}")
        except Interrupted:
            pass  # reported by the teardown, which runs whatever happened
        finally:
            guard.shield()  # from here a stop request is remembered, never obeyed: the teardown must finish
            interrupted = guard.received
            if interrupted is not None:
                story.check("the demo ran to the end", False,
                            f"interrupted by {signal.Signals(interrupted).name}; cleaning up")
            if world is not None:
                teardown(world, story, before, workdir)
            elif workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
            if interrupted is None and guard.received is not None:
                story.check("the demo ran to the end", False,
                            f"{signal.Signals(guard.received).name} during the teardown, which went on to the end")
    if story.failures:
        show(f"\nFAILED: {len(story.failures)} of {story.checks} checks ({story.elapsed():.1f} s): "
             + "; ".join(story.failures))
        return guard.exit_status or 1
    show(f"\nAll {story.checks} checks passed in {story.elapsed():.1f} s.")
    return 0


def play(world: World, story: Story, picture: str) -> None:
    story.step("Two hosts on a private underlay, sharing one datastore")
    story.say(f"store: {world.store_url} (embedded SQLite, shared through the file system)")
    world.cni_bin = cni_bin_dir(world.workdir)
    world.start_hosts(2)
    host_a, host_b = world.hosts
    story.say(f"overlay network {OVERLAY} over the underlay {UNDERLAY}; `berth overlay` runs on each host")
    for host in world.hosts:
        lease = host.lease()
        story.say(f"host {host.name} ({host.netns}): underlay {host.address}, subnet {lease.subnet.network}, "
                  f"VTEP {VXLAN} {lease.vtep_mac}")
    for host in world.hosts:
        peers = [str(other.lease().subnet.network) for other in world.hosts if other is not host]
        routes = probe.retry(lambda: world.peer_routes(host),
                             lambda found: all(any(p in r for r in found) for p in peers), 15)
        story.check(f"host {host.name} learned its peer's subnet from the store", all(any(p in r for r in routes)
                    for p in peers), "; ".join(routes) or "no route", fatal=True)

    story.step("A discovery agent and a DNS server on each host")
    for host in world.hosts:
        world.start_services(host)
        story.say(f"host {host.name}: agent on {host.workdir / 'agent.sock'}, DNS for {ZONE}. on {host.address}:53")

    story.step("Containers attached by the CNI chain, as a runtime runs it")
    story.say("chain: berth-overlay (-> berth-bridge + berth-ipam over the host's subnet) -> berth-portmap "
              "-> berth-register")
    for host in world.hosts:
        status = world.whole_chain(host, "STATUS")
        story.check(f"host {host.name}: STATUS of every plugin in the chain", all(ok for _, ok, _ in status),
                    "; ".join(f"{name} {'ready' if ok else error}" for name, ok, error in status), fatal=True)
    web = world.add_container(host_b, "web", ("www",), ({"hostPort": HOST_PORT, "containerPort": 80,
                                                         "protocol": "tcp"},))
    client = world.add_container(host_a, "client", ("probe",))
    for ctr in (web, client):
        story.say(f"{ctr.name} on host {ctr.host.name} ({ctr.netns}):")
        for line in ctr.steps:
            story.say(f"  {line}")
    for ctr in (web, client):
        dns = (ctr.result or {}).get("dns") or {}
        story.check(f"{ctr.name}'s result names its host's DNS server", dns.get("nameservers") == [ctr.host.address],
                    f"nameservers {dns.get('nameservers')}, search {dns.get('search')} -> its resolv.conf")
    page = f"Hello from web, on host B, behind Berth (demo {world.tag})\n"
    world.serve_web(web, page)
    story.say(f"web serves a page: python3 -m http.server 80 inside {web.netns}")

    story.step("Names, through Berth's DNS")
    questions = [(client, host_a, f"web.{ZONE}", "A", web.address), (client, host_a, f"www.{ZONE}", "A", web.address),
                 (client, host_a, web.address, "PTR", f"web.{ZONE}."),
                 (web, host_b, f"client.{ZONE}", "A", client.address)]
    for ctr, server, name, rtype, expected in questions:
        ask = (lambda c=ctr, s=server, n=name, t=rtype: probe.dig(c.netns, s.address, *(("-x", n) if t == "PTR"
                                                                                       else (n, t))))
        answer = probe.retry(ask, lambda found, e=expected: e in found, 30)
        world.dns_seen.append((ctr.name, f"{server.address}:53", f"{name} {rtype}", " ".join(answer) or "-"))
        story.check(f"{ctr.name} (host {ctr.host.name}) asks {server.address} for {name} {rtype}", expected in answer,
                    " ".join(answer) or "no answer", fatal=rtype == "A" and name.startswith("web"))

    across(world, story, client, web, page)
    reclaim(world, story)

    story.step("Summary")
    summary(world)
    cluster_status(world, story, picture)


def across(world: World, story: Story, client, web, page: str) -> None:
    """Ping and fetch from host A's container to host B's, watched on both VXLAN devices and on the underlay."""
    story.step("Across the overlay")
    host_a, host_b = world.hosts
    counters = {h.name: probe.link_counters(h.netns, VXLAN) for h in world.hosts}
    ok, text = probe.ping(client.netns, web.address)
    story.check(f"client ({client.address}, host A) pings web ({web.address}, host B)", ok, text)
    with probe.capture(world.sim.underlay_ns, "br0", f"udp port {VXLAN_PORT}",
                       str(world.workdir / "capture.log")) as seen:
        ok, body = probe.retry(lambda: probe.fetch(client.netns, "http://web/"),
                               lambda reply: reply[0] and page.strip() in reply[1], 30)
    story.check("client fetches http://web/ (resolv.conf -> Berth DNS -> VXLAN)", ok and page.strip() in body,
                body.splitlines()[0] if body else "-")
    for host in world.hosts:
        tx, rx = probe.link_counters(host.netns, VXLAN)
        world.overlay_traffic[host.name] = (tx - counters[host.name][0], rx - counters[host.name][1])
    sent_a, received_a = world.overlay_traffic["A"]
    story.check(f"the traffic went through host A's VXLAN device {VXLAN}", sent_a > 0 and received_a > 0,
                f"{sent_a} packets out, {received_a} in")
    world.overlay_frames = probe.vxlan_frames(seen)
    if shutil.which("tcpdump"):
        story.check("on the underlay wire between the hosts, the fetch is VXLAN",
                    any(f.startswith(f"{host_a.address} > {host_b.address} ") and f"> {web.address}:80 " in f
                        for f in world.overlay_frames), "tcpdump on the underlay bridge saw")
        for frame in world.overlay_frames[:3]:
            story.say(f"  {frame}")
    url = f"http://{host_b.address}:{HOST_PORT}/"
    ok, body = probe.fetch(client.netns, url)
    story.check(f"client fetches {url} (host B's published port -> web:80)", ok and page.strip() in body,
                body.splitlines()[0] if body else "-")


def reclaim(world: World, story: Story) -> None:
    """A container dies and the runtime forgets it: GC, given the attachments still valid, frees what it held."""
    story.step("A container the runtime lost, reclaimed by GC")
    host_a = world.hosts[0]
    client = world.containers[1]
    lost = world.add_container(host_a, "crashed", ("tmp",))
    answer = probe.retry(lambda: probe.dig(client.netns, host_a.address, f"crashed.{ZONE}"),
                         lambda found: lost.address in found, 30)
    story.say(f"crashed on host A: {lost.address}, resolves as crashed.{ZONE} ({' '.join(answer) or 'not yet'})")
    world.lose(lost)
    valid = [c for c in world.containers if c.host is host_a and not c.lost]
    story.say(f"it dies and the runtime forgets it: no DEL, only GC listing the attachments still valid "
              f"({', '.join(c.name for c in valid)})")
    attachments = [{"containerID": c.container_id, "ifname": "eth0"} for c in valid]
    gc = world.whole_chain(host_a, "GC", {"cni.dev/valid-attachments": attachments})
    lost.reclaimed = story.check("GC through every plugin of host A's chain", all(ok for _, ok, _ in gc),
                                 "; ".join(f"{name} {'done' if ok else error}" for name, ok, error in gc))
    kept = host_a.reservations()
    story.check("host A's addresses: crashed's released, client's kept", kept == [client.address], ", ".join(kept))
    # the DNS server follows the store through its watch: the name goes a moment after GC removed the record
    gone = probe.retry(lambda: probe.dig(client.netns, host_a.address, f"crashed.{ZONE}"), lambda found: not found,
                       30)
    story.check(f"crashed.{ZONE} no longer resolves", not gone, " ".join(gone) or "NXDOMAIN")
    still = probe.dig(world.containers[0].netns, world.hosts[1].address, f"client.{ZONE}")
    story.check(f"client.{ZONE} still does", client.address in still, " ".join(still) or "no answer")


def summary(world: World) -> None:
    rows = [("host", "namespace", "underlay", "subnet", "VTEP", "VTEP MAC", "DNS")]
    for host in world.hosts:
        lease = host.lease()
        rows.append((host.name, host.netns, host.address, str(lease.subnet.network), VXLAN, lease.vtep_mac,
                     f"{host.address}:53"))
    for line in table(rows):
        print(f"   {line}")
    print()
    rows = [("container", "host", "namespace", "address", "aliases", "published", "state")]
    for ctr in world.containers:
        ports = ", ".join(f"{ctr.host.address}:{p['hostPort']}->{p['containerPort']}/{p['protocol']}"
                          for p in ctr.ports) or "-"
        rows.append((ctr.name, ctr.host.name, ctr.netns, ctr.address, ", ".join(ctr.aliases) or "-", ports,
                     "lost, reclaimed by GC" if ctr.lost else "running"))
    for line in table(rows):
        print(f"   {line}")
    print()
    for line in table([("asked by", "server", "question", "answer"), *world.dns_seen]):
        print(f"   {line}")
    print()
    if world.overlay_frames:
        print(f"   captured on the underlay during the fetch: {world.overlay_frames[0]}")
    for name, (sent, received) in world.overlay_traffic.items():
        print(f"   VXLAN on host {name}: {sent} packets sent, {received} received during the ping and the fetch")


def cluster_status(world: World, story: Story, picture: str) -> None:
    """What `berth status` shows of the two hosts, and its picture of them, kept after the teardown."""
    from berth import status
    from store.api import open_store

    story.say(f"$ berth status --store {world.store_url} --graph {picture}")
    store = open_store(world.store_url)
    try:
        snapshot = status.collect(store, world.sim.prefix)
    finally:
        store.close()
    for line in status.render_tables(snapshot):
        story.say(f"  {line}" if line else "")
    shown = {h.underlay for h in snapshot.hosts} == {h.address for h in world.hosts} and all(
        any(c.address in e.addresses for e in snapshot.endpoints) for c in world.containers if not c.lost)
    story.check("berth status shows both hosts and every running container", shown)
    try:
        status.draw(status.as_graph(snapshot), picture)
        story.check("the topology picture is drawn", True, picture)
    except (ValueError, OSError, RuntimeError, subprocess.SubprocessError) as exc:
        story.check("the topology picture is drawn", False, str(exc))


def teardown(world: World, story: Story, before: probe.Snapshot, workdir: Path) -> None:
    story.step("Teardown")
    for ctr in reversed([c for c in world.containers if not c.reclaimed]):  # a lost one GC never got to, too
        story.say(f"CNI DEL {ctr.name} on host {ctr.host.name}, the chain in reverse"
                  + (" (lost before GC reclaimed it):" if ctr.lost else ":"))
        world.del_container(ctr, lambda what, ok, detail: story.check(f"  {what}", ok, detail))
    for host in world.hosts:
        story.check(f"host {host.name}: no address reservations left", not host.reservations(),
                    ", ".join(host.reservations()))
    if world.hosts:
        _check_store(world, story, "endpoints")
        # as after GC: the DNS server learns of the DEL from its watch, a moment after the store changed
        gone = probe.retry(lambda: probe.dig(world.hosts[0].netns, world.hosts[0].address, f"web.{ZONE}"),
                           lambda found: not found, 30)
        if any(d.process.poll() is None for d in world.hosts[0].daemons):
            story.check(f"web.{ZONE} no longer resolves", not gone, " ".join(gone) or "NXDOMAIN")
    processes = world.processes()
    world.stop_daemons()
    if world.hosts:
        _check_store(world, story, "subnet leases")
    world.remove_namespaces()
    shutil.rmtree(workdir, ignore_errors=True)
    story.check("every process the demo started has exited", all(p.poll() is not None for p in processes),
                f"{len(processes)} processes")
    for what, left in before.new_since(world.tag, str(workdir), (OVERLAY, str(UNDERLAY))).items():
        story.check(f"no {what} left", not left, ", ".join(left) if left else "")
    story.check("the demo's directory is gone", not workdir.exists(), str(workdir))


def _check_store(world: World, story: Story, what: str) -> None:
    from discovery.model import ENDPOINTS_PREFIX
    from overlay.lease import subnets_prefix
    from store.api import open_store

    prefix = ENDPOINTS_PREFIX if what == "endpoints" else subnets_prefix(world.sim.prefix)
    try:
        store = open_store(world.store_url)
        try:
            keys = [kv.key for kv in store.get_prefix(prefix)[0]]
        finally:
            store.close()
    except Exception as exc:
        story.check(f"no {what} left in the store", False, f"cannot read it: {exc}")
        return
    story.check(f"no {what} left in the store", not keys, ", ".join(keys))
