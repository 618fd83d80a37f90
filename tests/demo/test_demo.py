"""`berth demo` end to end: the story passes, and afterwards nothing the demo made is left, even when interrupted."""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from berth import demo_probe as probe
from tests.conftest import VENV_BIN

pytestmark = [pytest.mark.root, pytest.mark.slow]

BERTH = str(VENV_BIN / "berth")


def demo_identity(output: str) -> tuple[str, str]:
    """The demo's tag and directory, from its first lines."""
    tag = re.search(r"Berth demo ([0-9a-f]{6}):", output).group(1)
    workdir = re.search(r"and in (/\S+?)\.\n", output).group(1)
    return tag, workdir


def assert_nothing_left(tag: str, workdir: str, out: str) -> None:
    left = {"namespaces": [n for n in probe.namespaces() if n.endswith(f"-{tag}")],
            "links": [n for n in probe.root_links() if n.startswith("bd") or tag in n],
            "nft tables": sorted(probe.berth_tables(tag, "10.232.0.0/16", "10.231.0.0/24")),
            "processes": probe.processes_mentioning(workdir),
            "directory": [workdir] if Path(workdir).exists() else [],
            "resolv.conf": list(Path("/etc/netns").glob(f"bd-*-{tag}"))}
    assert not any(left.values()), f"{left}\n{out}"


def test_demo_tells_the_whole_story_and_leaves_nothing(tmp_path):
    picture = tmp_path / "topology.svg"
    done = subprocess.run([BERTH, "demo", "--picture", str(picture)], capture_output=True, text=True, timeout=300)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    tag, workdir = demo_identity(out)
    web = re.search(r"web\s+B\s+bd-web-\S+\s+(10\.232\.\d+\.\d+)", out).group(1)
    # host A's container resolved host B's by name through Berth's DNS ...
    assert re.search(rf"\[ok\] client \(host A\) asks 10\.231\.0\.1 for web\.berth\.internal A: {web}", out)
    # ... and fetched the page across the overlay, by name and through host B's published port
    assert "[ok] client fetches http://web/ (resolv.conf -> Berth DNS -> VXLAN): 200 Hello from web" in out
    assert "[ok] client fetches http://10.231.0.2:8080/" in out
    if shutil.which("tcpdump"):  # seen on the underlay wire: VXLAN from host A to host B carrying the fetch
        assert re.search(rf"10\.231\.0\.1 > 10\.231\.0\.2 udp/8472 VXLAN vni 1 carrying \S+ > {web}:80 tcp", out)
    assert "[ok] client (" in out and "pings web" in out
    # a container the runtime lost is reclaimed by GC: its address and its name go, the others stay
    assert "[ok] host A's addresses: crashed's released, client's kept" in out
    assert "[ok] crashed.berth.internal no longer resolves" in out
    assert "[FAIL]" not in out and re.search(r"All \d+ checks passed", out), out
    # it ends with `berth status` of both hosts and a picture of them, kept after the teardown
    assert "[ok] berth status shows both hosts and every running container" in out
    assert f"[ok] the topology picture is drawn: {picture}" in out
    svg = picture.read_text()
    assert all(text in svg for text in ("10.231.0.1", "10.231.0.2", "web", "client", "VXLAN")), svg
    assert_nothing_left(tag, workdir, out)


def ignore_inherited_stops() -> None:
    """What a background job or nohup inherits: SIGINT and SIGHUP ignored across exec (CI's failure: Python then
    never installs its KeyboardInterrupt handler, and the demo used to play on to the end)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


# Where a stop request lands: before the first step, at every step, and inside the longer ones; each signal kind
# at several moments. Every run is started the way a background job is (stop signals inherited as ignored).
INTERRUPT_POINTS = [
    ("Everything below lives in", signal.SIGINT),
    ("1. Two hosts on a private underlay", signal.SIGTERM),
    ("overlay network 10.232.0.0/16", signal.SIGHUP),
    ("2. A discovery agent and a DNS server", signal.SIGINT),
    ("3. Containers attached by the CNI chain", signal.SIGHUP),
    ("berth-register -> endpoint web", signal.SIGINT),  # where CI saw the interrupt lost
    ("web serves a page", signal.SIGTERM),
    ("4. Names, through Berth's DNS", signal.SIGINT),
    ("5. Across the overlay", signal.SIGTERM),
    ("6. A container the runtime lost", signal.SIGHUP),
    ("crashed on host A", signal.SIGINT),
    ("it dies and the runtime forgets it", signal.SIGTERM),  # lost, and GC not yet run: the teardown frees it
    ("7. Summary", signal.SIGINT),
    ("8. Teardown", signal.SIGTERM),  # obeyed only after the teardown: it must finish
    ("CNI DEL web on host B", signal.SIGINT),
]


@pytest.mark.parametrize("marker, signum", INTERRUPT_POINTS,
                         ids=[f"{signal.Signals(s).name}-at-" + re.sub(r"\W+", "-", m.lower()).strip("-")[:32]
                              for m, s in INTERRUPT_POINTS])
def test_demo_interrupted_anywhere_stops_and_cleans_up(marker, signum, tmp_path):
    proc = subprocess.Popen([BERTH, "demo", "--picture", str(tmp_path / "topology.svg")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=ignore_inherited_stops)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                proc.send_signal(signum)
                break
        lines.extend(proc.stdout)
        rc = proc.wait(timeout=180)  # the teardown's orderly stops get up to 30 s each on a loaded machine
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines)
    assert any(marker in line for line in lines), f"the demo never printed {marker!r}:\n{out}"
    assert rc == 128 + signum, out  # stopped, and says by which signal, as a shell reports it
    assert "[FAIL] the demo ran to the end" in out and signal.Signals(signum).name in out, out
    assert "All " not in out.splitlines()[-1] and out.rstrip().splitlines()[-1].startswith("FAILED"), out
    assert "[ok] no namespaces left" in out and "[ok] the demo's directory is gone" in out, out
    assert "[FAIL]" not in out.replace("[FAIL] the demo ran to the end", ""), out  # the teardown itself all passed
    tag, workdir = demo_identity(out)
    assert_nothing_left(tag, workdir, out)
