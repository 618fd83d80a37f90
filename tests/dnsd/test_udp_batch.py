"""The recvmmsg/sendmmsg buffers on real loopback sockets: replies go back to their senders, gaps are skipped."""
from __future__ import annotations

import contextlib
import socket
import threading

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


@pytest.mark.parametrize("batched", [True, False])
def test_loop_answers_singles_and_bursts_alike_and_stops(batched):
    """A lone query (the loop then takes the next ones singly), then bursts larger than a batch: every query gets
    its own reply — cache hits patched with their ID, misses from the slow path — and the loop ends on request."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stopping = threading.Event()
    server.bind(("127.0.0.1", 0))
    client.bind(("127.0.0.1", 0))
    client.settimeout(5)
    question = b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x02bt\x00\x00\x01\x00\x01"  # all but the ID
    missing = b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04miss\x00\x00\x01\x00\x01"
    packed = {question: b"\x81\x80cached"}

    def slow(data, sender):
        assert sender == client.getsockname()
        return data[:2] + b"slow:" + data[2:]

    loop = threading.Thread(target=udp_batch.serve, args=(server, packed, lambda: None, slow, stopping, batched))
    loop.start()
    try:
        sent = {}
        for round_size in (1, 1, 3 * udp_batch.BATCH, udp_batch.ONE_BY_ONE_RUN + 5):
            for number in range(round_size):
                query_id = len(sent).to_bytes(2, "big")
                body = question if number % 3 else missing
                sent[query_id] = query_id + (b"\x81\x80cached" if body is question else b"slow:" + body)
                client.sendto(query_id + body, server.getsockname())
            replies = {}
            while len(replies) < round_size:
                reply = client.recv(4096)
                replies[reply[:2]] = reply
            for query_id, reply in replies.items():
                assert reply == sent[query_id]
    finally:
        stopping.set()
        with contextlib.suppress(OSError):  # ENOTCONN on UDP, yet it wakes the blocked receive (as Worker.stop)
            server.shutdown(socket.SHUT_RDWR)
        loop.join(5)
        server.close()
        client.close()
    assert not loop.is_alive()
