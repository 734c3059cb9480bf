"""The QUIC short cut (rustvpn/quic_fastpath.py) against aioquic's own packet code.

Every test pairs a side that uses the short cut with a side that does not (``fast_path = None``:
aioquic builds and parses everything itself), or two that do, in memory on a virtual clock. What
the short cut sends must be what stock aioquic accepts, and what it takes in must leave the
connection state as aioquic would have: packets acknowledged, nothing left in flight, lost ones
declared lost, the congestion window working, key updates and stream data handled.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from aioquic._buffer import Buffer
from aioquic.quic.packet import push_ack_frame
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.rangeset import RangeSet
from aioquic.tls import Epoch
from hypothesis import given, settings
from hypothesis import strategies as st
from quic_helpers import CLIENT_ADDR, DATAGRAMS, ONE_WAY_DELAY, SERVER_ADDR, machine_pair, tunnel_config, write_pki
from quic_helpers import udp_packet as packet

from rustvpn import quic_config
from rustvpn.pump import PacketChannel
from rustvpn.quic_fastpath import (
    ANNOUNCED_MAX_ACK_DELAY,
    LONE_ACK_DELAY,
    MAX_ACK_FRAME,
    DatagramFastPath,
    _ack_frame_bytes,
    _decode_packet_number,
    _lone_stream_frame,
    _parse_frames,
    _varint,
)
from rustvpn.quic_machine import Phase, QuicSessionMachine


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_pki(tmp_path_factory.mktemp("pki"))


def up_pair(pki: dict[str, Path], *, client_fast: bool = True, server_fast: bool = True, datagrams: bool = True):  # type: ignore[no-untyped-def]
    wire, client, server, client_rec, server_rec = machine_pair(
        tunnel_config(pki, "client", datagrams=datagrams), tunnel_config(pki, "server", datagrams=datagrams)
    )
    assert wire.run(lambda: client.phase is Phase.UP and server.phase is Phase.UP)
    client.bind(client_rec.sink)
    server.bind(server_rec.sink)
    assert client.fast_path is not None and server.fast_path is not None
    if not client_fast:
        client.fast_path = None
    if not server_fast:
        server.fast_path = None
    return wire, client, server, client_rec, server_rec


def in_flight(machine: QuicSessionMachine) -> int:
    return int(machine.quic._loss.bytes_in_flight)


def send(machine: QuicSessionMachine, packets: list[bytes]) -> None:
    machine.channels[0].send_packets(packets)


@pytest.mark.parametrize(("client_fast", "server_fast"), [(True, False), (False, True), (True, True)])
def test_packets_cross_both_ways_and_are_all_acknowledged(
    pki: dict[str, Path], client_fast: bool, server_fast: bool
) -> None:
    wire, client, server, client_rec, server_rec = up_pair(pki, client_fast=client_fast, server_fast=server_fast)
    out = [packet(i) for i in range(40)]
    back = [packet(1000 + i, 900) for i in range(25)]
    for i in range(0, 40, 4):
        send(client, out[i : i + 4])
        send(server, back[i : i + 4] if i < 25 else [])
        wire.step()
    assert wire.run(lambda: len(server_rec.packets) == 40 and len(client_rec.packets) == 25)
    assert server_rec.on(DATAGRAMS) == out
    assert client_rec.on(DATAGRAMS) == back
    # Every packet the short cut sent was acknowledged through its ACK handling or aioquic's.
    assert wire.run(lambda: in_flight(client) == 0 and in_flight(server) == 0, seconds=1)
    for machine, fast in ((client, client_fast), (server, server_fast)):
        space = machine.quic._spaces[Epoch.ONE_RTT]
        assert space.ack_eliciting_in_flight == 0  # (a bare ACK is never acknowledged itself)
        if fast:
            assert machine.fast_path is not None
            assert machine.fast_path.sent > 0 and machine.fast_path.received > 0
    assert client.phase is Phase.UP and server.phase is Phase.UP


class LoseEveryThird:
    """A wire filter that drops the second datagram of every three, and counts them."""

    def __init__(self) -> None:
        self.dropped = 0

    def __call__(self, datagrams: list[bytes]) -> list[bytes]:
        kept = [data for i, data in enumerate(datagrams) if i % 3 != 1]
        self.dropped += len(datagrams) - len(kept)
        return kept


def test_lost_packets_are_declared_lost_not_resent(pki: dict[str, Path]) -> None:
    wire, client, _, _, server_rec = up_pair(pki)
    wire.client_filter = lose = LoseEveryThird()
    for i in range(0, 60, 6):
        # 900 bytes: one to a QUIC packet, so that each datagram the filter drops is one packet
        send(client, [packet(i + k, 900) for k in range(6)])
        wire.step()
    wire.client_filter = None
    dropped = lose.dropped
    # (the pacer lets 900-byte packets go over a few steps: all sent, and none in flight)
    assert wire.run(lambda: in_flight(client) == 0 and not client.quic._datagrams_pending, seconds=3)
    assert dropped > 0
    # DATAGRAM frames are not resent: exactly what was not dropped arrived, in order.
    got = server_rec.on(DATAGRAMS)
    assert len(got) == 60 - dropped
    assert got == sorted(got, key=lambda p: p[24:28])
    # Nothing is left in flight: the lost packets were declared lost, and the controller reacted.
    assert client.quic._loss._cc._recovery_start > 0


def test_a_key_update_goes_through_aioquic_and_the_short_cut_resumes(pki: dict[str, Path]) -> None:
    wire, client, server, client_rec, server_rec = up_pair(pki)
    send(client, [packet(1)])
    assert wire.run(lambda: len(server_rec.packets) == 1)
    phase = client.quic._cryptos[Epoch.ONE_RTT].send.key_phase
    client.quic.request_key_update()
    assert client.fast_path is not None and not client.fast_path.can_send()
    send(client, [packet(2)])
    server.channels[0].send_packets([packet(3)])
    assert wire.run(lambda: len(server_rec.packets) == 2 and len(client_rec.packets) == 1)
    assert client.quic._cryptos[Epoch.ONE_RTT].send.key_phase != phase
    assert server.quic._cryptos[Epoch.ONE_RTT].recv.key_phase != phase
    sent_before = client.fast_path.sent
    for i in range(4, 10):
        send(client, [packet(i)])
        server.channels[0].send_packets([packet(100 + i)])
        wire.step()
    assert wire.run(lambda: len(server_rec.packets) == 8 and len(client_rec.packets) == 7)
    assert client.fast_path.sent > sent_before  # the short cut works in the new key phase
    assert server_rec.on(DATAGRAMS) == [packet(i) for i in range(1, 10) if i != 3]


def test_duplicates_and_damaged_packets_are_dropped(pki: dict[str, Path]) -> None:
    _, client, server, _, server_rec = up_pair(pki)
    send(client, [packet(1)])
    (data, _), *rest = client.datagrams_to_send(1.0)
    assert not rest
    server.receive_datagram(data, CLIENT_ADDR, 1.0)
    server.receive_datagram(data, CLIENT_ADDR, 1.0)  # replayed
    damaged = bytearray(data)
    damaged[-1] ^= 1
    server.receive_datagram(bytes(damaged), CLIENT_ADDR, 1.0)
    assert server_rec.on(DATAGRAMS) == [packet(1)]
    assert server.phase is Phase.UP


def test_packets_from_another_address_are_left_to_aioquic(pki: dict[str, Path]) -> None:
    _, client, server, _, server_rec = up_pair(pki)
    assert server.fast_path is not None
    send(client, [packet(1)])
    [(data, _)] = client.datagrams_to_send(1.0)
    taken = server.fast_path.received
    server.receive_datagram(data, ("198.18.0.99", 40000), 1.0)  # aioquic handles a new path
    assert server.fast_path.received == taken
    assert server_rec.on(DATAGRAMS) == [packet(1)]


def test_an_owed_ack_rides_with_the_next_packet(pki: dict[str, Path]) -> None:
    wire, client, server, client_rec, server_rec = up_pair(pki)
    wire.run(seconds=0.2)  # nothing owed
    send(client, [packet(1)])
    [(data, _)] = client.datagrams_to_send(wire.now)
    server.receive_datagram(data, CLIENT_ADDR, wire.now)
    assert server.quic._spaces[Epoch.ONE_RTT].ack_at is not None  # the server owes an ACK
    assert in_flight(client) > 0
    server.channels[0].send_packets([packet(2)])
    [(reply, _)] = server.datagrams_to_send(wire.now)  # one packet: the reply carries the ACK
    assert server.quic._spaces[Epoch.ONE_RTT].ack_at is None
    in_flight_at_delivery: list[int] = []

    def sink(channel: PacketChannel, packets: list[bytes]) -> None:
        in_flight_at_delivery.append(in_flight(client))
        client_rec.sink(channel, packets)

    client.bind(sink)
    client.receive_datagram(reply, SERVER_ADDR, wire.now)
    assert client_rec.on(DATAGRAMS) == [packet(2)]
    # The reply's packet went to the device before its ACK was applied (a ping must not wait
    # for loss recovery), and the ACK was applied before the datagram was done with.
    assert in_flight_at_delivery[0] > 0
    assert in_flight(client) == 0
    assert server_rec.on(DATAGRAMS) == [packet(1)]


def test_the_ack_of_a_lone_packet_waits_for_a_ride_within_the_announced_delay(pki: dict[str, Path]) -> None:
    wire, client, server, _, server_rec = up_pair(pki)
    wire.run(seconds=0.2)  # nothing owed
    assert server.quic._ack_delay < LONE_ACK_DELAY < ANNOUNCED_MAX_ACK_DELAY
    assert client.quic._loss.max_ack_delay == ANNOUNCED_MAX_ACK_DELAY  # what the server announced
    space = server.quic._spaces[Epoch.ONE_RTT]
    send(client, [packet(1)])
    [(data, _)] = client.datagrams_to_send(wire.now)
    start = wire.now
    server.receive_datagram(data, CLIENT_ADDR, start)
    assert server_rec.on(DATAGRAMS) == [packet(1)]
    assert space.ack_at == pytest.approx(start + LONE_ACK_DELAY)
    assert server.datagrams_to_send(start + 0.005) == []  # no ACK-only packet at aioquic's 1 ms
    # Nothing to ride in: the ACK goes alone at the deadline, and the client's packet is acknowledged.
    assert wire.run(lambda: in_flight(client) == 0, seconds=0.1)
    assert wire.now - start == pytest.approx(LONE_ACK_DELAY + ONE_WAY_DELAY)


class CallCounter:
    """Counts calls of one of aioquic's methods on a connection, passing them through."""

    def __init__(self, quic: object, name: str) -> None:
        self.calls = 0
        real = getattr(quic, name)

        def counted(*args: object, **kwargs: object) -> object:
            self.calls += 1
            return real(*args, **kwargs)

        setattr(quic, name, counted)


@pytest.mark.parametrize("client_fast", [True, False])
def test_an_ack_with_nothing_to_ride_in_goes_alone_through_the_short_cut(
    pki: dict[str, Path], client_fast: bool
) -> None:
    """The ACK of a lone packet, at its deadline: built by the short cut (aioquic's packet code
    is not called, not even its timer handling), and taken by stock aioquic as by the short cut."""
    wire, client, server, _, server_rec = up_pair(pki, client_fast=client_fast)
    wire.run(seconds=0.2)  # nothing owed
    builds = CallCounter(server.quic, "datagrams_to_send")
    timers = CallCounter(server.quic, "handle_timer")
    assert server.fast_path is not None
    sent_before, pn_before = server.fast_path.sent, server.quic._packet_number
    send(client, [packet(1)])
    [(data, _)] = client.datagrams_to_send(wire.now)
    start = wire.now
    server.receive_datagram(data, CLIENT_ADDR, start)
    assert server_rec.on(DATAGRAMS) == [packet(1)]
    assert in_flight(client) > 0
    assert wire.run(lambda: in_flight(client) == 0, seconds=0.1)
    assert wire.now - start == pytest.approx(LONE_ACK_DELAY + ONE_WAY_DELAY)
    assert server.fast_path.sent == sent_before + 1 and server.quic._packet_number == pn_before + 1
    assert builds.calls == 0 and timers.calls == 0
    space = server.quic._spaces[Epoch.ONE_RTT]
    [ack_only] = [p for p in space.sent_packets.values() if p.packet_number == pn_before]
    assert not ack_only.in_flight and not ack_only.is_ack_eliciting
    assert space.ack_at is None
    assert client.phase is Phase.UP and server.phase is Phase.UP


def test_an_ack_rides_in_aioquics_packet_when_aioquic_sends(pki: dict[str, Path]) -> None:
    """Something of aioquic's to send (a keep-alive byte: stream 0 is not a data stream) and an ACK
    due at once: aioquic's packet carries both; the short cut sends no ACK of its own beside it."""
    wire, client, server, _, _ = up_pair(pki)
    wire.run(seconds=0.2)
    send(client, [packet(1), packet(2)])  # two packets: the server's ACK is due within 1 ms
    wire.step()
    assert server.fast_path is not None
    space = server.quic._spaces[Epoch.ONE_RTT]
    assert space.ack_at is not None
    sent_before, pn_before = server.fast_path.sent, server.quic._packet_number
    server._next_keepalive = space.ack_at
    server.handle_timer(space.ack_at)
    out = server.datagrams_to_send(space.ack_at)
    assert len(out) == 1 and server.fast_path.sent == sent_before and server.quic._packet_number == pn_before + 1
    assert space.ack_at is None
    for data, _ in out:
        client.receive_datagram(data, SERVER_ADDR, wire.now)
    assert in_flight(client) == 0


def test_an_ack_alone_asks_for_an_ack_of_its_own_as_aioquic_does(pki: dict[str, Path]) -> None:
    """aioquic puts a PING in a packet whose ACK has gaps and whose number is a multiple of 8, so
    that the peer acknowledges it and the old ranges can be forgotten: so does the short cut."""
    wire, client, server, _, _ = up_pair(pki)
    wire.run(seconds=0.2)
    send(client, [packet(1, 1000), packet(2, 1000), packet(3, 1000)])  # one QUIC packet each
    first, _gone, third = client.datagrams_to_send(wire.now)
    for data, _ in (first, third):
        server.receive_datagram(data, CLIENT_ADDR, wire.now)
    space = server.quic._spaces[Epoch.ONE_RTT]
    assert len(space.ack_queue) > 1  # a gap
    server.quic._packet_number += -server.quic._packet_number % 8
    pn = server.quic._packet_number
    assert space.ack_at is not None
    at = space.ack_at
    assert server.fast_path is not None
    sent_before = server.fast_path.sent
    server.handle_timer(at)
    [(data, _)] = server.datagrams_to_send(at)
    assert server.fast_path.sent == sent_before + 1  # the short cut's packet, not aioquic's
    packet_sent = space.sent_packets[pn]
    assert packet_sent.is_ack_eliciting and packet_sent.in_flight
    client.receive_datagram(data, SERVER_ADDR, at)
    assert client.quic._spaces[Epoch.ONE_RTT].ack_at is not None  # the PING is to be acknowledged


def test_held_acks_are_not_taken_for_a_queue(pki: dict[str, Path]) -> None:
    """A ping a second: each ACK comes 23 ms late, by the peer's choice, which it reports. Were
    that read as queueing delay, every ping would cut the congestion window, and a transfer after
    a quiet spell would start from the minimum."""
    wire, client, _server, _, server_rec = up_pair(pki)
    wire.run(seconds=0.5)
    window = client.quic._loss.congestion_window
    for seq in range(30):
        send(client, [packet(seq)])
        assert wire.run(lambda: in_flight(client) == 0, seconds=1)
        wire.run(seconds=1)
    assert len(server_rec.on(DATAGRAMS)) == 30
    assert client.quic._loss.congestion_window >= window  # (grown: slow start still)


def test_a_second_packet_brings_the_ack_back_within_aiquics_delay(pki: dict[str, Path]) -> None:
    wire, client, server, _, _ = up_pair(pki)
    wire.run(seconds=0.2)
    space = server.quic._spaces[Epoch.ONE_RTT]
    start = wire.now
    for index, at in enumerate((start, start + 0.004)):
        send(client, [packet(index)])
        [(data, _)] = client.datagrams_to_send(at)
        server.receive_datagram(data, CLIENT_ADDR, at)
    assert space.ack_at == pytest.approx(start + 0.004 + server.quic._ack_delay)


def test_a_packet_for_aioquic_brings_a_held_ack_back_within_its_delay(pki: dict[str, Path]) -> None:
    wire, client, server, _, server_rec = up_pair(pki)
    wire.run(seconds=0.2)
    space = server.quic._spaces[Epoch.ONE_RTT]
    start = wire.now
    send(client, [packet(1)])
    [(data, _)] = client.datagrams_to_send(start)
    server.receive_datagram(data, CLIENT_ADDR, start)
    assert space.ack_at == pytest.approx(start + LONE_ACK_DELAY)
    send(client, [packet(2, 1350)])  # too big for a DATAGRAM frame: stream data, aioquic's to take
    for data, _ in client.datagrams_to_send(start + 0.001):
        server.receive_datagram(data, CLIENT_ADDR, start + 0.001)
    assert server_rec.on(8) == [packet(2, 1350)]
    assert space.ack_at is not None and space.ack_at <= start + 0.001 + server.quic._ack_delay


def test_stream_packets_still_cross_beside_the_short_cut(pki: dict[str, Path]) -> None:
    wire, client, _server, _, server_rec = up_pair(pki)
    big = packet(7, 1350)  # does not fit a DATAGRAM frame in a 1200-byte QUIC packet: stream 8
    send(client, [packet(1), big])
    assert wire.run(lambda: len(server_rec.packets) == 2)
    assert server_rec.on(DATAGRAMS) == [packet(1)]
    assert server_rec.on(8) == [big]
    assert wire.run(lambda: in_flight(client) == 0, seconds=1)


def test_packet_numbers_decode_across_the_two_byte_window() -> None:
    assert _decode_packet_number(0x0001, 0xFFFF) == 0x10001
    assert _decode_packet_number(0xFFFF, 0x10002) == 0xFFFF
    assert _decode_packet_number(0x1234, 0x1230) == 0x1234
    assert _decode_packet_number(0x9B32, 0xA82F30EB) == 0xA82F9B32  # RFC 9000 appendix A.3


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2**62 - 2), st.integers(1, 2**20)), min_size=1, max_size=40),
    st.integers(0, 2**62 - 1),
)
def test_ack_frames_are_aioquics_bytes(ranges: list[tuple[int, int]], delay: int) -> None:
    """The short cut writes the common one-range ACK itself: byte for byte what aioquic writes,
    whatever the magnitudes (every varint length), and aioquic's own writer for the rest."""
    acked = RangeSet()
    for start, length in ranges:
        acked.add(start, min(start + length, 2**62 - 1))
    expected = Buffer(capacity=MAX_ACK_FRAME)
    expected.push_uint_var(0x02)
    count = push_ack_frame(expected, acked, delay, MAX_ACK_FRAME - 1)
    assert _ack_frame_bytes(acked, delay) == (expected.data, count)


def test_varints_take_their_shortest_form() -> None:
    for value in (0, 63, 64, 16383, 16384, 2**30 - 1, 2**30, 2**62 - 1):
        buf = Buffer(capacity=8)
        buf.push_uint_var(value)
        assert _varint(value) == buf.data


def test_frames_other_than_ours_go_to_aioquic() -> None:
    assert _parse_frames(b"\x31\x03abc\x00\x00", 65536) == ([b"abc"], None, True, [])
    assert _parse_frames(b"\x30xyz", 65536) == ([b"xyz"], None, True, [])
    assert _parse_frames(b"\x01", 65536) == ([], None, True, [])
    datagrams, ack, eliciting, _ = _parse_frames(b"\x02\x05\x00\x00\x02", 65536) or ((), None, True, [])
    assert datagrams == [] and ack is not None and not eliciting
    assert list(ack[0]) == [range(3, 6)]
    assert _parse_frames(b"\x09\x00", 65536) is None  # STREAM frame with FIN
    assert _parse_frames(b"\x10\x44\x00", 65536) is None  # MAX_DATA
    assert _parse_frames(b"\x31\x05ab", 65536) is None  # truncated
    assert _parse_frames(b"", 65536) is None  # no frame at all
    assert _parse_frames(b"\x31\x03abc", 3) is None  # over our transport parameter
    assert _parse_frames(b"\x31\x03abc", None) is None  # DATAGRAM frames not offered


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_any_payload_parses_or_is_left_to_aioquic(payload: bytes) -> None:
    parsed = _parse_frames(payload, 1500)
    if parsed is not None:
        datagrams, _, _, streams = parsed
        assert sum(map(len, datagrams)) + sum(len(data) for _, _, data in streams) <= len(payload)


def test_the_short_cut_is_a_no_op_before_the_session_can_use_it(pki: dict[str, Path]) -> None:
    wire, client, server, _, _ = machine_pair(tunnel_config(pki, "client"), tunnel_config(pki, "server"))
    fast = DatagramFastPath(client.quic)
    assert not fast.can_send() and fast.flush(0.0) == []
    assert wire.run(lambda: client.phase is Phase.UP and server.phase is Phase.UP)


def test_a_packet_read_ahead_is_delivered_early_and_acknowledged_in_its_turn(pki: dict[str, Path]) -> None:
    """quic_udp.READ_AHEAD: a short packet behind a queue delivers its DATAGRAM frame at once
    (receive_early), but the rest of it (its ACK range) waits for its turn, so the peer never sees
    it acknowledged ahead of the packets before it (it would declare those lost); in its turn it
    is not delivered again."""
    _, client, server, _, server_rec = up_pair(pki)
    space = server.quic._spaces[Epoch.ONE_RTT]
    send(client, [packet(i, 1000) for i in range(1, 5)])
    queued: list[bytes] = []
    for step in range(10):  # as the pacer lets them go
        queued += [data for data, _ in client.datagrams_to_send(1.0 + step / 1000)]
    send(client, [packet(99, 84)])
    [(ping, _)] = client.datagrams_to_send(1.01)  # the server gets it behind the others
    assert len(queued) == 4 and len(ping) < 160

    acked_before = list(space.ack_queue)
    assert server.receive_early(ping, CLIENT_ADDR, 1.001)
    assert server_rec.on(DATAGRAMS) == [packet(99, 84)]
    assert list(space.ack_queue) == acked_before and space.ack_at is None  # nothing of it applied yet
    assert not server.receive_early(ping, CLIENT_ADDR, 1.001)  # shown twice: delivered once

    for data in [*queued, ping]:
        server.receive_datagram(data, CLIENT_ADDR, 1.002)
    assert server_rec.on(DATAGRAMS) == [packet(99, 84)] + [packet(i, 1000) for i in range(1, 5)]
    assert list(space.ack_queue)[-1].stop - list(space.ack_queue)[-1].start >= 5  # no gap
    server.receive_datagram(ping, CLIENT_ADDR, 1.003)  # a replay later: dropped
    assert not server.receive_early(ping, CLIENT_ADDR, 1.003)
    assert len(server_rec.on(DATAGRAMS)) == 5


def test_only_the_short_cuts_packets_are_delivered_early(pki: dict[str, Path]) -> None:
    """A packet the short cut does not take (damaged, another address, stream data) is left to
    its turn, as is everything before the session is up."""
    _, client, server, _, server_rec = up_pair(pki)
    send(client, [packet(1, 84)])
    [(data, _)] = client.datagrams_to_send(1.0)
    damaged = bytearray(data)
    damaged[-1] ^= 1
    assert not server.receive_early(bytes(damaged), CLIENT_ADDR, 1.0)
    assert not server.receive_early(data, ("198.18.0.99", 40000), 1.0)
    server.channels[0].send_packets([packet(2, 1500)])  # too big for a DATAGRAM frame: stream data
    stream_packets = [d for d, _ in server.datagrams_to_send(1.0)]
    assert stream_packets and not any(client.receive_early(d, SERVER_ADDR, 1.0) for d in stream_packets)
    assert server_rec.on(DATAGRAMS) == []
    server.fast_path = None
    assert not server.receive_early(data, CLIENT_ADDR, 1.0)


def test_the_short_cuts_timer_is_aioquics_in_every_state_it_covers(pki: dict[str, Path]) -> None:
    """DatagramFastPath.timer() stands in for aioquic's get_timer() once the handshake is over:
    both must give the same deadline, and leave the same loss deadline behind for handle_timer,
    with ACKs owed, packets in flight, losses pending, pacing holding packets back and probes
    backed off."""
    wire, client, server, _, server_rec = up_pair(pki)
    seen: set[str] = set()

    def check() -> None:
        for machine in (client, server):
            fast, quic = machine.fast_path, machine.quic
            assert fast is not None
            ours = fast.timer()
            assert ours is not None  # steady from the moment the session is up
            our_loss_at = quic._loss_at
            assert ours == quic.get_timer()
            assert our_loss_at == quic._loss_at
            space = quic._spaces[Epoch.ONE_RTT]
            seen.update(
                name
                for name, present in (
                    ("ack owed", space.ack_at is not None),
                    ("in flight", space.ack_eliciting_in_flight > 0),
                    ("loss time", space.loss_time is not None),
                    ("pacing", quic._pacing_at is not None and quic._pacing_at >= wire.now),
                    ("probe backoff", quic._loss._pto_count > 0),
                )
                if present
            )

    def drop_the_first_of_a_few(datagrams: list[bytes]) -> list[bytes]:
        return datagrams[1:] if 2 <= len(datagrams) <= 4 else datagrams

    check()
    seq = 0
    for round_ in range(30):
        burst = 200 if round_ % 10 == 0 else 2  # a burst the pacer spreads out, or a pair
        send(client, [packet(seq + i, 1200) for i in range(burst)])
        seq += burst
        server.channels[0].send_packets([packet(10_000 + round_)])
        wire.client_filter = drop_the_first_of_a_few if round_ % 3 == 1 else None
        wire.cut = round_ == 20  # a dead link for a while: probes back off
        for _ in range(6):
            wire.step()
            check()
            wire.now += 0.004
            for machine in (client, server):
                at = machine.get_timer()
                if at is not None and at <= wire.now:
                    machine.handle_timer(wire.now)
                    check()
        if round_ == 20:
            wire.run(seconds=0.5)  # the probe timer fires (into the cut link) and backs off
            check()
    wire.cut = False
    wire.client_filter = None
    assert wire.run(lambda: in_flight(client) == 0 and in_flight(server) == 0, seconds=5)
    check()
    assert seen == {"ack owed", "in flight", "loss time", "pacing", "probe backoff"}
    assert server_rec.packets and client.phase is Phase.UP and server.phase is Phase.UP


def ping_packet(seq: int) -> bytes:
    """An IPv4/ICMP-looking packet numbered ``seq`` (84 bytes, as a default ping)."""
    return bytes([0x45]) + bytes(8) + bytes([1]) + bytes(10) + seq.to_bytes(4, "big") * 16


def sent_one_per_packet(client: QuicSessionMachine, packets: list[bytes]) -> list[bytes]:
    """The client's datagrams for ``packets``, as the pacer lets them go (packets of 1000 bytes or
    more take a QUIC packet each)."""
    send(client, packets)
    out: list[bytes] = []
    for step in range(20):
        out += [data for data, _ in client.datagrams_to_send(1.0 + step / 1000)]
    return out


def test_a_batch_goes_to_the_device_in_one_delivery_but_a_ping_does_not_wait_for_the_rest(
    pki: dict[str, Path],
) -> None:
    """receive_datagrams() opens a batch of the short cut's packets and delivers their packets
    together (one call into the pump, which merges them), in order; a packet that is neither TCP
    nor UDP ends a delivery, so a ping goes to the device before the packets behind it in the
    batch are decrypted."""
    _, client, server, _, _ = up_pair(pki)
    deliveries: list[list[bytes]] = []
    server.bind(lambda _channel, packets: deliveries.append(list(packets)))
    bulk = [packet(i, 1000) for i in range(1, 5)]
    datagrams = sent_one_per_packet(client, bulk)
    assert len(datagrams) == 4
    server.receive_datagrams([(d, CLIENT_ADDR) for d in datagrams], 1.05)
    assert deliveries == [bulk]

    deliveries.clear()
    ping = ping_packet(7)
    more = [packet(i, 1100) for i in range(10, 14)]  # (no room for the ping beside one)
    datagrams = sent_one_per_packet(client, [*more, ping])
    # The ping jumped the sender's queue (jumps_the_queue); here it comes in the middle of a batch.
    [ping_datagram] = [d for d in datagrams if len(d) < 200]
    bulk_datagrams = [d for d in datagrams if d is not ping_datagram]
    batch = [*bulk_datagrams[:2], ping_datagram, *bulk_datagrams[2:]]
    server.receive_datagrams([(d, CLIENT_ADDR) for d in batch], 1.1)
    assert deliveries == [[*more[:2], ping], more[2:]]
    assert server.phase is Phase.UP


def test_a_batch_keeps_its_order_around_packets_for_aioquic_and_drops_its_duplicates(pki: dict[str, Path]) -> None:
    """A packet the short cut does not take (a replay, a damaged one) in the middle of a batch goes
    to aioquic in its turn; the short cut goes on with the packets after it, stream data among them."""
    _, client, server, _, server_rec = up_pair(pki)
    first = sent_one_per_packet(client, [packet(1, 1000), packet(2, 1000)])
    client.channels[0].send_packets([packet(3, 1300)])  # too big for a DATAGRAM frame: stream data
    stream = [data for data, _ in client.datagrams_to_send(1.1)]
    last = sent_one_per_packet(client, [packet(4, 1000)])
    damaged = bytearray(last[0])
    damaged[-1] ^= 1
    assert server.fast_path is not None
    taken = server.fast_path.received
    batch = [first[0], first[0], *stream, bytes(damaged), first[1], last[0], first[1]]
    server.receive_datagrams([(d, CLIENT_ADDR) for d in batch], 1.2)
    assert server_rec.on(DATAGRAMS) == [packet(1, 1000), packet(2, 1000), packet(4, 1000)]
    assert server_rec.on(server.channels[0].stream_id) == [packet(3, 1300)]
    assert server.fast_path.received == taken + 3 + len(stream)  # (the 1300 bytes take two packets)
    assert server.phase is Phase.UP


@settings(max_examples=25, deadline=None)
@given(st.permutations(range(12)), st.integers(min_value=1, max_value=12))
def test_a_batch_leaves_the_ack_ranges_that_packets_fed_one_by_one_would(
    pki: dict[str, Path], order: list[int], size: int
) -> None:
    """The short cut adds runs of consecutive packet numbers to the ACK ranges in one call: with
    packets reordered and lost (the first ``size`` of a permutation arrive), the ranges are those
    of one add() per packet, as aioquic makes them."""
    wire, client, server, _, _ = up_pair(pki)
    wire.run(seconds=0.2)  # nothing owed: no ACK frame rides (its ACK of ACK would prune the ranges)
    first_pn = client.quic._packet_number
    datagrams = sent_one_per_packet(client, [packet(i, 1000) for i in range(12)])
    assert len(datagrams) == 12 and client.quic._packet_number == first_pn + 12
    assert len(set(map(len, datagrams))) == 1
    space = server.quic._spaces[Epoch.ONE_RTT]
    expected = RangeSet(list(space.ack_queue))
    for index in order[:size]:
        expected.add(first_pn + index)
    server.receive_datagrams([(datagrams[i], CLIENT_ADDR) for i in order[:size]], 1.1)
    assert list(space.ack_queue) == list(expected)
    assert space.largest_received_packet == first_pn + max(order[:size])


def test_the_short_cuts_sent_packets_are_aioquics_with_every_field(pki: dict[str, Path]) -> None:
    """_record fills in aioquic's QuicSentPacket without its __init__: every field must be there,
    with the value the dataclass would hold."""
    _, client, _, _, _ = up_pair(pki)
    send(client, [packet(1)])
    client.datagrams_to_send(1.0)
    space = client.quic._spaces[Epoch.ONE_RTT]
    sent = space.sent_packets[client.quic._packet_number - 1]
    names = [f.name for f in dataclasses.fields(QuicSentPacket)]
    assert sorted(vars(sent)) == sorted(names)
    assert sent == QuicSentPacket(**{name: getattr(sent, name) for name in names})
    assert sent.in_flight and sent.is_ack_eliciting and sent.sent_time == 1.0 and sent.quic_logger_frames == []


# -- STREAM frames: the data streams, as the Rust reference peer (and --no-datagrams) uses them ----


def stream_pair(pki: dict[str, Path], **kwargs: bool):  # type: ignore[no-untyped-def]
    return up_pair(pki, datagrams=False, **kwargs)


@pytest.mark.parametrize(("client_fast", "server_fast"), [(True, False), (False, True), (True, True)])
def test_stream_data_crosses_through_the_short_cut_both_ways(
    pki: dict[str, Path], client_fast: bool, server_fast: bool
) -> None:
    wire, client, server, client_rec, server_rec = stream_pair(pki, client_fast=client_fast, server_fast=server_fast)
    assert client.datagram_channel is None and server.datagram_channel is None
    out = [packet(i, 1300) for i in range(40)]
    back = [packet(1000 + i, 700) for i in range(25)]
    for i in range(0, 40, 4):
        send(client, out[i : i + 4])
        send(server, back[i : i + 4] if i < 25 else [])
        wire.step()
    assert wire.run(lambda: len(server_rec.packets) == 40 and len(client_rec.packets) == 25)
    assert server_rec.on(8) == out and client_rec.on(8) == back
    assert wire.run(lambda: in_flight(client) == 0 and in_flight(server) == 0, seconds=1)
    for machine, fast in ((client, client_fast), (server, server_fast)):
        if fast:
            assert machine.fast_path is not None
            # Nearly all of it both ways (aioquic sent the odd packet: a keep-alive byte, an ACK).
            assert machine.fast_path.sent >= 10 and machine.fast_path.received >= 10
        stream = machine.quic._streams[8]
        assert stream.sender.buffer_is_empty or not len(stream.sender._pending)
    assert client.phase is Phase.UP and server.phase is Phase.UP


@pytest.mark.parametrize("fast_sender", [True, False])
def test_lost_stream_data_is_resent_and_delivered_in_order(pki: dict[str, Path], fast_sender: bool) -> None:
    """Lost packets leave gaps that aioquic's receiver buffers (the short cut takes only the next
    bytes of a stream); the sender resends what was lost, and every packet arrives, in order."""
    wire, client, server, _, server_rec = stream_pair(pki, client_fast=fast_sender)
    out = [packet(i, 1200) for i in range(60)]
    wire.client_filter = lose = LoseEveryThird()
    for i in range(0, 60, 6):
        send(client, out[i : i + 6])
        wire.step()
    wire.client_filter = None
    assert wire.run(lambda: len(server_rec.packets) == 60, seconds=5)
    assert lose.dropped > 0
    assert server_rec.on(8) == out
    assert wire.run(lambda: in_flight(client) == 0, seconds=3)
    receiver = server.quic._streams[8].receiver
    assert not receiver._buffer and receiver.highest_offset == receiver._buffer_start
    # Once the gaps were filled, the short cut took the stream again.
    assert server.fast_path is not None
    taken = server.fast_path.received
    send(client, [packet(100, 1200)])
    assert wire.run(lambda: len(server_rec.packets) == 61)
    assert server.fast_path.received > taken


def test_stream_packets_out_of_order_go_to_aioquic_and_arrive_in_order(pki: dict[str, Path]) -> None:
    _, client, server, _, server_rec = stream_pair(pki)
    out = [packet(i, 1300) for i in range(6)]
    datagrams = sent_one_per_packet(client, out)
    count = len(datagrams)
    assert count >= 6
    assert server.fast_path is not None
    taken = server.fast_path.received
    order = [0, 2, 1, 3, 5, 4, *range(6, count)]
    server.receive_datagrams([(datagrams[i], CLIENT_ADDR) for i in order], 1.1)
    assert server_rec.on(8) == out
    # 0, 3 and those from 6 on were the next bytes when they came; 2, 1, 5 and 4 were aioquic's.
    assert server.fast_path.received == taken + 2 + count - 6


def test_stream_data_beyond_the_first_flow_control_windows(
    pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The short cut counts what it takes against aioquic's limits, and has aioquic raise them
    (MAX_STREAM_DATA, MAX_DATA) in time: the data keeps flowing, through the short cut."""
    monkeypatch.setattr(quic_config, "MAX_STREAM_DATA", 64 * 1024)
    monkeypatch.setattr(quic_config, "MAX_DATA", 96 * 1024)
    wire, client, server, _, server_rec = stream_pair(pki)
    assert server.quic._streams[8].max_stream_data_local == 64 * 1024
    out = [packet(i, 1300) for i in range(400)]  # 520 KB: the windows must double a few times
    for i in range(0, 400, 8):
        send(client, out[i : i + 8])
        wire.step()
        wire.now += 0.001
    assert wire.run(lambda: len(server_rec.packets) == 400, seconds=5)
    assert server_rec.on(8) == out
    assert server.quic._streams[8].max_stream_data_local >= 512 * 1024
    assert server.quic._local_max_data.value >= 512 * 1024
    assert client.fast_path is not None and server.fast_path is not None
    assert server.fast_path.received >= 350 and client.fast_path.sent >= 350


def test_a_stream_frame_with_fin_is_aioquics_and_ends_the_session(pki: dict[str, Path]) -> None:
    wire, client, server, _, _ = stream_pair(pki)
    client.quic.send_stream_data(8, b"", end_stream=True)
    client._aioquic_due = True
    assert wire.run(lambda: server.phase is Phase.ENDED, seconds=1)
    assert server.end_reason is not None and "finished data stream 8" in server.end_reason


def test_stream_frames_parse_as_aioquic_writes_them() -> None:
    frames = bytes((0x0E, 8)) + _varint(70000) + (3 | 0x4000).to_bytes(2, "big") + b"abc"
    frames += bytes((0x0A, 12)) + (2 | 0x4000).to_bytes(2, "big") + b"de" + bytes((0x08, 16)) + b"rest"
    parsed = _parse_frames(frames, None)
    assert parsed is not None
    assert parsed[3] == [(8, 70000, b"abc"), (12, 0, b"de"), (16, 0, b"rest")] and parsed[2]
    assert _parse_frames(bytes((0x0B, 8, 1)) + b"x", None) is None  # FIN: aioquic's
    assert _parse_frames(bytes((0x0E, 8)) + _varint(2**62 - 2) + bytes((4,)) + b"abcd", None) is None


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=63),
    st.integers(min_value=0, max_value=2**62 - 2**14),
    st.binary(min_size=1, max_size=1500),
    st.booleans(),
)
def test_a_lone_stream_frame_reads_as_the_general_parser_reads_it(
    stream_id: int, offset: int, data: bytes, trailing: bool
) -> None:
    """The direct read of a packet that is one STREAM frame (as aioquic writes it: type 0x0a or 0x0e,
    2-byte length) gives what _parse_frames gives; anything after the frame sends it to _parse_frames."""
    buf = Buffer(capacity=1600)
    buf.push_uint8(0x0E if offset else 0x0A)
    buf.push_uint_var(stream_id)
    if offset:
        buf.push_uint_var(offset)
    buf.push_uint16(len(data) | 0x4000)
    buf.push_bytes(data)
    payload = buf.data + (b"\x01" if trailing else b"")
    parsed = _parse_frames(payload, None)
    assert parsed is not None and parsed[3][0] == (stream_id, offset, data)
    assert _lone_stream_frame(payload) == (None if trailing else (stream_id, offset, data))
    assert _lone_stream_frame(buf.data[:-1]) is None  # cut short


def test_stream_packets_fill_but_never_exceed_the_datagram_size(pki: dict[str, Path]) -> None:
    """Through the offsets where a STREAM frame's offset field grows (1, 2, then 4 bytes), on two
    streams sharing packets: every packet is at most the path's datagram size, and full ones fill it."""
    wire, client, _server, _, server_rec = stream_pair(pki)
    sizes: list[int] = []

    def measure(datagrams: list[bytes]) -> list[bytes]:
        sizes.extend(map(len, datagrams))
        return datagrams

    wire.client_filter = measure
    out = {8: [packet(i, 37 + 13 * i) for i in range(60)], 12: [packet(1000 + i, 1000) for i in range(20)]}
    for i in range(20):
        client.channels[0].send_packets(out[8][3 * i : 3 * i + 3])
        client.channels[1].send_packets(out[12][i : i + 1])
        wire.step()
    assert wire.run(lambda: len(server_rec.packets) == 80)
    assert server_rec.on(8) == out[8] and server_rec.on(12) == out[12]
    limit = client.quic._max_datagram_size
    assert max(sizes) <= limit and sizes.count(limit) >= 10


def test_a_packet_on_another_stream_goes_out_behind_one_packet_of_a_burst_not_all_of_it(pki: dict[str, Path]) -> None:
    """Streams take turns a packet at a time, as in aioquic: a ping queued on stream 12 after a
    burst on stream 8 leaves in the second packet of the flush."""
    _, client, server, _, server_rec = stream_pair(pki)
    client.quic._streams_queue.sort(key=lambda s: s.stream_id != 8)  # the burst's stream has the first turn
    client.channels[0].send_packets([packet(i, 1300) for i in range(12)])
    ping = ping_packet(1)
    client.channels[1].send_packets([ping])
    datagrams = [data for data, _ in client.datagrams_to_send(1.0)]
    assert len(datagrams) >= 6
    arrived_in = None
    for number, data in enumerate(datagrams, 1):
        server.receive_datagram(data, CLIENT_ADDR, 1.0)
        if server_rec.on(12):
            arrived_in = number
            break
    assert server_rec.on(12) == [ping] and arrived_in == 2
