"""One QUIC data stream as a packet channel: its ``00 00`` hello, u16-framed packets both ways,
and backpressure on what the stream has not sent yet (see PROTOCOL.md, "QUIC mode").

In a session that uses DATAGRAM frames (quic_datagram.py) the stream is the way for the packets
that do not fit one: the pump still picks a stream per packet by flow, and the stream hands the
packets that fit to the datagram channel, so a flow's order is kept on the path the pump chose.

The stream's unsent bytes are a queue, managed as the DATAGRAM queue is (quic_datagram.py):
CoDel on the wait of the oldest unsent byte drops a bulk packet now and then when a queue stands,
and beyond OVERLOAD_UNSENT bulk packets are dropped as they come. The pump is never paused for a
stream: paused, it left the queue to the TUN device (500 packets, unmanaged), where a UDP flood
made the kernel drop whatever came, pings of other flows too (28% of them answered in the
benchmark's flood), and inner TCP filled up to a megabyte of stream before that (20 ms at 400
Mbit/s, for every packet of the stream, pings included).

Sans-IO like the session machine that owns it: it writes to and reads from the machine's
QuicConnection, and relies on one aioquic internal, ``QuicConnection._streams[id].sender
.highest_offset`` (aioquic 1.7.2), to learn how much of the stream has been sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aioquic.quic.connection import QuicConnection

from rustvpn.codel import CoDel, QueueWait
from rustvpn.errors import FrameError, ProtocolError
from rustvpn.framing import FrameDecoder, encode_frames
from rustvpn.pump import NO_DROPS, Drops, PacketChannel

if TYPE_CHECKING:
    from rustvpn.quic_datagram import DatagramChannel

__all__ = [
    "DATA_HELLO",
    "MAX_UNSENT",
    "OVERLOAD_UNSENT",
    "SHORT_PACKET",
    "BackloggedChannel",
    "PacketSink",
    "QuicStreamChannel",
]

DATA_HELLO = b"\x00\x00"
# Bytes written on a data stream and never yet sent (congestion or flow control holds them back).
# Beyond OVERLOAD_UNSENT only traffic that ignores drops (a flood) keeps coming: packets longer
# than SHORT_PACKET are dropped as they arrive, so pings, ACKs and DNS still get through behind
# them (the DATAGRAM queue uses the same line). MAX_UNSENT bounds memory whatever comes (about
# 60 ms at the stream path's rate here).
OVERLOAD_UNSENT = 512 * 1024
MAX_UNSENT = 2 * 1024 * 1024
SHORT_PACKET = 256
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
        clock: Callable[[], float],
        codel: CoDel | None = None,
        overload: int = OVERLOAD_UNSENT,
        max_unsent: int = MAX_UNSENT,
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
        self._clock = clock
        self.codel = codel or CoDel()
        self.overload = overload
        self.max_unsent = max_unsent
        self._wait = QueueWait()  # over _written
        self.datagrams: DatagramChannel | None = None

    # -- sending ------------------------------------------------------------------------------
    def send_packets(self, packets: list[bytes]) -> Drops:
        if not packets:
            return NO_DROPS
        if not self._session_up():
            self.counters.dropped += len(packets)  # no session to carry them
            return len(packets), sum(map(len, packets))
        datagrams = self.datagrams
        lost = NO_DROPS
        # Behind bytes still waiting on the stream, packets stay on it: a DATAGRAM frame would
        # overtake them (aioquic writes DATAGRAM frames ahead of stream data).
        if datagrams is not None and not self.unsent():
            taken, dropped, dropped_bytes = datagrams.take(packets)
            if taken:
                # The pump counts what it hands to a channel, less what the channel drops, on that
                # channel; what crossed as DATAGRAM frames is counted on the datagram channel.
                self.counters.packets_out -= taken - dropped
                self.counters.bytes_out -= sum(map(len, packets[:taken])) - dropped_bytes
                packets = packets[taken:]
                if dropped:
                    lost = (dropped, dropped_bytes)  # counted as dropped by the datagram channel
            if not packets:  # all went as DATAGRAM frames, which the datagram channel sends
                return lost
        packets, dropped, dropped_bytes = self._admit(packets)
        if dropped:
            lost = (lost[0] + dropped, lost[1] + dropped_bytes)
        if packets:
            self._write(encode_frames(packets))
            self._wait.queued(self._written, self._clock())
            self._wakeup()
        return lost

    def _admit(self, packets: list[bytes]) -> tuple[list[bytes], int, int]:
        """The packets that join the stream's queue, and how many others were dropped, and their
        bytes (counted here as dropped). Short packets are never CoDel's or the overload bound's
        choice: they cost the queue little, and are what must get through a flood."""
        unsent = self.unsent()
        now = self._clock()
        drop_one = self.codel.should_drop(now, self.queue_delay(now, unsent))
        if not drop_one and unsent + sum(map(len, packets)) <= self.overload:
            return packets, 0, 0  # the common case, decided without a look at each packet
        overload, cap = self.overload, self.max_unsent
        kept: list[bytes] = []
        dropped = dropped_bytes = 0
        for packet in packets:
            size = len(packet)
            if (size > SHORT_PACKET and (drop_one or unsent >= overload)) or unsent >= cap:
                drop_one = False  # CoDel's one drop for this arrival, if it was CoDel's
                dropped += 1
                dropped_bytes += size
                continue
            kept.append(packet)
            unsent += size + 2
        self.counters.dropped += dropped
        return kept, dropped, dropped_bytes

    def queue_delay(self, now: float, unsent: int | None = None) -> float:
        """How long the oldest byte not sent yet has waited on the stream."""
        sent = self._written - (self.unsent() if unsent is None else unsent)
        return self._wait.delay(sent, now)

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
