"""A QUIC-mode client written by hand: a bare aioquic connection (rustvpn's own TLS set-up, or a
broken one) over a real UDP socket in the client namespace, driven on an asyncio loop. The test
chooses every stream and every byte; the events it gets back are kept for it to look at.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from aioquic import tls
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection

from rustvpn import DEFAULT_BUILD_ID
from rustvpn.framing import FrameDecoder, encode_frames
from rustvpn.quic_config import create_connection, quic_configuration
from rustvpn.settings import TunnelConfig
from rustvpn.token import new_token
from tests.hostile.nettools import icmp_echo, is_echo_reply, ns_socket
from tests.hostile.world import B_MTU, B_STREAMS, B_TUN_PEER, B_TUN_SERVER, CLIENT, SERVER, World

KEEPALIVE, CONFIG, FIRST_DATA = 0, 4, 8
HELLO = b"\x00\x00"


class _Tls12Only(QuicConnection):
    """A client whose ClientHello offers TLS 1.2 only (QUIC needs 1.3: the server must refuse)."""

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        self.tls._supported_versions = [tls.TLS_VERSION_1_2]


def client_quic(world: World, cert: str = "good", *, datagrams: bool = False) -> QuicConnection:
    """A client connection presenting ``cert`` ("good", a name from Pki.bad, "none" or "tls1.2")."""
    pki = world.pki
    if cert in ("none", "tls1.2"):
        configuration = QuicConfiguration(is_client=True, server_name=SERVER, idle_timeout=5.0, connection_id_length=8)
        configuration.load_verify_locations(cadata=pki.ca.read_bytes())
        if cert == "tls1.2":
            configuration.load_cert_chain(str(pki.client_cert), str(pki.client_key))
            return _Tls12Only(configuration=configuration)
        return QuicConnection(configuration=configuration)
    cert_path, key_path = pki.client(cert)
    config = TunnelConfig(
        transport="quic", role="client", ca_bundle=str(pki.ca), cert=str(cert_path), key=str(key_path),
        server=SERVER, stream_count=B_STREAMS, mtu=B_MTU, datagrams=datagrams,
    )  # fmt: skip
    return create_connection(quic_configuration(config, is_client=True))


def exchange_text(token: str, *, streams: int = B_STREAMS, mtu: int = B_MTU, datagrams: bool = False) -> bytes:
    text = f"build_id={DEFAULT_BUILD_ID};number_of_streams={streams};mtu={mtu};token={token}"
    return (text + (";datagram=1" if datagrams else "")).encode()


class QuicPeer(asyncio.DatagramProtocol):
    def __init__(self, quic: QuicConnection) -> None:
        self.quic = quic
        self.events: list[events.QuicEvent] = []
        self.token = new_token()
        self.local: tuple[str, int] = ("?", 0)
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._changed = asyncio.Event()
        self._keepalive: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, world: World, quic: QuicConnection, source: str = CLIENT, server: str = "B") -> QuicPeer:
        sock = ns_socket(world.client_ns, socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source, 0))
        sock.setblocking(False)
        peer = cls(quic)
        peer.local = sock.getsockname()
        await peer._loop.create_datagram_endpoint(lambda: peer, sock=sock)
        quic.connect((SERVER, world.ports(server)[0]), peer._loop.time())
        peer.transmit()
        return peer

    @property
    def who(self) -> str:
        """How the server names this peer in its log."""
        return f"{self.local[0]}:{self.local[1]}"

    # -- asyncio.DatagramProtocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        self.quic.receive_datagram(data, addr, self._loop.time())
        self._drain()
        self.transmit()

    # -- driving aioquic -----------------------------------------------------------------------
    def transmit(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        for data, addr in self.quic.datagrams_to_send(self._loop.time()):
            self._transport.sendto(data, addr)
        if self._timer is not None:
            self._timer.cancel()
        at = self.quic.get_timer()
        self._timer = None if at is None else self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.quic.handle_timer(self._loop.time())
        self._drain()
        self.transmit()

    def _drain(self) -> None:
        while (event := self.quic.next_event()) is not None:
            self.events.append(event)
        self._changed.set()

    async def until(self, done: Callable[[], Any], timeout: float = 10.0) -> bool:
        try:
            async with asyncio.timeout(timeout):
                while not done():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        self.quic.send_stream_data(stream_id, data, end_stream=end)
        self.transmit()

    def stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    def finish_keepalive(self) -> None:
        self.stop_keepalive()
        self.send(KEEPALIVE, b"", end=True)

    def close(self) -> None:
        self.stop_keepalive()
        self.quic.close()
        self.transmit()
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()

    # -- what arrived ----------------------------------------------------------------------------
    def handshake_done(self) -> bool:
        return any(isinstance(e, events.HandshakeCompleted) for e in self.events)

    def terminated(self) -> events.ConnectionTerminated | None:
        """The close, ours or the server's (its reason phrase says why)."""
        for event in self.events:
            if isinstance(event, events.ConnectionTerminated):
                return event
        return self.quic._close_event  # aioquic keeps a close it decided on here until it is sent

    def stream_bytes(self, stream_id: int) -> bytes:
        return b"".join(
            e.data for e in self.events if isinstance(e, events.StreamDataReceived) and e.stream_id == stream_id
        )

    def stream_finished(self, stream_id: int) -> bool:
        return any(isinstance(e, events.StreamDataReceived) and e.stream_id == stream_id and e.end_stream
                   for e in self.events)  # fmt: skip

    def packets(self) -> list[bytes]:
        """Every packet the server sent on the data streams (after their hello) or as DATAGRAMs."""
        out: list[bytes] = [e.data for e in self.events if isinstance(e, events.DatagramFrameReceived)]
        for index in range(B_STREAMS):
            data = self.stream_bytes(FIRST_DATA + 4 * index)
            if data.startswith(HELLO):
                out += FrameDecoder(0xFFFF).feed(data[2:])
        return out

    # -- the protocol, step by step ------------------------------------------------------------
    def start_keepalive(self) -> None:
        # The first byte at once: it opens stream 0, which aioquic refuses once stream 4 exists.
        self.send(KEEPALIVE, b"\x00")

        async def beat() -> None:
            while True:
                await asyncio.sleep(2.0)
                self.send(KEEPALIVE, b"\x00")

        self._keepalive = asyncio.ensure_future(beat())

    def exchange_text(self, *, datagrams: bool = False) -> bytes:
        return exchange_text(self.token, datagrams=datagrams)

    async def exchange(self, text: bytes | None = None, *, datagrams: bool = False) -> bytes:
        """Keep-alive stream, our config text (or the test's), the server's text back."""
        assert await self.until(self.handshake_done), f"no handshake: {self.terminated()}"
        self.start_keepalive()
        self.send(CONFIG, exchange_text(self.token, datagrams=datagrams) if text is None else text, end=True)
        await self.until(lambda: self.stream_finished(CONFIG) or self.terminated())
        return self.stream_bytes(CONFIG)

    async def establish(self, *, datagrams: bool = False) -> None:
        reply = await self.exchange(datagrams=datagrams)
        assert reply.startswith(b"build_id="), f"no config reply: {self.terminated()}"
        for index in range(B_STREAMS):
            self.send(FIRST_DATA + 4 * index, HELLO)
        ids = [FIRST_DATA + 4 * i for i in range(B_STREAMS)]
        assert await self.until(lambda: all(self.stream_bytes(i)[:2] == HELLO for i in ids)), self.terminated()

    async def ping(self, seq: int, payload: bytes = b"hostile-suite ping", timeout: float = 5.0) -> bool:
        ident = 0x5257
        packet = icmp_echo(B_TUN_PEER, B_TUN_SERVER, ident, seq, payload)
        self.send(FIRST_DATA + 4 * (seq % B_STREAMS), encode_frames([packet]))
        return await self.until(lambda: any(is_echo_reply(p, ident, seq) for p in self.packets()), timeout)


def check_b_serves(world: World) -> None:
    """B is idle, and a correct client gets a session through which the server's kernel answers a ping."""
    server = world.b_server
    server.wait_state("listening", timeout=10)
    mark = server.mark()

    async def main() -> None:
        peer = await QuicPeer.open(world, client_quic(world))
        try:
            await peer.establish()
            assert await peer.ping(1), "no echo reply through a fresh session with B"
        finally:
            peer.close()

    asyncio.run(main())
    server.wait_log(r"session up with 198\.18\.0\.1:\d+", mark)
    server.wait_log(r"session with \S+ lost", mark)
    server.wait_state("listening", timeout=10)
