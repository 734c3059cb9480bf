"""QUIC mode over UDP: sockets and timers around :class:`~rustvpn.quic_machine.QuicSessionMachine`
(see PROTOCOL.md, "QUIC mode").

``QuicClient`` and ``QuicServer`` own the UDP sockets (quic_udp.UdpEndpoint: batched reads, GSO
sends); each connection's machine is driven by a link that feeds it datagrams, sends its output
and runs its timer on the event loop. A link answers once per batch of datagrams read, not per
datagram, so one ACK covers them all and aioquic builds its packets once. The session logic lives
in quic_machine and quic_channel, the TLS and QUIC settings in quic_config.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import socket
from collections.abc import Callable

from aioquic._buffer import Buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection, QuicConnectionState
from aioquic.quic.packet import QuicPacketType, encode_quic_version_negotiation, pull_quic_header

from rustvpn.errors import ConfigError, RustvpnError, SessionLost, SystemSetupError, describe_error
from rustvpn.path_stats import PathFigures, quic_path
from rustvpn.pump import PacketPump
from rustvpn.quic_channel import QuicStreamChannel
from rustvpn.quic_config import CONNECTION_ID_LENGTH, create_connection, quic_configuration
from rustvpn.quic_datagram import DatagramChannel
from rustvpn.quic_machine import MachineListener, Phase, QuicSessionMachine, describe_address
from rustvpn.quic_udp import (
    Datagrams,
    UdpEndpoint,
    connected_mtu,
    open_udp_socket,
    path_datagram_size,
    udp_payload_for_mtu,
)
from rustvpn.session import Session
from rustvpn.settings import TunnelConfig

log = logging.getLogger("rustvpn.quic")

__all__ = ["QuicClient", "QuicServer", "QuicSession"]

# Client: the whole connect, a safety net above the step deadlines.
CONNECT_TIMEOUT = 30.0
# Server: connections still in the TLS handshake, beyond which new ones are dropped.
MAX_HANDSHAKES = 16
# Of which one source address may hold this many, so that one address cannot lock out the rest.
MAX_HANDSHAKES_PER_SOURCE = 4
# A timer that fires this close to its deadline counts as on time (the loop may fire a bit early).
TIMER_SLACK = 1e-4


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
        self.peer_addr: NetworkAddress | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_handle: asyncio.Handle | None = None
        self.pump: PacketPump | None = None  # the device this link's session feeds, once bound

    def _send(self, datagrams: list[tuple[bytes, NetworkAddress]]) -> None:
        raise NotImplementedError

    def receive(self, datagrams: Datagrams) -> None:
        """Feed datagrams of this connection, in arrival order; the caller calls :meth:`transmit`
        after its batch."""
        self.peer_addr = datagrams[-1][1]
        self.machine.receive_datagrams(datagrams, self._loop.time())

    def receive_early(self, data: bytes, addr: NetworkAddress) -> bool:
        """Deliver what a datagram read ahead of its turn carries, if it can go now (see
        QuicSessionMachine.receive_early); it is fed to :meth:`receive` in its turn as well."""
        return self.machine.receive_early(data, addr, self._loop.time())

    def transmit(self) -> None:
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
            self._transmit_handle = None
        datagrams = self.machine.datagrams_to_send(self._loop.time())
        if datagrams:
            self._send(datagrams)
        self._arm_timer()

    def _arm_timer(self) -> None:
        # The deadline moves with nearly every packet (ACK, loss and pacing timers). Rescheduling
        # a loop timer each time costs more than an early wake-up: only an earlier deadline
        # replaces the scheduled one; a later one is taken up when the scheduled one fires.
        timer_at = self._timer_at = self.machine.get_timer()
        if timer_at is None:
            return
        timer = self._timer
        if timer is not None:
            if timer.when() <= timer_at:
                return
            timer.cancel()
        self._timer = self._loop.call_at(timer_at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        timer_at = self._timer_at
        if timer_at is None:
            return
        now = self._loop.time()
        if now + TIMER_SLACK < timer_at:  # the deadline moved on: sleep again
            self._timer = self._loop.call_at(timer_at, self._on_timer)
            return
        # Never earlier than the deadline asked for, even if the loop's clock fires a bit early.
        self.machine.handle_timer(max(timer_at, now))
        self.transmit()

    def close(self, reason: str) -> None:
        self.machine.close(reason)
        self.wakeup()

    def path_too_big(self, size: int) -> None:
        """A send failed with EMSGSIZE: the path now carries at most ``size`` bytes per packet."""
        if self.machine.lower_datagram_size(size):
            self.wakeup()

    def bind_pump(self, pump: PacketPump) -> None:
        self.pump = pump

    # -- MachineListener ----------------------------------------------------------------------
    def wakeup(self) -> None:
        if self._transmit_handle is None:
            self._transmit_handle = self._loop.call_soon(self.transmit)

    def datagrams_queued(self) -> None:
        # The pump's packets go out now, in the same loop iteration: a trip through call_soon
        # costs a loop iteration, a good part of an idle ping's round trip.
        datagrams = self.machine.flush_datagrams(self._loop.time())
        if datagrams:
            self._send(datagrams)
            self._arm_timer()  # loss detection (and pacing) now run from these packets too

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

    @property
    def datagram_channel(self) -> DatagramChannel | None:
        """The DATAGRAM-frame path, when both peers agreed to use it (not one of ``channels``)."""
        return self.machine.datagram_channel

    def path_report(self) -> tuple[PathFigures | None, list[PathFigures | None]]:
        # One connection: its streams and DATAGRAM frames share its loss recovery.
        return quic_path(self.machine.quic._loss), [None] * len(self.channels)

    def bind(self, pump: PacketPump) -> None:
        self._link.bind_pump(pump)
        self.machine.bind(pump.deliver)

    def _shutdown(self) -> None:
        self._link.close("session ended")


_NO_BATCH = contextlib.nullcontext()


def _one_batch(pump: PacketPump | None) -> contextlib.AbstractContextManager[object]:
    """Around the handling of one batch of datagrams from the socket: the TCP packets they carry
    reach the device together, so that runs of one flow are merged (PacketPump.gather)."""
    return pump.batch() if pump is not None else _NO_BATCH


def _with_datagram_size(configuration: QuicConfiguration, size: int) -> QuicConfiguration:
    return dataclasses.replace(configuration, max_datagram_size=size)


# -- client -----------------------------------------------------------------------------------


class _ClientLink(_Link):
    def __init__(self, quic: QuicConnection, config: TunnelConfig, peer: str, sock: socket.socket) -> None:
        _Link.__init__(self, quic, config, peer)
        self.result: asyncio.Future[QuicSession] = self._loop.create_future()
        self.endpoint = UdpEndpoint(
            sock, self._datagrams_received, connected=True, on_too_big=self._too_big, on_early=self._early_received
        )

    def _datagrams_received(self, datagrams: list[tuple[bytes, NetworkAddress]]) -> None:
        with _one_batch(self.pump):
            self.receive(datagrams)
        self.transmit()

    def _early_received(self, datagrams: list[tuple[bytes, NetworkAddress]]) -> None:
        delivered = False
        with _one_batch(self.pump):
            for data, addr in datagrams:
                delivered |= self.receive_early(data, addr)
        if delivered:
            self.transmit()  # an answer the device gave at once (a ping's reply)

    def _too_big(self, _addr: NetworkAddress) -> None:
        mtu = connected_mtu(self.endpoint.sock)
        if mtu is not None:
            self.path_too_big(udp_payload_for_mtu(mtu, self.endpoint.sock.family))

    def _send(self, datagrams: list[tuple[bytes, NetworkAddress]]) -> None:
        self.endpoint.send(datagrams)

    def _established(self, session: QuicSession) -> None:
        if self.result.done():  # connect() gave up meanwhile
            session.end("connect abandoned")
        else:
            self.result.set_result(session)

    def _failed(self, error: RustvpnError) -> None:
        if not self.result.done():
            self.result.set_exception(error)

    def _gone(self) -> None:
        self.endpoint.close()


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
        try:
            # A socket of the server address's own family, so IPv6-only servers are reachable;
            # connected, so the kernel tells the route's MTU and hands us only the server's packets.
            sock = open_udp_socket(family, ("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        except OSError as exc:
            raise SessionLost(f"cannot open a UDP socket for {self.server}: {describe_error(exc)}") from None
        try:
            sock.connect(addr)
        except OSError as exc:
            sock.close()
            raise SessionLost(f"cannot reach {self.server}: {describe_error(exc)}") from None
        mtu = connected_mtu(sock)
        size = SMALLEST_MAX_DATAGRAM_SIZE if mtu is None else udp_payload_for_mtu(mtu, family)
        peer = describe_address(addr)
        quic = create_connection(_with_datagram_size(self.configuration, size))
        link = _ClientLink(quic, self.config, peer, sock)
        log.info("connecting to %s over QUIC (packets of up to %d bytes)", peer, size)
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

    def _send(self, datagrams: list[tuple[bytes, NetworkAddress]]) -> None:
        self._server._send(datagrams)

    def connection_id_issued(self, cid: bytes) -> None:
        self._server._links[cid] = self

    def bind_pump(self, pump: PacketPump) -> None:
        super().bind_pump(pump)
        self._server.pump = pump

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


class QuicServer:
    """Listens on one UDP socket and serves one session at a time.

    A second client is refused once it has authenticated, while another session is live or being
    set up: its connection is closed with the reason phrase "server busy: ...".
    """

    def __init__(self, config: TunnelConfig) -> None:
        self.config = config
        self.configuration = quic_configuration(config, is_client=False)
        self._endpoint: UdpEndpoint | None = None
        self._links: dict[bytes, _ServerLink] = {}
        self._current: _ServerLink | None = None
        self._ready: asyncio.Queue[QuicSession] = asyncio.Queue()
        self.pump: PacketPump | None = None  # the device sessions feed, once the first is bound

    @property
    def address(self) -> NetworkAddress | None:
        """The bound (host, port, ...), e.g. to learn the port when listening on port 0."""
        return None if self._endpoint is None else self._endpoint.address

    async def start(self) -> None:
        host, port = self.config.bind_address, self.config.port
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"bind_address: {host!r} is not an IPv4 or IPv6 address") from None
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        try:
            # "::" serves IPv4 too
            sock = open_udp_socket(family, (host, port), dual_stack=ip.version == 6 and ip.is_unspecified)
        except OSError as exc:
            raise SystemSetupError(f"cannot listen for QUIC on {host}:{port}: {describe_error(exc)}") from None
        self._endpoint = UdpEndpoint(
            sock, self._datagrams_received, on_too_big=self._too_big, on_early=self._early_received
        )
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
        if self._endpoint is not None:
            self._endpoint.close()

    def _admit(self, link: _ServerLink) -> str | None:
        """First authenticated client wins; the machine logs the refusal with both peers' names."""
        current = self._current
        if current is not None and current is not link and current.machine.phase is not Phase.ENDED:
            return "server busy: another session is active"
        self._current = link
        return None

    def _send(self, datagrams: list[tuple[bytes, NetworkAddress]]) -> None:
        if self._endpoint is not None:
            self._endpoint.send(datagrams)

    def _too_big(self, addr: NetworkAddress) -> None:
        for link in set(self._links.values()):
            if link.peer_addr == addr:
                link.path_too_big(path_datagram_size(addr))

    def _datagrams_received(self, datagrams: list[tuple[bytes, NetworkAddress]]) -> None:
        with _one_batch(self.pump):
            touched = self._receive(datagrams)
        for link in touched:
            link.transmit()

    def _early_received(self, datagrams: list[tuple[bytes, NetworkAddress]]) -> None:
        """Short datagrams read ahead: those of known connections deliver what they carry now."""
        delivered: dict[_ServerLink, None] = {}
        links = self._links
        with _one_batch(self.pump):
            for data, addr in datagrams:
                link = links.get(data[1 : 1 + CONNECTION_ID_LENGTH]) if data and not data[0] & 0x80 else None
                if link is not None and link.receive_early(data, addr):
                    delivered[link] = None
        for link in delivered:
            link.transmit()  # an answer the device gave at once (a ping's reply)

    def _receive(self, datagrams: list[tuple[bytes, NetworkAddress]]) -> dict[_ServerLink, None]:
        """Feed each datagram to its link, runs of one connection's short-header packets
        together; returns the links fed, in arrival order, each once."""
        touched: dict[_ServerLink, None] = {}
        links = self._links
        run: Datagrams = []
        run_link: _ServerLink | None = None
        for datagram in datagrams:
            data = datagram[0]
            # A short header (the common case) carries our connection id right after its first
            # byte: look it up without parsing the header.
            link = links.get(data[1 : 1 + CONNECTION_ID_LENGTH]) if data and not data[0] & 0x80 else None
            if link is not None:
                if link is not run_link:
                    if run_link is not None:
                        self._feed(run_link, run, touched)
                    run, run_link = [], link
                run.append(datagram)
                continue
            if run_link is not None:
                self._feed(run_link, run, touched)
                run, run_link = [], None
            link = self._long_header(data, datagram[1])
            if link is not None:
                self._feed(link, [datagram], touched)
        if run_link is not None:
            self._feed(run_link, run, touched)
        return touched

    @staticmethod
    def _feed(link: _ServerLink, datagrams: Datagrams, touched: dict[_ServerLink, None]) -> None:
        link.receive(datagrams)
        if link.machine.quic._state is QuicConnectionState.FIRSTFLIGHT:
            # A new connection whose Initial did not decrypt: garbage. It keeps no slot, no state.
            link._gone()
            return
        touched[link] = None

    def _long_header(self, data: bytes, addr: NetworkAddress) -> _ServerLink | None:
        """The link for a datagram that is not a short-header packet of a known connection."""
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CONNECTION_ID_LENGTH)
        except ValueError:
            return None
        versions = self.configuration.supported_versions
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in versions
        ):
            if len(data) >= SMALLEST_MAX_DATAGRAM_SIZE:  # RFC 9000 5.2.2: smaller ones are dropped
                negotiation = encode_quic_version_negotiation(
                    source_cid=header.destination_cid, destination_cid=header.source_cid, supported_versions=versions
                )
                self._send([(negotiation, addr)])
            return None
        link = self._links.get(header.destination_cid)
        if link is not None:
            return link
        if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            return None
        handshaking = [lk for lk in set(self._links.values()) if lk.machine.phase is Phase.HANDSHAKE]
        same_source = sum(1 for lk in handshaking if lk.peer_addr is not None and lk.peer_addr[0] == addr[0])
        if len(handshaking) >= MAX_HANDSHAKES or same_source >= MAX_HANDSHAKES_PER_SOURCE:
            log.warning("too many QUIC handshakes in progress; dropping a new one from %s", describe_address(addr))
            return None
        configuration = _with_datagram_size(self.configuration, path_datagram_size(addr))
        quic = create_connection(configuration, header.destination_cid)
        link = _ServerLink(self, quic)
        self._links[header.destination_cid] = link
        self._links[quic.host_cid] = link
        return link
