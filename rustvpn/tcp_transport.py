"""TCP mode: a TLS control connection for the config exchange, then N token-authenticated TLS
data connections (see PROTOCOL.md, "TCP mode").
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from rustvpn.config_exchange import OPTION_OFFLOAD, ExchangeParams
from rustvpn.errors import PeerRejected, ProtocolError, RustvpnError, SessionLost, SystemSetupError, describe_error
from rustvpn.framing import MAX_CONTROL_MESSAGE
from rustvpn.offload import MAX_OFFLOAD_FRAME
from rustvpn.path_stats import PathFigures, combine
from rustvpn.pump import PacketChannel, PacketPump
from rustvpn.session import Session, check_peer_exchange, exchange_text
from rustvpn.settings import TunnelConfig
from rustvpn.tcp_channel import FramedConnection, accept_tls, connect_tls
from rustvpn.tls import check_peer_cn, client_context, describe_tls_error, server_context
from rustvpn.token import new_token, tokens_match

log = logging.getLogger("rustvpn.tcp")

# How long a peer may take for each step before a session exists (slow or silent peers).
HANDSHAKE_TIMEOUT = 10.0
# TLS handshakes in progress at once, across both planes: well above the 100 data connections
# plus control connection that one legitimate client may open at once.
MAX_HANDSHAKES = 256
# Of which one source address may hold this many: still room for a client's 100 data connections
# and its control connection at once, while a flood from one address leaves the rest for others.
MAX_HANDSHAKES_PER_SOURCE = 128

ConnectionHandler = Callable[["FramedConnection"], Coroutine[Any, Any, None]]


def data_deadline(stream_count: int) -> float:
    """All data connections must be up within max(5, 2 x N) seconds, as in the reference."""
    return float(max(5, 2 * stream_count))


async def all_or_nothing(coros: list[Coroutine[Any, Any, FramedConnection]]) -> list[FramedConnection]:
    """Run the data-connection attempts together; on the first failure cancel the rest, so no
    half-made connection outlives a failed set-up."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def packet_limit(params: ExchangeParams) -> int:
    """Largest frame of a session's data connections: an MTU-sized packet, or with offload agreed
    a virtio header and a segment of up to 64 KB."""
    return MAX_OFFLOAD_FRAME if OPTION_OFFLOAD in params.options else params.mtu


class TcpSession(Session):
    # A TLS connection's send_packets is one write to its socket: cheap, and safe from inside a
    # delivery.
    eager_pump = True

    def __init__(
        self,
        peer: str,
        peer_cn: str | None,
        params: ExchangeParams,
        control: FramedConnection,
        data: Sequence[FramedConnection],
    ) -> None:
        super().__init__(peer, peer_cn, params)
        self.control = control
        self.data = list(data)
        # Closing the control connection or any data connection ends the session.
        for conn in [control, *self.data]:
            conn.closed.add_done_callback(self._on_closed)

    def _on_closed(self, fut: asyncio.Future[str]) -> None:
        self.end(fut.result())

    @property
    def channels(self) -> Sequence[PacketChannel]:
        return self.data

    def path_report(self) -> tuple[PathFigures | None, list[PathFigures | None]]:
        # Each data connection has its own TCP state; the control connection carries no packets.
        per_connection = [conn.path_figures() for conn in self.data]
        return combine(per_connection), per_connection

    def bind(self, pump: PacketPump) -> None:
        for conn in self.data:
            conn.start_packets(packet_limit(self.params), pump.deliver)

    def _shutdown(self) -> None:
        for conn in [self.control, *self.data]:
            conn.close("session ended")


# ---------------------------------------------------------------------------------------------
# Client


class TcpClient:
    def __init__(self, config: TunnelConfig) -> None:
        assert config.server is not None
        self.config = config
        self.server = config.server
        self.context = client_context(config.ca_bundle, config.cert, config.key)

    async def _open(self, port: int, max_message: int, local_ip: str | None = None) -> FramedConnection:
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                conn = await connect_tls(
                    lambda: FramedConnection(max_message),
                    self.server,
                    port,
                    self.context,
                    server_hostname=self.server,
                    local_ip=local_ip,
                )
        except ssl.SSLError as exc:
            raise PeerRejected(f"TLS handshake with {self.server}:{port} failed: {describe_tls_error(exc)}") from None
        except (OSError, TimeoutError) as exc:
            raise SessionLost(f"cannot reach {self.server}:{port}: {describe_error(exc)}") from None
        try:
            check_peer_cn(conn.peercert, self.config.peer_cn)
        except PeerRejected:
            conn.abort("peer CN rejected")
            raise
        return conn

    async def connect(self) -> Session:
        cfg = self.config
        control = await self._open(cfg.control_port, MAX_CONTROL_MESSAGE)
        opened: list[FramedConnection] = [control]
        try:
            peer = control.describe_peer()
            log.info("control connection to %s up, exchanging config", peer)
            my_token = new_token()
            control.write_message(exchange_text(cfg, my_token))
            try:
                reply = await control.read_message(HANDSHAKE_TIMEOUT)
            except SessionLost as exc:
                raise SessionLost(
                    f"server {peer} closed the control connection before its config reply: it refused our "
                    f"certificate or is busy with another session (see its log) [{exc}]"
                ) from None
            theirs = check_peer_exchange(cfg, my_token, reply, peer, need_token=True)

            assert control.local is not None
            local_ip = control.local[0]
            max_message = max(MAX_CONTROL_MESSAGE, packet_limit(theirs))

            async def open_data(index: int) -> FramedConnection:
                conn = await self._open(cfg.data_port, max_message, local_ip)
                opened.append(conn)
                conn.write_message(theirs.token.encode("ascii", "replace"))
                answer = await conn.read_message(HANDSHAKE_TIMEOUT)
                if not tokens_match(my_token, answer):
                    raise PeerRejected(f"server answered a wrong token on data connection {index}")
                return conn

            async with asyncio.timeout(data_deadline(cfg.stream_count)):
                data = await all_or_nothing([open_data(i) for i in range(cfg.stream_count)])
            log.info("%d data connections to %s up", len(data), _hostport(self.server, cfg.data_port))
            return TcpSession(peer, check_peer_cn(control.peercert, None), theirs, control, data)
        except BaseException as exc:
            for conn in opened:
                conn.abort("session set-up failed")
            if isinstance(exc, TimeoutError):
                raise SessionLost("server did not complete the session set-up in time") from None
            raise


# ---------------------------------------------------------------------------------------------
# Server


class _Pending:
    """A session whose config exchange is done and whose data connections are arriving."""

    def __init__(self, control: FramedConnection, params: ExchangeParams, my_token: str, peer_cn: str | None) -> None:
        assert control.peer is not None
        self.control = control
        self.peer_ip = control.peer[0]
        self.params = params
        self.my_token = my_token
        self.peer_cn = peer_cn
        self.data: list[FramedConnection] = []
        # Resolved when all data connections are up; fails when set-up is abandoned.
        self.complete: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class TcpServer:
    def __init__(self, config: TunnelConfig) -> None:
        self.config = config
        self.context = server_context(config.ca_bundle, config.cert, config.key)
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: _Pending | None = None
        self._active: TcpSession | None = None
        self._ready: asyncio.Queue[TcpSession] = asyncio.Queue()
        self._handshakes = 0
        self._handshakes_from: collections.Counter[str] = collections.Counter()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        data_max = max(MAX_CONTROL_MESSAGE, cfg.mtu)
        planes = (
            ("control", cfg.control_bind_address, cfg.control_port, MAX_CONTROL_MESSAGE, self._on_control),
            ("data", cfg.data_bind_address, cfg.data_port, data_max, self._on_data),
        )
        for what, host, port, max_message, handler in planes:

            def factory(m: int = max_message, h: ConnectionHandler = handler) -> _TlsAcceptor:
                return _TlsAcceptor(self, m, h)

            try:
                server = await loop.create_server(factory, host, port, reuse_address=True, backlog=128)
            except OSError as exc:
                await self.close()
                raise SystemSetupError(f"cannot listen for {what} on {host}:{port}: {exc.strerror or exc}") from None
            self._servers.append(server)
            log.info("%s plane listening on %s", what, _hostport(host, port))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handshake(self, raw: asyncio.Transport, max_message: int, handler: ConnectionHandler) -> None:
        """TLS on an accepted TCP connection, done here (not by create_server) so that every
        failed handshake gets a log line naming the peer and the reason."""
        peer = raw.get_extra_info("peername")
        where = _hostport(peer[0], peer[1]) if peer else "?"
        conn = FramedConnection(max_message)
        try:
            await accept_tls(raw, conn, self.context, HANDSHAKE_TIMEOUT)
        except (OSError, TimeoutError, ConnectionError) as exc:
            log.warning("TLS handshake from %s failed: %s", where, describe_tls_error(exc))
            raw.abort()
            return
        finally:
            self._handshakes -= 1
            source = peer[0] if peer else "?"
            self._handshakes_from[source] -= 1
            if not self._handshakes_from[source]:
                del self._handshakes_from[source]
        await handler(conn)

    async def next_session(self) -> Session:
        session = await self._ready.get()
        self._active = session
        session.ended.add_done_callback(lambda _f: self._session_over(session))
        return session

    def _session_over(self, session: TcpSession) -> None:
        if self._active is session:
            self._active = None

    @property
    def busy(self) -> bool:
        return self._active is not None or self._pending is not None or not self._ready.empty()

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._pending is not None:
            self._fail_pending("server shutting down", self._pending)
        self._servers.clear()

    # -- control plane ------------------------------------------------------------------------
    async def _on_control(self, conn: FramedConnection) -> None:
        peer = conn.describe_peer()
        try:
            cn = check_peer_cn(conn.peercert, self.config.peer_cn)
        except PeerRejected as exc:
            log.warning("refusing control connection from %s: %s", peer, exc)
            conn.abort("peer CN rejected")
            return
        if self.busy:
            log.warning("refusing control connection from %s (CN %s): a session is already active", peer, cn)
            conn.close("busy")
            return
        try:
            request = await conn.read_message(HANDSHAKE_TIMEOUT)
            my_token = new_token()
            # Reply before validating, so the client can log the mismatch from its side too.
            conn.write_message(exchange_text(self.config, my_token))
            params = check_peer_exchange(self.config, my_token, request, peer, need_token=True)
        except (RustvpnError, TimeoutError) as exc:
            log.warning("control connection from %s refused: %s", peer, describe_error(exc))
            conn.close("exchange failed")
            return
        if self.busy:  # another client finished its exchange first
            log.warning("refusing control connection from %s: a session is already active", peer)
            conn.close("busy")
            return
        pending = _Pending(conn, params, my_token, cn)
        self._pending = pending
        log.info(
            "exchange with %s (CN %s) done; waiting for %d data connections", peer, cn or "-", params.number_of_streams
        )
        conn.closed.add_done_callback(
            lambda _f: self._fail_pending("client closed the control connection during set-up", pending)
        )
        deadline = data_deadline(params.number_of_streams)
        try:
            await asyncio.wait_for(asyncio.shield(pending.complete), deadline)
        except TimeoutError:
            self._fail_pending(
                f"only {len(pending.data)} of {params.number_of_streams} data connections "
                f"arrived within {deadline:.0f} s",
                pending,
            )
        except ProtocolError:
            pass  # already logged by _fail_pending

    def _fail_pending(self, reason: str, pending: _Pending | None = None) -> None:
        pending = pending or self._pending
        if pending is None or pending is not self._pending:
            return  # already established or already failed
        log.warning("session set-up with %s failed: %s", pending.peer_ip, reason)
        self._pending = None
        if not pending.complete.done():
            pending.complete.set_exception(ProtocolError(reason))
        for conn in [pending.control, *pending.data]:
            conn.close("set-up failed")

    # -- data plane ---------------------------------------------------------------------------
    async def _on_data(self, conn: FramedConnection) -> None:
        peer = conn.describe_peer()
        try:
            # Who it is comes first, so that a refused certificate is named as such in any state.
            check_peer_cn(conn.peercert, self.config.peer_cn)
        except PeerRejected as exc:
            log.warning("refusing data connection from %s: %s", peer, exc)
            conn.abort("peer CN rejected")
            return
        pending = self._pending
        if pending is None:
            why = "a session is already active" if self.busy else "no session is being set up"
            log.warning("refusing data connection from %s: %s", peer, why)
            conn.abort("unexpected")
            return
        if conn.peer is None or conn.peer[0] != pending.peer_ip:
            log.warning("refusing data connection from %s: not the control peer %s", peer, pending.peer_ip)
            conn.abort("wrong source")
            return
        try:
            presented = await conn.read_message(HANDSHAKE_TIMEOUT)
        except (RustvpnError, TimeoutError) as exc:
            log.warning("data connection from %s refused: %s", peer, describe_error(exc))
            conn.abort("refused")
            return
        if self._pending is not pending:
            # Its set-up ended while we read the token: completed by the others (so this one is
            # beyond the negotiated count), or failed.
            done = pending.complete.done() and pending.complete.exception() is None
            why = f"all {pending.params.number_of_streams} data connections are already up" if done else "set-up failed"
            log.warning("refusing data connection from %s: %s", peer, why)
            conn.abort("too many" if done else "set-up failed")
            return
        if not tokens_match(pending.my_token, presented):
            log.warning("data connection from %s presented a wrong token", peer)
            conn.abort("wrong token")
            self._fail_pending("a data connection presented a wrong token", pending)
            return
        # Fewer than number_of_streams are up here: the last one clears self._pending.
        # The peer may send packets as soon as it has our answer, before the session is bound.
        conn.decoder.max_length = max(MAX_CONTROL_MESSAGE, packet_limit(pending.params))
        conn.write_message(pending.params.token.encode("ascii", "replace"))
        pending.data.append(conn)
        if len(pending.data) == pending.params.number_of_streams:
            self._pending = None
            control = pending.control
            session = TcpSession(control.describe_peer(), pending.peer_cn, pending.params, control, pending.data)
            log.info("%d data connections from %s up", len(pending.data), pending.peer_ip)
            pending.complete.set_result(None)
            self._ready.put_nowait(session)


class _TlsAcceptor(asyncio.Protocol):
    """Holds an accepted TCP connection, unread, until the server upgrades it to TLS."""

    def __init__(self, server: TcpServer, max_message: int, handler: ConnectionHandler) -> None:
        self.server = server
        self.max_message = max_message
        self.handler = handler

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        server = self.server
        peer = transport.get_extra_info("peername")
        source = peer[0] if peer else "?"
        # Bounded work for connections that have not authenticated: shed the excess at once.
        if server._handshakes >= MAX_HANDSHAKES or server._handshakes_from[source] >= MAX_HANDSHAKES_PER_SOURCE:
            scope = "" if server._handshakes >= MAX_HANDSHAKES else f" from {source}"
            where = _hostport(peer[0], peer[1]) if peer else "?"
            log.warning("too many TLS handshakes in progress%s; dropping a new connection from %s", scope, where)
            transport.abort()
            return
        server._handshakes += 1
        server._handshakes_from[source] += 1
        transport.pause_reading()  # the ClientHello waits in the kernel until TLS takes over
        server._spawn(server._handshake(transport, self.max_message, self.handler))


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
