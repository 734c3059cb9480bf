"""TCP mode: peers that connect and then say nothing, or too little. Every read before a session
exists is bounded (README: 10 s per set-up step; all data connections within max(5, 2 x N) s):
the server closes each such connection itself, within a bound, and says so in its log.

All of them run at once, on both servers, during one ping loop through the live tunnel.
"""

from __future__ import annotations

import re
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.hostile.nettools import closed_by_peer, tcp_connect
from tests.hostile.tcp_peer import TcpHandPeer, check_b_serves
from tests.hostile.world import INTRUDER, SERVER, World

pytestmark = [pytest.mark.root, pytest.mark.hostile]

STEP_TIMEOUT = 10.0  # tcp_transport.HANDSHAKE_TIMEOUT
DATA_DEADLINE = 5.0  # max(5, 2 x 2 streams)
SLACK = 4.0  # a loaded 2-core machine may be a few seconds late, never early


def addr(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return re.escape(f"{host}:{port}")


def test_every_read_before_a_session_times_out(tcp_world: World) -> None:
    a, b = tcp_world.a_server, tcp_world.b_server
    a_mark, b_mark = a.mark(), b.mark()
    a_control, a_data = tcp_world.ports("A")
    peer = TcpHandPeer(tcp_world)
    try:
        with tcp_world.unaffected():
            # Server A (live session): no TLS at all, or a ClientHello cut short.
            silent_control = tcp_connect(tcp_world.client_ns, INTRUDER, (SERVER, a_control))
            silent_data = tcp_connect(tcp_world.client_ns, INTRUDER, (SERVER, a_data))
            partial_hello = tcp_connect(tcp_world.client_ns, INTRUDER, (SERVER, a_control))
            partial_hello.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            # Server B (idle): TLS done, then no config text; or half a message.
            no_text = peer.connect("control", INTRUDER)
            half_text = peer.connect("control", INTRUDER)
            half_text.sendall((100).to_bytes(2, "big") + b"build_id=")
            # B: a whole exchange, then no data connections; and a data connection that never
            # presents its token while that set-up is pending.
            peer.exchange()
            no_token = peer.connect("data")
            slow = {
                "A control, no TLS": (silent_control, STEP_TIMEOUT),
                "A data, no TLS": (silent_data, STEP_TIMEOUT),
                "A control, partial ClientHello": (partial_hello, STEP_TIMEOUT),
                "B control, no exchange": (no_text, STEP_TIMEOUT),
                "B control, half an exchange": (half_text, STEP_TIMEOUT),
                "B control, no data connections": (peer.control, DATA_DEADLINE),
                "B data, no token": (no_token, STEP_TIMEOUT),
            }
            with ThreadPoolExecutor(len(slow)) as pool:
                waits = pool.map(lambda s: closed_by_peer(s[0], STEP_TIMEOUT + SLACK + 2), slow.values())
                closed = dict(zip(slow, waits, strict=True))
            for what, (_sock, bound) in slow.items():
                after = closed[what]
                assert after is not None, f"{what}: still open after {STEP_TIMEOUT + SLACK + 2} s"
                assert bound - 1.0 <= after <= bound + SLACK, f"{what}: closed after {after:.1f} s, expected ~{bound} s"

        for sock in (silent_control, silent_data, partial_hello):
            a.wait_log(rf"TLS handshake from {addr(sock)} failed: [^\n]*(timed out|within 10 s|longer than)", a_mark)
        for sock in (no_text, half_text):
            b.wait_log(rf"control connection from {addr(sock)} refused: timed out", b_mark)
        b.wait_log(r"session set-up with 198\.18\.0\.1 failed: only 0 of 2 data connections arrived within 5 s", b_mark)
        b.wait_log(rf"data connection from {addr(no_token)} refused: timed out", b_mark)
    finally:
        peer.close()
    check_b_serves(tcp_world)
