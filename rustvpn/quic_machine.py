"""QUIC mode's session logic, sans-IO (see PROTOCOL.md, "QUIC mode").

:class:`QuicSessionMachine` wraps one aioquic ``QuicConnection`` and has the same shape
(``receive_datagram``, ``datagrams_to_send``, ``get_timer``, ``handle_timer``), adding the
keep-alive stream, the config exchange, the data-stream hellos and the packet channels on top.
Tests drive two machines in memory by moving datagrams between them; quic_transport drives them
over UDP.

aioquic internals relied on (aioquic 1.7.2; each use is commented where it happens):

* ``tls.Context._peer_certificate``: the peer's leaf certificate, for the CN and usage checks.
* ``QuicConnection._close_event`` / ``._state``: to end a session the moment a close is decided
  (not after the 3 x PTO closing period) and to tell a close by the peer from one of our own.

DATAGRAM frames (quic_datagram.py) carry packets when both peers offered ``datagram=1``. A peer
that sends them although the exchange did not agree on them (or before it did) is not following
this protocol, but a packet too many is harmless: they are dropped, counted and logged once. (A
side that does not offer them at all does not announce the transport parameter either, so aioquic
closes the connection on such a frame, as RFC 9221 requires.)
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import logging
from collections.abc import Callable, Sequence

from aioquic import tls
from aioquic.quic import events
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from aioquic.quic.connection import NetworkAddress, QuicConnection, QuicConnectionState
from aioquic.quic.packet import QuicErrorCode, QuicFrameType

from rustvpn.config_exchange import MAX_EXCHANGE_TEXT, OPTION_DATAGRAM, ExchangeParams
from rustvpn.errors import PeerRejected, ProtocolError, RustvpnError, SessionLost
from rustvpn.quic_channel import PacketSink, QuicStreamChannel
from rustvpn.quic_config import IDLE_TIMEOUT, check_peer_certificate
from rustvpn.quic_congestion import STREAM_QUEUE_TARGET, TunnelCongestionControl
from rustvpn.quic_datagram import DatagramChannel
from rustvpn.quic_fastpath import DatagramFastPath
from rustvpn.session import check_peer_exchange, exchange_text
from rustvpn.settings import TunnelConfig
from rustvpn.token import new_token

log = logging.getLogger("rustvpn.quic")

__all__ = [
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL",
    "CLOSE_REFUSED",
    "MachineListener",
    "Phase",
    "QuicSessionMachine",
    "describe_address",
]

# Stream ids of PROTOCOL.md: all client-initiated bidirectional streams.
KEEPALIVE_STREAM = 0
CONFIG_STREAM = 4
FIRST_DATA_STREAM = 8
KEEPALIVE_BYTE = b"\x00"
# Well inside the 5 s idle timeout (quic_config.IDLE_TIMEOUT), so a live peer never idles out.
KEEPALIVE_INTERVAL = 2.0
# Every set-up step (handshake, exchange, each data stream's hello) must progress within this;
# the reference server allows 10 s per stream.
SETUP_STEP_TIMEOUT = 10.0
# Bytes a data stream may carry before the exchange has told the server how many streams exist.
MAX_EARLY_STREAM_BYTES = 64 * 1024
MAX_REASON_LENGTH = 200

# Application close codes (CONNECTION_CLOSE 0x1d). The reason phrase carries the detail.
CLOSE_NORMAL = 0x0
CLOSE_PROTOCOL = 0x1
CLOSE_REFUSED = 0x2


def describe_address(addr: NetworkAddress) -> str:
    host, port = str(addr[0]), int(addr[1])
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(host.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            host = str(ip.ipv4_mapped)  # a dual-stack socket's view of an IPv4 peer
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _describe_code(code: int) -> str:
    if _is_crypto_error(code):
        alert = code - QuicErrorCode.CRYPTO_ERROR
        try:
            return f"TLS alert {tls.AlertDescription(alert).name}"
        except ValueError:
            return f"TLS alert {alert}"
    return f"code 0x{code:x}"


def _is_crypto_error(code: int) -> bool:
    return bool(QuicErrorCode.CRYPTO_ERROR <= code < QuicErrorCode.CRYPTO_ERROR + 0x100)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON_LENGTH else text[: MAX_REASON_LENGTH - 3] + "..."


class Phase(enum.Enum):
    HANDSHAKE = "waiting for the TLS handshake"
    EXCHANGE = "waiting for the config exchange"
    STREAMS = "waiting for the data stream hellos"
    UP = "up"
    ENDED = "ended"


class MachineListener:
    """What a machine tells its driver. The defaults do nothing (enough for in-memory tests)."""

    def session_established(self, machine: QuicSessionMachine) -> None:
        """All data streams are up: ``machine.params`` and ``machine.channels`` are set."""

    def session_ended(self, machine: QuicSessionMachine, reason: str) -> None:
        """Called once, during set-up (``machine.failure`` says why) or after it."""

    def connection_terminated(self, machine: QuicSessionMachine) -> None:
        """The QUIC connection is gone (closing period over): drop its socket or routes."""

    def connection_id_issued(self, cid: bytes) -> None: ...

    def connection_id_retired(self, cid: bytes) -> None: ...

    def wakeup(self) -> None:
        """Something was queued outside receive/timer handling: call datagrams_to_send soon."""

    def datagrams_queued(self) -> None:
        """Tunnel packets were queued as DATAGRAM frames or on a data stream the short cut carries:
        send them now (``flush_datagrams``) or soon (``datagrams_to_send`` also sends them)."""
        self.wakeup()


class QuicSessionMachine:
    """One QUIC connection and the tunnel session on it, without I/O.

    Drive it like a QuicConnection: ``connect`` (client), ``receive_datagram``,
    ``datagrams_to_send`` after every call that may have queued something, ``get_timer`` /
    ``handle_timer``. Outcomes go to the listener; ``phase``, ``params``, ``channels``,
    ``end_reason`` and ``failure`` can be read at any time.

    ``admit`` (server only) is asked once the peer has authenticated: None admits it, a text
    refuses it and becomes the close reason phrase (used for "server busy").
    """

    def __init__(
        self,
        quic: QuicConnection,
        config: TunnelConfig,
        *,
        peer: str | None = None,
        listener: MachineListener | None = None,
        admit: Callable[[QuicSessionMachine], str | None] | None = None,
    ) -> None:
        self.quic = quic
        self.config = config
        self.is_client = quic.configuration.is_client
        self.peer = peer or "?"
        self.listener = listener or MachineListener()
        self._admit = admit
        self.token = new_token()  # exchanged, but not checked in QUIC mode
        self.phase = Phase.HANDSHAKE
        self.peer_cn: str | None = None
        self.params: ExchangeParams | None = None
        self.channels: list[QuicStreamChannel] = []
        self.datagram_channel: DatagramChannel | None = None  # set when both peers offered it
        self.fast_path: DatagramFastPath | None = None  # the short cut for its packets (quic_fastpath)
        self.unexpected_datagrams = 0  # DATAGRAM frames from a peer that did not agree to send them
        self.end_reason: str | None = None
        self.failure: RustvpnError | None = None
        self._peer_known = peer is not None
        self._config_in = bytearray()
        self._early: dict[int, bytearray] = {}
        self._hellos = 0
        self._deadline: float | None = None
        self._next_keepalive: float | None = None
        self._deferred_close: tuple[int, str] | None = None
        self._now = 0.0  # the latest time a caller gave us: the datagram channel's clock
        # Whether aioquic may have something of its own to send. With the short cut
        # (quic_fastpath) most packets need no call into aioquic's datagrams_to_send, which costs
        # about 20 us even when it has nothing to send; everything that can give it something to
        # send sets this: its receive and timer handling, writes on streams the short cut does
        # not carry, flow-control limits to raise, closes, ACKs received.
        self._aioquic_due = True

    # -- the QuicConnection-shaped API --------------------------------------------------------
    def connect(self, addr: NetworkAddress, now: float) -> None:
        self._now = now
        self._learn_peer(addr)
        self._deadline = now + SETUP_STEP_TIMEOUT
        self.quic.connect(addr, now=now)

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        self.receive_datagrams([(data, addr)], now)

    def receive_datagrams(self, datagrams: Sequence[tuple[bytes, NetworkAddress]], now: float) -> None:
        """Feed a batch of datagrams, in arrival order: runs of packets the short cut takes go
        through it together, anything else through aioquic, one at a time."""
        self._now = now
        fast = self.fast_path
        index, end = 0, len(datagrams)
        while index < end:
            if fast is not None and self.phase is not Phase.ENDED:
                taken, payloads, acks, stream_data = fast.receive_many(datagrams, index, now)
                if taken:
                    index += taken
                    if payloads:
                        self._datagram_frames(payloads)
                    if stream_data:
                        self._carried_stream_data(stream_data, now)
                        if not self._aioquic_due and fast.limits_due():
                            self._aioquic_due = True  # (MAX_DATA / MAX_STREAM_DATA are aioquic's frames)
                    if acks:
                        fast.apply_acks(acks, now)
                        if not self._aioquic_due:
                            # An ACK may open the window for stream data, or have it declared
                            # lost and queued again: aioquic has something to send only if a
                            # stream the short cut does not send does.
                            self._aioquic_due = fast.streams_pending()
                    continue
            data, addr = datagrams[index]
            index += 1
            self._aioquic_receive(data, addr, now)

    def _aioquic_receive(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        self._aioquic_due = True
        space = self.quic._spaces.get(tls.Epoch.ONE_RTT)
        if space is not None and space.ack_at is not None:
            # An ACK the short cut held back for a lone packet (quic_fastpath.LONE_ACK_DELAY) is
            # due as aioquic's own would be, now that a second packet has come.
            space.ack_at = min(space.ack_at, now + self.quic._ack_delay)
        self._learn_peer(addr)
        if self._deadline is None and self.phase is Phase.HANDSHAKE:
            self._deadline = now + SETUP_STEP_TIMEOUT
        self.quic.receive_datagram(data, addr, now)
        self._process(now)

    def receive_early(self, data: bytes, addr: NetworkAddress, now: float) -> bool:
        """A datagram read ahead of its turn (quic_udp.READ_AHEAD): deliver its DATAGRAM frames
        now if it is a packet of the short cut; receive_datagram() applies the rest of it in
        arrival order later. Whether anything was delivered."""
        fast = self.fast_path
        if fast is None or self.phase is not Phase.UP:
            return False
        payloads = fast.peek(data, addr)
        if not payloads:
            return False
        self._now = now
        self._datagram_frames(payloads)
        return True

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        self._now = now
        out: list[tuple[bytes, NetworkAddress]] = []
        fast = self.fast_path
        # An ACK that is due goes alone through the short cut only when aioquic has nothing to
        # send (else it rides in aioquic's packet).
        sent = fast.flush(now, ack_alone=not self._aioquic_due) if fast is not None else None
        if sent:
            out = self._to_peer(sent)
        if self._aioquic_due or sent is None:
            out += self.quic.datagrams_to_send(now)
            # Stopped by the pacer, aioquic may still hold frames of its own (stream data, flow
            # control) for when the pacing timer fires: it stays due until then.
            self._aioquic_due = self.quic._pacing_at is not None
        if self._deferred_close is not None:
            # What was queued before the failure went out in the batch above; now the close.
            code, phrase = self._deferred_close
            self._deferred_close = None
            self.quic.close(error_code=code, reason_phrase=phrase)
            out += self.quic.datagrams_to_send(now)
        return out

    def flush_datagrams(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        """Send the DATAGRAM frames or data-stream bytes just queued, through the short cut,
        without waiting for ``datagrams_to_send``; what cannot go now is left to it (the driver's
        wakeup follows)."""
        self._now = now
        sent = self.fast_path.flush(now) if self.fast_path is not None else None
        if sent is None:
            self._wake()
            return []
        return self._to_peer(sent)

    def _to_peer(self, datagrams: list[bytes]) -> list[tuple[bytes, NetworkAddress]]:
        """The short cut's packets, addressed as aioquic addresses its own: to the current path."""
        addr = self.quic._network_paths[0].addr
        if len(datagrams) == 1:  # (most often: no list comprehension, a call of its own)
            return [(datagrams[0], addr)]
        return [(datagram, addr) for datagram in datagrams]

    def _wake(self) -> None:
        self._aioquic_due = True
        self.listener.wakeup()

    def _quic_timer(self) -> float | None:
        fast = self.fast_path
        at = fast.timer() if fast is not None else None
        return self.quic.get_timer() if at is None else at

    def get_timer(self) -> float | None:
        at = self._quic_timer()
        for t in (self._deadline, self._next_keepalive):
            if t is not None and (at is None or t < at):
                at = t
        return at

    def handle_timer(self, now: float) -> None:
        self._now = now
        if not self._short_cut_timer(now):
            self._aioquic_due = True
            quic_at = self._quic_timer()
            if quic_at is not None and now >= quic_at:
                self.quic.handle_timer(now)
                self._process(now)
        if self.phase is Phase.ENDED:
            return
        if self._deadline is not None and now >= self._deadline:
            self._aioquic_due = True
            self._fail(
                SessionLost(f"session set-up timed out {self.phase.value}"),
                CLOSE_PROTOCOL,
                "session set-up timed out",
            )
            return
        if self._next_keepalive is not None and now >= self._next_keepalive:
            self._aioquic_due = True
            self.quic.send_stream_data(KEEPALIVE_STREAM, KEEPALIVE_BYTE)
            self._next_keepalive = now + KEEPALIVE_INTERVAL

    def _short_cut_timer(self, now: float) -> bool:
        """Whether all that is due now is what the short cut sends by itself: an ACK, or DATAGRAM
        frames or data-stream bytes the pacer held back. aioquic's handle_timer would then do
        nothing, and its datagrams_to_send would only build the ACK, at several times the short
        cut's cost (an ACK alone is most of an idle ping's work at the end that sends it). Not
        when aioquic has anything of its own to send, nor for the idle and loss timers, which are
        aioquic's."""
        fast = self.fast_path
        if fast is None or self._aioquic_due or self.phase is not Phase.UP or fast.timer() is None:
            return False
        if not fast.can_send():  # (a key update under way): aioquic sends the ACK
            return False
        q = self.quic  # (timer() just set q._loss_at, as aioquic's get_timer would)
        if q._close_at is None or now >= q._close_at or (q._loss_at is not None and now >= q._loss_at):
            return False
        if q._pacing_at is not None and q._pacing_at <= now:
            q._pacing_at = None  # passed: flush() sets it again if the pacer still holds frames back
        return True

    def close(self, reason: str = "session ended", code: int = CLOSE_NORMAL) -> None:
        """End the session (if not yet) and close the connection with ``reason`` as the phrase."""
        self._aioquic_due = True
        if self._deferred_close is None:  # a failure's own close, naming it, goes out instead
            self.quic.close(error_code=code, reason_phrase=_clip(reason))
        self._end(reason, SessionLost(reason))

    def lower_datagram_size(self, size: int) -> bool:
        """The path now carries at most ``size`` bytes of UDP payload (a send failed: EMSGSIZE).

        aioquic has no path MTU discovery, but builds every batch of packets to its
        ``_max_datagram_size`` (aioquic 1.7.2 internal), and resends lost stream data in new
        frames: lowering it is enough, once queued DATAGRAM frames too big for it are dropped.
        """
        size = max(size, SMALLEST_MAX_DATAGRAM_SIZE)
        if size >= self.quic._max_datagram_size:
            return False
        log.warning(
            "path to %s now carries packets of at most %d bytes (was %d)", self.peer, size, self.quic._max_datagram_size
        )
        self.quic._max_datagram_size = size
        self._aioquic_due = True
        if self.datagram_channel is not None:
            self.datagram_channel.drop_oversized()
        return True

    def bind(self, sink: PacketSink) -> None:
        for channel in self.channels:
            channel.bind(sink)
        if self.datagram_channel is not None:
            self.datagram_channel.bind(sink)

    # -- events -------------------------------------------------------------------------------
    def _learn_peer(self, addr: NetworkAddress) -> None:
        if not self._peer_known:
            self.peer, self._peer_known = describe_address(addr), True

    def _process(self, now: float) -> None:
        event = self.quic.next_event()
        while event is not None:
            self._handle_event(event, now)
            event = self.quic.next_event()
        # aioquic reports ConnectionTerminated only after the closing period (3 x PTO); end the
        # session as soon as a close is decided, and tell a peer's close from one of ours.
        close = self.quic._close_event
        if close is not None and self.phase is not Phase.ENDED:
            self._closed(close, by_peer=self.quic._state is QuicConnectionState.DRAINING)

    def _handle_event(self, event: events.QuicEvent, now: float) -> None:
        if isinstance(event, events.DatagramFrameReceived):
            if self.phase is not Phase.ENDED:
                self._datagram_frames([event.data])
        elif isinstance(event, events.StreamDataReceived):
            if self.phase is not Phase.ENDED:
                self._stream_data(event.stream_id, event.data, event.end_stream, now)
        elif isinstance(event, events.HandshakeCompleted):
            if self.phase is Phase.HANDSHAKE:
                self._handshake_done(now)
        elif isinstance(event, events.StreamReset):
            self._lost(f"peer reset stream {event.stream_id} (error code {event.error_code})")
        elif isinstance(event, events.StopSendingReceived):
            self._lost(f"peer stopped reading stream {event.stream_id} (error code {event.error_code})")
        elif isinstance(event, events.ConnectionTerminated):
            if self.phase is not Phase.ENDED:
                self._closed(event, by_peer=False)
            self._next_keepalive = self._deadline = None
            self.listener.connection_terminated(self)
        elif isinstance(event, events.ConnectionIdIssued):
            self.listener.connection_id_issued(event.connection_id)
        elif isinstance(event, events.ConnectionIdRetired):
            self.listener.connection_id_retired(event.connection_id)

    def _handshake_done(self, now: float) -> None:
        cert = self.quic.tls._peer_certificate  # the peer's leaf, kept by aioquic's TLS context
        try:
            self.peer_cn = check_peer_certificate(cert, self.config.peer_cn, peer_is_server=self.is_client)
        except PeerRejected as exc:
            log.warning("refusing QUIC peer %s: %s", self.peer, exc)
            self._fail(exc, CLOSE_REFUSED, "peer certificate not accepted", quiet=True)
            return
        log.info("QUIC handshake with %s ok, peer CN %s", self.peer, self.peer_cn or "-")
        if not self.is_client and self._admit is not None:
            refusal = self._admit(self)
            if refusal is not None:
                log.warning("refusing QUIC session from %s (CN %s): %s", self.peer, self.peer_cn or "-", refusal)
                self._fail(SessionLost(refusal), CLOSE_REFUSED, refusal, quiet=True)
                return
        self.phase = Phase.EXCHANGE
        self._deadline = now + SETUP_STEP_TIMEOUT
        if self.is_client:
            # Stream 0 is opened first (its first keep-alive byte opens it), then stream 4.
            self._open_stream(KEEPALIVE_STREAM, KEEPALIVE_BYTE)
            self._next_keepalive = now + KEEPALIVE_INTERVAL
            self._open_stream(CONFIG_STREAM, exchange_text(self.config, self.token), end_stream=True)

    def _open_stream(self, expected_id: int, data: bytes, end_stream: bool = False) -> None:
        stream_id = self.quic.get_next_available_stream_id()
        assert stream_id == expected_id, f"opening stream {stream_id}, expected {expected_id}"
        self.quic.send_stream_data(stream_id, data, end_stream=end_stream)

    def _stream_data(self, stream_id: int, data: bytes, fin: bool, now: float) -> None:
        if stream_id == KEEPALIVE_STREAM:
            if not self.is_client and self._next_keepalive is None:
                self._next_keepalive = now  # the client opened it: ours starts now
            if fin:
                self._lost("peer finished the keep-alive stream")
            return
        if stream_id % 4 != 0:  # only client-initiated bidirectional streams are in the protocol
            self._protocol_error(f"unexpected stream {stream_id}")
            return
        if not self.is_client and self._next_keepalive is None:
            self._next_keepalive = now  # any client stream implies stream 0 is open
        if stream_id == CONFIG_STREAM:
            self._config_data(data, fin, now)
            return
        index = (stream_id - FIRST_DATA_STREAM) // 4
        if self.params is None:
            if self.is_client:
                self._protocol_error(f"data on stream {stream_id} before the config exchange")
                return
            # Classified by id, not arrival order: hold it until the exchange says how many.
            early = self._early.setdefault(stream_id, bytearray())
            early += data
            if len(early) > MAX_EARLY_STREAM_BYTES or fin:
                self._protocol_error(f"stream {stream_id} misused before the config exchange")
            return
        if index >= len(self.channels):
            self._protocol_error(f"stream {stream_id} beyond the {len(self.channels)} data streams")
            return
        self._channel_data(self.channels[index], data, now)
        if fin and self.phase is not Phase.ENDED:
            left = self.channels[index].decoder.pending
            self._lost(f"peer finished data stream {stream_id}" + (f" inside a frame ({left} bytes)" if left else ""))

    def _stream_queued(self) -> None:
        """A data stream has bytes queued: once the short cut carries the streams they go out now,
        as DATAGRAM frames do (a trip through the loop's call_soon costs a ping an iteration);
        before, aioquic sends them, soon."""
        if self.phase is Phase.UP and self.fast_path is not None:  # (it carries them from UP on)
            self.listener.datagrams_queued()
        else:
            self._wake()

    def _carried_stream_data(self, stream_data: list[tuple[int, bytes]], now: float) -> None:
        """Data of the data streams that came through the short cut, as if aioquic had sent it."""
        for stream_id, data in stream_data:
            if self.phase is Phase.ENDED:
                return
            self._stream_data(stream_id, data, False, now)

    def _datagram_frames(self, payloads: list[bytes]) -> None:
        channel = self.datagram_channel
        if channel is None:
            self.unexpected_datagrams += len(payloads)
            if self.unexpected_datagrams == len(payloads):
                log.warning("dropping DATAGRAM frames from %s: the config exchange did not agree on them", self.peer)
            return
        mtu = channel.mtu
        sizes = list(map(len, payloads))
        if min(sizes) < 1 or max(sizes) > mtu:
            # The same rule as for a frame on a data stream (PROTOCOL.md, "Packet frame").
            bad = next(size for size in sizes if not 0 < size <= mtu)
            self._protocol_error(f"DATAGRAM frame of {bad} bytes (allowed 1..{mtu})")
            return
        channel.deliver(payloads)

    def _config_data(self, data: bytes, fin: bool, now: float) -> None:
        if self.params is not None or (self.is_client and self.phase is not Phase.EXCHANGE):
            self._protocol_error("unexpected data on the config stream")
            return
        self._config_in += data
        if len(self._config_in) > MAX_EXCHANGE_TEXT:
            self._protocol_error(f"config text longer than {MAX_EXCHANGE_TEXT} bytes")
            return
        if not fin:
            return
        text = bytes(self._config_in)
        self._config_in.clear()
        if not self.is_client:
            # Reply before validating, so the client can name the mismatch from its side too.
            self.quic.send_stream_data(CONFIG_STREAM, exchange_text(self.config, self.token), end_stream=True)
        try:
            params = check_peer_exchange(self.config, self.token, text, self.peer, need_token=False)
        except ProtocolError as exc:
            self._fail(exc, CLOSE_PROTOCOL, str(exc))
            return
        self.params = params
        self.phase = Phase.STREAMS
        self._deadline = now + SETUP_STEP_TIMEOUT
        self.channels = [
            QuicStreamChannel(
                self.quic,
                FIRST_DATA_STREAM + 4 * i,
                params.mtu,
                session_up=lambda: self.phase is Phase.UP,
                wakeup=self._stream_queued,
                clock=lambda: self._now,
            )
            for i in range(params.number_of_streams)
        ]
        if OPTION_DATAGRAM in params.options:
            self._use_datagrams(params.mtu)
        if self.is_client:
            for channel in self.channels:
                assert self.quic.get_next_available_stream_id() == channel.stream_id
                channel.send_hello()
            return
        beyond = [s for s in self._early if (s - FIRST_DATA_STREAM) // 4 >= params.number_of_streams]
        if beyond:  # before the hellos of the others make a session that this one would end unlogged
            self._protocol_error(f"stream {min(beyond)} beyond the {params.number_of_streams} data streams")
            return
        for stream_id in sorted(self._early):
            data = bytes(self._early.pop(stream_id))
            self._stream_data(stream_id, data, False, now)
            if self.phase is Phase.ENDED:
                return

    def _use_datagrams(self, mtu: int) -> None:
        channel = DatagramChannel(self.quic, mtu, lambda: self._now, queued=self.listener.datagrams_queued)
        room = channel.room()
        if room == 0:
            log.warning("%s offered DATAGRAM frames but its transport parameters allow none: streams only", self.peer)
        elif mtu > room:
            log.info(
                "DATAGRAM frames carry packets of up to %d bytes to %s; larger ones (mtu %d) take the streams",
                room,
                self.peer,
                mtu,
            )
        else:
            log.info("DATAGRAM frames carry the packets to %s (up to %d bytes fit, mtu %d)", self.peer, room, mtu)
        self.datagram_channel = channel
        self.fast_path = DatagramFastPath(self.quic)
        for stream in self.channels:
            stream.datagrams = channel

    def _channel_data(self, channel: QuicStreamChannel, data: bytes, now: float) -> None:
        try:
            hello_done = channel.receive(data)
        except ProtocolError as exc:
            self._protocol_error(str(exc))
            return
        if not hello_done:
            return
        if not self.is_client:
            channel.send_hello()
        self._hellos += 1
        self._deadline = now + SETUP_STEP_TIMEOUT
        if self._hellos == len(self.channels):
            self.phase = Phase.UP
            self._deadline = None
            cc = self.quic._loss._cc
            datagrams = self.datagram_channel
            if isinstance(cc, TunnelCongestionControl) and (datagrams is None or datagrams.room() == 0):
                cc.queue_target = STREAM_QUEUE_TARGET  # (see there: streams carry every packet)
            if self.fast_path is None:
                self.fast_path = DatagramFastPath(self.quic)
            self.fast_path.carry_streams([channel.stream_id for channel in self.channels])
            log.info("%d data streams with %s up", len(self.channels), self.peer)
            self.listener.session_established(self)

    # -- endings ------------------------------------------------------------------------------
    def _protocol_error(self, what: str) -> None:
        self._fail(ProtocolError(f"protocol error from peer: {what}"), CLOSE_PROTOCOL, f"protocol error: {what}")

    def _lost(self, reason: str) -> None:
        if self.phase is not Phase.ENDED:
            self._fail(SessionLost(reason), CLOSE_PROTOCOL, reason)

    def _fail(self, error: RustvpnError, code: int, phrase: str, *, quiet: bool = False) -> None:
        if self.phase is Phase.ENDED:
            return
        # The close goes out after what is already queued (see datagrams_to_send): the server's
        # config reply that lets the client name a mismatch too, and a client's TLS Finished,
        # without which the server could not read the 1-RTT close and its reason phrase.
        self._deferred_close = (code, _clip(phrase))
        if not quiet and not self.is_client and self.phase is not Phase.UP:
            # A client's set-up failure is raised by connect() and logged by the engine.
            log.warning("QUIC session set-up with %s failed: %s", self.peer, error)
        self._end(str(error), error)
        self._wake()

    def _closed(self, close: events.ConnectionTerminated, *, by_peer: bool) -> None:
        code, phrase = close.error_code, close.reason_phrase
        error: RustvpnError
        if (
            not by_peer
            and code == QuicErrorCode.INTERNAL_ERROR
            and close.frame_type == QuicFrameType.PADDING
            and phrase == "Idle timeout"
        ):
            if self.phase is Phase.HANDSHAKE and self.is_client:
                error = SessionLost(f"no answer within {IDLE_TIMEOUT:.0f} s")
            else:
                error = SessionLost(f"idle timeout: nothing heard from the peer for {IDLE_TIMEOUT:.0f} s")
        elif by_peer:
            text = f"peer closed: {phrase or 'no reason given'} ({_describe_code(code)})"
            error = PeerRejected(text) if _is_crypto_error(code) else SessionLost(text)
        elif _is_crypto_error(code):
            error = PeerRejected(f"TLS handshake failed: {phrase} ({_describe_code(code)})")
        else:
            error = ProtocolError(f"QUIC connection failed: {phrase} ({_describe_code(code)})")
        if not self.is_client and self.phase is not Phase.UP:
            log.warning("QUIC session set-up with %s failed: %s", self.peer, error)
        else:
            log.debug("QUIC connection with %s closed: %s", self.peer, error)
        self._end(str(error), error)

    def _end(self, reason: str, error: RustvpnError) -> None:
        if self.phase is Phase.ENDED:
            return
        was_up = self.phase is Phase.UP
        self.phase = Phase.ENDED
        self.end_reason = reason
        self.failure = None if was_up else error
        self._next_keepalive = self._deadline = None
        for channel in self.channels:
            channel.resume_writing()  # release a pump waiting on a channel that is gone
        if self.datagram_channel is not None:
            self.datagram_channel.resume_writing()
        self.listener.session_ended(self, reason)
