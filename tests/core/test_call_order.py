"""The CNI daemon's call order, pure: threads taking turns (no sockets, no plugins)."""
from __future__ import annotations

import json
import threading

from cni_plugins.call_order import Call, CallOrder, call_of, with_valid
from tests.waiting import wait_until


class Taking:
    """A thread that takes ``call``'s turn and holds it until ``release`` is set."""

    def __init__(self, order: CallOrder, call: Call) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.told: frozenset = frozenset()
        self.thread = threading.Thread(target=self._run, args=(order, call), daemon=True)
        self.thread.start()

    def _run(self, order: CallOrder, call: Call) -> None:
        with order.turn(call) as told:
            self.told = told
            self.started.set()
            self.release.wait(30)

    def finish(self) -> None:
        self.release.set()
        self.thread.join(30)


def test_a_gc_waits_for_the_calls_of_its_network_before_it_is_told_their_adds_and_holds_back_later_ones():
    order = CallOrder()
    add = Taking(order, Call("ADD", "n1", ("c1", "eth0")))
    delete = Taking(order, Call("DEL", "n1", ("c2", "eth0")))
    assert add.started.wait(30) and delete.started.wait(30)  # different attachments run side by side
    gc = Taking(order, Call("GC", "n1"))
    wait_until(lambda: order.would_wait(Call("ADD", "n1", ("c3", "eth0"))), what="the GC queued")
    late = Taking(order, Call("ADD", "n1", ("c3", "eth0")))
    elsewhere = Taking(order, Call("ADD", "n2", ("c1", "eth0")))
    assert elsewhere.started.wait(30)  # another network does not wait for this one's GC
    add.finish()
    delete.finish()
    assert gc.started.wait(30) and gc.told == {("c1", "eth0")}  # the ADD before it, not the DEL
    assert not late.started.is_set()
    gc.finish()
    assert late.started.wait(30) and late.told == frozenset()
    late.finish()
    elsewhere.finish()
    assert not order.would_wait(Call("GC", "n1")) and order.pending(("c3", "eth0", "n1")) == 0


def test_calls_of_one_attachment_keep_their_arrival_order_behind_a_gc():
    order = CallOrder()
    add = Taking(order, Call("ADD", "n1", ("c1", "eth0")))
    assert add.started.wait(30)
    gc = Taking(order, Call("GC", "n1"))
    wait_until(lambda: order.would_wait(Call("ADD", "n1", ("c9", "eth0"))), what="the GC queued")
    delete = Taking(order, Call("DEL", "n1", ("c1", "eth0")))
    wait_until(lambda: order.pending(("c1", "eth0", "n1")) == 2, what="the DEL queued")
    add.finish()
    assert gc.started.wait(30) and not delete.started.is_set()
    gc.finish()
    assert delete.started.wait(30)
    delete.finish()


def test_a_gc_config_gets_the_attachments_added_to_every_list_it_has_and_nothing_else_changes():
    config = {"name": "n1", "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}],
              "cni.dev/attachments": None}
    out = json.loads(with_valid(json.dumps(config).encode(), frozenset({("b", "eth1")})))
    assert out["cni.dev/valid-attachments"] == [{"containerID": "a", "ifname": "eth0"},
                                                {"containerID": "b", "ifname": "eth1"}]
    assert out["cni.dev/attachments"] == [{"containerID": "b", "ifname": "eth1"}]
    for unlisted in (b'{"name": "n1"}', b'{"name": "n1", "cni.dev/valid-attachments": "x"}'):
        assert with_valid(unlisted, frozenset({("b", "eth1")})) == unlisted  # the plugin decides what it means
    assert call_of({"CNI_COMMAND": "GC"}, b'{"name": "n1"}') == Call("GC", "n1")
    assert call_of({"CNI_COMMAND": "VERSION"}, b'{"name": "n1"}') is None
    assert call_of({"CNI_COMMAND": "ADD"}, b"not json") is None
