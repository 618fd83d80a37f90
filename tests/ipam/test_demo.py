"""`berth demo` (stage 1): addresses through berth-ipam for containers in real namespaces, then nothing left."""
import subprocess

import pytest

from tests.conftest import plugin_path

pytestmark = pytest.mark.root


def demo_namespaces() -> set[str]:
    listing = subprocess.run(["ip", "-o", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in listing.splitlines() if line.startswith("berth-demo-")}


def test_demo_allocates_shows_a_table_releases_and_cleans_up():
    before = demo_namespaces()
    proc = subprocess.run([str(plugin_path("berth")), "demo", "--containers", "3"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("container"))
    rows = lines[header + 2:header + 5]
    assert [row.split()[2] for row in rows] == ["10.123.0.2/24,", "10.123.0.3/24,", "10.123.0.4/24,"]
    assert "after DEL of every other container: ['last_reserved_ip.0', 'last_reserved_ip.1', 'lock']" in proc.stdout
    assert "released its addresses only:\n  ['10.123.0.2', '10.123.0.3', 'fd12:3::2', 'fd12:3::3'," in proc.stdout
    assert "nothing is left." in proc.stdout
    assert demo_namespaces() <= before
