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
