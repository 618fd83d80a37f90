"""A ZooKeeper write whose answer is lost on the wire: applied once, reported as applied (as on etcd, see
tests/store/test_etcd_lost_answer.py), and cluster IPAM's reserve through it taking one address, not two.

The relay starts holding the server's replies when the client sends a ``multi`` (a ZooKeeper write reads first,
over the same connection, so holding from the start would stall it), lets the test see the write land through a
direct client, then cuts the connection. The store must find its own change-log entry (by its token, after a
``sync``) and report the win; a blind retry would see its own record and report a lost race, and cluster IPAM
would then take a second address for the same container.
"""
from __future__ import annotations

import socket
import threading

import pytest

from ipam.allocator import allocate
from ipam.blocks import AddressRecord, BlockClaim
from ipam.cluster import ClusterStore, network_prefix
from ipam.config import parse_ipam_config
from ipam.store import Attachment
from store.api import Compare, Put, TxnResult, open_store
from store.zookeeper import ZkStore
from tests.store.relay import Relay, lose_the_answer

pytestmark = [pytest.mark.zk, pytest.mark.service]

MULTI = 14  # ZooKeeper's request type for ``multi`` (every write of the store is one)


class MultiRelay(Relay):
    """:meth:`hold_replies` arms it; replies are held from the next ``multi`` a client sends."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(upstream)
        self.armed = threading.Event()
        self._streams: dict[socket.socket, tuple[bytearray, list[int]]] = {}

    def hold_replies(self) -> None:
        self.armed.set()

    def on_request(self, source: socket.socket, data: bytes) -> None:
        """Frames are a 4-byte length then the request; after the connect request, each starts with its xid
        and its type."""
        buffer, frames = self._streams.setdefault(source, (bytearray(), [0]))
        buffer += data
        while len(buffer) >= 4 and len(buffer) >= 4 + (length := int.from_bytes(buffer[:4], "big")):
            frame = bytes(buffer[4:4 + length])
            del buffer[:4 + length]
            frames[0] += 1
            if frames[0] > 1 and len(frame) >= 8 and int.from_bytes(frame[4:8], "big") == MULTI and self.armed.is_set():
                self.armed.clear()
                self.holding.set()

    def cut(self) -> None:
        self.armed.clear()
        super().cut()


@pytest.fixture
def relay(zk_server):
    host, port = zk_server.endpoints[0].rsplit(":", 1)
    relayed = MultiRelay((host, int(port)))
    try:
        yield relayed
    finally:
        relayed.close()


@pytest.fixture
def root(zk_server, prefix) -> str:
    return "/" + prefix.strip("/")


@pytest.fixture
def direct(zk_server, root):
    store = open_store(zk_server.url + root)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def via(relay, root, direct):
    store = ZkStore(f"127.0.0.1:{relay.port}", root, budget=10.0)
    try:
        yield store
    finally:
        store.close()


def test_a_reserve_whose_answer_is_lost_reports_the_win_once(relay, direct, via):
    block_key, ip_key, index_key = "/ipam/blocks/b", "/ipam/ips/b/10.0.0.5", "/ipam/attachments/c1/eth0/10.0.0.5"
    direct.put(block_key, BlockClaim("h1", "t0").to_json())
    block = via.get(block_key)
    record = AddressRecord("c1", "eth0", "n", "h1", "token-1").to_json()
    outcome = lose_the_answer(relay, direct, ip_key, lambda: via.txn(
        [Compare(block_key, "mod_revision", "=", block.mod_revision), Compare(ip_key, "mod_revision", "=", 0)],
        [Put(ip_key, record), Put(index_key, b"token-1")]))
    written = direct.get(ip_key)
    assert outcome == [TxnResult(True, written.mod_revision)]
    assert written.value == record and written.version == 1
    assert direct.get(index_key).mod_revision == written.mod_revision  # both puts in the one write


def test_a_create_whose_answer_is_lost_reports_the_win(relay, direct, via):
    via.get("/warm-up")
    outcome = lose_the_answer(relay, direct, "/claim", lambda: via.create("/claim", b"claim-token-1"))
    assert outcome == [True]
    assert direct.get("/claim").value == b"claim-token-1" and direct.get("/claim").version == 1


def test_cluster_ipam_whose_reserve_answer_is_lost_holds_one_address(relay, direct, via, tmp_path):
    cfg = parse_ipam_config({"store": "zk://unused", "host": "h1", "dataDir": str(tmp_path), "blockSize": 28,
                             "ranges": [[{"subnet": "10.204.0.0/24"}]]}, "btlost")
    store = ClusterStore(cfg, store=via)

    def add(container):
        with store.lock():
            return allocate(store, list(cfg.range_sets), Attachment(container, "eth0"))[0].address.ip

    first = add("c0")  # pool, host key and block in place: the next ADD's only write is its reserve
    outcome = lose_the_answer(relay, direct, network_prefix("btlost") + "attachments/c1/", lambda: add("c1"),
                              prefix=True)
    assert len(outcome) == 1 and outcome[0] != first and not isinstance(outcome[0], Exception), outcome
    kvs, _ = direct.get_prefix(network_prefix("btlost"))
    held = {kv.key.rsplit("/", 1)[1]: AddressRecord.from_json(kv.value).container_id for kv in kvs if "/ips/" in kv.key}
    index = [kv.key for kv in kvs if "/attachments/c1/" in kv.key]
    assert held == {str(first): "c0", str(outcome[0]): "c1"}
    assert index == [network_prefix("btlost") + f"attachments/c1/eth0/{outcome[0]}"]
