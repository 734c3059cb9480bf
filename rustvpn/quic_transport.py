"""QUIC mode over UDP: sockets and timers around :class:`~rustvpn.quic_machine.QuicSessionMachine`
(see PROTOCOL.md, "QUIC mode").

``QuicClient`` and ``QuicServer`` own the UDP sockets; each connection's machine is driven by a
link that feeds it datagrams, sends its output and runs its timer on the event loop. The session
logic lives in quic_machine and quic_channel, the TLS and QUIC settings in quic_config.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import cast

from aioquic._buffer import Buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.packet import QuicPacketType, encode_quic_version_negotiation, pull_quic_header

from rustvpn.errors import ConfigError, RustvpnError, SessionLost, SystemSetupError, describe_error
from rustvpn.pump import PacketPump
from rustvpn.quic_channel import QuicStreamChannel
from rustvpn.quic_config import CONNECTION_ID_LENGTH, create_connection, quic_configuration
from rustvpn.quic_machine import MachineListener, Phase, QuicSessionMachine, describe_address
from rustvpn.session import Session
from rustvpn.settings import TunnelConfig

log = logging.getLogger("rustvpn.quic")

__all__ = ["QuicClient", "QuicServer", "QuicSession"]

# Client: the whole connect, a safety net above the step deadlines.
CONNECT_TIMEOUT = 30.0
# Server: connections still in the TLS handshake, beyond which new ones are dropped.
MAX_HANDSHAKES = 16
UDP_BUFFER_SIZE = 4 * 1024 * 1024


class _Link(MachineListener):
    """One machine on the event loop: feeds it datagrams, sends its output, runs its timer."""

    def __init__(
        self,
        quic: QuicConnection,
        config: TunnelConfig,
        peer: str | None = None,
        admit: Callable[[QuicSessionMachine], str | None] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.machine = QuicSessionMachine(quic, config, peer=peer, listener=self, admit=admit)
        self.session: QuicSession | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_handle: asyncio.Handle | None = None

    def _send(self, data: bytes, addr: NetworkAddress) -> None:
        raise NotImplementedError

    def receive(self, data: bytes, addr: NetworkAddress) -> None:
        self.machine.receive_datagram(data, addr, self._loop.time())
        self.transmit()

    def transmit(self) -> None:
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
            self._transmit_handle = None
        for data, addr in self.machine.datagrams_to_send(self._loop.time()):
            self._send(data, addr)
        timer_at = self.machine.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._on_timer)
        self._timer_at = timer_at

    def _on_timer(self) -> None:
        # Never earlier than the deadline asked for, even if the loop's clock fires a bit early.
        now = max(self._timer_at or 0.0, self._loop.time())
        self._timer = self._timer_at = None
        self.machine.handle_timer(now)
        self.transmit()

    def close(self, reason: str) -> None:
        self.machine.close(reason)
        self.wakeup()

    # -- MachineListener ----------------------------------------------------------------------
    def wakeup(self) -> None:
        if self._transmit_handle is None:
            self._transmit_handle = self._loop.call_soon(self.transmit)

    def session_established(self, machine: QuicSessionMachine) -> None:
        self.session = QuicSession(self)
        self._established(self.session)

    def session_ended(self, machine: QuicSessionMachine, reason: str) -> None:
        if self.session is not None:
            self.session.end(reason)
        else:
            self._failed(machine.failure or SessionLost(reason))

    def connection_terminated(self, machine: QuicSessionMachine) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        self._gone()

    # -- for subclasses -----------------------------------------------------------------------
    def _established(self, session: QuicSession) -> None: ...

    def _failed(self, error: RustvpnError) -> None: ...

    def _gone(self) -> None: ...


class QuicSession(Session):
    """An established QUIC session: its data streams are the packet channels."""

    def __init__(self, link: _Link) -> None:
        machine = link.machine
        assert machine.params is not None
        super().__init__(machine.peer, machine.peer_cn, machine.params)
        self._link = link
        self.machine = machine

    @property
    def channels(self) -> list[QuicStreamChannel]:
        return self.machine.channels

    def bind(self, pump: PacketPump) -> None:
        self.machine.bind(pump.deliver)

    def _shutdown(self) -> None:
        self._link.close("session ended")


def _tune_udp_socket(sock: socket.socket) -> None:
    sock.setblocking(False)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, UDP_BUFFER_SIZE)


def _sendto(transport: asyncio.DatagramTransport | None, data: bytes, addr: NetworkAddress) -> None:
    if transport is not None and not transport.is_closing():
        transport.sendto(data, addr)


# -- client -----------------------------------------------------------------------------------


class _ClientLink(_Link, asyncio.DatagramProtocol):
    def __init__(self, quic: QuicConnection, config: TunnelConfig, peer: str) -> None:
        _Link.__init__(self, quic, config, peer)
        self.result: asyncio.Future[QuicSession] = self._loop.create_future()
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: the selector loop's datagram transport is no DatagramTransport subclass
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        self.receive(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error towards %s: %s", self.machine.peer, exc)

    def _send(self, data: bytes, addr: NetworkAddress) -> None:
        _sendto(self._transport, data, addr)

    def _established(self, session: QuicSession) -> None:
        if self.result.done():  # connect() gave up meanwhile
            session.end("connect abandoned")
        else:
            self.result.set_result(session)

    def _failed(self, error: RustvpnError) -> None:
        if not self.result.done():
            self.result.set_exception(error)

    def _gone(self) -> None:
        if self._transport is not None:
            self._transport.close()


class QuicClient:
    def __init__(self, config: TunnelConfig) -> None:
        assert config.server is not None
        self.config = config
        self.server = config.server
        self.configuration = quic_configuration(config, is_client=True)

    async def connect(self) -> Session:
        loop = asyncio.get_running_loop()
        port = self.config.port
        try:
            infos = await loop.getaddrinfo(self.server, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise SessionLost(f"cannot resolve {self.server}: {describe_error(exc)}") from None
        family, _, _, _, addr = infos[0]
        # A socket of the server address's own family, so IPv6-only servers are reachable.
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            _tune_udp_socket(sock)
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        except OSError as exc:
            sock.close()
            raise SessionLost(f"cannot open a UDP socket for {self.server}: {describe_error(exc)}") from None
        peer = describe_address(addr)
        quic = create_connection(self.configuration)
        _, link = await loop.create_datagram_endpoint(lambda: _ClientLink(quic, self.config, peer), sock=sock)
        log.info("connecting to %s over QUIC", peer)
        link.machine.connect(addr, loop.time())
        link.transmit()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                return await link.result
        except BaseException as exc:
            link.close("connect abandoned")
            if isinstance(exc, TimeoutError):
                raise SessionLost(f"session set-up with {peer} did not finish within {CONNECT_TIMEOUT:.0f} s") from None
            raise


# -- server -----------------------------------------------------------------------------------


class _ServerLink(_Link):
    def __init__(self, server: QuicServer, quic: QuicConnection) -> None:
        self._server = server
        super().__init__(quic, server.config, admit=lambda _machine: server._admit(self))

    def _send(self, data: bytes, addr: NetworkAddress) -> None:
        self._server._sendto(data, addr)

    def connection_id_issued(self, cid: bytes) -> None:
        self._server._links[cid] = self

    def connection_id_retired(self, cid: bytes) -> None:
        self._server._links.pop(cid, None)

    def _established(self, session: QuicSession) -> None:
        self._server._ready.put_nowait(session)

    def session_ended(self, machine: QuicSessionMachine, reason: str) -> None:
        super().session_ended(machine, reason)
        if self._server._current is self:
            self._server._current = None

    def _gone(self) -> None:
        links = self._server._links
        for cid in [cid for cid, link in links.items() if link is self]:
            del links[cid]


class _ServerEndpoint(asyncio.DatagramProtocol):
    def __init__(self, server: QuicServer) -> None:
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.server._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        self.server._datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error on the QUIC socket: %s", exc)


class QuicServer:
    """Listens on one UDP socket and serves one session at a time.

    A second client is refused once it has authenticated, while another session is live or being
    set up: its connection is closed with the reason phrase "server busy: ...".
    """

    def __init__(self, config: TunnelConfig) -> None:
        self.config = config
        self.configuration = quic_configuration(config, is_client=False)
        self._transport: asyncio.DatagramTransport | None = None
        self._links: dict[bytes, _ServerLink] = {}
        self._current: _ServerLink | None = None
        self._ready: asyncio.Queue[QuicSession] = asyncio.Queue()

    @property
    def address(self) -> NetworkAddress | None:
        """The bound (host, port, ...), e.g. to learn the port when listening on port 0."""
        if self._transport is None:
            return None
        sockname: NetworkAddress = self._transport.get_extra_info("sockname")
        return sockname

    async def start(self) -> None:
        host, port = self.config.bind_address, self.config.port
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        except ValueError:
            raise ConfigError(f"bind_address: {host!r} is not an IPv4 or IPv6 address") from None
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            _tune_udp_socket(sock)
            if family == socket.AF_INET6 and ipaddress.ip_address(host).is_unspecified:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "::" serves IPv4 too
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise SystemSetupError(f"cannot listen for QUIC on {host}:{port}: {describe_error(exc)}") from None
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: _ServerEndpoint(self), sock=sock)
        assert self.address is not None
        log.info("QUIC listening on %s (UDP)", describe_address(self.address))

    async def next_session(self) -> Session:
        while True:
            session = await self._ready.get()
            if not session.ended.done():
                return session

    async def close(self) -> None:
        for link in set(self._links.values()):
            link.close("server shutting down")
            link.transmit()
        self._links.clear()
        self._current = None
        if self._transport is not None:
            self._transport.close()

    def _admit(self, link: _ServerLink) -> str | None:
        """First authenticated client wins; the machine logs the refusal with both peers' names."""
        current = self._current
        if current is not None and current is not link and current.machine.phase is not Phase.ENDED:
            return "server busy: another session is active"
        self._current = link
        return None

    def _sendto(self, data: bytes, addr: NetworkAddress) -> None:
        _sendto(self._transport, data, addr)

    def _datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CONNECTION_ID_LENGTH)
        except ValueError:
            return
        versions = self.configuration.supported_versions
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in versions
        ):
            self._sendto(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid, destination_cid=header.source_cid, supported_versions=versions
                ),
                addr,
            )
            return
        link = self._links.get(header.destination_cid)
        if link is None:
            if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
                return
            handshaking = sum(1 for lk in set(self._links.values()) if lk.machine.phase is Phase.HANDSHAKE)
            if handshaking >= MAX_HANDSHAKES:
                log.warning("too many QUIC handshakes in progress; dropping a new one from %s", describe_address(addr))
                return
            quic = create_connection(self.configuration, header.destination_cid)
            link = _ServerLink(self, quic)
            self._links[header.destination_cid] = link
            self._links[quic.host_cid] = link
        link.receive(data, addr)
