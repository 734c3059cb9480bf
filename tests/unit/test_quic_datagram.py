"""QUIC mode's DATAGRAM-frame data path (RFC 9221), driven in memory like test_quic_session.py.

Both peers offer ``datagram=1`` by default; a peer that does not (the reference peer, or
``--no-datagrams``) keeps the session on the data streams with the reference's exact bytes. Then
the queue in front of the path (CoDel), the UDP side (GSO grouping, the packet size taken from the
route, a loopback session) and the congestion controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aioquic.quic.recovery import QuicPacketPacer
from quic_helpers import (
    DATAGRAMS,
    RawPeer,
    Wire,
    client_machine_and_raw_server,
    machine_pair,
    raw_client_and_server_machine,
    send_then_ack,
    sent_packet,
    tunnel_config,
    write_pki,
)

from rustvpn.codel import CoDel
from rustvpn.framing import encode_frames
from rustvpn.pump import Drops, PacketChannel
from rustvpn.quic_config import MAX_DATAGRAM_FRAME_SIZE
from rustvpn.quic_congestion import (
    DELAY_REDUCTION,
    GROWTH_SHARE,
    INTERVAL,
    LOSS_REDUCTION,
    MIN_PACING_GAP,
    PACING_BURST,
    QUEUE_TARGET,
    STREAM_QUEUE_TARGET,
    TunnelCongestionControl,
    TunnelPacer,
)
from rustvpn.quic_datagram import OVERLOAD_QUEUED, DatagramChannel, datagram_room, jumps_the_queue
from rustvpn.quic_machine import CLOSE_PROTOCOL, Phase, QuicSessionMachine
from rustvpn.quic_transport import QuicClient, QuicServer
from rustvpn.quic_udp import (
    MAX_DATAGRAM_SIZE,
    MAX_READ_BATCH,
    READ_AHEAD,
    SHORT_DATAGRAM,
    UdpEndpoint,
    gso_batches,
    open_udp_socket,
    path_datagram_size,
    udp_payload_for_mtu,
)
from rustvpn.settings import TunnelConfig

TOKEN_RE = rb"[0-9A-Za-z]{32}"
REFERENCE_TEXT_RE = re.compile(rb"build_id=test-build;number_of_streams=2;mtu=1400;token=" + TOKEN_RE)
OUR_TEXT_RE = re.compile(REFERENCE_TEXT_RE.pattern + rb";datagram=1")
# In memory, connections keep aioquic's 1200-byte packets: 1170 bytes of packet fit a DATAGRAM frame.
ROOM = datagram_room(1200, 8)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_pki(tmp_path_factory.mktemp("pki"))


def up(*machines: QuicSessionMachine) -> Any:
    return lambda: all(m.phase is Phase.UP for m in machines)


def ended(*machines: QuicSessionMachine) -> Any:
    return lambda: all(m.phase is Phase.ENDED for m in machines)


def udp_packet(size: int, port: int = 5000) -> bytes:
    """An IPv4/UDP-looking packet of ``size`` bytes (the pump hashes flows on its ports)."""
    header = (
        bytes([0x45]) + bytes(8) + bytes([17]) + bytes(10) + port.to_bytes(2, "big") + (port + 1).to_bytes(2, "big")
    )
    return header + bytes([size % 251]) * (size - len(header))


def send_like_the_pump(channel: PacketChannel, packets: list[bytes]) -> Drops:
    """What PacketPump does with a batch: hand it over, then count it, less what the channel
    dropped, on the channel it chose."""
    lost, lost_bytes = drops = channel.send_packets(packets)
    channel.counters.packets_out += len(packets) - lost
    channel.counters.bytes_out += sum(map(len, packets)) - lost_bytes
    return drops


def up_pair(pki: dict[str, Path], **both: Any) -> tuple[Wire, QuicSessionMachine, QuicSessionMachine, Any, Any]:
    wire, client, server, client_rec, server_rec = machine_pair(
        tunnel_config(pki, "client", **both), tunnel_config(pki, "server", **both)
    )
    assert wire.run(up(client, server))
    client.bind(client_rec.sink)
    server.bind(server_rec.sink)
    return wire, client, server, client_rec, server_rec


def raw_client_up(
    pki: dict[str, Path], text: bytes, *, raw_datagrams: bool
) -> tuple[Wire, RawPeer, QuicSessionMachine, Any]:
    """Our server, and a hand-driven client that sends ``text`` as its exchange and opens both streams."""
    client_config = tunnel_config(pki, "client", datagrams=raw_datagrams)
    wire, raw, server, rec = raw_client_and_server_machine(client_config, tunnel_config(pki, "server"))
    assert wire.run(raw.handshake_done)
    raw.quic.send_stream_data(0, b"\x00")
    raw.quic.send_stream_data(4, text, end_stream=True)
    for stream_id in (8, 12):
        raw.quic.send_stream_data(stream_id, b"\x00\x00")
    assert wire.run(lambda: server.phase is Phase.UP and raw.stream_bytes(12) == b"\x00\x00")
    server.bind(rec.sink)
    return wire, raw, server, rec


def reference_text(token: str = "x" * 32) -> bytes:
    return f"build_id=test-build;number_of_streams=2;mtu=1400;token={token}".encode()


# ---------------------------------------------------------------------------------------------
# Negotiation


@pytest.mark.parametrize(
    ("client_offers", "server_offers"), [(True, True), (True, False), (False, True), (False, False)]
)
def test_datagrams_only_when_both_offer(pki: dict[str, Path], client_offers: bool, server_offers: bool) -> None:
    wire, client, server, client_rec, server_rec = machine_pair(
        tunnel_config(pki, "client", datagrams=client_offers), tunnel_config(pki, "server", datagrams=server_offers)
    )
    assert wire.run(up(client, server))
    both = client_offers and server_offers
    for machine in (client, server):
        assert machine.params is not None
        assert ("datagram" in machine.params.options) is both
        assert (machine.datagram_channel is not None) is both
        # Over streams only, the congestion controller allows a shorter queue (see quic_congestion).
        assert machine.quic._loss._cc.queue_target == (QUEUE_TARGET if both else STREAM_QUEUE_TARGET)
    # The transport parameter goes out with the offer (RFC 9221), whatever the peer does.
    assert client.quic._remote_max_datagram_frame_size == (MAX_DATAGRAM_FRAME_SIZE if server_offers else None)
    assert server.quic._remote_max_datagram_frame_size == (MAX_DATAGRAM_FRAME_SIZE if client_offers else None)
    # Packets cross either way: as DATAGRAM frames when agreed, else framed on the stream.
    client.bind(client_rec.sink)
    server.bind(server_rec.sink)
    client.channels[0].send_packets([b"ping"])
    assert wire.run(lambda: bool(server_rec.packets))
    assert server_rec.packets == [(DATAGRAMS if both else 8, b"ping")]


def test_our_client_with_a_reference_server_keeps_its_exact_bytes(pki: dict[str, Path]) -> None:
    """A server without the option (the reference) sees the reference's bytes plus one item."""
    client_config = tunnel_config(pki, "client")
    reference_config = tunnel_config(pki, "server", datagrams=False)  # no transport parameter either
    wire, client, raw, rec = client_machine_and_raw_server(client_config, reference_config)
    assert wire.run(lambda: raw.stream_finished(4))
    text = raw.stream_bytes(4)
    assert OUR_TEXT_RE.fullmatch(text)
    assert text == reference_text(client.token) + b";datagram=1"  # the only difference
    raw.quic.send_stream_data(4, reference_text(), end_stream=True)
    assert wire.run(lambda: raw.stream_bytes(8) and raw.stream_bytes(12))
    raw.quic.send_stream_data(8, b"\x00\x00")
    raw.quic.send_stream_data(12, b"\x00\x00")
    assert wire.run(up(client))
    assert client.params is not None and client.params.options == frozenset()
    assert client.datagram_channel is None
    client.bind(rec.sink)
    small, big = udp_packet(60), udp_packet(1400)
    client.channels[0].send_packets([small, big])
    assert wire.run(lambda: len(raw.stream_bytes(8)) == 2 + 2 + 60 + 2 + 1400)
    assert raw.stream_bytes(8) == b"\x00\x00" + encode_frames([small, big])
    assert raw.datagram_frames() == []
    raw.quic.send_stream_data(12, encode_frames([b"back"]))
    assert wire.run(lambda: bool(rec.packets))
    assert rec.packets == [(12, b"back")]


def test_our_server_with_a_reference_client_keeps_its_exact_bytes(pki: dict[str, Path]) -> None:
    wire, raw, server, _ = raw_client_up(pki, reference_text(), raw_datagrams=False)
    reply = raw.stream_bytes(4)
    assert OUR_TEXT_RE.fullmatch(reply) and raw.stream_finished(4)
    assert reply == reference_text(server.token) + b";datagram=1"
    assert server.datagram_channel is None
    small = udp_packet(80)
    server.channels[1].send_packets([small])
    assert wire.run(lambda: len(raw.stream_bytes(12)) == 2 + 2 + 80)
    assert raw.stream_bytes(12) == b"\x00\x00" + encode_frames([small])
    assert raw.datagram_frames() == []


# ---------------------------------------------------------------------------------------------
# Packets as DATAGRAM frames


def test_packets_cross_as_datagram_frames_both_ways(pki: dict[str, Path]) -> None:
    wire, client, server, client_rec, server_rec = up_pair(pki)
    assert client.datagram_channel is not None and server.datagram_channel is not None
    out = [udp_packet(size, port) for size, port in ((40, 1000), (ROOM, 2000), (700, 3000))]
    send_like_the_pump(client.channels[0], out[:2])
    send_like_the_pump(client.channels[1], out[2:])
    server.channels[1].send_packets([b"back"])
    assert wire.run(lambda: len(server_rec.packets) == 3 and len(client_rec.packets) == 1)
    assert server_rec.on(DATAGRAMS) == out
    assert client_rec.on(DATAGRAMS) == [b"back"]
    # Nothing but the hellos went on the streams ...
    for channel in client.channels:
        assert client.quic._streams[channel.stream_id].sender.highest_offset == 2
    # ... and the counters say which path the packets took.
    assert client.datagram_channel.counters.packets_out == 3
    assert client.datagram_channel.counters.bytes_out == sum(map(len, out))
    for channel in client.channels:
        assert (channel.counters.packets_out, channel.counters.bytes_out) == (0, 0)


def test_oversized_packets_take_the_stream_behind_which_order_is_kept(pki: dict[str, Path]) -> None:
    wire, client, _, _, server_rec = up_pair(pki)
    assert client.datagram_channel is not None
    first, too_big, after = udp_packet(100), udp_packet(ROOM + 1), udp_packet(50)
    lane = client.channels[0]
    send_like_the_pump(lane, [first, too_big, after])
    # Behind bytes the stream has not sent yet, even a small packet stays on it.
    send_like_the_pump(lane, [udp_packet(60)])
    assert lane.unsent() > 0
    assert wire.run(lambda: len(server_rec.packets) == 4)
    assert server_rec.on(DATAGRAMS) == [first]
    assert server_rec.on(8) == [too_big, after, udp_packet(60)]
    assert lane.counters.packets_out == 3 and client.datagram_channel.counters.packets_out == 1
    # Once the stream is drained, small packets are DATAGRAM frames again.
    assert wire.run(lambda: lane.unsent() == 0)
    send_like_the_pump(lane, [udp_packet(70)])
    assert wire.run(lambda: len(server_rec.packets) == 5)
    assert server_rec.packets[-1] == (DATAGRAMS, udp_packet(70))


def test_the_largest_packet_that_fits_fills_one_quic_packet(pki: dict[str, Path]) -> None:
    wire, client, server, _, server_rec = up_pair(pki)
    assert client.datagram_channel is not None and client.datagram_channel.room() == ROOM
    wire.run(seconds=0.1)  # nothing else (an ACK) waits to be sent
    client.channels[0].send_packets([udp_packet(ROOM)])
    datagrams = client.datagrams_to_send(wire.now)
    assert [len(data) for data, _ in datagrams] == [1200]
    for data, _ in datagrams:
        server.receive_datagram(data, ("198.18.0.1", 40000), wire.now)
    assert server_rec.on(DATAGRAMS) == [udp_packet(ROOM)]


def test_queue_bound_drops_instead_of_growing(pki: dict[str, Path]) -> None:
    wire, client, _, _, _ = up_pair(pki)
    channel = client.datagram_channel
    assert channel is not None
    lane = client.channels[0]
    handed = 0

    def hand(packets: list[bytes]) -> Drops:
        nonlocal handed
        handed += len(packets)
        return send_like_the_pump(lane, packets)

    wire.cut = True  # nothing is acknowledged any more: the congestion window fills and stays full
    batch = [udp_packet(1000)] * 32
    hand(batch)
    client.datagrams_to_send(wire.now)
    held = channel.queued()
    assert held > 0 and channel.counters.dropped == 0
    # The queue stands: after CoDel's interval, one large packet per arrival is dropped (a ping
    # is never the one), then more often; nothing is handed back.
    for _ in range(40):
        wire.now += 0.01
        client.datagrams_to_send(wire.now)  # what the driver does after every batch (the wire is cut)
        hand([b"ping", *batch[:3]])
    assert 1 < channel.counters.dropped < 40
    assert channel.codel.dropping and channel.counters.packets_out >= 40 + held
    # Traffic that does not slow down fills the queue to its bound, beyond which bulk packets are
    # dropped as they come: the pump is never paused (the kernel would then drop whatever came,
    # pings too), and pings and bare ACKs still get in.
    while channel.queued() < OVERLOAD_QUEUED:
        hand(batch)
    dropped, queued = channel.counters.dropped, channel.queued()
    drops = hand([*batch, icmp_echo(7), tcp_segment(b""), *batch])
    assert not lane.paused
    assert channel.counters.dropped == dropped + 2 * len(batch)
    assert drops == (2 * len(batch), 2 * len(batch) * 1000)  # for the pump to count as dropped, not sent
    assert channel.queued() == queued + 2
    assert icmp_echo(7) in client.quic._datagrams_pending and tcp_segment(b"") in client.quic._datagrams_pending
    # Once the peer is heard again the queue drains.
    wire.cut = False
    assert wire.run(lambda: channel.queued() == 0, seconds=5.0)
    # The count cap holds whatever CoDel says.
    wire.cut = True
    capped = DatagramChannel(client.quic, 1400, lambda: wire.now, max_queued=channel.queued() + 10)
    assert capped.take(batch) == (len(batch), len(batch) - 10, 1000 * (len(batch) - 10))
    assert channel.queued() == capped.max_queued and capped.counters.dropped == len(batch) - 10
    # Every packet handed over is accounted for on the datagram channel, none on the stream.
    assert lane.counters.packets_out == 0
    assert handed == channel.counters.packets_out + channel.counters.dropped


def icmp_echo(seq: int) -> bytes:
    return bytes([0x45]) + bytes(8) + bytes([1]) + bytes(10) + bytes([8, 0, 0, 0, 0, 1]) + seq.to_bytes(2, "big")


def tcp_segment(payload: bytes, *, version: int = 4) -> bytes:
    tcp = (5000).to_bytes(2, "big") + (80).to_bytes(2, "big") + bytes(8) + bytes([5 << 4, 0x10]) + bytes(6)
    if version == 6:
        return (
            bytes([0x60])
            + bytes(3)
            + (len(tcp) + len(payload)).to_bytes(2, "big")
            + bytes([6, 64])
            + bytes(32)
            + tcp
            + payload
        )
    total = (20 + len(tcp) + len(payload)).to_bytes(2, "big")
    return bytes([0x45, 0]) + total + bytes(5) + bytes([6]) + bytes(10) + tcp + payload


def test_which_packets_jump_the_queue() -> None:
    assert jumps_the_queue(icmp_echo(1))
    assert jumps_the_queue(bytes([0x60]) + bytes(5) + bytes([58, 64]) + bytes(32) + bytes(8))  # ICMPv6
    assert jumps_the_queue(tcp_segment(b"")) and jumps_the_queue(tcp_segment(b"", version=6))  # bare ACKs
    assert not jumps_the_queue(tcp_segment(b"x"))  # data: must stay in its flow's order
    assert not jumps_the_queue(tcp_segment(b"x", version=6))
    assert not jumps_the_queue(udp_packet(60))  # a DNS query: UDP keeps its order too
    assert not jumps_the_queue(icmp_echo(1) + bytes(300))  # not short
    assert not jumps_the_queue(b"\x45" + bytes(10))  # truncated


def test_pings_and_acks_go_ahead_of_the_bulk_in_their_own_order(pki: dict[str, Path]) -> None:
    wire, client, _, _, server_rec = up_pair(pki)
    channel = client.datagram_channel
    assert channel is not None
    bulk = [udp_packet(1000, port) for port in range(1000, 1040)]
    lane = client.channels[0]
    send_like_the_pump(lane, bulk[:20])
    send_like_the_pump(lane, [icmp_echo(1), bulk[20], tcp_segment(b""), icmp_echo(2)])
    send_like_the_pump(lane, [*bulk[21:], icmp_echo(3)])
    assert wire.run(lambda: len(server_rec.packets) == 44)
    got = server_rec.on(DATAGRAMS)
    urgent = [icmp_echo(1), tcp_segment(b""), icmp_echo(2), icmp_echo(3)]
    assert [p for p in got if p in urgent] == urgent  # in their own order
    assert [p for p in got if p not in urgent] == bulk  # the bulk in its order
    # Each went out long before the bulk queued ahead of it.
    assert got.index(icmp_echo(1)) < got.index(bulk[10]) and got.index(icmp_echo(3)) < got.index(bulk[30])


def test_a_lone_packet_with_nothing_queued_is_queued_at_once_and_jumpers_keep_behind_it(pki: dict[str, Path]) -> None:
    """An idle tunnel's packet skips the queue's judges (there is no queue), leaves CoDel's
    dropping state as an empty queue does, and is still first: what jumps the queue after it
    (a ping, a bare ACK) goes behind it, bulk behind both."""
    wire, client, _, _, server_rec = up_pair(pki)
    channel = client.datagram_channel
    assert channel is not None
    lane = client.channels[0]
    codel = channel.codel
    codel.should_drop(wire.now, 1.0)
    codel.should_drop(wire.now + codel.interval, 1.0)
    assert codel.dropping
    send_like_the_pump(lane, [icmp_echo(1)])
    assert list(client.quic._datagrams_pending) == [icmp_echo(1)] and not codel.dropping
    assert (channel.counters.packets_out, channel.counters.bytes_out) == (1, len(icmp_echo(1)))
    assert lane.counters.packets_out == 0  # counted on the datagram channel, not the stream
    waited = channel.queue_delay(wire.now)  # its wait counts from its arrival
    assert 0.0 <= waited < 0.1 and channel.queue_delay(wire.now + 0.5) == pytest.approx(waited + 0.5)
    bulk = [udp_packet(1000, port) for port in range(1000, 1003)]
    send_like_the_pump(lane, [bulk[0], icmp_echo(2), *bulk[1:]])
    assert list(client.quic._datagrams_pending) == [icmp_echo(1), icmp_echo(2), *bulk]
    assert wire.run(lambda: len(server_rec.packets) == 5)
    assert server_rec.on(DATAGRAMS) == [icmp_echo(1), icmp_echo(2), *bulk]
    # A long run of lone packets, each sent before the next: the record of queue arrivals (one
    # entry per batch queued, dropped once it is gone) stays at most one entry long.
    for seq in range(50):
        send_like_the_pump(lane, [icmp_echo(seq)])
        assert wire.run(lambda seq=seq: len(server_rec.packets) == 6 + seq)
        assert channel.queue_delay(wire.now) == 0.0
    assert len(channel._wait._stamps) <= 1


def test_codel_drops_once_per_interval_then_faster() -> None:
    codel = CoDel(target=0.005, interval=0.1)
    assert not codel.should_drop(0.0, 0.001)  # below target
    assert not codel.should_drop(0.0, 0.010)  # above, but not for an interval yet
    assert not codel.should_drop(0.09, 0.010)
    assert codel.should_drop(0.1, 0.010)  # the first drop
    assert not codel.should_drop(0.15, 0.010)
    drops = [t / 1000 for t in range(150, 600) if codel.should_drop(t / 1000, 0.010)]
    gaps = [b - a for a, b in itertools.pairwise(drops)]
    assert drops[0] == pytest.approx(0.2, abs=0.002)  # interval / sqrt(1) after the first
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 0.1 / 2  # interval / sqrt(count)
    assert not codel.should_drop(0.7, 0.001) and not codel.dropping  # the queue went away
    # Standing again soon after: dropping resumes near the last rate, not from the start.
    codel.should_drop(0.8, 0.010)
    assert codel.should_drop(0.9, 0.010) and codel.count > 1


def test_paths_that_shrink_drop_what_no_longer_fits(pki: dict[str, Path]) -> None:
    wire, client, _, _, _ = up_pair(pki)
    channel = client.datagram_channel
    assert channel is not None
    client.quic._max_datagram_size = 1472  # as on a 1500-byte path
    wire.cut = True
    client.channels[0].send_packets([udp_packet(1400)] * 200 + [udp_packet(500)] * 5)
    client.datagrams_to_send(wire.now)
    waiting = channel.queued()
    assert waiting > 5
    assert client.lower_datagram_size(1300) and not client.lower_datagram_size(1400)
    assert client.quic._max_datagram_size == 1300
    assert channel.room() == datagram_room(1300, 8) < 1400
    assert channel.queued() == 5  # the 500-byte packets still fit
    assert channel.counters.dropped == waiting - 5


# ---------------------------------------------------------------------------------------------
# Peers that break the rules


def test_datagram_frames_without_agreement_are_dropped_and_logged(
    pki: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "rustvpn.quic")
    # The client announces the transport parameter but leaves the option out of its text.
    wire, raw, server, rec = raw_client_up(pki, reference_text(), raw_datagrams=True)
    assert server.datagram_channel is None
    for _ in range(3):
        raw.quic.send_datagram_frame(udp_packet(100))
    raw.quic.send_stream_data(8, encode_frames([b"on the stream"]))
    assert wire.run(lambda: bool(rec.packets))
    wire.run(seconds=0.2)
    assert rec.packets == [(8, b"on the stream")]
    assert server.unexpected_datagrams == 3 and server.phase is Phase.UP
    warnings = [r.getMessage() for r in caplog.records if "DATAGRAM" in r.getMessage()]
    assert len(warnings) == 1 and "did not agree" in warnings[0]


def test_datagram_frames_before_the_exchange_are_dropped(pki: dict[str, Path]) -> None:
    client_config = tunnel_config(pki, "client")
    wire, raw, server, _ = raw_client_and_server_machine(client_config, tunnel_config(pki, "server"))
    assert wire.run(raw.handshake_done)
    raw.quic.send_datagram_frame(b"too early")
    wire.run(seconds=0.2)
    assert server.unexpected_datagrams == 1 and server.phase is Phase.EXCHANGE


def test_datagram_frames_to_a_side_that_never_offered_them_close_the_connection(pki: dict[str, Path]) -> None:
    # No transport parameter announced: aioquic treats the frame as a protocol violation (RFC 9221).
    wire, raw, server, _ = raw_client_and_server_machine(
        tunnel_config(pki, "client"), tunnel_config(pki, "server", datagrams=False)
    )
    assert wire.run(raw.handshake_done)
    raw.quic.send_datagram_frame(b"unwanted")
    assert wire.run(ended(server))
    close = raw.close_event()
    assert close is not None and "DATAGRAM" in close.reason_phrase


@pytest.mark.parametrize("size", [0, 1401])
def test_datagram_frame_of_bad_length_ends_the_session(pki: dict[str, Path], size: int) -> None:
    wire, raw, server, _ = raw_client_up(pki, reference_text() + b";datagram=1", raw_datagrams=True)
    assert server.datagram_channel is not None
    raw.quic._max_datagram_size = 1472  # room for a frame above the MTU
    raw.quic.send_datagram_frame(bytes(size))
    assert wire.run(ended(server))
    assert server.end_reason is not None and f"DATAGRAM frame of {size} bytes" in server.end_reason
    close = raw.close_event()
    assert close is not None and close.error_code == CLOSE_PROTOCOL


def test_datagram_frames_wait_for_the_pump(pki: dict[str, Path]) -> None:
    """Frames that arrive before the pump is bound are kept, as a stream's packets are."""
    wire, client, server, client_rec, _ = machine_pair(tunnel_config(pki, "client"), tunnel_config(pki, "server"))
    assert wire.run(up(client, server))
    server.channels[0].send_packets([b"early"])
    wire.run(seconds=0.1)
    client.bind(client_rec.sink)
    assert client_rec.packets == [(DATAGRAMS, b"early")]


# ---------------------------------------------------------------------------------------------
# UDP: packet sizes and GSO


def test_packet_size_from_the_route_mtu() -> None:
    assert udp_payload_for_mtu(1500, socket.AF_INET) == 1472 == MAX_DATAGRAM_SIZE
    assert udp_payload_for_mtu(1500, socket.AF_INET6) == 1452
    assert udp_payload_for_mtu(1280, socket.AF_INET6) == 1232
    assert udp_payload_for_mtu(1000, socket.AF_INET) == 1200  # QUIC's floor
    assert udp_payload_for_mtu(65536, socket.AF_INET) == 1472  # loopback: no jumbo packets
    assert path_datagram_size(("127.0.0.1", 9)) == 1472
    assert path_datagram_size(("::ffff:127.0.0.1", 9, 0, 0)) == 1472


def test_gso_batches_group_equal_sizes_to_one_address() -> None:
    a, b = ("198.18.0.1", 1), ("198.18.0.2", 1)
    sizes = [1400] * 3 + [600] + [1400] * 2 + [1400]
    datagrams = [(bytes(n), a) for n in sizes[:-1]] + [(bytes(1400), b)]
    batches = gso_batches(datagrams)
    # A shorter datagram ends a batch, a new address starts one; order is kept.
    assert [([len(d) for d in segments], addr) for segments, addr in batches] == [
        ([1400, 1400, 1400, 600], a),
        ([1400, 1400], a),
        ([1400], b),
    ]
    many = gso_batches([(bytes(100), a)] * 130)
    assert [len(segments) for segments, _ in many] == [64, 64, 2]


def test_udp_endpoint_keeps_datagram_boundaries_and_order() -> None:
    """GSO on the way out, GRO on the way in: the receiver still gets each datagram as sent."""

    async def main() -> None:
        got: list[tuple[bytes, Any]] = []
        arrived = asyncio.Event()

        def received(datagrams: list[tuple[bytes, Any]]) -> None:
            got.extend(datagrams)
            arrived.set()

        sender_sock = open_udp_socket(socket.AF_INET, ("127.0.0.1", 0))
        receiver = UdpEndpoint(open_udp_socket(socket.AF_INET, ("127.0.0.1", 0)), received)
        sender = UdpEndpoint(sender_sock, lambda _d: None)
        sent = [(bytes([i]) * 1400, receiver.address) for i in range(100)] + [(b"short", receiver.address)]
        singles = [(b"one", receiver.address), (b"two", receiver.address)]  # sent one per call
        try:
            sender.send(sent)
            for single in singles:
                sender.send([single])
            sent += singles
            async with asyncio.timeout(5):
                while len(got) < len(sent):
                    arrived.clear()
                    await arrived.wait()
            assert [data for data, _ in got] == [data for data, _ in sent]
            assert {addr for _, addr in got} == {sender.address}
        finally:
            sender.close()
            receiver.close()

    asyncio.run(main())


def test_udp_endpoint_shows_short_datagrams_read_ahead_early_and_hands_all_over_in_order() -> None:
    """Datagrams already queued in the socket (as under load): the short ones behind the first
    batch go to on_early at once, each once; on_datagrams still gets every datagram in arrival
    order, in batches of MAX_READ_BATCH (single datagrams here: no GRO)."""

    async def main() -> None:
        batches: list[list[bytes]] = []
        early: list[list[bytes]] = []
        done = asyncio.Event()
        receiver_sock = open_udp_socket(socket.AF_INET, ("127.0.0.1", 0))
        long_ones = [i.to_bytes(2, "big") * 600 for i in range(100)]
        short_ones = [b"ping %d" % i for i in range(3)]
        sent = short_ones[:1] + long_ones[:40] + short_ones[1:2] + long_ones[40:90] + short_ones[2:] + long_ones[90:]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:  # one datagram per send
            for data in sent:
                plain.sendto(data, receiver_sock.getsockname())

        def received(datagrams: list[tuple[bytes, Any]]) -> None:
            batches.append([data for data, _ in datagrams])
            if sum(map(len, batches)) >= len(sent):
                done.set()

        receiver = UdpEndpoint(receiver_sock, received, on_early=lambda d: early.append([data for data, _ in d]))
        try:
            async with asyncio.timeout(5):
                await done.wait()
        finally:
            receiver.close()
        assert len(sent) < READ_AHEAD and all(len(d) <= SHORT_DATAGRAM < len(b) for d in short_ones for b in long_ones)
        assert early == [short_ones[1:]]  # the first is in the first batch: not early
        assert [data for batch in batches for data in batch] == sent
        assert {len(batch) for batch in batches[:-1]} == {MAX_READ_BATCH}

    asyncio.run(main())


def have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


class Collector:
    def __init__(self) -> None:
        self.packets: list[tuple[str, bytes]] = []
        self.arrived = asyncio.Event()

    def deliver(self, channel: PacketChannel, packets: list[bytes]) -> None:
        self.packets.extend((getattr(channel, "kind", "?"), p) for p in packets)
        self.arrived.set()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """The pump holds the TCP packets of a batch of datagrams until its end; here all go at once."""
        yield

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.packets) < count:
                self.arrived.clear()
                await self.arrived.wait()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_loopback_session_uses_datagram_frames(pki: dict[str, Path], host: str) -> None:
    if host == "::1" and not have_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")

    async def main() -> None:
        server = QuicServer(tunnel_config(pki, "server", bind_address=host, port=0))
        await server.start()
        assert server.address is not None
        config: TunnelConfig = tunnel_config(pki, "client", server=host, port=int(server.address[1]))
        try:
            async with asyncio.timeout(10):
                client_session, server_session = await asyncio.gather(
                    QuicClient(config).connect(), server.next_session()
                )
            for session in (client_session, server_session):
                quic = session.machine.quic  # type: ignore[attr-defined]
                # The route's MTU (65536 on loopback) is capped at a 1500-byte path's payload.
                assert quic._max_datagram_size == MAX_DATAGRAM_SIZE
            sink = Collector()
            server_session.bind(sink)  # type: ignore[arg-type]
            client_session.bind(Collector())  # type: ignore[arg-type]
            assert client_session.datagram_channel.room() == MAX_DATAGRAM_SIZE - 30  # type: ignore[attr-defined]
            packets = [udp_packet(1400, port) for port in range(100, 400)]  # the MTU: every one fits
            client_session.channels[0].send_packets(packets)
            await sink.wait_for(len(packets))
            assert sorted(sink.packets) == sorted(("datagram", p) for p in packets)
            client_session.end("test done")
        finally:
            await server.close()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# Congestion control


def test_congestion_control_backs_off_on_a_standing_queue_not_on_spikes() -> None:
    cc = TunnelCongestionControl(max_datagram_size=1200)
    start = cc.congestion_window
    packet = sent_packet(0, 0.0)
    cc.on_packet_sent(packet=packet)
    cc.on_packet_acked(now=0.001, packet=packet)
    assert cc.congestion_window == start + 1200 and cc.bytes_in_flight == 0  # slow start
    # A busy event loop: spikes of 30 ms, but every interval has samples at the base RTT.
    now = 0.0
    for i in range(300):
        now += 0.001
        cc.on_rtt_measurement(now=now, rtt=0.030 if i % 3 == 0 else 0.001)
    assert cc.ssthresh is None
    # A queue that stands: every sample 10 ms above the base; reduced within two intervals.
    window, started = cc.congestion_window, now
    while cc.congestion_window == window:
        now += 0.001
        cc.on_rtt_measurement(now=now, rtt=0.011)
    assert now - started <= 2 * INTERVAL + 0.001
    assert cc.congestion_window == int(window * DELAY_REDUCTION) == cc.ssthresh


@pytest.mark.parametrize("target", [QUEUE_TARGET, STREAM_QUEUE_TARGET])
def test_congestion_control_allows_a_standing_queue_up_to_its_target(target: float) -> None:
    def standing(queue: float) -> bool:
        """Whether a queue of ``queue`` seconds above a 1 ms base, standing 5 intervals, cuts the window."""
        cc = TunnelCongestionControl(max_datagram_size=1200)
        cc.queue_target = target
        window, now = cc.congestion_window, 0.0
        cc.on_rtt_measurement(now=now, rtt=0.001)
        for _ in range(int(5 * INTERVAL / 0.001)):
            now += 0.001
            cc.on_rtt_measurement(now=now, rtt=0.001 + queue)
        return cc.congestion_window < window

    assert not standing(target * 0.9)
    assert standing(target * 1.1)


def test_congestion_control_reduces_once_per_round_of_losses() -> None:
    cc = TunnelCongestionControl(max_datagram_size=1200)
    cc.congestion_window = 100 * 1200
    packets = [sent_packet(n, 0.001 * n) for n in range(10)]
    for packet in packets:
        cc.on_packet_sent(packet=packet)
    cc.on_packets_lost(now=0.02, packets=packets[:2])
    cc.on_packets_lost(now=0.021, packets=packets[2:4])  # sent before the reduction: same event
    assert cc.congestion_window == int(100 * 1200 * LOSS_REDUCTION)
    assert cc.bytes_in_flight == 6 * 1200
    # No growth from packets sent before the reduction; growth from those sent after.
    cc.on_packet_acked(now=0.03, packet=packets[5])
    assert cc.congestion_window == int(100 * 1200 * LOSS_REDUCTION)
    window = cc.congestion_window
    # (in flight together: the window is in use)
    send_then_ack(cc, [sent_packet(n, 0.05) for n in range(100, 100 + int(1 / GROWTH_SHARE))], 0.06)
    assert cc.congestion_window == window + 1200  # one packet more per 64 acknowledged
    cc.on_persistent_congestion()
    assert cc.congestion_window == 2 * 1200


def test_the_pacer_sends_in_bursts_of_half_a_millisecond_at_the_pacing_rate() -> None:
    """At 500 Mbit/s aioquic's pacer would wake the sender every packet (23 us) once its 16-packet
    bucket is spent; ours waits at least MIN_PACING_GAP and then has that much sending time saved,
    so each wake-up sends a GSO batch. Over time the rate is the pacing rate all the same."""
    size, window, rtt = 1442, 1442 * 400, 0.009  # 400 packets per 9 ms: about 512 Mbit/s
    stock, ours = QuicPacketPacer(max_datagram_size=size), TunnelPacer(max_datagram_size=size)

    def run(pacer: QuicPacketPacer, seconds: float) -> tuple[int, int]:
        """Send whenever the pacer allows; returns packets sent and wake-ups."""
        pacer.update_rate(congestion_window=window, smoothed_rtt=rtt)
        now, sent, wakeups = 0.0, 0, 0
        while now < seconds:
            wakeups += 1
            while (at := pacer.next_send_time(now=now)) is None:
                pacer.update_after_send(now=now)
                sent += 1
            now = at
        return sent, wakeups

    stock_sent, stock_wakeups = run(stock, 0.1)
    ours_sent, ours_wakeups = run(ours, 0.1)
    nominal = 0.1 * window / rtt / size  # packets in 0.1 s at the pacing rate
    assert stock.packet_time is not None and stock.packet_time < 0.00003
    assert ours_wakeups <= 0.1 / MIN_PACING_GAP + 1 < stock_wakeups / 10
    assert nominal <= ours_sent <= nominal * 1.1 <= stock_sent  # (aioquic's rounds up more)
    assert ours_sent / ours_wakeups >= PACING_BURST / 2 / stock.packet_time  # bursts of ~0.5 ms


def test_the_pacer_changes_nothing_on_a_slow_path() -> None:
    """At a few Mbit/s a packet's time exceeds the floor: one packet per wake-up, as aioquic's."""
    ours = TunnelPacer(max_datagram_size=1200)
    ours.update_rate(congestion_window=12000, smoothed_rtt=0.05)  # 10 packets per 50 ms
    assert ours.packet_time is not None and ours.packet_time > MIN_PACING_GAP
    now = 0.0
    while ours.next_send_time(now=now) is None:  # the initial bucket
        ours.update_after_send(now=now)
    at = ours.next_send_time(now=now)
    assert at is not None and at == pytest.approx(now + ours.packet_time)


def test_both_ends_pace_with_the_tunnel_pacer(pki: dict[str, Path]) -> None:
    """aioquic makes its own pacer for every connection: ours must be the one in use, with its
    bucket once the first RTT samples have set a rate."""
    wire, client, server, _, server_rec = up_pair(pki)
    for i in range(20):
        client.datagram_channel.take([bytes([0x45]) + bytes(19) + i.to_bytes(2, "big") * 100])  # type: ignore[union-attr]
        wire.step()
    assert wire.run(lambda: len(server_rec.packets) == 20, seconds=1)
    for machine in (client, server):
        pacer = machine.quic._loss._pacer
        assert isinstance(pacer, TunnelPacer)
        assert pacer.packet_time is not None and pacer.bucket_max >= PACING_BURST
