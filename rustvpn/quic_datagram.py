"""The DATAGRAM-frame data path (RFC 9221) of a QUIC session in which both peers offered
``datagram=1`` in the config exchange (an option beyond PROTOCOL.md; the reference peer never
offers it, so with it everything stays on the data streams).

Each IP packet that fits crosses as one DATAGRAM frame in one QUIC packet: no u16 framing, no
stream reassembly and no retransmission (a lost tunnel packet is the inner protocol's business,
as on any link). What fits: a short-header packet spends ``1 + len(peer CID) + 2`` bytes on its
header (aioquic sends 2-byte packet numbers) and 16 on the AEAD tag, the frame 1 on its type and
2 on its length. With 8-byte connection ids that leaves ``max_datagram_size - 30`` bytes: 1442 on
a 1500-byte IPv4 path (UDP payload 1472), 1422 over IPv6 (1452), 1170 at the 1200-byte floor. A
TUN MTU of 1400 therefore keeps every packet in DATAGRAM frames on 1500-byte paths; larger
packets take the data stream the pump chose for them.

Sans-IO like the session machine that owns it. aioquic internals relied on (aioquic 1.7.2):
``QuicConnection._datagrams_pending`` (the unbounded send queue, bounded here),
``._max_datagram_size``, ``._peer_cid`` and ``._remote_max_datagram_frame_size`` (the peer's
transport parameter; aioquic does not check it when sending).
"""

from __future__ import annotations

from collections.abc import Callable

from aioquic.buffer import size_uint_var
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet_builder import PACKET_NUMBER_SEND_SIZE

from rustvpn.codel import CoDel, QueueWait
from rustvpn.pump import Drops
from rustvpn.quic_channel import SHORT_PACKET, BackloggedChannel

__all__ = ["MAX_QUEUED_DATAGRAMS", "OVERLOAD_QUEUED", "DatagramChannel", "datagram_room", "jumps_the_queue"]

AEAD_TAG_SIZE = 16  # every QUIC v1/v2 cipher suite
DATAGRAM_FRAME_OVERHEAD = 1 + 2  # frame type, and the length as a 2-byte varint (64..16383 bytes)
# The bound on DATAGRAM frames queued in aioquic and not sent yet (aioquic's queue is unbounded).
# CoDel (codel.py) watches how long the oldest has waited and drops one packet now and then when
# a queue stands, which tells inner TCP to slow down while the queue stays short. Pausing the pump
# instead would move the queue into the TUN device's (500 packets, unmanaged), which inner TCP
# fills: tens of ms of delay for every flow. Only traffic that ignores drops (a UDP flood) fills
# the queue to OVERLOAD_QUEUED: beyond it bulk packets are dropped as they come, and the pump
# keeps reading, so that pings and bare TCP ACKs (which jump the queue) still get through. Paused
# instead, the pump left the device's queue to overflow, and the kernel dropped whatever came:
# under a 1 Gbit/s UDP flood half the pings of another flow were lost (20% now), for 5% more
# flood. Short packets are never CoDel's choice: they cost the queue little. The count cap is a
# backstop for memory.
OVERLOAD_QUEUED = 512
MAX_QUEUED_DATAGRAMS = 1024
# take()'s answers without a drop in the commonest cases (no tuple built per call)
_NONE_TAKEN, _ONE_TAKEN = (0, 0, 0), (1, 0, 0)


def jumps_the_queue(packet: bytes) -> bool:
    """Whether a packet goes ahead of the bulk waiting in the queue: ICMP (a ping: its delay is what
    people measure) and TCP segments without data (ACKs: the other direction's pace), when short.

    Neither carries data a flow's receiver must see in order, so overtaking never reorders a byte
    stream; the one FIFO queue otherwise holds a ping behind every bulk packet read before it,
    where on the data streams aioquic would have served its stream in turn.
    """
    size = len(packet)
    if size > SHORT_PACKET or size < 20:
        return False
    version = packet[0] >> 4
    if version == 4:
        protocol, header = packet[9], (packet[0] & 0x0F) * 4
        if protocol == 1:
            return True
        # TCP: the packet (exactly what the TUN device gave) ends where the TCP header does.
        return protocol == 6 and size >= header + 13 and size == header + (packet[header + 12] >> 4) * 4
    if version == 6 and size >= 40:
        protocol = packet[6]  # without extension headers only: those are rare, and stay in line
        if protocol == 58:
            return True
        return protocol == 6 and size >= 53 and size == 40 + (packet[52] >> 4) * 4
    return False


def datagram_room(max_datagram_size: int, peer_cid_length: int) -> int:
    """Largest payload of a DATAGRAM frame that fits one QUIC short-header packet by itself."""
    header = 1 + peer_cid_length + PACKET_NUMBER_SEND_SIZE
    return max_datagram_size - header - AEAD_TAG_SIZE - DATAGRAM_FRAME_OVERHEAD


class DatagramChannel(BackloggedChannel):
    """The session's DATAGRAM frames, both ways, as one packet channel with its own counters.

    Outgoing packets come from the stream channels (:meth:`take`): each hands over the packets the
    pump chose it for, and keeps on its stream only those that do not fit. Incoming frames are
    delivered to the pump like a stream's packets (kept until the pump is bound). ``clock`` gives
    the owner's current time (the session machine's, so tests can drive it).
    """

    kind = "datagram"

    def __init__(
        self,
        quic: QuicConnection,
        mtu: int,
        clock: Callable[[], float],
        *,
        codel: CoDel | None = None,
        overload: int = OVERLOAD_QUEUED,
        max_queued: int = MAX_QUEUED_DATAGRAMS,
        queued: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__()
        self.quic = quic
        self.mtu = mtu
        self.codel = codel or CoDel()
        self.overload = overload
        self.max_queued = max_queued
        self._clock = clock
        self._queued = queued  # tells the owner's driver to send what take() queued
        self._queued_total = 0  # frames ever queued
        self._wait = QueueWait()
        self._ahead = (0, 0)  # (frames gone, n): the first n frames queued jumped the queue, when that many were gone
        # room()'s answer, and the inputs it was computed from (none yet)
        self._room_inputs: tuple[int, int, int | None] | None = None
        self._room = 0

    # -- sending ------------------------------------------------------------------------------
    def room(self) -> int:
        """Largest packet that goes out as one DATAGRAM frame now; 0 if the peer takes none.

        Checked per batch: the path's packet size or the peer's connection id may change (the
        answer is kept for as long as neither does).
        """
        q = self.quic
        inputs = (q._max_datagram_size, len(q._peer_cid.cid), q._remote_max_datagram_frame_size)
        if inputs == self._room_inputs:
            return self._room
        size, cid_length, remote = inputs
        room = 0  # the peer's transport parameters allow no DATAGRAM frames
        if remote is not None:
            # The peer's limit counts the whole frame: type, length and payload (RFC 9221, section 3).
            room = max(0, min(datagram_room(size, cid_length), remote - 1 - size_uint_var(remote)))
        self._room_inputs, self._room = inputs, room
        return room

    def queue_delay(self, now: float) -> float:
        """How long the oldest frame still queued has waited."""
        gone = self._queued_total - len(self.quic._datagrams_pending)  # sent (or dropped) since
        return self._wait.delay(gone, now)

    def take(self, packets: list[bytes]) -> tuple[int, int, int]:
        """Send the leading packets that fit as DATAGRAM frames; returns how many were taken, and
        how many of those were dropped, and their bytes.

        Taking stops at the first packet that does not fit, so that the rest keep their order
        behind it on the caller's stream; aioquic would never send an oversized frame, and it would
        block every frame queued behind it. Packets that CoDel, the overload bound or the count cap
        drop are counted, not handed back. Pings and bare TCP ACKs go ahead of the bulk
        (:func:`jumps_the_queue`), in their own order.
        """
        room = self.room()
        pending = self.quic._datagrams_pending  # no public API for the DATAGRAM queue in aioquic
        now = self._clock()
        # (aioquic's send_datagram_frame only appends to that queue: one Python call a packet less)
        send, counters = pending.append, self.counters
        if len(packets) == 1 and not pending:
            # A packet alone with nothing queued (an idle tunnel's ping, request or answer): no
            # queue for CoDel or the overload bound to judge, and none to jump (it counts as
            # having jumped, so that what jumps while it waits queues behind it).
            size = len(packets[0])
            if size > room:
                return _NONE_TAKEN
            self.codel.should_drop(now, 0.0)  # an empty queue: CoDel leaves any dropping state
            self._ahead = (self._queued_total, 1)
            send(packets[0])
            self._queued_total += 1
            counters.packets_out += 1
            counters.bytes_out += size
            self._wait.restart(self._queued_total, now)  # (whatever was queued before is gone)
            self._queued()
            return _ONE_TAKEN
        drop_one = self.codel.should_drop(now, self.queue_delay(now))
        cap, overload = self.max_queued, self.overload
        taken = queued = dropped = dropped_bytes = 0
        for packet in packets:
            size = len(packet)
            if size > room:
                break
            taken += 1
            if len(pending) >= cap:
                dropped += 1
                dropped_bytes += size
                continue
            if size <= SHORT_PACKET and jumps_the_queue(packet):
                self._queue_ahead(packet)
            elif drop_one and size > SHORT_PACKET:
                drop_one = False
                dropped += 1
                dropped_bytes += size
                continue
            elif len(pending) >= overload:  # a flood: the bulk beyond the bound goes
                dropped += 1
                dropped_bytes += size
                continue
            else:
                send(packet)
            self._queued_total += 1
            queued += 1
            counters.packets_out += 1
            counters.bytes_out += size
        counters.dropped += dropped
        if queued:
            self._wait.queued(self._queued_total, now)
            self._queued()
        return taken, dropped, dropped_bytes

    def _queue_ahead(self, packet: bytes) -> None:
        """Queue a packet behind those that jumped the queue before it, ahead of all the rest.

        The wait of the oldest frame (:meth:`queue_delay`) assumes first in, first out; a frame
        sent early makes it look a little shorter, which is harmless for a few short packets.
        """
        pending = self.quic._datagrams_pending
        gone_then, ahead_then = self._ahead
        gone = self._queued_total - len(pending)  # aioquic sends from the head, in order
        ahead = max(0, ahead_then - (gone - gone_then))
        pending.insert(ahead, packet)
        self._ahead = (gone, ahead + 1)

    def drop_oversized(self) -> int:
        """Drop queued frames that no longer fit a packet (the path shrank); returns how many."""
        room, pending = self.room(), self.quic._datagrams_pending
        keep = [packet for packet in pending if len(packet) <= room]
        dropped = len(pending) - len(keep)
        if dropped:
            pending.clear()
            pending.extend(keep)
            self._wait.restart(self._queued_total, self._clock())  # what stays waits as if queued now
            self.counters.dropped += dropped
        return dropped

    def queued(self) -> int:
        """DATAGRAM frames waiting in aioquic to be sent."""
        return len(self.quic._datagrams_pending)

    def send_packets(self, packets: list[bytes]) -> Drops:
        # Not chosen by the pump itself (see QuicStreamChannel.send_packets); a packet that does
        # not fit has no stream here and is dropped. take() counted what it queued, and the
        # caller counts the batch less the drops again: take the queued ones back off.
        taken, dropped, dropped_bytes = self.take(packets)
        unfit = packets[taken:]
        self.counters.dropped += len(unfit)
        self.counters.packets_out -= taken - dropped
        self.counters.bytes_out -= sum(map(len, packets[:taken])) - dropped_bytes
        return dropped + len(unfit), dropped_bytes + sum(map(len, unfit))
