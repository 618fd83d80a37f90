#!/usr/bin/env python3
"""Every benchmark, one after another, each side by side with its reference tool (``make bench``; root).

Each script prints its own table; this only runs them in turn with their default sizes (or the quick sizes with
``--quick``) and says which one failed. Run one script alone for a single figure; each documents its options.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [  # (script, quick arguments)
    ("ipam_bench.py", ["--count", "50"]),
    ("ipam_cluster_bench.py", ["--count", "30", "--per-host", "20"]),
    ("bridge_bench.py", ["--sequential", "30", "--parallel", "100"]),
    ("fastpath_bench.py", ["--sequential", "50", "--cold", "30", "--ipam", "50", "--parallel", "100"]),
    ("store_bench.py", ["--ops", "200", "--watch", "100"]),
    ("discovery_bench.py", ["--count", "200"]),
    ("discovery_durability_bench.py", ["--count", "200", "--stall", "5", "--scale", "1000"]),
    ("dns_bench.py", ["--duration", "5"]),
    ("dns_memory_bench.py", ["--scale", "2000", "--duration", "1", "--rounds", "1"]),
    ("overlay_bench.py", ["--joins", "10", "--iperf-seconds", "3"]),
    ("docker_bench.py", ["--count", "5"]),
]


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    failed = []
    for script, quick_args in BENCHES:
        print(f"\n===== {script} {' '.join(quick_args) if quick else ''}".rstrip(), flush=True)
        started = time.monotonic()
        done = subprocess.run([sys.executable, str(HERE / script), *(quick_args if quick else [])])
        print(f"===== {script}: exit {done.returncode} after {time.monotonic() - started:.0f} s", flush=True)
        if done.returncode != 0:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
