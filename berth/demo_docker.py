"""``berth demo --docker``: Berth as Docker's network and IPAM driver, end to end on one machine, then undone.

A private Docker engine (dockerd 20.10 in a simulated host of its own, see :mod:`berth.private_docker`) gets
``berth docker-plugin``, a discovery agent and ``berth dns``. The story: create a Berth network, start a web
container with a name, an alias and a published port, find it by name from another container, reach it through
the published port, watch a second claim of the port being refused, remove everything and show nothing is left.
"""
from __future__ import annotations

import ipaddress
import secrets
import signal

from berth.demo import Story, show
from berth.interrupts import Interrupted, StopGuard
from berth.private_docker import PAGE, PrivateDocker, missing, poll

HOST_PORT = 8080


def run_docker(args) -> int:
    reason = missing()
    if reason:
        show(f"berth demo --docker: {reason}")
        return 1
    story = Story(keep_going=getattr(args, "keep_going", False))
    tag = secrets.token_hex(3)
    show(f"Berth demo {tag} for Docker: a private dockerd, Berth as its network and IPAM driver.")
    engine = None
    with StopGuard() as guard:  # Ctrl-C, SIGTERM or a closed terminal at any moment: stop, then clean up
        try:
            story.step("A private Docker engine with Berth's plugin, agent and DNS")
            engine = PrivateDocker.start(prefix=f"berth-demo-docker-{tag}-", name_prefix="bd",
                                         label=f"bd-docker-{tag}")
            engine.start_agent()
            story.say(f"dockerd on {engine.socket}; plugin {engine.plugin_name} at /run/docker/plugins (private)")
            play(engine, story)
        except Interrupted:
            pass  # reported below, once the teardown is shielded
        except Exception as exc:  # every failure still reaches the teardown and the exit status
            story.check("the demo ran to the end", False, f"{type(exc).__name__}: {exc}")
        finally:
            guard.shield()  # from here a stop request is remembered, never obeyed: the teardown must finish
            if guard.received is not None:
                story.check("the demo ran to the end", False,
                            f"interrupted by {signal.Signals(guard.received).name}; cleaning up")
            if engine is not None:
                show("\nTeardown")
                engine.stop()
                story.check("engine, plugin, agent and namespaces stopped", engine.holder.poll() is not None)
    if story.failures:
        show(f"\nFAILED: {len(story.failures)} of {story.checks} checks ({story.elapsed():.1f} s): "
             + "; ".join(story.failures))
        return guard.exit_status or 1
    show(f"\nAll {story.checks} checks passed in {story.elapsed():.1f} s.")
    return 0


def play(engine: PrivateDocker, story: Story) -> None:
    subnet = ipaddress.ip_network(f"10.231.{100 + secrets.randbelow(150)}.0/24")
    gateway = str(subnet.network_address + 1)
    plugin = engine.plugin_name
    story.step(f"docker network create -d {plugin} --ipam-driver {plugin} --subnet {subnet} demo")
    engine.create_network("demo", str(subnet))
    bridges = [name for name in engine.links() if name.startswith(engine.bridge_prefix)]
    story.check("Berth made the network's bridge", len(bridges) == 1, ", ".join(bridges))
    engine.start_dns(f"{gateway}:53")
    story.say(f"berth dns answers *.berth.internal on {gateway}:53")

    story.step(f"docker run --name web --network-alias www -p {HOST_PORT}:80 busybox httpd")
    engine.run_httpd("web", "demo", "--network-alias", "www", "-p", f"{HOST_PORT}:80")
    web = engine.address_of("web")
    story.check("web got its address from Berth IPAM", ipaddress.ip_address(web) in subnet, web)

    story.step(f"docker run --network demo --dns {gateway} busybox wget http://www.berth.internal/")
    engine.docker("run", "-d", "--name", "client", "--network", "demo", "--dns", gateway, "bt-busybox:1",
                  "sleep", "600")
    page = _wait(lambda: engine.fetch_from("client", "http://www.berth.internal/"))
    story.check("the client found web by its alias through berth dns", page.strip() == PAGE, repr(page.strip()))

    story.step(f"curl http://127.0.0.1:{HOST_PORT}/ on the host")
    page = _wait(lambda: engine.fetch_here(f"http://127.0.0.1:{HOST_PORT}/"))
    story.check("the published port reaches web", page.strip() == PAGE, repr(page.strip()))
    second = engine.docker("run", "-d", "--name", "web2", "--network", "demo", "-p", f"{HOST_PORT}:80",
                           "bt-busybox:1", "true", check=False)
    story.check(f"a second -p {HOST_PORT} is refused", second.returncode != 0 and "already mapped" in second.stderr,
                second.stderr.strip().splitlines()[-1] if second.stderr.strip() else "")

    story.step("docker rm -f web client web2; docker network rm demo")
    engine.docker("rm", "-f", "web", "client", "web2")
    engine.docker("network", "rm", "demo")
    story.check("no veth, bridge or firewall rule is left",
                not [n for n in engine.links() if n.startswith(("vb", "vc", engine.bridge_prefix))]
                and not engine.rule_comments())
    story.check("no address reservation or record is left",
                not any(p.is_file() for p in engine.state_dir.rglob("*") if p.suffix == ".json" or p.name[0].isdigit()))


def _wait(fetch) -> str:
    try:
        return poll(fetch, 30, "a page")
    except TimeoutError:
        return ""
