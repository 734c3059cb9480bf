"""QUIC mode: the session machine driven in memory (no sockets), then a few real UDP loopbacks.

The in-memory tests speak to our machine either with another machine or with a bare QUIC
connection driven by hand (``RawPeer``), which stands in for the reference peer and lets the test
see and choose the exact stream bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from quic_helpers import (
    SERVER_ADDR,
    RawPeer,
    Wire,
    client_machine_and_raw_server,
    machine_pair,
    raw_client_and_server_machine,
    server_quic_for,
    tunnel_config,
    write_pki,
)

from rustvpn.codel import CoDel
from rustvpn.errors import PeerRejected, SessionLost
from rustvpn.framing import encode_frames
from rustvpn.pump import PacketChannel
from rustvpn.quic_channel import OVERLOAD_UNSENT, SHORT_PACKET, QuicStreamChannel
from rustvpn.quic_machine import CLOSE_PROTOCOL, Phase, QuicSessionMachine
from rustvpn.quic_transport import QuicClient, QuicServer
from rustvpn.session import Session
from rustvpn.settings import TunnelConfig

EXCHANGE_RE = re.compile(rb"build_id=test-build;number_of_streams=2;mtu=1400;token=[0-9A-Za-z]{32};datagram=1")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_pki(tmp_path_factory.mktemp("other-pki"), other_ca=True)


def both_up(*machines: QuicSessionMachine) -> Any:
    return lambda: all(m.phase is Phase.UP for m in machines)


def both_ended(*machines: QuicSessionMachine) -> Any:
    return lambda: all(m.phase is Phase.ENDED for m in machines)


def server_reply(config: TunnelConfig, **changes: Any) -> bytes:
    values = {"build_id": config.build_id, "number_of_streams": config.stream_count, "mtu": config.mtu}
    values.update(changes)
    text = f"build_id={values['build_id']};number_of_streams={values['number_of_streams']};mtu={values['mtu']}"
    return text.encode() + b";token=x"  # a token that is not ours: QUIC mode does not check it


# ---------------------------------------------------------------------------------------------
# Our client against a hand-driven server: the exact stream order and bytes


def test_client_stream_order_config_text_and_hellos(pki: dict[str, Path]) -> None:
    client_config, server_config = tunnel_config(pki, "client"), tunnel_config(pki, "server")
    wire, client, raw, _ = client_machine_and_raw_server(client_config, server_config)

    assert wire.run(lambda: raw.stream_finished(4))
    # Stream 0 carried its first keep-alive byte before stream 4 carried anything.
    ids = [e.stream_id for e in raw.stream_events()]
    assert ids[0] == 0 and raw.stream_bytes(0) == b"\x00"
    assert set(ids) == {0, 4}
    # The config text is raw (no length prefix), complete, and its stream is finished.
    assert EXCHANGE_RE.fullmatch(raw.stream_bytes(4))
    assert client.phase is Phase.EXCHANGE

    raw.quic.send_stream_data(4, server_reply(server_config), end_stream=True)
    assert wire.run(lambda: raw.stream_bytes(8) and raw.stream_bytes(12))
    # Exactly number_of_streams data streams, ids 8 and 12, each opened with 00 00 only.
    assert {e.stream_id for e in raw.stream_events()} == {0, 4, 8, 12}
    assert raw.stream_bytes(8) == raw.stream_bytes(12) == b"\x00\x00"
    assert client.phase is Phase.STREAMS

    raw.quic.send_stream_data(8, b"\x00\x00")
    wire.run(seconds=0.5)
    assert client.phase is Phase.STREAMS  # one answer of two is not enough
    raw.quic.send_stream_data(12, b"\x00\x00" + encode_frames([b"early packet"]))
    assert wire.run(both_up(client))
    assert [c.stream_id for c in client.channels] == [8, 12]
    # A packet that came with the hello is kept until the pump is bound.
    got: list[tuple[int, bytes]] = []
    client.bind(lambda ch, packets: got.extend((ch.stream_id, p) for p in packets))  # type: ignore[attr-defined]
    assert got == [(12, b"early packet")]


def test_keepalive_every_two_seconds_both_ways(pki: dict[str, Path]) -> None:
    wire, client, server, _, _ = machine_pair(tunnel_config(pki, "client"), tunnel_config(pki, "server"))
    assert wire.run(both_up(client, server))
    sent_before = {m: m.quic._streams[0].sender.highest_offset for m in (client, server)}
    wire.run(seconds=20.0)
    for machine in (client, server):
        assert machine.phase is Phase.UP  # far past the 5 s idle timeout
        sent = machine.quic._streams[0].sender.highest_offset - sent_before[machine]
        assert 9 <= sent <= 11  # one 0x00 about every 2 s


def test_dead_peer_noticed_within_ten_seconds(pki: dict[str, Path]) -> None:
    wire, client, server, client_rec, _ = machine_pair(tunnel_config(pki, "client"), tunnel_config(pki, "server"))
    assert wire.run(both_up(client, server))
    wire.cut = True
    started = wire.now
    assert wire.run(both_ended(client, server), seconds=15.0)
    assert wire.now - started <= 10.0
    assert client.end_reason is not None and "idle timeout" in client.end_reason
    assert client_rec.ended == [client.end_reason]


# ---------------------------------------------------------------------------------------------
# Two machines: exchange, frames, validation, CN checks


def test_exchange_and_frames_both_ways(pki: dict[str, Path]) -> None:
    # Stream frames only: both sides leave DATAGRAM frames out (test_quic_datagram.py has those).
    wire, client, server, client_rec, server_rec = machine_pair(
        tunnel_config(pki, "client", stream_count=3, datagrams=False),
        tunnel_config(pki, "server", stream_count=3, datagrams=False),
    )
    assert wire.run(both_up(client, server))
    assert client_rec.established == server_rec.established == 1
    assert client.params is not None and server.params is not None
    assert (client.params.number_of_streams, client.params.mtu) == (3, 1400)
    assert len(client.params.token) == len(server.params.token) == 32
    assert client.params.token == server.token and server.params.token == client.token
    assert client.peer_cn == "rustvpn-server" and server.peer_cn == "rustvpn-client"
    assert [c.stream_id for c in server.channels] == [8, 12, 16]

    client.bind(client_rec.sink)
    server.bind(server_rec.sink)
    big = bytes(range(256)) * 5 + b"\x01" * 120  # exactly the MTU, 1400 bytes
    client.channels[0].send_packets([b"one", big])
    client.channels[2].send_packets([b"three"])
    server.channels[1].send_packets([b"back", b"again"])
    assert wire.run(lambda: len(server_rec.packets) == 3 and len(client_rec.packets) == 2)
    # In order within a stream; streams are independent of each other.
    assert [p for s, p in server_rec.packets if s == 8] == [b"one", big]
    assert [p for s, p in server_rec.packets if s == 16] == [b"three"]
    assert client_rec.packets == [(12, b"back"), (12, b"again")]
    assert client.end_reason is None and server.end_reason is None


@pytest.mark.parametrize(
    ("key", "client_changes", "ours", "theirs"),
    [
        ("number_of_streams", {"stream_count": 3}, "2", "3"),
        ("mtu", {"mtu": 1300}, "1400", "1300"),
        ("build_id", {"build_id": "other-build"}, "'test-build'", "'other-build'"),
    ],
)
def test_validation_mismatch_names_key_on_both_sides(
    pki: dict[str, Path], key: str, client_changes: dict[str, Any], ours: str, theirs: str
) -> None:
    wire, client, server, _, _ = machine_pair(
        tunnel_config(pki, "client", **client_changes), tunnel_config(pki, "server")
    )
    assert wire.run(both_ended(client, server))
    # Each side names the key and both values from its own point of view ...
    assert server.end_reason is not None and client.end_reason is not None
    assert f"mismatch on {key}: ours={ours} peer={theirs}" in server.end_reason
    assert f"mismatch on {key}: ours={theirs} peer={ours}" in client.end_reason
    # ... and closes the connection with a reason phrase naming it.
    for machine in (client, server):
        close = machine.quic._close_event
        assert close is not None and close.error_code == CLOSE_PROTOCOL and key in close.reason_phrase
    assert client.failure is not None and server.failure is not None


def test_server_mismatch_replies_then_closes_with_reason(pki: dict[str, Path]) -> None:
    server_config = tunnel_config(pki, "server")
    wire, raw, server, _ = raw_client_and_server_machine(tunnel_config(pki, "client"), server_config)
    assert wire.run(raw.handshake_done)
    raw.quic.send_stream_data(0, b"\x00")
    raw.quic.send_stream_data(4, server_reply(server_config, mtu=1500), end_stream=True)
    assert wire.run(lambda: raw.close_event() is not None)
    # The server answered with its own text (so a reference client can log the mismatch too) ...
    assert EXCHANGE_RE.fullmatch(raw.stream_bytes(4)) and raw.stream_finished(4)
    # ... and then closed the connection naming the key and both values.
    close = raw.close_event()
    assert close is not None and "mismatch on mtu: ours=1400 peer=1500" in close.reason_phrase
    assert server.end_reason is not None and "mtu" in server.end_reason


def test_client_mismatch_closes_with_reason(pki: dict[str, Path]) -> None:
    client_config, server_config = tunnel_config(pki, "client"), tunnel_config(pki, "server")
    wire, client, raw, _ = client_machine_and_raw_server(client_config, server_config)
    assert wire.run(lambda: raw.stream_finished(4))
    raw.quic.send_stream_data(4, server_reply(server_config, number_of_streams=7), end_stream=True)
    assert wire.run(lambda: raw.close_event() is not None)
    close = raw.close_event()
    assert close is not None and "mismatch on number_of_streams: ours=2 peer=7" in close.reason_phrase
    assert isinstance(client.failure, Exception) and "number_of_streams" in str(client.failure)


def test_server_classifies_streams_by_id_not_arrival(pki: dict[str, Path]) -> None:
    server_config = tunnel_config(pki, "server")
    wire, raw, server, _ = raw_client_and_server_machine(tunnel_config(pki, "client"), server_config)
    assert wire.run(raw.handshake_done)
    # Data stream hellos (and a first packet) reach the server before any config byte: stream 4
    # is opened (aioquic cannot open it after 8) but carries nothing yet.
    for stream_id in (0, 4, 8, 12):
        assert raw.quic.get_next_available_stream_id() == stream_id
        raw.quic.send_stream_data(stream_id, b"")
    raw.quic.send_stream_data(0, b"\x00")
    raw.quic.send_stream_data(12, b"\x00\x00")
    raw.quic.send_stream_data(8, b"\x00\x00" + encode_frames([b"first"]))
    wire.step()
    assert set(server._early) == {8, 12}  # held, since the stream count is not known yet
    assert raw.stream_events() == [] and server.phase is Phase.EXCHANGE
    raw.quic.send_stream_data(4, server_reply(server_config), end_stream=True)
    assert wire.run(lambda: server.phase is Phase.UP and raw.stream_bytes(8) and raw.stream_bytes(12))
    assert raw.stream_bytes(8) == raw.stream_bytes(12) == b"\x00\x00"
    got: list[bytes] = []
    server.bind(lambda _ch, packets: got.extend(packets))
    assert got == [b"first"]


def test_session_comes_up_with_reordered_datagrams(pki: dict[str, Path]) -> None:
    """Every burst of datagrams arrives in reverse order, in both directions."""
    wire, client, server, _, _ = machine_pair(tunnel_config(pki, "client"), tunnel_config(pki, "server"))
    wire.client_filter = wire.server_filter = lambda datagrams: list(reversed(datagrams))
    assert wire.run(both_up(client, server))


@pytest.mark.parametrize("length", [0, 1401])
def test_bad_frame_length_ends_session(pki: dict[str, Path], length: int) -> None:
    wire, client, server, _, server_rec = machine_pair(tunnel_config(pki, "client"), tunnel_config(pki, "server"))
    assert wire.run(both_up(client, server))
    server.bind(server_rec.sink)
    client.quic.send_stream_data(12, length.to_bytes(2, "big") + b"x" * 10)
    assert wire.run(both_ended(client, server))
    assert server.end_reason is not None and f"invalid frame length {length}" in server.end_reason
    assert "stream 12" in server.end_reason
    assert client.end_reason is not None and f"invalid frame length {length}" in client.end_reason
    assert client.end_reason.startswith("peer closed:")


def test_peer_cn_mismatch_refused_by_server(pki: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "rustvpn.quic")
    wire, client, server, _, _ = machine_pair(
        tunnel_config(pki, "client"), tunnel_config(pki, "server", peer_cn="someone-else")
    )
    assert wire.run(both_ended(client, server))
    assert server.end_reason is not None and "'rustvpn-client'" in server.end_reason
    assert "'someone-else'" in server.end_reason
    assert isinstance(server.failure, PeerRejected)
    assert client.end_reason is not None and "peer certificate not accepted" in client.end_reason
    refusal = [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]
    assert refusal and "rustvpn-client" in refusal[0] and "someone-else" in refusal[0]


def test_peer_cn_mismatch_refused_by_client(pki: dict[str, Path]) -> None:
    wire, client, server, _, _ = machine_pair(
        tunnel_config(pki, "client", peer_cn="not-the-server"), tunnel_config(pki, "server")
    )
    assert wire.run(both_ended(client, server))
    assert isinstance(client.failure, PeerRejected)
    assert "'rustvpn-server'" in str(client.failure) and "'not-the-server'" in str(client.failure)
    assert server.end_reason is not None and "peer certificate not accepted" in server.end_reason


def test_peer_cn_match_accepted(pki: dict[str, Path]) -> None:
    wire, client, server, _, _ = machine_pair(
        tunnel_config(pki, "client", peer_cn="rustvpn-server"), tunnel_config(pki, "server", peer_cn="rustvpn-client")
    )
    assert wire.run(both_up(client, server))


def test_server_requires_client_cert_from_its_ca(pki: dict[str, Path], other_pki: dict[str, Path]) -> None:
    # The client trusts the server, but its own certificate comes from another CA.
    client_config = dataclasses.replace(
        tunnel_config(pki, "client"), cert=str(other_pki["client_cert"]), key=str(other_pki["client_key"])
    )
    wire, client, server, _, _ = machine_pair(client_config, tunnel_config(pki, "server"))
    assert wire.run(both_ended(client, server))
    assert isinstance(server.failure, PeerRejected) and "TLS handshake" in str(server.failure)
    assert client.end_reason is not None and client.end_reason.startswith("peer closed:")
    assert "bad_certificate" in client.end_reason


def test_server_requires_a_client_certificate(pki: dict[str, Path]) -> None:
    # A bare aioquic client that trusts the server but has no certificate to present.
    configuration = QuicConfiguration(is_client=True, server_name=SERVER_ADDR[0])
    configuration.load_verify_locations(cadata=pki["ca"].read_bytes())
    raw = RawPeer(QuicConnection(configuration=configuration))
    server_config = tunnel_config(pki, "server")
    server = QuicSessionMachine(server_quic_for(server_config, raw.quic), server_config)
    wire = Wire(raw, server)
    raw.quic.connect(SERVER_ADDR, wire.now)
    assert wire.run(lambda: server.phase is Phase.ENDED and raw.close_event() is not None)
    assert isinstance(server.failure, PeerRejected) and "certificate_required" in str(server.failure)
    close = raw.close_event()
    assert close is not None and "client certificate is required" in close.reason_phrase


def test_client_rejects_server_name_mismatch(pki: dict[str, Path]) -> None:
    client_config = tunnel_config(pki, "client", server="10.9.9.9")  # not in the server cert's SANs
    wire, client, _, _, _ = machine_pair(client_config, tunnel_config(pki, "server"))
    assert wire.run(both_ended(client))
    assert isinstance(client.failure, PeerRejected) and "10.9.9.9" in str(client.failure)


def test_admission_refusal_closes_with_reason(pki: dict[str, Path]) -> None:
    wire, client, server, _, _ = machine_pair(
        tunnel_config(pki, "client"), tunnel_config(pki, "server"), admit=lambda _m: "server busy: test"
    )
    assert wire.run(both_ended(client, server))
    assert isinstance(client.failure, SessionLost) and "server busy" in str(client.failure)


def test_stream_queue_bounded_by_drops_not_by_pausing(pki: dict[str, Path]) -> None:
    # More than the stream can send at once: bulk beyond the overload bound is dropped as it
    # comes, the pump is never paused, and every packet admitted arrives, in order.
    wire, client, server, _, server_rec = machine_pair(tunnel_config(pki, "client"), tunnel_config(pki, "server"))
    assert wire.run(both_up(client, server))
    server.bind(server_rec.sink)
    channel = client.channels[0]
    sent: list[bytes] = []
    for n in range(60):  # 8.4 MB in one go, with nothing sent in between
        batch = [n.to_bytes(2, "big") + i.to_bytes(2, "big") + b"p" * 1396 for i in range(100)]
        channel.send_packets(batch)
        sent.extend(batch)
    assert not channel.paused
    assert OVERLOAD_UNSENT <= channel.unsent() < OVERLOAD_UNSENT + 1402
    assert channel.counters.dropped == len(sent) - channel.unsent() // 1402
    admitted = sent[: channel.unsent() // 1402]  # the first ones, up to the bound
    assert wire.run(lambda: channel.unsent() == 0 and len(server_rec.packets) == len(admitted), seconds=30.0)
    assert [packet for _stream, packet in server_rec.packets] == admitted


def _lone_stream(client: QuicSessionMachine, clock: list[float], **kwargs: Any) -> QuicStreamChannel:
    """A stream channel of the client's connection that nothing sends from (the wire is not run):
    every byte written stays queued."""
    return QuicStreamChannel(
        client.quic,
        client.quic.get_next_available_stream_id(),
        1500,
        session_up=lambda: True,
        wakeup=lambda: None,
        clock=lambda: clock[0],
        **kwargs,
    )


def test_stream_queue_overload_keeps_short_packets_and_caps_all(pki: dict[str, Path]) -> None:
    wire, client, server, _, _ = machine_pair(tunnel_config(pki, "client"), tunnel_config(pki, "server"))
    assert wire.run(both_up(client, server))
    lane = _lone_stream(client, [0.0], overload=20_000, max_unsent=30_000)
    lane.send_packets([b"b" * 1000] * 30)
    assert lane.unsent() == 20 * 1002 and lane.counters.dropped == 10
    ping = b"i" * 84
    lane.send_packets([b"b" * 1000, ping, b"b" * (SHORT_PACKET + 1), b"a" * SHORT_PACKET])
    assert lane.unsent() == 20 * 1002 + 86 + SHORT_PACKET + 2 and lane.counters.dropped == 12
    while lane.unsent() + 86 <= 30_000:  # short packets fill the rest, up to the hard cap
        lane.send_packets([ping])
    lane.send_packets([ping, ping])
    assert lane.unsent() <= 30_000 + 86 and lane.counters.dropped == 13
    assert not lane.paused


def test_stream_queue_codel_drops_one_bulk_packet_when_a_queue_stands(pki: dict[str, Path]) -> None:
    wire, client, server, _, _ = machine_pair(tunnel_config(pki, "client"), tunnel_config(pki, "server"))
    assert wire.run(both_up(client, server))
    clock = [100.0]
    lane = _lone_stream(client, clock, codel=CoDel(target=0.005, interval=0.1))
    bulk, ping = b"b" * 1200, b"i" * 84
    lane.send_packets([bulk] * 10)
    assert lane.queue_delay(100.0) == 0.0
    clock[0] = 100.01  # the oldest byte has waited 10 ms, above the target: the interval starts
    lane.send_packets([bulk] * 10)
    assert lane.queue_delay(100.01) == pytest.approx(0.01) and lane.counters.dropped == 0
    clock[0] = 100.12  # it stood above the target for a whole interval: one bulk packet goes
    lane.send_packets([ping, bulk, bulk, bulk])
    assert lane.counters.dropped == 1 and lane.unsent() == 22 * 1202 + 86
    clock[0] = 100.121  # and not again until interval/sqrt(count) has passed
    lane.send_packets([bulk])
    assert lane.counters.dropped == 1


def test_local_close_ends_both(pki: dict[str, Path]) -> None:
    wire, client, server, _, _ = machine_pair(tunnel_config(pki, "client"), tunnel_config(pki, "server"))
    assert wire.run(both_up(client, server))
    client.close("operator said so")
    assert wire.run(both_ended(server))
    assert server.end_reason is not None and "peer closed: operator said so" in server.end_reason
    assert client.failure is None and server.failure is None  # losses after set-up are not failures


# ---------------------------------------------------------------------------------------------
# Real UDP sockets through QuicServer / QuicClient


class Collector:
    """Stands in for the pump: records what each session delivers."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []
        self.arrived = asyncio.Event()

    def deliver(self, channel: PacketChannel, packets: list[bytes]) -> None:
        self.packets.extend(packets)
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


def have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


async def start_server(pki: dict[str, Path], bind: str) -> tuple[QuicServer, int]:
    server = QuicServer(tunnel_config(pki, "server", bind_address=bind, port=0))
    await server.start()
    assert server.address is not None
    return server, int(server.address[1])


async def exchange_packets(a: Session, b: Session, a_sink: Collector, b_sink: Collector, tag: bytes) -> None:
    before_a, before_b = len(a_sink.packets), len(b_sink.packets)
    for i, channel in enumerate(a.channels):
        channel.send_packets([tag + b" a->b %d" % i])
    b.channels[0].send_packets([tag + b" b->a"])
    await b_sink.wait_for(before_b + len(a.channels))
    await a_sink.wait_for(before_a + 1)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_loopback_session_data_both_ways(pki: dict[str, Path], host: str) -> None:
    if host == "::1" and not have_ipv6_loopback():
        pytest.skip("no IPv6 loopback here")

    async def main() -> None:
        server, port = await start_server(pki, host)
        try:
            client = QuicClient(tunnel_config(pki, "client", server=host, port=port))
            async with asyncio.timeout(10):
                client_session, server_session = await asyncio.gather(client.connect(), server.next_session())
            assert client_session.peer_cn == "rustvpn-server" and server_session.peer_cn == "rustvpn-client"
            assert len(client_session.channels) == len(server_session.channels) == 2
            client_sink, server_sink = Collector(), Collector()
            client_session.bind(client_sink)  # type: ignore[arg-type]
            server_session.bind(server_sink)  # type: ignore[arg-type]
            await exchange_packets(client_session, server_session, client_sink, server_sink, b"hello")
            assert sorted(server_sink.packets) == [b"hello a->b 0", b"hello a->b 1"]
            assert client_sink.packets == [b"hello b->a"]
            client_session.end("test done")
            async with asyncio.timeout(5):
                reason = await server_session.ended
            assert "peer closed" in reason and "session ended" in reason
        finally:
            await server.close()

    asyncio.run(main())


def test_loopback_second_client_refused_busy(pki: dict[str, Path]) -> None:
    async def main() -> None:
        server, port = await start_server(pki, "127.0.0.1")
        config = tunnel_config(pki, "client", server="127.0.0.1", port=port)
        try:
            async with asyncio.timeout(10):
                first, first_server = await asyncio.gather(QuicClient(config).connect(), server.next_session())
            first_sink, first_server_sink = Collector(), Collector()
            first.bind(first_sink)  # type: ignore[arg-type]
            first_server.bind(first_server_sink)  # type: ignore[arg-type]

            with pytest.raises(SessionLost, match="server busy"):
                async with asyncio.timeout(10):
                    await QuicClient(config).connect()
            # The live session is undisturbed.
            assert not first.ended.done() and not first_server.ended.done()
            await exchange_packets(first, first_server, first_sink, first_server_sink, b"still")

            # Once it ends, the server takes the next client.
            first.end("done with the first")
            async with asyncio.timeout(5):
                await first_server.ended
            async with asyncio.timeout(10):
                third, third_server = await asyncio.gather(QuicClient(config).connect(), server.next_session())
            assert not third.ended.done() and not third_server.ended.done()
            third.end("done")
        finally:
            await server.close()

    asyncio.run(main())


def test_loopback_dual_stack_server_and_foreign_client_cert(
    pki: dict[str, Path], other_pki: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    if not have_ipv6_loopback():
        pytest.skip("no IPv6 here")
    caplog.set_level(logging.INFO, "rustvpn.quic")

    async def main() -> None:
        server, port = await start_server(pki, "::")  # dual stack: IPv4 clients too
        try:
            foreign = dataclasses.replace(
                tunnel_config(pki, "client", server="127.0.0.1", port=port),
                cert=str(other_pki["client_cert"]),
                key=str(other_pki["client_key"]),
            )
            with pytest.raises(PeerRejected, match="bad_certificate"):
                async with asyncio.timeout(10):
                    await QuicClient(foreign).connect()
            good = tunnel_config(pki, "client", server="127.0.0.1", port=port)
            async with asyncio.timeout(10):
                client_session, server_session = await asyncio.gather(QuicClient(good).connect(), server.next_session())
            assert server_session.peer.startswith("127.0.0.1:")
            client_session.end("done")
        finally:
            await server.close()

    asyncio.run(main())
    failures = [r.getMessage() for r in caplog.records if "set-up with" in r.getMessage()]
    assert failures and "TLS handshake" in failures[0]


def test_unreachable_server_fails_fast(pki: dict[str, Path]) -> None:
    async def main() -> None:
        # A bound UDP socket that never answers.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            port = silent.getsockname()[1]
            client = QuicClient(tunnel_config(pki, "client", server="127.0.0.1", port=port))
            with pytest.raises(SessionLost, match="no answer"):
                async with asyncio.timeout(15):
                    await client.connect()

    asyncio.run(main())
