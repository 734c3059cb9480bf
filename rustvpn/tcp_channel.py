"""One TLS connection of TCP mode as an asyncio protocol: length-prefixed messages while the
session is being set up, then a packet channel feeding the pump.

Both phases use the same u16 framing, so one decoder serves the whole life of the connection;
only its length limit changes (control messages: 4096 bytes; packets: the negotiated MTU).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

from rustvpn.errors import FrameError, SessionLost
from rustvpn.framing import MAX_CONTROL_MESSAGE, FrameDecoder, encode_frame, encode_frames
from rustvpn.pump import PacketChannel

log = logging.getLogger("rustvpn.tcp")

# Send-buffer marks per connection: above HIGH the pump stops reading the TUN device. Every byte
# queued here or in the kernel is delay for the next packet on this connection (a ping behind a
# bulk transfer), so both queues are kept short: the kernel keeps at most NOTSENT_LOWAT bytes not
# yet sent, and the rest waits in asyncio's buffer, where HIGH pauses the pump.
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
NOTSENT_LOWAT = 128 * 1024
# Dead-peer detection for idle or stuck connections: keepalive probes after 5 s idle, every 2 s,
# 3 misses; and unacknowledged data for 15 s ends the connection.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 5, 2, 3
USER_TIMEOUT_MS = 15_000

TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux value; Python 3.11 lacks the name

PacketSink = Callable[[PacketChannel, list[bytes]], None]


def tune_socket(sock: Any) -> None:
    """TCP_NODELAY (the reference sets it on every socket) and fast dead-peer detection."""
    if sock is None:
        return
    options = [
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT),
        (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS),
        (socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, NOTSENT_LOWAT),
    ]
    for level, name, value in options:
        with contextlib.suppress(OSError):
            sock.setsockopt(level, name, value)


class FramedConnection(asyncio.Protocol, PacketChannel):
    """A TLS connection carrying u16-length-prefixed messages, then packets."""

    def __init__(self, max_message: int = MAX_CONTROL_MESSAGE) -> None:
        PacketChannel.__init__(self)
        self._loop = asyncio.get_running_loop()
        self.decoder = FrameDecoder(max_message)
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        self.peercert: dict[str, Any] | None = None
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self._inbox: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._sink: PacketSink | None = None
        self._close_reason: str | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        tune_socket(transport.get_extra_info("socket"))
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.peer = (peer[0], peer[1]) if peer else None
        self.local = (local[0], local[1]) if local else None
        self.peercert = transport.get_extra_info("peercert")

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except FrameError as exc:
            self.abort(f"protocol error from peer: {exc}")
            return
        if not frames:
            return
        if self._sink is not None:
            self._sink(self, frames)
            return
        self._inbox.extend(frames)
        self._wake()

    def eof_received(self) -> bool | None:
        return False  # a half-closed connection is a closed one

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self._close_reason
        if reason is None:
            if exc is None:
                reason = "peer closed the connection"
            elif isinstance(exc, TimeoutError) or getattr(exc, "errno", None) == 110:
                reason = "connection timed out"
            else:
                reason = f"connection broken: {getattr(exc, 'strerror', None) or exc}"
        if self.decoder.pending and self._close_reason is None:
            reason += f" (inside a frame, {self.decoder.pending} bytes left over)"
        if not self.closed.done():
            self.closed.set_result(reason)
        self._wake()
        self.resume_writing()

    # -- set-up phase: whole messages ---------------------------------------------------------
    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read_message(self, timeout: float) -> bytes:
        """The next whole message; SessionLost if the connection closes or the time runs out."""
        async with asyncio.timeout(timeout):
            while not self._inbox:
                if self.closed.done():
                    raise SessionLost(self.closed.result())
                self._waiter = self._loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        return self._inbox.popleft()

    def write_message(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(payload, MAX_CONTROL_MESSAGE))

    # -- session phase: packets ---------------------------------------------------------------
    def start_packets(self, mtu: int, sink: PacketSink) -> None:
        """From now on every frame is an IP packet of at most ``mtu`` bytes, handed to ``sink``."""
        self.decoder.max_length = mtu
        self._sink = sink
        early = list(self._inbox)
        self._inbox.clear()
        if any(len(p) > mtu for p in early):
            self.abort(f"protocol error from peer: frame above the MTU {mtu}")
            return
        if early:
            sink(self, early)

    def send_packets(self, packets: list[bytes]) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(encode_frames(packets))  # one TLS write per batch

    # -- teardown ----------------------------------------------------------------------------
    def close(self, reason: str = "closed locally") -> None:
        if self._close_reason is None:
            self._close_reason = reason
        if self.transport is not None:
            self.transport.close()

    def abort(self, reason: str) -> None:
        if self._close_reason is None:
            self._close_reason = reason
        if self.transport is not None:
            self.transport.abort()

    def describe_peer(self) -> str:
        if self.peer is None:
            return "?"
        host, port = self.peer
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
