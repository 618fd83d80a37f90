"""The embedded store shared across network namespaces: they share the file system, so they share the file."""
from __future__ import annotations

import pytest

from store.api import open_store
from tests.store.conftest import collect

pytestmark = pytest.mark.root


def test_writers_in_other_namespaces_reach_a_host_watcher(scratch_dir, netns, workers, prefix):
    url = f"sqlite://{scratch_dir}/bt-shared.db"
    store = open_store(url)
    try:
        watch = store.watch_prefix(prefix)
        first, second = netns("st"), netns("st")
        for namespace, name in ((first, "one"), (second, "two")):
            writer = workers.start("put", url, prefix + name, name, netns=namespace)
            workers.expect(writer, "done")
        owner = workers.start("lease-put", url, prefix + "leased", "1", netns=first)
        workers.expect(owner, "done")
        owner.kill()
        events = collect(watch, 4)
        assert [(e.kind, e.key) for e in events] == [("put", prefix + "one"), ("put", prefix + "two"),
                                                     ("put", prefix + "leased"), ("delete", prefix + "leased")]
        watch.close()
    finally:
        store.close()
