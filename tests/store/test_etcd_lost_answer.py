"""A compare-and-swap whose answer is lost on the wire: applied once, reported as applied.

A TCP relay on loopback sits between the client and a real etcd. It holds etcd's replies back while the test
watches (through a direct client) the transaction land in etcd, then cuts the connection: the request was
applied, its answer never arrived. A client that retried blindly would find its own write and report a lost
race; the store must report the win, exactly once.
"""
from __future__ import annotations

import grpc
import pytest

from store.api import Compare, Delete, OutcomeUnknown, open_store
from store.etcd import EtcdStore
from tests.store.relay import Relay, lose_the_answer

pytestmark = [pytest.mark.etcd]


@pytest.fixture
def relay(etcd_server):
    host, port = etcd_server.endpoints[0].rsplit(":", 1)
    relayed = Relay((host, int(port)))
    try:
        yield relayed
    finally:
        relayed.close()


@pytest.fixture
def direct(etcd_server):
    store = open_store(etcd_server.url)
    try:
        yield store
    finally:
        store.close()


def test_create_whose_answer_is_lost_reports_the_win(relay, direct, prefix):
    via = EtcdStore([f"127.0.0.1:{relay.port}"], budget=10.0)
    try:
        via.get(prefix + "warm-up")  # the connection exists before replies are held
        key = prefix + "claim"
        outcome = lose_the_answer(relay, direct, key, lambda: via.create(key, b"claim-token-1"))
        assert outcome == [True]
        assert direct.get(key).value == b"claim-token-1"
    finally:
        via.close()


def test_compare_and_swap_whose_answer_is_lost_reports_the_win(relay, direct, prefix):
    key = prefix + "block"
    direct.put(key, b"free")
    revision = direct.get(key).mod_revision
    via = EtcdStore([f"127.0.0.1:{relay.port}"], budget=10.0)
    try:
        via.get(key)
        outcome = lose_the_answer(relay, direct, key,
                                  lambda: via.compare_and_swap(key, b"host-a token-7", revision))
        assert outcome == [True]
        assert direct.get(key).value == b"host-a token-7"
    finally:
        via.close()


def test_a_lost_race_stays_lost(relay, direct, prefix):
    """The read-back must not mistake another writer's value for ours."""
    key = prefix + "taken"
    direct.put(key, b"someone else")
    via = EtcdStore([f"127.0.0.1:{relay.port}"], budget=10.0)
    try:
        assert via.create(key, b"mine") is False
        assert direct.get(key).value == b"someone else"
    finally:
        via.close()


def test_a_conditional_delete_whose_answer_is_lost_says_outcome_unknown(relay, direct, prefix):
    """Nothing to read back: the caller is told, not given a guess."""
    key = prefix + "gone"
    direct.put(key, b"x")
    revision = direct.get(key).mod_revision
    via = EtcdStore([f"127.0.0.1:{relay.port}"], budget=10.0)
    try:
        via.get(key)
        outcome = lose_the_answer(relay, direct, key, lambda: via.txn(
            [Compare(key, "mod_revision", "=", revision)], [Delete(key)]))
        assert len(outcome) == 1 and isinstance(outcome[0], OutcomeUnknown)
        assert direct.get(key) is None
    finally:
        via.close()


class FakeRpcError(grpc.RpcError):
    """Stands in for gRPC's error object (the decision below is pure; the relay tests above are the real thing)."""

    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


@pytest.mark.parametrize("details, retried", [
    ("failed to connect to all addresses", True), ("etcdserver: no leader", True),
    ("etcdserver: request timed out", False), ("Socket closed", False), ("Deadline Exceeded", False)])
def test_fake_rpc_errors_a_conditional_write_is_retried_only_when_it_cannot_have_applied(details, retried):
    from store.etcd_client import Caller, Endpoints

    attempts = []

    def attempt(channel, timeout):
        attempts.append(timeout)
        if len(attempts) == 1:
            code = grpc.StatusCode.DEADLINE_EXCEEDED if details.startswith("Deadline") else grpc.StatusCode.UNAVAILABLE
            raise FakeRpcError(code, details)
        return "answer"

    caller = Caller(Endpoints(["127.0.0.1:1"]), call_timeout=1.0, budget=5.0)
    try:
        if retried:
            assert caller("txn", attempt, idempotent=False) == "answer" and len(attempts) == 2
        else:
            with pytest.raises(OutcomeUnknown):
                caller("txn", attempt, idempotent=False)
            assert len(attempts) == 1
        attempts.clear()
        assert caller("get", attempt) == "answer" and len(attempts) == 2  # a read is always retried
    finally:
        caller.endpoints.close()
