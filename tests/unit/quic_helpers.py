"""In-memory QUIC driving for the QUIC transport tests, in the style of aioquic's own tests:
endpoints are moved forward on a virtual clock by handing each one's datagrams to the other.

An endpoint is anything with the QuicConnection-shaped API (``receive_datagram``,
``datagrams_to_send``, ``get_timer``, ``handle_timer``): a :class:`QuicSessionMachine`, or a
:class:`RawPeer` that lets a test speak the wire protocol by hand, as the reference peer would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from aioquic.quic import events
from aioquic.quic.congestion.base import QuicCongestionControl
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.tls import Epoch

from rustvpn.pki import new_authority, write_demo_set
from rustvpn.pump import PacketChannel
from rustvpn.quic_config import create_connection, quic_configuration
from rustvpn.quic_machine import MachineListener, QuicSessionMachine
from rustvpn.settings import TunnelConfig

CLIENT_ADDR: NetworkAddress = ("198.18.0.1", 40000)
SERVER_ADDR: NetworkAddress = ("198.18.0.2", 1105)
ONE_WAY_DELAY = 0.005
DATAGRAMS = -1  # Recorder's "stream id" of packets that came as DATAGRAM frames


def udp_packet(seq: int, size: int = 200) -> bytes:
    """An IPv4/UDP-looking packet numbered ``seq`` (flows hash on its ports)."""
    body = seq.to_bytes(4, "big") * (size // 4)
    return bytes([0x45]) + bytes(8) + bytes([17]) + bytes(10) + (5000).to_bytes(2, "big") * 2 + body[: size - 24]


def write_pki(directory: Path, *, other_ca: bool = False) -> dict[str, Path]:
    names = ["127.0.0.1", "::1", SERVER_ADDR[0], "vpn.example.test"]
    ca = new_authority("other CA") if other_ca else None
    return write_demo_set(directory, names, ca=ca)


def tunnel_config(pki: dict[str, Path], role: str, **overrides: Any) -> TunnelConfig:
    side = "server" if role == "server" else "client"
    values: dict[str, Any] = {
        "transport": "quic",
        "role": role,
        "ca_bundle": str(pki["ca"]),
        "cert": str(pki[f"{side}_cert"]),
        "key": str(pki[f"{side}_key"]),
        "stream_count": 2,
        "mtu": 1400,
        "build_id": "test-build",
    }
    if role == "client":
        values["server"] = SERVER_ADDR[0]
    values.update(overrides)
    return TunnelConfig(**values)


class Endpoint(Protocol):
    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None: ...
    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...


class Recorder(MachineListener):
    """Remembers what a machine reported, and packets delivered to its channels."""

    def __init__(self) -> None:
        self.established = 0
        self.ended: list[str] = []
        self.terminated = False
        self.packets: list[tuple[int, bytes]] = []

    def session_established(self, machine: QuicSessionMachine) -> None:
        self.established += 1

    def session_ended(self, machine: QuicSessionMachine, reason: str) -> None:
        self.ended.append(reason)

    def connection_terminated(self, machine: QuicSessionMachine) -> None:
        self.terminated = True

    def sink(self, channel: PacketChannel, packets: list[bytes]) -> None:
        stream_id = getattr(channel, "stream_id", DATAGRAMS)
        self.packets.extend((stream_id, p) for p in packets)

    def on(self, stream_id: int) -> list[bytes]:
        """The packets that arrived on one data stream (or DATAGRAMS), in order."""
        return [p for s, p in self.packets if s == stream_id]


class RawPeer:
    """A bare QuicConnection (with our TLS set-up) whose events the test reads and answers by hand."""

    def __init__(self, quic: QuicConnection) -> None:
        self.quic = quic
        self.events: list[events.QuicEvent] = []

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        self.quic.receive_datagram(data, addr, now)
        self._drain()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        return self.quic.datagrams_to_send(now)

    def get_timer(self) -> float | None:
        return self.quic.get_timer()

    def handle_timer(self, now: float) -> None:
        timer = self.quic.get_timer()
        if timer is not None and now >= timer:
            self.quic.handle_timer(now)
            self._drain()

    def _drain(self) -> None:
        event = self.quic.next_event()
        while event is not None:
            self.events.append(event)
            event = self.quic.next_event()

    # -- views of what arrived ------------------------------------------------------------------
    def stream_events(self) -> list[events.StreamDataReceived]:
        return [e for e in self.events if isinstance(e, events.StreamDataReceived)]

    def stream_bytes(self, stream_id: int) -> bytes:
        return b"".join(e.data for e in self.stream_events() if e.stream_id == stream_id)

    def datagram_frames(self) -> list[bytes]:
        return [e.data for e in self.events if isinstance(e, events.DatagramFrameReceived)]

    def stream_finished(self, stream_id: int) -> bool:
        return any(e.end_stream for e in self.stream_events() if e.stream_id == stream_id)

    def handshake_done(self) -> bool:
        return any(isinstance(e, events.HandshakeCompleted) for e in self.events)

    def close_event(self) -> events.ConnectionTerminated | None:
        for e in self.events:
            if isinstance(e, events.ConnectionTerminated):
                return e
        return self.quic._close_event


@dataclasses.dataclass
class Wire:
    """A client and a server endpoint on a virtual clock, with an optional datagram filter."""

    client: Endpoint
    server: Endpoint
    now: float = 0.0
    # Called with the client's outgoing datagrams; returns what the server gets (reorder, drop).
    client_filter: Callable[[list[bytes]], list[bytes]] | None = None
    server_filter: Callable[[list[bytes]], list[bytes]] | None = None
    cut: bool = False  # True: nothing gets through any more (a dead peer)

    def _move(
        self,
        source: Endpoint,
        target: Endpoint,
        addr: NetworkAddress,
        filt: Callable[[list[bytes]], list[bytes]] | None,
    ) -> int:
        datagrams = [data for data, _ in source.datagrams_to_send(self.now)]
        if filt is not None:
            datagrams = filt(datagrams)
        if self.cut:
            return 0
        if isinstance(target, QuicSessionMachine):
            # A batch, as the transport hands over what one wake-up read from the socket.
            target.receive_datagrams([(data, addr) for data in datagrams], self.now)
        else:
            for data in datagrams:
                target.receive_datagram(data, addr, self.now)
        return len(datagrams)

    def step(self) -> int:
        moved = self._move(self.client, self.server, CLIENT_ADDR, self.client_filter)
        moved += self._move(self.server, self.client, SERVER_ADDR, self.server_filter)
        return moved

    def round_trip(self, seconds: float) -> None:
        """The client's datagrams to the server now, and the server's answer back ``seconds`` later
        (``step`` crosses both ways in one instant)."""
        self._move(self.client, self.server, CLIENT_ADDR, self.client_filter)
        self.now += seconds
        self._move(self.server, self.client, SERVER_ADDR, self.server_filter)

    def run(self, until: Callable[[], bool] = lambda: False, *, seconds: float = 5.0) -> bool:
        """Move datagrams and fire timers until ``until()`` or ``seconds`` of virtual time passed."""
        end = self.now + seconds
        while not until():
            if self.step():
                self.now += ONE_WAY_DELAY
                continue
            timers = [t for t in (self.client.get_timer(), self.server.get_timer()) if t is not None]
            if not timers or min(timers) > end:
                self.now = end
                return until()
            self.now = max(self.now, min(timers))
            for endpoint in (self.client, self.server):
                self_timer = endpoint.get_timer()
                if self_timer is not None and self_timer <= self.now:
                    endpoint.handle_timer(self.now)
        return True


def client_machine(config: TunnelConfig, listener: MachineListener | None = None) -> QuicSessionMachine:
    quic = create_connection(quic_configuration(config, is_client=True))
    return QuicSessionMachine(quic, config, listener=listener)


def server_quic_for(config: TunnelConfig, client_quic: QuicConnection) -> QuicConnection:
    return create_connection(
        quic_configuration(config, is_client=False), client_quic.original_destination_connection_id
    )


def machine_pair(
    client_config: TunnelConfig, server_config: TunnelConfig, **server_kwargs: Any
) -> tuple[Wire, QuicSessionMachine, QuicSessionMachine, Recorder, Recorder]:
    client_rec, server_rec = Recorder(), Recorder()
    client = client_machine(client_config, client_rec)
    server = QuicSessionMachine(
        server_quic_for(server_config, client.quic), server_config, listener=server_rec, **server_kwargs
    )
    wire = Wire(client, server)
    client.connect(SERVER_ADDR, wire.now)
    return wire, client, server, client_rec, server_rec


def raw_client_and_server_machine(
    client_config: TunnelConfig, server_config: TunnelConfig
) -> tuple[Wire, RawPeer, QuicSessionMachine, Recorder]:
    raw = RawPeer(create_connection(quic_configuration(client_config, is_client=True)))
    rec = Recorder()
    server = QuicSessionMachine(server_quic_for(server_config, raw.quic), server_config, listener=rec)
    wire = Wire(raw, server)
    raw.quic.connect(SERVER_ADDR, wire.now)
    return wire, raw, server, rec


def client_machine_and_raw_server(
    client_config: TunnelConfig, server_config: TunnelConfig
) -> tuple[Wire, QuicSessionMachine, RawPeer, Recorder]:
    rec = Recorder()
    client = client_machine(client_config, rec)
    raw = RawPeer(server_quic_for(server_config, client.quic))
    wire = Wire(client, raw)
    client.connect(SERVER_ADDR, wire.now)
    return wire, client, raw, rec


def sent_packet(number: int, at: float, size: int = 1200) -> QuicSentPacket:
    """A 1-RTT, ack-eliciting packet in flight, as the congestion controller is told of it."""
    return QuicSentPacket(
        epoch=Epoch.ONE_RTT,
        in_flight=True,
        is_ack_eliciting=True,
        is_crypto_packet=False,
        packet_number=number,
        packet_type=QuicPacketType.ONE_RTT,
        sent_time=at,
        sent_bytes=size,
    )


def send_then_ack(cc: QuicCongestionControl, packets: list[QuicSentPacket], acked_at: float) -> None:
    """Tell ``cc`` of ``packets`` sent (all in flight together), then of each acknowledged."""
    for packet in packets:
        cc.on_packet_sent(packet=packet)
    for packet in packets:
        cc.on_packet_acked(now=acked_at, packet=packet)
