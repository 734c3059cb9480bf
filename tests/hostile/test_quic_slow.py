"""QUIC mode: peers that start and then stall. Every step before a session exists is bounded:
a handshake that never finishes idles out after 5 s, an exchange that never finishes is cut at
the 10 s set-up step deadline (README), each with a log line naming the peer; all at once, on both
servers, during one ping loop through the live tunnel.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from datetime import datetime

import pytest

from tests.hostile.nettools import ns_socket
from tests.hostile.quic_peer import CONFIG, QuicPeer, check_b_serves, client_quic
from tests.hostile.test_quic_tls import INITIAL_SIZE, QUIC_V1, long_header
from tests.hostile.world import INTRUDER, SERVER, World

pytestmark = [pytest.mark.root, pytest.mark.hostile]

IDLE_TIMEOUT = 5.0  # quic_config.IDLE_TIMEOUT
STEP_TIMEOUT = 10.0  # quic_machine.SETUP_STEP_TIMEOUT
SLACK = 4.0


def logged_at(text: str, match: re.Match[str]) -> float:
    """The time stamp of the log line holding ``match`` (the plain format of log_setup)."""
    line = text[text.rfind("\n", 0, match.start()) + 1 :]
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_stalled_handshakes_and_exchanges_are_cut(quic_world: World) -> None:
    a, b = quic_world.a_server, quic_world.b_server
    a_mark, b_mark = a.mark(), b.mark()
    port = quic_world.ports("A")[0]

    async def main() -> tuple[float, QuicPeer, QuicPeer, float]:
        # B: a handshake, the keep-alive going, and a config text that never ends.
        stalled = await QuicPeer.open(quic_world, client_quic(quic_world))
        assert await stalled.until(stalled.handshake_done)
        stalled.start_keepalive()
        stalled.send(CONFIG, b"build_id=")
        # A: a real ClientHello, then silence.
        silent = await QuicPeer.open(quic_world, client_quic(quic_world), INTRUDER, "A")
        silent.transmit()
        silent.stop_keepalive()
        started = time.time()
        silent._transport.close()  # type: ignore[union-attr]  # goes away without a word
        ended = await stalled.until(stalled.terminated, STEP_TIMEOUT + SLACK)
        cut_after = time.time() - started
        stalled.close()
        assert ended, "the stalled exchange was never cut"
        return started, stalled, silent, cut_after

    with quic_world.unaffected():
        garbage = ns_socket(quic_world.client_ns, socket.AF_INET, socket.SOCK_DGRAM)
        with garbage:
            garbage.bind((INTRUDER, 0))
            garbage.sendto(long_header(QUIC_V1, INITIAL_SIZE), (SERVER, port))  # an Initial nobody can read
            junk = f"{INTRUDER}:{garbage.getsockname()[1]}"
            started, stalled, silent, cut_after = asyncio.run(main())

    assert STEP_TIMEOUT - 1 <= cut_after <= STEP_TIMEOUT + SLACK, f"exchange cut after {cut_after:.1f} s"
    assert stalled.terminated() is not None
    b.wait_log(rf"QUIC session set-up with {re.escape(stalled.who)} failed: session set-up timed out "
               r"waiting for the config exchange", b_mark)  # fmt: skip
    match = a.wait_log(rf"QUIC session set-up with {re.escape(silent.who)} failed: [^\n]*", a_mark)[0]
    text = a.since(a_mark)
    after = logged_at(text, match) - started
    assert IDLE_TIMEOUT - 1 <= after <= STEP_TIMEOUT + SLACK, f"{silent.who}: dropped after {after:.1f} s: {match[0]}"
    # An Initial nobody can decrypt is dropped on arrival and keeps no state, so it never has a
    # set-up to fail (a line per garbage datagram would let anyone flood the log).
    assert junk not in text, f"garbage from {junk} was kept as a connection:\n{text}"
    check_b_serves(quic_world)
