"""The tests' port helpers: picked outside the ephemeral range, held ports refuse connections, lost ports retried."""
from __future__ import annotations

import socket

import pytest

from tests.ports import _ephemeral_range, free_port, held_port, with_free_port


def test_a_free_port_is_outside_the_ephemeral_range_and_bindable():
    low, high = _ephemeral_range()
    for _ in range(50):
        port = free_port()
        assert not low <= port <= high
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_held_port_refuses_connections_and_cannot_be_taken():
    with held_port() as port:
        with socket.socket() as client, pytest.raises(ConnectionRefusedError):
            client.connect(("127.0.0.1", port))
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))


def test_a_port_taken_meanwhile_is_retried_on_another():
    tried = []

    def start(port):
        tried.append(port)
        if len(tried) < 3:
            raise RuntimeError(f"listen tcp 127.0.0.1:{port}: bind: address already in use")
        return "started"

    port, result = with_free_port(start)
    assert result == "started" and port == tried[-1] and len(tried) == 3


def test_other_failures_are_not_retried():
    calls = []

    def start(port):
        calls.append(port)
        raise RuntimeError("permission denied")

    with pytest.raises(RuntimeError, match="permission denied"):
        with_free_port(start)
    assert len(calls) == 1
