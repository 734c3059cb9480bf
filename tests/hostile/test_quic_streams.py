"""QUIC mode past TLS, against the idle server B: hostile config streams, streams out of order or
beyond the negotiated count, data streams without their 00 00 hello, bad frames and DATAGRAMs.
Every attack is refused or ends that connection's session with a log line naming the peer and
what it did; then B is listening again and serves a correct client (the `b` fixture).

The session machine itself is unit-tested in memory (tests/unit/test_quic_session.py): stream
classification by id, bad frame lengths, the config exchange. This is the daemon over real UDP.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator

import pytest
from aioquic.quic.connection import QuicConnection

from rustvpn.framing import encode_frames
from tests.hostile.cases import EXCHANGE_CASES
from tests.hostile.quic_peer import CONFIG, FIRST_DATA, HELLO, KEEPALIVE, QuicPeer, check_b_serves, client_quic
from tests.hostile.world import B_MTU, B_STREAMS, Daemon, World

pytestmark = [pytest.mark.root, pytest.mark.hostile]

Attack = Callable[[QuicPeer], Awaitable[None]]


class BServer:
    """Server B for one test: how many sessions the test means to make, checked afterwards."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.server: Daemon = world.b_server
        self.sessions_made = 0

    def run(self, attack: Attack, quic: QuicConnection | None = None) -> str:
        """Run ``attack`` as a fresh peer of B; returns the peer's address as B names it, escaped."""

        async def main() -> str:
            peer = await QuicPeer.open(self.world, quic or client_quic(self.world))
            try:
                await attack(peer)
            finally:
                peer.close()
            return re.escape(peer.who)

        return asyncio.run(main())


@pytest.fixture
def b(quic_world: World) -> Iterator[BServer]:
    server = quic_world.b_server
    before = server.wait_state("listening", timeout=10)["sessions"]
    target = BServer(quic_world)
    yield target
    assert server.alive(), server.log()[-4000:]
    made = server.wait_state("listening", timeout=10)["sessions"] - before
    assert made == target.sessions_made, f"{made} sessions made, {target.sessions_made} expected"
    check_b_serves(quic_world)


async def closed(peer: QuicPeer, timeout: float = 10.0) -> str:
    """The server's close of this connection; returns its reason phrase."""
    assert await peer.until(peer.terminated, timeout), "the server did not close the connection"
    close = peer.terminated()
    assert close is not None
    return close.reason_phrase


QUIC_EXCHANGE_CASES = {name: case for name, case in EXCHANGE_CASES.items() if name != "missing-token"}
QUIC_EXCHANGE_CASES["over-64k"] = (b"build_id=" + b"x" * 70_000, r"config text longer than 65536 bytes")


@pytest.mark.parametrize("case", list(QUIC_EXCHANGE_CASES))
def test_hostile_config_stream(b: BServer, case: str) -> None:
    """(In QUIC mode the token is exchanged but never checked: a missing one is no fault.)"""
    text, expected = QUIC_EXCHANGE_CASES[case]
    mark = b.server.mark()

    async def attack(peer: QuicPeer) -> None:
        await peer.exchange(text)
        assert re.search(expected, await closed(peer)), peer.terminated()

    who = b.run(attack)
    line = b.server.wait_log(rf"QUIC session set-up with {who} failed: [^\n]*", mark)[0].group(0)
    assert re.search(expected, line), line
    assert len(line) < 400, f"a peer can write long log lines: {len(line)} chars"
    assert "\x1b" not in b.server.since(mark), "a raw escape character reached the log"


async def _hellos(peer: QuicPeer, count: int = B_STREAMS) -> None:
    for index in range(count):
        peer.send(FIRST_DATA + 4 * index, HELLO)


SETUP_ATTACKS: dict[str, tuple[Callable[[QuicPeer], Awaitable[None]], str]] = {}


def setup_attack(name: str, expected: str) -> Callable[[Attack], Attack]:
    def register(attack: Attack) -> Attack:
        SETUP_ATTACKS[name] = (attack, expected)
        return attack

    return register


@setup_attack(
    "data-stream-without-hello", r"protocol error from peer: data stream 8: expected the 00 00 hello, got 01 02"
)
async def _no_hello(peer: QuicPeer) -> None:
    await peer.exchange()
    peer.send(FIRST_DATA, b"\x01\x02" + encode_frames([b"\x45" * 30]))
    peer.send(FIRST_DATA + 4, HELLO)


@setup_attack("stream-beyond-count-before-exchange", r"protocol error from peer: stream 16 beyond the 2 data streams")
async def _beyond_early(peer: QuicPeer) -> None:
    assert await peer.until(peer.handshake_done)
    peer.send(KEEPALIVE, b"\x00")
    peer.send(CONFIG, b"")
    await _hellos(peer, B_STREAMS + 1)  # 8, 12 and 16, before the server knows there are 2
    peer.send(CONFIG, QuicPeer.exchange_text(peer), end=True)


@setup_attack("150-streams-before-exchange", r"protocol error from peer: stream 16 beyond the 2 data streams")
async def _many_early(peer: QuicPeer) -> None:
    assert await peer.until(peer.handshake_done)
    peer.send(KEEPALIVE, b"\x00")
    peer.send(CONFIG, b"")
    await _hellos(peer, 150)
    peer.send(CONFIG, QuicPeer.exchange_text(peer), end=True)


@setup_attack("more-streams-than-quic-allows", r"QUIC connection failed: .*\(code 0x4\)")
async def _stream_limit(peer: QuicPeer) -> None:
    assert await peer.until(peer.handshake_done)
    peer.quic._remote_max_streams_bidi = 10_000  # lie to our own aioquic about the server's limit
    for stream_id in range(0, 4 * 260, 4):
        peer.quic.send_stream_data(stream_id, b"\x00")
    peer.transmit()


@setup_attack("unidirectional-stream", r"protocol error from peer: unexpected stream 2")
async def _uni(peer: QuicPeer) -> None:
    assert await peer.until(peer.handshake_done)
    peer.send(KEEPALIVE, b"\x00")
    peer.send(peer.quic.get_next_available_stream_id(is_unidirectional=True), b"hello")


@setup_attack(
    "data-stream-finished-before-exchange", r"protocol error from peer: stream 8 misused before the config exchange"
)
async def _fin_early(peer: QuicPeer) -> None:
    assert await peer.until(peer.handshake_done)
    peer.send(KEEPALIVE, b"\x00")
    peer.send(CONFIG, b"")
    peer.send(FIRST_DATA, HELLO, end=True)


@setup_attack("over-64k-on-a-data-stream-before-exchange",
              r"protocol error from peer: stream 8 misused before the config exchange")  # fmt: skip
async def _flood_early(peer: QuicPeer) -> None:
    assert await peer.until(peer.handshake_done)
    peer.send(KEEPALIVE, b"\x00")
    peer.send(CONFIG, b"")
    peer.send(FIRST_DATA, HELLO + b"\x05\x00" + b"\x45" * 70_000)


SETUP_PARAMS = list(SETUP_ATTACKS)


@pytest.mark.parametrize("case", SETUP_PARAMS)
def test_hostile_streams_during_set_up(b: BServer, case: str) -> None:
    attack, expected = SETUP_ATTACKS[case]
    mark = b.server.mark()

    async def run(peer: QuicPeer) -> None:
        await attack(peer)
        await closed(peer)

    who = b.run(run)
    b.server.wait_log(rf"QUIC session set-up with {who} failed: {expected}", mark, timeout=5)


def test_streams_opened_out_of_order_still_make_a_session(b: BServer) -> None:
    """Data stream hellos before the config text, the config before the keep-alive stream: B goes
    by stream id, not arrival (PROTOCOL.md), and the session works."""
    mark = b.server.mark()

    async def run(peer: QuicPeer) -> None:
        assert await peer.until(peer.handshake_done)
        for stream_id in (0, 4, 8, 12):
            peer.send(stream_id, b"")  # opened (aioquic opens streams in order) but empty
        peer.send(12, HELLO)
        await asyncio.sleep(0.1)
        peer.send(8, HELLO)
        await asyncio.sleep(0.1)
        peer.send(CONFIG, QuicPeer.exchange_text(peer), end=True)
        await asyncio.sleep(0.1)
        peer.start_keepalive()
        # B's hello opens each stream; packets may follow at once (B sends what its pump held while
        # no session was up), so the hello is the start of the stream, as in QuicPeer's own checks.
        assert await peer.until(lambda: peer.stream_bytes(8)[:2] == HELLO and peer.stream_bytes(12)[:2] == HELLO)
        assert await peer.ping(3)

    b.sessions_made = 1
    b.run(run)
    b.server.wait_log(r"session up with 198\.18\.0\.1:\d+", mark)


# Own-peer faults after the session is up: they end that session (as in the reference), with the
# reason in the log; B then takes the next client.
SESSION_ATTACKS: dict[str, tuple[Callable[[QuicPeer], object], str]] = {
    "zero-length-frame": (lambda p: p.send(FIRST_DATA, b"\x00\x00" + b"\x45" * 20),
                          r"protocol error from peer: data stream 8: invalid frame length 0 \(allowed 1\.\.1400\)"),
    "frame-above-mtu": (lambda p: p.send(FIRST_DATA + 4, (B_MTU + 1).to_bytes(2, "big") + b"\x45" * 20),
                        r"protocol error from peer: data stream 12: invalid frame length 1401 \(allowed 1\.\.1400\)"),
    "truncated-frame-then-fin": (lambda p: p.send(FIRST_DATA, (300).to_bytes(2, "big") + b"\x45" * 100, end=True),
                                 r"peer finished data stream 8 inside a frame \(102 bytes\)"),
    "stream-beyond-count": (lambda p: p.send(FIRST_DATA + 4 * B_STREAMS, HELLO),
                            r"protocol error from peer: stream 16 beyond the 2 data streams"),
    "keepalive-finished": (lambda p: p.finish_keepalive(), r"peer finished the keep-alive stream"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(SESSION_ATTACKS))
def test_faults_of_its_own_peer_end_that_session(b: BServer, case: str) -> None:
    fault, expected = SESSION_ATTACKS[case]
    mark = b.server.mark()

    async def run(peer: QuicPeer) -> None:
        await peer.establish()
        assert await peer.ping(1)
        fault(peer)
        await closed(peer)

    b.sessions_made = 1
    who = b.run(run)
    b.server.wait_log(rf"session with {who} lost after \d+ s: {expected}", mark)


def test_datagram_frames_without_agreement_are_dropped(b: BServer) -> None:
    """DATAGRAM frames from a peer that did not offer datagram=1: dropped and logged once; the
    session carries on."""
    mark = b.server.mark()

    async def run(peer: QuicPeer) -> None:
        await peer.establish()
        for _ in range(20):
            peer.quic.send_datagram_frame(b"\x45" + b"\x00" * 39)
        peer.transmit()
        assert await peer.ping(2), "the session stopped working"

    b.sessions_made = 1
    who = b.run(run)
    b.server.wait_log(rf"dropping DATAGRAM frames from {who}: the config exchange did not agree on them", mark)
    assert b.server.since(mark).count("dropping DATAGRAM frames") == 1


def test_empty_datagram_frame_ends_the_session(b: BServer) -> None:
    mark = b.server.mark()

    async def run(peer: QuicPeer) -> None:
        await peer.establish(datagrams=True)
        assert await peer.ping(1)
        peer.quic.send_datagram_frame(b"")
        peer.transmit()
        await closed(peer)

    b.sessions_made = 1
    who = b.run(run, client_quic(b.world, datagrams=True))
    expected = r"protocol error from peer: DATAGRAM frame of 0 bytes \(allowed 1\.\.1400\)"
    b.server.wait_log(rf"session with {who} lost after \d+ s: {expected}", mark)


def test_peer_is_told_why_its_session_ended(b: BServer) -> None:
    async def run(peer: QuicPeer) -> None:
        await peer.establish()
        peer.send(FIRST_DATA, b"\x00\x00" + b"\x45" * 20)
        phrase = await closed(peer)
        assert "invalid frame length 0" in phrase, phrase

    b.sessions_made = 1
    b.run(run)


def test_newline_in_a_certificate_cn_cannot_forge_a_log_line(b: BServer) -> None:
    mark = b.server.mark()

    async def run(peer: QuicPeer) -> None:
        await peer.establish()
        assert await peer.ping(1)

    b.sessions_made = 1
    b.run(run, client_quic(b.world, "newline-cn"))
    b.server.wait_log(r"session with \S+ lost", mark)
    text = b.server.since(mark)
    forged = [line for line in text.splitlines() if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line)]
    assert not forged, f"lines the logger did not write: {forged}"
