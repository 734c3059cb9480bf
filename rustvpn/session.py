"""The session engine shared by both transports.

A transport knows how to produce an established :class:`Session` (TLS/QUIC handshake, config
exchange, N packet channels). Everything after that is the same story in both modes and lives
here: attach the channels to the pump, wait until the session ends, tear it down, and then
reconnect (client) or go back to listening (server). The TUN device and its routes outlive
every session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence

from rustvpn import events
from rustvpn.config_exchange import OPTION_OFFLOAD, ExchangeParams, format_exchange, parse_exchange, validate_exchange
from rustvpn.errors import ConfigError, RustvpnError, describe_error
from rustvpn.log_setup import CONTEXT
from rustvpn.path_stats import PathFigures
from rustvpn.pump import PacketChannel, PacketPump
from rustvpn.settings import TunnelConfig
from rustvpn.stats import TunnelState

log = logging.getLogger("rustvpn.session")

# Client retry, by failures in a row: quick at first (a restarted server listens again within a
# second; at a first deployment both ends start together, and a refused first try cost 2 s), then
# the reference peer's fixed 5 s.
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0)


def local_params(config: TunnelConfig, token: str) -> ExchangeParams:
    return ExchangeParams(config.build_id, config.stream_count, config.mtu, token, config.offered_options())


def exchange_text(config: TunnelConfig, token: str) -> bytes:
    return format_exchange(local_params(config, token))


def check_peer_exchange(
    config: TunnelConfig, token: str, data: bytes, peer: str, *, need_token: bool
) -> ExchangeParams:
    """Parse and validate the peer's exchange text; raises ExchangeError/ExchangeMismatch.

    The result's options are the ones both sides offered: the ones this session uses."""
    ours = local_params(config, token)
    theirs = validate_exchange(ours, parse_exchange(data), need_token=need_token)
    theirs = dataclasses.replace(theirs, options=theirs.options & ours.options)
    log.info("exchange with %s ok: %s", peer, theirs.describe(), extra=events.event(events.EXCHANGE_OK))
    return theirs


class Session(ABC):
    """An established session: its peer and its packet channels. Ends once, with a reason."""

    # Whether the pump may send small batches, also from inside a channel's delivery (see
    # PacketPump.attach).
    eager_pump = False

    def __init__(self, peer: str, peer_cn: str | None, params: ExchangeParams) -> None:
        self.peer = peer
        self.peer_cn = peer_cn
        self.params = params
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @property
    @abstractmethod
    def channels(self) -> Sequence[PacketChannel]: ...

    def path_report(self) -> tuple[PathFigures | None, list[PathFigures | None]]:
        """The underlay path as the transport sees it: as a whole, and per channel where each
        channel is a connection of its own (else None for each)."""
        return None, [None] * len(self.channels)

    @abstractmethod
    def bind(self, pump: PacketPump) -> None:
        """Start delivering packets from the peer into the pump."""

    @abstractmethod
    def _shutdown(self) -> None:
        """Close the transport's connections/streams (idempotent)."""

    def end(self, reason: str) -> None:
        if not self.ended.done():
            self.ended.set_result(reason)
        self._shutdown()


class TunnelEngine:
    """Runs sessions one after another on one TUN device."""

    def __init__(
        self,
        config: TunnelConfig,
        pump: PacketPump,
        state: TunnelState,
        on_change: Callable[[TunnelState], None] | None = None,
    ) -> None:
        self.config = config
        self.pump = pump
        self.state = state
        self.session: Session | None = None  # the live session, for status reports
        self._on_change = on_change

    def _set_state(self, state: str) -> None:
        self.state.state = state
        if self._on_change is not None:
            self._on_change(self.state)

    async def run_session(self, session: Session) -> str:
        state = self.state
        state.sessions += 1
        state.peer, state.peer_cn = session.peer, session.peer_cn
        state.streams = len(session.channels)
        state.session_started_at = time.monotonic()
        state.last_error = None
        CONTEXT.peer, CONTEXT.session = session.peer, secrets.token_hex(4)
        self._set_state("connected")
        log.info(
            "session up with %s (CN %s): %d streams, mtu %d, device %s, options %s",
            session.peer,
            session.peer_cn or "-",
            len(session.channels),
            session.params.mtu,
            self.config.device,
            ",".join(sorted(session.params.options)) or "none",
            extra=events.event(events.SESSION_UP),
        )
        self.session = session
        self.pump.attach(
            session.channels,
            session.params.mtu,
            offload=OPTION_OFFLOAD in session.params.options,
            eager=session.eager_pump,
        )
        session.bind(self.pump)
        started = time.monotonic()
        try:
            reason = await asyncio.shield(session.ended)
        finally:
            self.session = None
            self.pump.detach()
            session.end("local shutdown")
            state.session_started_at = None
            state.streams = 0
        log.warning(
            "session with %s lost after %.0f s: %s",
            session.peer,
            time.monotonic() - started,
            reason,
            extra=events.event(events.SESSION_LOST),
        )
        CONTEXT.peer = CONTEXT.session = ""
        state.last_error = reason
        return reason

    async def run_client(self, connect: Callable[[], Awaitable[Session]]) -> None:
        """Connect, run the session, and retry after any failure or loss, forever."""
        failures = 0
        while True:
            self._set_state("connecting")
            try:
                session = await connect()
            except ConfigError:
                raise
            except (TimeoutError, RustvpnError, OSError) as exc:
                failures += 1
                self.state.last_error = describe_error(exc)
                log.warning(
                    "connecting to %s failed: %s",
                    self.config.server,
                    self.state.last_error,
                    extra=events.event(events.CONNECT_FAILED),
                )
            else:
                failures = 0
                await self.run_session(session)
            delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
            self.state.reconnects += 1
            self.state.retry_in = delay
            self._set_state("reconnecting")
            log.info("reconnecting in %g s", delay, extra=events.event(events.RECONNECTING))
            await asyncio.sleep(delay)

    async def run_server(self, next_session: Callable[[], Awaitable[Session]]) -> None:
        """Serve one session at a time, going back to listening when it ends."""
        while True:
            self._set_state("listening")
            self.state.peer = self.state.peer_cn = None
            log.info("waiting for a peer", extra=events.event(events.LISTENING))
            session = await next_session()
            await self.run_session(session)


def describe_state(state: TunnelState) -> str:
    """One line for systemd's STATUS=: what the tunnel is doing right now."""
    if state.state == "connected":
        return f"connected to {state.peer} (CN {state.peer_cn or '-'}), {state.streams} streams"
    if state.state == "reconnecting":
        why = f" after: {state.last_error}" if state.last_error else ""
        return f"reconnecting in {state.retry_in:g} s{why}"
    if state.state == "listening":
        return "waiting for peer" + (f" (last: {state.last_error})" if state.last_error else "")
    return state.state
