"""Store clients run as separate processes by the contract tests: ``python -m tests.store.workers MODE URL ...``.

Racing workers print ``ready``, wait for ``go`` on stdin so they all start together, then print their result.
"""
from __future__ import annotations

import sys
import time

from store.api import open_store


def wait_for_go() -> None:
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit(2)


def main(argv: list[str]) -> None:
    mode, url, key, *rest = argv
    store = open_store(url)
    try:
        if mode == "create":
            wait_for_go()
            print("won" if store.create(key, rest[0].encode()) else "lost", flush=True)
        elif mode == "increment":
            wait_for_go()
            for _ in range(int(rest[0])):
                while True:
                    current = store.get(key)
                    if store.compare_and_swap(key, str(int(current.value) + 1).encode(), current.mod_revision):
                        break
            print("done", flush=True)
        elif mode == "put":
            for value in rest:
                store.put(key, value.encode())
            print("done", flush=True)
        elif mode == "lease-put":
            lease = store.grant_lease(float(rest[0]))
            store.put(key, b"leased", lease.id)
            print("done", flush=True)
            time.sleep(3600)  # the test kills this process: nobody keeps the lease alive any more
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    finally:
        store.close()


if __name__ == "__main__":
    main(sys.argv[1:])
