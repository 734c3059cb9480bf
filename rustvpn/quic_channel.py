"""One QUIC data stream as a packet channel: its ``00 00`` hello, u16-framed packets both ways,
and backpressure on what the stream has not sent yet (see PROTOCOL.md, "QUIC mode").

In a session that uses DATAGRAM frames (quic_datagram.py) the stream is the way for the packets
that do not fit one: the pump still picks a stream per packet by flow, and the stream hands the
packets that fit to the datagram channel, so a flow's order is kept on the path the pump chose.

Sans-IO like the session machine that owns it: it writes to and reads from the machine's
QuicConnection, and relies on one aioquic internal, ``QuicConnection._streams[id].sender
.highest_offset`` (aioquic 1.7.2), to learn how much of the stream has been sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aioquic.quic.connection import QuicConnection

from rustvpn.errors import FrameError, ProtocolError
from rustvpn.framing import FrameDecoder, encode_frames
from rustvpn.pump import PacketChannel

if TYPE_CHECKING:
    from rustvpn.quic_datagram import DatagramChannel

__all__ = ["DATA_HELLO", "SEND_HIGH_WATER", "SEND_LOW_WATER", "BackloggedChannel", "PacketSink", "QuicStreamChannel"]

DATA_HELLO = b"\x00\x00"
# Backpressure per data stream, on bytes written but never yet sent (congestion or flow control
# holds them back): above HIGH the pump stops reading the TUN device, below LOW it resumes.
SEND_HIGH_WATER = 1 << 20
SEND_LOW_WATER = 1 << 18
# Decoded packets kept per channel before the pump is bound.
MAX_BACKLOG_PACKETS = 4096

PacketSink = Callable[[PacketChannel, list[bytes]], None]


class BackloggedChannel(PacketChannel):
    """A channel whose packets from the peer may arrive before the pump is bound: they wait here
    (up to MAX_BACKLOG_PACKETS, the rest counted as dropped) and are handed over on bind()."""

    def __init__(self) -> None:
        super().__init__()
        self._sink: PacketSink | None = None
        self._backlog: list[bytes] = []

    def deliver(self, packets: list[bytes]) -> None:
        if self._sink is not None:
            self._sink(self, packets)
            return
        room = MAX_BACKLOG_PACKETS - len(self._backlog)
        self._backlog.extend(packets[:room])
        self.counters.dropped += max(0, len(packets) - room)

    def bind(self, sink: PacketSink) -> None:
        self._sink = sink
        backlog, self._backlog = self._backlog, []
        if backlog:
            sink(self, backlog)


class QuicStreamChannel(BackloggedChannel):
    """One data stream: its ``00 00`` hello, then u16-framed packets both ways.

    ``session_up`` says whether packets may be sent (the owning session is up); ``wakeup`` asks
    the owner's driver to collect what was queued. Callbacks, not the machine, so that this
    module needs no import of quic_machine (which imports it). ``datagrams`` is the session's
    DATAGRAM-frame channel once both peers agreed to use one.
    """

    kind = "stream"

    def __init__(
        self,
        quic: QuicConnection,
        stream_id: int,
        mtu: int,
        *,
        session_up: Callable[[], bool],
        wakeup: Callable[[], None],
    ) -> None:
        super().__init__()
        self.quic = quic
        self.stream_id = stream_id
        self.decoder = FrameDecoder(mtu)
        self.hello_received = False
        self._hello = b""
        self._written = 0  # every byte we queued on the stream, hello included
        self._session_up = session_up
        self._wakeup = wakeup
        self.datagrams: DatagramChannel | None = None

    # -- sending ------------------------------------------------------------------------------
    def send_packets(self, packets: list[bytes]) -> None:
        if not self._session_up() or not packets:
            return
        datagrams = self.datagrams
        # Behind bytes still waiting on the stream, packets stay on it: a DATAGRAM frame would
        # overtake them (aioquic writes DATAGRAM frames ahead of stream data).
        if datagrams is not None and not self.unsent():
            taken = datagrams.take(packets)
            if taken:
                # The pump counts every packet it hands to a channel on that channel; the ones
                # that crossed as DATAGRAM frames are counted on the datagram channel instead.
                self.counters.packets_out -= taken
                self.counters.bytes_out -= sum(map(len, packets[:taken]))
                packets = packets[taken:]
            if not packets:  # all went as DATAGRAM frames, which the datagram channel sends
                return
        self._write(encode_frames(packets))
        if not self.paused and self.unsent() > SEND_HIGH_WATER:
            self.pause_writing()
        self._wakeup()

    def send_hello(self) -> None:
        self._write(DATA_HELLO)

    def _write(self, data: bytes) -> None:
        self.quic.send_stream_data(self.stream_id, data)
        self._written += len(data)

    def unsent(self) -> int:
        """Bytes queued on the stream that were never sent yet."""
        stream = self.quic._streams.get(self.stream_id)  # no public stream API in aioquic
        sent = stream.sender.highest_offset if stream is not None else 0
        return self._written - sent

    def refresh_writable(self) -> None:
        queued = self.unsent()
        if self.paused and queued < SEND_LOW_WATER:
            self.resume_writing()
        elif not self.paused and queued > SEND_HIGH_WATER:
            self.pause_writing()

    # -- receiving ----------------------------------------------------------------------------
    def receive(self, data: bytes) -> bool:
        """Feed stream bytes; True when this call completed the peer's hello. Raises ProtocolError."""
        completed = False
        if not self.hello_received:
            take = len(DATA_HELLO) - len(self._hello)
            self._hello += data[:take]
            data = data[take:]
            if len(self._hello) < len(DATA_HELLO):
                return False
            if self._hello != DATA_HELLO:
                got = self._hello.hex(" ")
                raise ProtocolError(f"data stream {self.stream_id}: expected the 00 00 hello, got {got}")
            self.hello_received = completed = True
        if data:
            try:
                packets = self.decoder.feed(data)
            except FrameError as exc:
                raise FrameError(f"data stream {self.stream_id}: {exc}") from None
            if packets:
                self.deliver(packets)
        return completed
