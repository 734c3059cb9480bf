"""One TLS connection of TCP mode as an asyncio protocol: length-prefixed messages while the
session is being set up, then a packet channel feeding the pump.

Both phases use the same u16 framing, so one decoder serves the whole life of the connection;
only its length limit changes (control messages: 4096 bytes; packets: the negotiated MTU).

The TLS layer is our own small transport on a non-blocking ``ssl.SSLSocket`` rather than asyncio's
SSL transport: one C call reads and decrypts, one encrypts and sends, where asyncio's passes every
record through memory BIOs, a second transport and several Python callbacks. That layering was
most of the per-packet latency of a hop (see TlsSocketTransport).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

from rustvpn.errors import FrameError, SessionLost
from rustvpn.event_loop import add_data_reader
from rustvpn.framing import MAX_CONTROL_MESSAGE, FrameDecoder, encode_frame, encode_frames
from rustvpn.path_stats import PathFigures, tcp_path
from rustvpn.pump import NO_DROPS, Drops, PacketChannel

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

    def data_received(self, data: bytes | bytearray | memoryview) -> None:
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

    def path_figures(self) -> PathFigures | None:
        """This connection's TCP path as the kernel sees it (TCP_INFO); None once closed."""
        transport = self.transport
        return None if transport is None else tcp_path(transport.get_extra_info("socket"))

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

    def send_packets(self, packets: list[bytes]) -> Drops:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(encode_frames(packets))  # one TLS write per batch
            return NO_DROPS
        self.counters.dropped += len(packets)  # the connection is going: nothing carries them
        return len(packets), sum(map(len, packets))

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


# ---------------------------------------------------------------------------------------------
# The TLS transport

# Decrypted bytes taken per wake-up before yielding to the event loop (as asyncio's 256 KB).
READ_BUDGET = 256 * 1024
MAX_RECORD = 16384  # most plaintext one TLS record carries
# How long close() waits for queued data to drain before it drops the connection.
SHUTDOWN_TIMEOUT = 10.0
_AGAIN = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError)


class TlsSocketTransport(asyncio.Transport):
    """An established TLS connection driven by the event loop's reader and writer callbacks.

    Writes go straight to ``SSLSocket.send``; whatever the kernel does not take waits in a backlog
    sent when the socket is writable, and the protocol's pause_writing/resume_writing follow that
    backlog's size against the high/low marks. OpenSSL (without partial writes) must be handed
    the very same buffer again after SSLWantWriteError, so the backlog's head is never merged with
    what was queued behind it once a send of it has been tried.
    """

    def __init__(self, sock: ssl.SSLSocket, protocol: FramedConnection) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        # The C-level SSL object behind the socket: same read/write/pending calls as SSLSocket's,
        # minus two or three Python frames of wrappers each (ragged EOFs raise SSLEOFError).
        self._ssl: Any = getattr(sock, "_sslobj", None) or sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._buffer = bytearray(READ_BUDGET)
        self._view = memoryview(self._buffer)
        self._backlog: collections.deque[bytes] = collections.deque()
        self._backlog_size = 0
        self._head_tried = False  # the backlog's head went to SSL_write: retry it as it is
        self._writing = False  # writer callback registered
        self._read_wants_write = False  # a read stopped on SSLWantWriteError: retry when writable
        self._high, self._low = 64 * 1024, 16 * 1024
        self._protocol_paused = False
        self._reading = True
        self._closing = False
        self._lost = False
        self._extra: dict[str, Any] = {
            "socket": sock,
            "peername": _address(sock.getpeername),
            "sockname": _address(sock.getsockname),
            "peercert": sock.getpeercert(),
            "sslcontext": sock.context,
            "ssl_object": sock,
            "cipher": sock.cipher(),
            "compression": sock.compression(),
        }
        add_data_reader(self._loop, self._fd, self._on_readable)
        protocol.connection_made(self)
        if sock.pending():  # anything OpenSSL already holds would never make the socket readable
            self._loop.call_soon(self._on_readable)

    # -- reading -------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        if self._lost or not self._reading:
            return  # a read scheduled with call_soon, overtaken by a close or a pause
        view, read = self._view, self._ssl.read
        got = 0
        eof = False
        error: Exception | None = None
        try:
            count = read(READ_BUDGET, view)
            while True:
                if not count:
                    eof = True  # close_notify, or the TCP stream ended
                    break
                got += count
                if count < MAX_RECORD or got >= READ_BUDGET:
                    # A short record ends one of the peer's writes: more is unlikely, and finding out
                    # costs a failed read (an SSLWantReadError, about as dear as the read itself).
                    # If more did come, the socket is still readable and we are called again.
                    break
                count = read(READ_BUDGET - got, view[got:])
        except ssl.SSLWantWriteError:
            self._want_write_to_read()  # a TLS 1.3 key update answer is waiting on a full socket
        except _AGAIN:
            pass
        except ssl.SSLEOFError:
            eof = True  # a ragged EOF (no close_notify): a closed connection like any other
        except (OSError, ssl.SSLError) as exc:
            error = exc
        if got:
            # The protocol copies what it keeps (FrameDecoder does): the buffer is reused.
            self._protocol.data_received(view[:got])
        if error is not None:
            self._fatal(error)
        elif eof and not self._lost:
            self._protocol.eof_received()
            self._force_close(None)
        elif self._reading and not self._lost and self._ssl.pending():
            self._loop.call_soon(self._on_readable)  # decrypted bytes left in OpenSSL wake no one

    def _want_write_to_read(self) -> None:
        self._read_wants_write = True
        if not self._writing:
            self._loop.add_writer(self._fd, self._on_writable)
            self._writing = True

    def pause_reading(self) -> None:
        if self._reading and not self._lost:
            self._loop.remove_reader(self._fd)
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading and not self._lost:
            add_data_reader(self._loop, self._fd, self._on_readable)
            self._reading = True
            # Decrypted bytes held by OpenSSL do not make the socket readable: look now.
            if self._ssl.pending():
                self._loop.call_soon(self._on_readable)

    def is_reading(self) -> bool:
        return self._reading and not self._lost

    # -- writing -------------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._lost or not data:
            return
        if not self._backlog:
            try:
                sent = self._ssl.write(data)
            except _AGAIN:
                sent = -1
            except (OSError, ssl.SSLError) as exc:
                self._fatal(exc)
                return
            if sent == len(data):
                return
            if sent < 0:
                self._head_tried = True
            else:
                data = data[sent:]  # SSL_write took whole records; the rest is new data to it
            self._loop.add_writer(self._fd, self._on_writable)
            self._writing = True
        self._backlog.append(bytes(data))
        self._backlog_size += len(data)
        if not self._protocol_paused and self._backlog_size > self._high:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def _on_writable(self) -> None:
        backlog, send = self._backlog, self._ssl.write
        try:
            while backlog:
                if not self._head_tried and len(backlog) > 1:
                    head = b"".join(backlog)  # one SSL_write (full records) for everything queued
                    backlog.clear()
                    backlog.append(head)
                head = backlog[0]
                self._head_tried = True
                sent = send(head)
                self._head_tried = False
                self._backlog_size -= sent
                if sent < len(head):
                    backlog[0] = head[sent:]
                else:
                    backlog.popleft()
        except _AGAIN:
            pass
        except (OSError, ssl.SSLError) as exc:
            self._fatal(exc)
            return
        if self._protocol_paused and self._backlog_size <= self._low:
            self._protocol_paused = False
            self._protocol.resume_writing()
        if not backlog:
            self._loop.remove_writer(self._fd)
            self._writing = False
            if self._closing:
                self._shutdown()
            elif self._read_wants_write:
                self._read_wants_write = False
                self._on_readable()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS connections cannot be half-closed")

    def get_write_buffer_size(self) -> int:
        return self._backlog_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low

    # -- closing -------------------------------------------------------------------------------
    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        """Send what is queued, then close_notify, then close (the peer sees a clean close)."""
        if self._closing or self._lost:
            return
        self._closing = True
        self.pause_reading()
        if not self._backlog:
            self._shutdown()
        else:  # a peer that stops reading must not hold the connection open for ever
            self._loop.call_later(SHUTDOWN_TIMEOUT, self.abort)

    def _shutdown(self) -> None:
        # One SSL_shutdown call sends our close_notify; the peer's is not waited for.
        with contextlib.suppress(OSError, ValueError, ssl.SSLError):
            self._sock.unwrap()
        self._force_close(None)

    def abort(self) -> None:
        self._force_close(None)

    def _fatal(self, exc: BaseException) -> None:
        self._force_close(exc if isinstance(exc, Exception) else None)

    def _force_close(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = self._closing = True
        if self._reading:
            self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
        self._backlog.clear()
        self._backlog_size = 0
        # The 256 KB read buffer goes now, not when the collector finds this transport (it and its
        # protocol refer to each other): the first connection may be frozen (app.settle_heap).
        self._buffer = bytearray()
        self._view = memoryview(self._buffer)
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: Exception | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._sock.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, FramedConnection)
        self._protocol = protocol


def _address(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except OSError:
        return None


async def _ready(sock: socket.socket, writable: bool) -> None:
    loop = asyncio.get_running_loop()
    fd = sock.fileno()
    done: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not done.done():
            done.set_result(None)

    (loop.add_writer if writable else loop.add_reader)(fd, wake)
    try:
        await done
    finally:
        (loop.remove_writer if writable else loop.remove_reader)(fd)


async def tls_handshake(
    sock: socket.socket, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
) -> ssl.SSLSocket:
    """Run the TLS handshake on a connected socket (which it takes over). The caller bounds the
    time; on any failure, or cancellation, the socket is closed."""
    sock.setblocking(False)
    tls = context.wrap_socket(
        sock, server_side=server_side, server_hostname=server_hostname, do_handshake_on_connect=False
    )
    try:
        while True:
            try:
                tls.do_handshake()
                return tls
            except ssl.SSLWantReadError:
                await _ready(tls, writable=False)
            except ssl.SSLWantWriteError:
                await _ready(tls, writable=True)
    except BaseException:
        tls.close()
        raise


async def connect_tls(
    factory: Callable[[], FramedConnection],
    host: str,
    port: int,
    context: ssl.SSLContext,
    *,
    server_hostname: str,
    local_ip: str | None = None,
) -> FramedConnection:
    """Client side: TCP connect (each resolved address in turn), TLS handshake, then the protocol.
    Raises OSError for an unreachable peer and ssl.SSLError for a failed handshake."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _name, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            if local_ip:
                sock.bind((local_ip, 0))
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        tls = await tls_handshake(sock, context, server_side=False, server_hostname=server_hostname)
        conn = factory()
        TlsSocketTransport(tls, conn)
        return conn
    raise error


async def accept_tls(raw: asyncio.Transport, conn: FramedConnection, context: ssl.SSLContext, timeout: float) -> None:
    """Server side: take an accepted TCP connection (its transport paused and unread) over, run
    the TLS handshake within ``timeout`` seconds, and give the connection to ``conn``."""
    transport_socket = raw.get_extra_info("socket")
    # A copy of the descriptor outlives the plain transport, which must let go of the socket.
    sock = socket.socket(fileno=os.dup(transport_socket.fileno()))
    raw.abort()
    try:
        async with asyncio.timeout(timeout):
            tls = await tls_handshake(sock, context, server_side=True)
    except TimeoutError:
        raise TimeoutError(f"no handshake within {timeout:g} s") from None
    TlsSocketTransport(tls, conn)
