"""The recvmmsg/sendmmsg buffers on real loopback sockets: replies go back to their senders, gaps are skipped."""
from __future__ import annotations

import socket

import pytest

from dnsd import udp_batch

pytestmark = pytest.mark.skipif(not udp_batch.available(), reason="no recvmmsg/sendmmsg here")


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_replies_written_in_place_reach_their_senders_and_gaps_are_skipped(family, host):
    server = socket.socket(family, socket.SOCK_DGRAM)
    clients = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(5)]
    try:
        server.bind((host, 0))
        for number, client in enumerate(clients):
            client.bind((host, 0))
            client.sendto(b"query-%d" % number, server.getsockname()[:2])  # loopback: queued on return
        io = udp_batch.BatchedUdp(server)
        assert io.receive() == 5
        answered = {0, 2, 3}
        for i in range(5):
            offset = i * udp_batch.SLOT
            query = bytes(io.view[offset:offset + io.lengths[io.length_at[i]]])
            sender = udp_batch.client_address(bytes(io.names_view[i * 28:(i + 1) * 28]))
            assert sender == clients[int(query[-1:])].getsockname()[:2]
            if i in answered:
                reply = b"reply-to-" + query
                io.view[offset:offset + len(reply)] = reply
                io.send_lengths[2 * i + 1] = len(reply)
        io.send(sorted(answered))
        replies = {}
        for number, client in enumerate(clients):
            client.setblocking(False)
            try:
                replies[number] = client.recv(100)
            except BlockingIOError:
                pass
        assert replies == {n: b"reply-to-query-%d" % n for n in (0, 2, 3)}
    finally:
        server.close()
        for client in clients:
            client.close()


def test_busy_polling_starts_only_above_the_rate_and_ends_after_a_quiet_window():
    gate = udp_batch._RateGate(udp_batch.BusyPoll(window_us=50, min_rate=20_000, measure_every=0.1))
    start = gate.period_start
    ms = 1_000_000
    gate.arrived(100, start + 1 * ms)  # the first period is still being counted: no polling yet
    assert gate.poll_until == 0
    gate.arrived(1_000, start + 100 * ms)  # 1,100 in 100 ms = 11,000/s: below the rate, keep sleeping
    assert not gate.hot and gate.poll_until == 0
    gate.arrived(2_500, start + 200 * ms)  # 25,000/s: poll for 50 us past this batch
    assert gate.hot and gate.poll_until == start + 200 * ms + 50_000
    gate.arrived(1, start + 250 * ms)  # within the period: the verdict holds, the window moves on
    assert gate.poll_until == start + 250 * ms + 50_000
    gate.arrived(1, start + 900 * ms)  # a long quiet stretch averages the rate down: back to sleeping
    assert not gate.hot and gate.poll_until == 0


def test_busy_poll_turned_off_never_polls():
    assert not udp_batch.BusyPoll(window_us=0).enabled()
