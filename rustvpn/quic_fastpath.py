"""A short cut through aioquic for the 1-RTT packets that carry tunnel packets: DATAGRAM frames,
and STREAM frames of the data streams.

aioquic builds and parses every packet through general machinery: a packet builder that asks
each kind of frame whether it has something to send, and a parser that dispatches each frame to a
handler and queues an event. For a tunnel packet that crosses as one DATAGRAM frame this costs
about 90 us to send and 60 us to receive on the benchmark machine, far more than the encryption
itself, and it is most of a QUIC-mode ping's round trip. The short cut handles the common case
with a few lines per packet and leaves everything else to aioquic, on the same connection state:

* sending (:meth:`DatagramFastPath.flush`): DATAGRAM frames queued in aioquic, then the data
  streams' queued bytes (once :meth:`DatagramFastPath.carry_streams` named them), go out in packets
  of those frames only, under aioquic's congestion window, pacer and flow control, registered with
  its loss recovery exactly as its own packets are (so ACKs, RTT samples, congestion control and
  the resending of lost stream data work unchanged: the stream's own sender picks what to send).
  ACKs ride along. Control frames, other streams' data and a data stream's FIN or reset still go
  out through aioquic's ``datagrams_to_send``.
* receiving (:meth:`DatagramFastPath.receive_many`): short-header packets for our current
  connection id from the current peer address, in the current key phase, holding only PADDING,
  PING, ACK, DATAGRAM frames and STREAM frames that are a data stream's next bytes (in order,
  without FIN, within flow control), are decrypted and applied here, a batch at a time; anything
  else (data out of order or resent, control frames, a key update, a duplicate, a packet that does
  not decrypt) goes to aioquic's ``receive_datagram`` untouched, as nothing is changed before the
  packet is known to be one of ours.

The wire format is plain RFC 9000/9001/9221: a peer running stock aioquic (or any QUIC stack, the
Rust reference peer's among them) sees ordinary packets. DATAGRAM frames are used only between two
rustvpn peers that agreed on ``datagram=1``; STREAM frames of the data streams with any peer.

aioquic internals relied on (aioquic 1.7.2), all read or updated as its own code does:
``QuicConnection._cryptos``, ``._spaces``, ``._loss`` (with ``._pacer``), ``._packet_number``,
``._peer_cid``, ``._network_paths``, ``._datagrams_pending``, ``._max_datagram_size``,
``._spin_bit``/``._spin_highest_pn``, ``._close_at``/``._idle_timeout()``,
``._ack_eliciting_sent_since_receipt``, ``._ack_delay``, ``._remote_ack_delay_exponent``,
``._pacing_at``, ``._handshake_confirmed``, ``._close_pending``, ``._quic_logger``, the
``aead``/``hp`` objects of a crypto context and the ciphers they wrap (``AEAD._aead``/``._iv``,
``HeaderProtection._encryptor``/``._is_chacha20``); for streams ``._streams``,
``._streams_queue``, ``._local_max_data``, ``._remote_max_data``/``._remote_max_data_used``, a
stream's ``max_stream_data_local``/``_remote``, its sender's ``_pending``/``_pending_eof``/
``get_frame``/``on_data_delivery`` and its receiver's ``_buffer``/``_buffer_start``/
``highest_offset``/``_final_size``. tests/unit/test_quic_fastpath.py checks the short cut against
stock aioquic peers in both directions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from aioquic._buffer import Buffer, BufferReadError
from aioquic.quic.connection import NetworkAddress, QuicConnection, QuicConnectionState
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicPacketType, pull_ack_frame, push_ack_frame
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import MAX_ACK_RANGES, QuicPacketNumberWindow, QuicPacketSpace
from aioquic.quic.stream import QuicStream
from aioquic.tls import Epoch
from cryptography.exceptions import InvalidTag

from rustvpn.quic_congestion import TunnelCongestionControl, TunnelPacer

__all__ = ["DatagramFastPath"]

AEAD_TAG = 16
PN_SEND_SIZE = 2  # bytes of packet number we send, as aioquic does
PN_MAX_SIZE = 4
SAMPLE_SIZE = 16
MAX_ACK_FRAME = 128  # bytes an ACK frame may take in a packet of ours (older ranges are left out)
MIN_STREAM_ROOM = 64  # room left for stream data that is worth an ACK riding with it

PADDING, PING, ACK, ACK_ECN = 0x00, 0x01, 0x02, 0x03
ACK_BYTE = bytes((ACK,))
DATAGRAM, DATAGRAM_WITH_LENGTH = 0x30, 0x31
STREAM_BASE, STREAM_LAST = 0x08, 0x0F  # STREAM frame types: 0x08 | OFF (4) | LEN (2) | FIN (1)
STREAM_OFF, STREAM_LEN, STREAM_FIN = 0x04, 0x02, 0x01
UINT_VAR_MAX = (1 << 62) - 1


def _varint_size(value: int) -> int:
    return 1 if value < 0x40 else 2 if value < 0x4000 else 4 if value < 0x40000000 else 8


def _varint(value: int) -> bytes:
    """A QUIC variable-length integer in its shortest form, as aioquic's Buffer writes it."""
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


_new_object = object.__new__

# The max_ack_delay aioquic announces to the peer (25 ms, fixed in aioquic 1.7.2), and how long
# the ACK of a lone packet may wait for a packet of ours to ride in: within that, with 2 ms spare
# for a late timer. aioquic acknowledges every packet within 1 ms (its ``_ack_delay``); for a
# ping or a request that is an ACK-only packet each way, with a wake-up of each process to send
# and to take it. Held back, the ACK rides with the next packet: an idle ping costs two QUIC
# packets instead of four, and about 30% less CPU at both ends. A second packet brings the ACK
# back within aioquic's 1 ms, so bulk traffic is acknowledged as before (RFC 9000 section 13.2.2
# asks for an ACK after two ack-eliciting packets).
ANNOUNCED_MAX_ACK_DELAY = 0.025
LONE_ACK_DELAY = ANNOUNCED_MAX_ACK_DELAY - 0.002
# Packets delivered by peek() and not yet taken by receive(): more means some never will be.
MAX_EARLY = 1024

# What _parse_frames finds: DATAGRAM payloads, the ACK (ranges, encoded delay) if any, whether the
# packet is ack-eliciting, and its STREAM frames (stream id, offset, data; none with FIN).
_StreamFrame = tuple[int, int, bytes]
_Frames = tuple[list[bytes], "tuple[RangeSet, int] | None", bool, list[_StreamFrame]]


class DatagramFastPath:
    """The short cut for one connection (see the module docstring)."""

    def __init__(self, quic: QuicConnection) -> None:
        self.quic = quic
        self.sent = 0  # packets sent and received through the short cut (for tests and status)
        self.received = 0
        # Packet numbers whose DATAGRAM frames peek() delivered ahead of their turn: receive()
        # applies them in order without delivering them again.
        self._delivered_early: set[int] = set()
        # The 1-RTT keys and packet space, once the handshake is over for good (see _steady): the
        # same objects for the rest of the connection, and looking them up by Epoch costs a
        # Python-level Enum.__hash__ each time.
        self._pair: CryptoPair | None = None
        self._space: QuicPacketSpace | None = None
        # The data streams whose STREAM frames the short cut sends and takes (carry_streams).
        self._streams: dict[int, QuicStream] = {}

    def carry_streams(self, stream_ids: Sequence[int]) -> None:
        """Send and take the STREAM frames of these streams too (the tunnel's data streams, once
        the session is up): in-order data without FIN, under aioquic's flow control, as its own
        sending and receiving would handle them. Everything else about a stream stays aioquic's."""
        streams = self.quic._streams
        self._streams = {stream_id: streams[stream_id] for stream_id in stream_ids if stream_id in streams}

    def streams_pending(self) -> bool:
        """Whether a stream the short cut does not send has data queued (aioquic's to send)."""
        carried = self._streams
        return any(not s.sender.buffer_is_empty for i, s in self.quic._streams.items() if i not in carried)

    def limits_due(self) -> bool:
        """Whether aioquic would raise a flow-control limit now (MAX_DATA or MAX_STREAM_DATA: it
        doubles one once half of it is used), which only its own sending does."""
        max_data = self.quic._local_max_data
        if max_data.used * 2 > max_data.value:
            return True
        return any(s.receiver.highest_offset * 2 > s.max_stream_data_local for s in self._streams.values())

    def _steady(self) -> bool:
        """Whether the handshake is over for good: confirmed, its Initial and Handshake packet
        spaces discarded (nothing can change in them again) and no 0-RTT keys left; aioquic then
        only ever uses the 1-RTT space. Once true, it stays true."""
        if self._space is not None:
            return True
        q = self.quic
        if (
            not q._handshake_confirmed
            or not q._loss.handshake_confirmed
            or q._quic_logger is not None
            or not all(space.discarded for epoch, space in q._spaces.items() if epoch is not Epoch.ONE_RTT)
            or q._cryptos[Epoch.ZERO_RTT].recv.is_valid()
        ):
            return False
        self._pair = q._cryptos[Epoch.ONE_RTT]
        self._space = q._spaces[Epoch.ONE_RTT]
        return True

    def timer(self) -> float | None:
        """What aioquic's ``get_timer()`` returns (and its side effect on ``_loss_at``, which its
        handle_timer reads), in the steady state: the earliest of the idle deadline, the ACK timer,
        the loss detection timer and the pacing timer of the one packet space left. None when
        not steady, or the path is not validated: ask aioquic. The driver asks after every
        batch; aioquic's version walks every packet space through several calls."""
        q = self.quic
        if self._space is None and not self._steady():
            return None
        space = self._space
        assert space is not None
        # Not while closing, nor on a path being validated (anti-amplification and validation
        # timers apply there).
        if q._state is not QuicConnectionState.CONNECTED or not q._network_paths[0].is_validated:
            return None
        timer_at = q._close_at
        if timer_at is None:  # (set from the first packet on)
            return None
        if space.ack_at is not None and space.ack_at < timer_at:
            timer_at = space.ack_at
        loss = q._loss
        loss_at = space.loss_time
        if loss_at is None and (space.ack_eliciting_in_flight or not loss.peer_completed_address_validation):
            pto = loss.get_probe_timeout(include_max_ack_delay=True) * (2**loss._pto_count)
            loss_at = loss._time_of_last_sent_ack_eliciting_packet + pto
        q._loss_at = loss_at
        if loss_at is not None and loss_at < timer_at:
            timer_at = loss_at
        if q._pacing_at is not None and q._pacing_at < timer_at:
            timer_at = q._pacing_at
        return timer_at

    # -- sending ------------------------------------------------------------------------------
    def can_send(self) -> bool:
        """Whether flush() may send now (else aioquic's own sending must take the frames)."""
        if self._pair is None and not self._steady():
            return False
        q, pair = self.quic, self._pair
        assert pair is not None
        return (
            q._state is QuicConnectionState.CONNECTED
            and not q._close_pending
            and pair.send.aead is not None  # (CryptoContext.is_valid(), without the call)
            and not pair._update_key_requested  # aioquic switches keys in its own encrypt
            and q._network_paths[0].is_validated
        )

    def flush(self, now: float, ack_alone: bool = False) -> list[bytes] | None:
        """Send the DATAGRAM frames queued in aioquic, as far as congestion control and pacing let.

        Returns the UDP payloads to send to the current peer address, or None when frames are
        queued and the short cut cannot send now (see can_send): aioquic's own sending must
        take them. Frames left queued (window full, pacing, or a frame too big for any packet)
        stay for aioquic's own sending, which keeps their order. An ACK that is owed rides in
        the first packet. With none queued, an ACK that is due goes alone if ``ack_alone``
        (the caller knows aioquic has nothing to send it with; else aioquic takes it).
        """
        q = self.quic
        pending = q._datagrams_pending
        streams = self._streams_to_send() if self._streams else []
        if not pending and not streams:
            space = self._space
            if not ack_alone or space is None or space.ack_at is None or space.ack_at > now or not self.can_send():
                return []
            return [self._ack_only(space, now)]
        if not self.can_send():
            return None
        pair, space = self._pair, self._space
        assert pair is not None and space is not None
        loss = q._loss
        pacer = loss._pacer
        if not isinstance(pacer, TunnelPacer):
            return None  # (quic_config installs one on every connection)
        peer_cid = q._peer_cid.cid
        header_size = 1 + len(peer_cid) + PN_SEND_SIZE
        packet_room = q._max_datagram_size - header_size - AEAD_TAG
        seal = _Sealer(pair.send, self._first_byte(pair), peer_cid).seal
        record = self._record
        pn = q._packet_number
        out: list[bytes] = []
        allowed = pacer.allowance(now)
        cc = loss._cc  # (the window and the bytes in flight are properties of loss recovery over it)
        paced = False  # stopped by the pacer, with frames left
        served: list[QuicStream] = []  # streams that sent, for aioquic's round-robin order
        while pending or streams:
            if allowed is not None and len(out) >= allowed:
                paced = True
                break
            room = min(packet_room, cc.congestion_window - cc.bytes_in_flight - header_size - AEAD_TAG)
            frames: list[bytes] = []
            used = 0
            handlers: list[tuple[Callable[..., None], Any]] = []
            if space.ack_at is not None and not out:
                ack, _ = self._ack_frame(space, now)
                if len(ack) + (3 + len(pending[0]) if pending else MIN_STREAM_ROOM) <= room:
                    frames.append(ack)
                    used = len(ack)
                    handlers.append((q._on_ack_delivery, (space, space.largest_received_packet)))
                    space.ack_at = None
            carried = len(frames)
            while pending:
                data = pending[0]
                size = len(data)
                # (the varint inline for a 2-byte length: nearly every frame)
                length = (size | 0x4000).to_bytes(2, "big") if 0x40 <= size < 0x4000 else _varint(size)
                size += 1 + len(length)
                if used + size > room:
                    break
                frames += (b"\x31", length, data)
                used += size
                pending.popleft()
            if streams:
                used = self._stream_frames(streams, room - used, frames, handlers, served) + used
            if len(frames) == carried:  # no frame fits: an ACK alone is aioquic's
                if carried:
                    space.ack_at = now  # (the check above makes this unreachable)
                break
            datagram = seal(pn, b"".join(frames))
            record(space, pn, datagram, now, True, handlers)
            pn += 1
            out.append(datagram)
        if allowed is not None:
            pacer.spend(len(out))
        if paced:
            q._pacing_at = pacer.next_send_time(now=now)  # aioquic's timer then wakes the sender
        q._packet_number = pn
        self.sent += len(out)
        if ack_alone and space.ack_at is not None and space.ack_at <= now:
            # Due, and no room to ride in a packet of frames (a full congestion window, which
            # does not hold back an ACK): alone, as aioquic would send it.
            out.append(self._ack_only(space, now))
        if served:
            # aioquic's service order: streams that sent go to the back of the queue.
            q._streams_queue = [s for s in q._streams_queue if s not in served] + served
        return out

    def _streams_to_send(self) -> list[QuicStream]:
        """The carried streams with data queued and nothing but data to send, in aioquic's service
        order. A stream with a FIN, a reset or a STOP_SENDING to send is left to aioquic."""
        carried = self._streams
        return [
            s
            for s in self.quic._streams_queue
            if not s.sender.buffer_is_empty
            and s.stream_id in carried
            and not s.is_blocked
            and not s.sender.reset_pending
            and not s.sender._pending_eof
            and not s.receiver.stop_pending
        ]

    def _stream_frames(
        self,
        streams: list[QuicStream],
        room: int,
        frames: list[bytes],
        handlers: list[tuple[Callable[..., None], Any]],
        served: list[QuicStream],
    ) -> int:
        """Fill ``room`` bytes of a packet with STREAM frames of ``streams`` (taking off the list
        those with nothing more to send now), as aioquic's _write_stream_frame writes them: the
        stream's sender picks the bytes (new or to resend) under the peer's stream and connection
        limits, and is told of their delivery or loss. Returns the bytes used."""
        q = self.quic
        used = 0
        sent: list[QuicStream] = []
        while streams:
            stream = streams[0]
            sender = stream.sender
            if not len(sender._pending):  # (a RangeSet has no truth value)
                sender.buffer_is_empty = True  # (as get_frame would find: all sent, none lost)
                del streams[0]
                continue
            offset = sender._pending[0].start
            stream_id = stream.stream_id
            assert stream_id is not None  # (carried streams are the data streams)
            header_size = 3 + _varint_size(stream_id) + (_varint_size(offset) if offset else 0)
            left = room - used - header_size
            if left <= 0:
                break  # the packet is full
            before = sender.highest_offset
            frame = sender.get_frame(
                left, min(before + q._remote_max_data - q._remote_max_data_used, stream.max_stream_data_remote)
            )
            if frame is None:  # flow control holds it back
                del streams[0]
                continue
            data = frame.data
            q._remote_max_data_used += sender.highest_offset - before
            kind = STREAM_BASE | STREAM_LEN | (STREAM_OFF if offset else 0) | (STREAM_FIN if frame.fin else 0)
            size = len(data)
            if stream_id < 0x40 and 0x4000 <= offset < 0x40000000:  # (nearly always: a 4-byte offset)
                header = bytes((kind, stream_id)) + (((offset | 0x80000000) << 16) | size | 0x4000).to_bytes(6, "big")
            else:
                header = bytes((kind,)) + _varint(stream_id) + (_varint(offset) if offset else b"")
                header += (size | 0x4000).to_bytes(2, "big")
            frames += (header, data)
            used += header_size + size
            handlers.append((sender.on_data_delivery, (offset, offset + size, frame.fin)))
            if stream not in served:
                served.append(stream)
            if stream not in sent:
                sent.append(stream)
        if sent and streams:
            # aioquic's round robin, a packet at a time: the streams that sent in this packet go
            # to the back, so that a ping on another stream waits for one packet, not the burst.
            streams[:] = [s for s in streams if s not in sent] + [s for s in sent if s in streams]
        return used

    def _first_byte(self, pair: CryptoPair) -> int:
        """A short header's first byte, before header protection: spin bit, key phase, and the
        2-byte packet number we send."""
        # (pair.key_phase without the property: with no key update requested, which can_send()
        # checked, it is the receiving key's phase.)
        return 0x40 | (self.quic._spin_bit << 5) | (pair.recv.key_phase << 2) | (PN_SEND_SIZE - 1)

    def _record(
        self,
        space: QuicPacketSpace,
        pn: int,
        datagram: bytes,
        now: float,
        eliciting: bool,
        handlers: list[tuple[Callable[..., None], Any]],
    ) -> None:
        """Register a packet just sealed with aioquic's loss recovery, as aioquic registers its
        own: in flight and ack-eliciting (a DATAGRAM frame, a PING), or neither (an ACK alone)."""
        q = self.quic
        # Every field of the dataclass, filled in directly: its __init__ with keywords costs twice
        # this, once a packet (tests/unit/test_quic_fastpath.py checks the fields).
        packet = _new_object(QuicSentPacket)
        packet.__dict__ = {
            "epoch": Epoch.ONE_RTT,
            "in_flight": eliciting,
            "is_ack_eliciting": eliciting,
            "is_crypto_packet": False,
            "packet_number": pn,
            "packet_type": QuicPacketType.ONE_RTT,
            "sent_time": now,
            "sent_bytes": len(datagram),
            "delivery_handlers": handlers,
            "quic_logger_frames": [],
        }
        q._loss.on_packet_sent(packet=packet, space=space)
        q._network_paths[0].bytes_sent += len(datagram)
        # Restart the idle timer on the first ack-eliciting packet since one was received.
        if eliciting and not q._ack_eliciting_sent_since_receipt:
            q._close_at = now + q._idle_timeout()
            q._ack_eliciting_sent_since_receipt = True

    def _ack_frame(self, space: QuicPacketSpace, now: float) -> tuple[bytes, int]:
        """An ACK frame for what the space has received, as aioquic's _write_ack_frame makes it,
        and the number of ranges it holds."""
        q = self.quic
        received_at = space.largest_received_time if space.largest_received_time is not None else now
        delay = int((now - received_at) * 1000000) >> q._local_ack_delay_exponent
        return _ack_frame_bytes(space.ack_queue, delay)

    def _ack_only(self, space: QuicPacketSpace, now: float) -> bytes:
        """A packet for an ACK that is due with nothing to ride in, as aioquic's datagrams_to_send
        would send it (its packet builder costs several times this: 0.15 ms of an idle ping's
        CPU at the end that acknowledges the reply). Neither paced nor held by the congestion
        window, as in aioquic; not in flight unless aioquic's ACK-of-ACK rule adds a PING."""
        q, pair = self.quic, self._pair
        assert pair is not None  # (can_send() found the connection steady)
        crypto = pair.send
        pn = q._packet_number
        ack, ranges = self._ack_frame(space, now)
        handlers: list[tuple[Callable[..., None], Any]] = [(q._on_ack_delivery, (space, space.largest_received_packet))]
        space.ack_at = None
        # aioquic's ACK-of-ACK trigger: a PING in every 8th packet number while the ACK holds gaps,
        # so that the peer acknowledges it and the ranges behind it can be forgotten.
        ping = ranges > 1 and pn % 8 == 0
        payload = ack + bytes((PING,)) if ping else ack
        datagram = _Sealer(crypto, self._first_byte(pair), q._peer_cid.cid).seal(pn, payload)
        self._record(space, pn, datagram, now, ping, handlers)
        q._packet_number = pn + 1
        self.sent += 1
        return datagram

    # -- receiving ----------------------------------------------------------------------------
    def peek(self, data: bytes, addr: NetworkAddress) -> list[bytes] | None:
        """The DATAGRAM frames of a packet read ahead of its turn, to deliver now; nothing else of
        the packet is applied (no ACK range, no ACK frame, no timer) until receive_many() takes it
        in arrival order, so the peer never sees it acknowledged ahead of the packets before it.
        None when it is not one of ours, was seen already or carries no DATAGRAM frame."""
        opener, space = self._opener(), self._space
        if opener is None or space is None:
            return None
        opened = opener.open(data, addr, space.expected_packet_number)
        if opened is None or not opened[1][0] or opened[0] in self._delivered_early:
            return None
        if len(self._delivered_early) >= MAX_EARLY:  # receive_many() never came for some (a closed path)
            self._delivered_early.clear()
        self._delivered_early.add(opened[0])
        return opened[1][0]

    def receive_many(
        self, datagrams: Sequence[tuple[bytes, NetworkAddress]], start: int, now: float
    ) -> tuple[int, list[bytes], list[tuple[RangeSet, int]], list[tuple[int, bytes]]]:
        """Apply ``datagrams[start:]`` while they are packets for the short cut, in order.

        Returns how many it took, the payloads of their DATAGRAM frames in order (none for those
        peek() delivered), their ACK frames (ranges, encoded delay) in order, which the caller
        applies with apply_acks() once it has delivered the payloads: loss recovery's work must not
        delay a ping on its way to the device; and the data of their STREAM frames (stream id,
        bytes) in order, already counted as received on the stream. It stops before the first
        datagram that is not one of ours (aioquic's ``receive_datagram`` must take that one:
        nothing of it was changed), and after a packet carrying something other than TCP or UDP
        in a DATAGRAM frame (a ping: delivered at once, not behind the decryption of the rest of
        the batch).
        """
        opener = self._opener()
        if opener is None:
            return 0, [], [], []
        q, space = self.quic, self._space
        assert space is not None  # (_opener found the connection steady)
        early = self._delivered_early
        payloads: list[bytes] = []
        acks: list[tuple[RangeSet, int]] = []
        stream_data: list[tuple[int, bytes]] = []
        ack_queue, received = space.ack_queue, space.received_packets
        expected = space.expected_packet_number
        largest = space.largest_received_packet
        ack_at = space.ack_at
        # Packet numbers arrive in order nearly always: each run of consecutive ones goes into the
        # ACK ranges in one call, which leaves the same ranges as one call each.
        run_start = run_stop = -1
        index, end = start, len(datagrams)
        while index < end:
            data, addr = datagrams[index]
            opened = opener.open(data, addr, expected)
            if opened is None:
                break
            index += 1
            # The packet is ours: apply it as aioquic's receive_datagram would, except for its
            # ACK frame (see above).
            pn, (frames, ack, eliciting, streamed) = opened
            if streamed:  # (now: the next packet's data is checked against this one's)
                opener.take(streamed)
                stream_data += [(stream_id, data) for stream_id, _, data in streamed]
            if early and pn in early:
                early.discard(pn)
                frames = []
            if pn > expected:  # (sic: aioquic's own rule, kept identical)
                expected = pn + 1
            if pn > q._spin_highest_pn:
                spin = bool(opener.first_byte & 0x20)
                q._spin_bit = not spin if q._is_client else spin
                q._spin_highest_pn = pn
            if pn > largest:
                largest = pn
                space.largest_received_time = now
            if pn == run_stop:
                run_stop += 1
            else:
                if run_stop >= 0:
                    _acknowledge(ack_queue, run_start, run_stop)
                run_start, run_stop = pn, pn + 1
            received.add(pn)
            if eliciting:
                ack_at = now + LONE_ACK_DELAY if ack_at is None else min(ack_at, now + q._ack_delay)
            if ack is not None:
                acks.append(ack)
            if frames:
                payloads += frames
                other = False  # a packet that is neither TCP nor UDP (what the pump writes at once)
                for frame in frames:
                    if len(frame) <= 9 or (frame[9] if frame[0] >> 4 == 4 else frame[6]) not in (6, 17):
                        other = True
                if other:
                    break
        taken = index - start
        if taken:
            if run_stop >= 0:
                _acknowledge(ack_queue, run_start, run_stop)
            space.expected_packet_number = expected
            space.largest_received_packet = largest
            space.ack_at = ack_at
            q._close_at = now + q._idle_timeout()
            q._ack_eliciting_sent_since_receipt = False
            self.received += taken
        return taken, payloads, acks, stream_data

    def _opener(self) -> _Opener | None:
        """What opens packets for the short cut now, or None while it cannot take any."""
        q = self.quic
        if q._state is not QuicConnectionState.CONNECTED or q._close_pending:
            return None
        if self._pair is None and not self._steady():
            return None
        path = q._network_paths[0]
        pair = self._pair
        assert pair is not None
        crypto = pair.recv
        if not path.is_validated or crypto.aead is None:
            return None
        space = self._space
        assert space is not None
        return _Opener(
            crypto,
            q.host_cid,
            path.addr,
            q._configuration.max_datagram_frame_size,
            space.received_packets,
            self._streams,
            q._local_max_data,
        )

    def apply_acks(self, acks: list[tuple[RangeSet, int]], now: float) -> None:
        """Apply the ACK frames receive_many() returned (see there), in order."""
        q = self.quic
        loss = q._loss
        cc = loss._cc if isinstance(loss._cc, TunnelCongestionControl) else None
        space = self._space
        assert space is not None  # (receive_many() took the packets)
        for ack_ranges, delay_encoded in acks:
            ack_delay = (delay_encoded << q._remote_ack_delay_exponent) / 1000000
            loss.peer_completed_address_validation = True
            if cc is not None:
                cc.peer_ack_delay = min(ack_delay, loss.max_ack_delay)
            loss.on_ack_received(ack_rangeset=ack_ranges, ack_delay=ack_delay, now=now, space=space)
            if cc is not None:
                cc.peer_ack_delay = 0.0  # (no RTT sample taken: no newly acknowledged packet)


class _Opener:
    """Removes header protection from and decrypts the short cut's packets under one set of 1-RTT
    receive keys, for one batch (the keys change only in aioquic's own receive, between batches).

    It calls the ciphers aioquic's wrappers hold directly (see _ciphers): the wrappers cost three
    Python calls a packet around two calls into OpenSSL."""

    __slots__ = (
        "_cid",
        "_cid_end",
        "_decrypt",
        "_header_size",
        "_iv",
        "_key_phase",
        "_mask",
        "_max_data",
        "_max_frame",
        "_min_size",
        "_peer",
        "_received",
        "_streams",
        "first_byte",
    )

    def __init__(
        self,
        crypto: Any,
        cid: bytes,
        peer: NetworkAddress,
        max_frame: int | None,
        received: QuicPacketNumberWindow,
        streams: dict[int, QuicStream],
        max_data: Any,
    ) -> None:
        self._mask, aead, self._iv = _ciphers(crypto)
        self._decrypt: Callable[[bytes, bytes, bytes], bytes] = aead.decrypt
        self._key_phase: int = crypto.key_phase
        self._cid, self._cid_end = cid, 1 + len(cid)
        self._header_size = self._cid_end + PN_SEND_SIZE
        self._min_size = self._cid_end + PN_MAX_SIZE + SAMPLE_SIZE
        self._peer = peer
        self._max_frame = max_frame
        self._received = received
        self._streams = streams
        self._max_data = max_data  # aioquic's connection-level receive limit (a Limit)
        self.first_byte = 0  # the last packet opened's, unprotected

    def open(self, data: bytes, addr: NetworkAddress, expected: int) -> tuple[int, _Frames] | None:
        """The packet number and frames of one of our packets, or None when aioquic must take it
        (changing nothing): another connection id or address, another key phase or packet number
        length, reserved bits set, a duplicate, a packet that does not decrypt, or a frame the
        short cut does not handle."""
        cid_end = self._cid_end
        if (
            len(data) < self._min_size
            or data[0] & 0xC0 != 0x40  # a long header, or not a QUIC packet
            or data[1:cid_end] != self._cid
            or addr != self._peer
        ):
            return None
        # Header protection (RFC 9001 section 5.4): the sample starts 4 bytes after the packet
        # number's start.
        sample_at = cid_end + PN_MAX_SIZE
        mask = self._mask(data[sample_at : sample_at + SAMPLE_SIZE])
        first = data[0] ^ (mask[0] & 0x1F)
        if (first >> 2) & 1 != self._key_phase or first & 0x1B != PN_SEND_SIZE - 1:
            return None  # a key update, a packet number length we do not send, reserved bits set
        truncated = ((data[cid_end] ^ mask[1]) << 8) | (data[cid_end + 1] ^ mask[2])
        pn = _decode_packet_number(truncated, expected)
        if pn in self._received:
            return None  # a duplicate: aioquic drops it
        header_size = self._header_size
        plain_header = bytes((first, *data[1:cid_end])) + truncated.to_bytes(2, "big")
        try:
            payload = self._decrypt((self._iv ^ pn).to_bytes(12, "big"), data[header_size:], plain_header)
        except InvalidTag:
            return None  # aioquic drops it (and logs why)
        self.first_byte = first
        # Nearly every packet is one DATAGRAM frame with a 1- or 2-byte length: read directly.
        if payload[0] == DATAGRAM_WITH_LENGTH and self._max_frame is not None and len(payload) > 2:
            size = payload[1]
            if size < 0x40:
                start = 2
            elif size < 0x80:
                size, start = ((size & 0x3F) << 8) | payload[2], 3
            else:
                start = 0
            if start and start + size == len(payload) and size + start - 1 < self._max_frame:
                return pn, ([payload[start:]], None, True, [])
        elif payload[0] & ~STREAM_OFF == STREAM_BASE | STREAM_LEN:  # (as is nearly every one of stream data)
            lone = _lone_stream_frame(payload)
            if lone is not None:
                return (pn, ([], None, True, [lone])) if self._in_order([lone]) else None
        parsed = _parse_frames(payload, self._max_frame)
        if parsed is None or (parsed[3] and not self._in_order(parsed[3])):
            return None
        return pn, parsed

    def _in_order(self, frames: list[_StreamFrame]) -> bool:
        """Whether every STREAM frame is on a carried stream and is its next bytes, within the
        flow-control limits: what aioquic's receiver would deliver at once, with no buffering.
        A gap, a retransmission or data out of order is aioquic's (it buffers and reorders)."""
        streams = self._streams
        total = 0
        for stream_id, offset, data in frames:
            stream = streams.get(stream_id)
            if stream is None:
                return False
            receiver = stream.receiver
            if (
                not data
                or offset != receiver._buffer_start
                or offset != receiver.highest_offset
                or receiver._buffer
                or receiver.is_finished
                or receiver._final_size is not None
                or offset + len(data) > stream.max_stream_data_local
            ):
                return False  # (two frames of one stream in a packet end here too: the offset)
            total += len(data)
        max_data = self._max_data
        return bool(max_data.used + total <= max_data.value)

    def take(self, frames: list[_StreamFrame]) -> None:
        """Apply STREAM frames open() accepted, as aioquic's receiver does for in-order data."""
        streams, max_data = self._streams, self._max_data
        for stream_id, offset, data in frames:
            receiver = streams[stream_id].receiver
            receiver._buffer_start = receiver.highest_offset = offset + len(data)
            max_data.used += len(data)


def _acknowledge(ack_queue: RangeSet, start: int, stop: int) -> None:
    """Add received packet numbers to the ranges to acknowledge, keeping at most MAX_ACK_RANGES
    (the oldest go), as aioquic does."""
    ack_queue.add(start, stop)
    if len(ack_queue) > MAX_ACK_RANGES:
        ack_queue.shift()


def _ciphers(crypto: Any) -> tuple[Callable[[bytes], bytes], Any, int]:
    """A crypto context's header-protection mask function, AEAD and IV, as the wrappers of aioquic
    1.7.2 hold them (``HeaderProtection._encryptor``/``._is_chacha20``, ``AEAD._aead``/``._iv``):
    for AES, the mask is one ECB block through the kept context; ChaCha20 keeps aioquic's ``_mask``."""
    hp, aead = crypto.hp, crypto.aead
    return (hp._mask if hp._is_chacha20 else hp._encryptor.update), aead._aead, aead._iv


def _ack_frame_bytes(ack_queue: RangeSet, delay: int) -> tuple[bytes, int]:
    """An ACK frame (type, largest, encoded delay, ranges) of at most MAX_ACK_FRAME bytes, older
    ranges left out, as aioquic writes it; and how many ranges it holds."""
    if len(ack_queue) == 1:
        # One range (no loss, no reordering: nearly always), written directly: the same bytes
        # as aioquic's push_ack_frame, at a third of its calls.
        acked = ack_queue.bounds()
        largest = acked.stop - 1
        return b"".join((ACK_BYTE, _varint(largest), _varint(delay), b"\x00", _varint(largest - acked.start))), 1
    buf = Buffer(capacity=MAX_ACK_FRAME)
    buf.push_uint_var(ACK)
    ranges = push_ack_frame(buf, ack_queue, delay, MAX_ACK_FRAME - 1)
    return buf.data, ranges


class _Sealer:
    """Builds 1-RTT packets with a 2-byte packet number (payload encrypted, header protected) under
    one set of send keys, calling the ciphers directly as _Opener does."""

    __slots__ = ("_encrypt", "_iv", "_mask", "_prefix")

    def __init__(self, crypto: Any, first_byte: int, peer_cid: bytes) -> None:
        self._mask, aead, self._iv = _ciphers(crypto)
        self._encrypt: Callable[[bytes, bytes, bytes], bytes] = aead.encrypt
        self._prefix = bytes((first_byte, *peer_cid))

    def seal(self, pn: int, payload: bytes) -> bytes:
        header = self._prefix + (pn & 0xFFFF).to_bytes(PN_SEND_SIZE, "big")
        sealed = self._encrypt((self._iv ^ pn).to_bytes(12, "big"), payload, header)
        # Header protection (RFC 9001 section 5.4): the sample starts 4 bytes after the packet
        # number's start; a frame is at least 2 bytes, so the sealed payload always has one.
        sample_at = PN_MAX_SIZE - PN_SEND_SIZE
        mask = self._mask(sealed[sample_at : sample_at + SAMPLE_SIZE])
        protected = bytearray(header)
        protected[0] ^= mask[0] & 0x1F
        protected[-2] ^= mask[1]
        protected[-1] ^= mask[2]
        return bytes(protected) + sealed


def _decode_packet_number(truncated: int, expected: int) -> int:
    """RFC 9000 appendix A.3, for 2-byte packet numbers."""
    window, half = 0x10000, 0x8000
    candidate = (expected & ~0xFFFF) | truncated
    if candidate <= expected - half and candidate < (1 << 62) - window:
        return candidate + window
    if candidate > expected + half and candidate >= window:
        return candidate - window
    return candidate


def _lone_stream_frame(payload: bytes) -> _StreamFrame | None:
    """The STREAM frame of a payload that is one such frame and nothing else, with a length, no
    FIN and a 1-byte stream id (nearly every packet of stream data), read directly; None when the
    payload is anything else (_parse_frames reads it)."""
    if len(payload) < 4 or payload[1] >= 0x40 or payload[0] & ~STREAM_OFF != STREAM_BASE | STREAM_LEN:
        return None
    at, offset = 2, 0
    if payload[0] & STREAM_OFF:
        size = 1 << (payload[2] >> 6)
        offset = int.from_bytes(payload[2 : 2 + size], "big") & ((1 << (8 * size - 2)) - 1)
        at += size
    if len(payload) < at + 2 or payload[at] >> 6 != 1:
        return None  # (aioquic writes the length in 2 bytes)
    length = ((payload[at] & 0x3F) << 8) | payload[at + 1]
    if at + 2 + length != len(payload):
        return None
    return payload[1], offset, payload[at + 2 :]


def _parse_frames(payload: bytes, max_datagram_frame_size: int | None) -> _Frames | None:
    """The DATAGRAM payloads, the ACK (ranges, encoded delay) if any, whether the packet is
    ack-eliciting, and its STREAM frames; None if the packet holds any other frame (a STREAM frame
    with FIN among them) or is malformed (aioquic's concern)."""
    buf = Buffer(data=payload)
    datagrams: list[bytes] = []
    streams: list[_StreamFrame] = []
    ack: tuple[RangeSet, int] | None = None
    eliciting = found = False
    end = len(payload)
    try:
        while buf.tell() < end:
            at = buf.tell()
            kind = payload[at]
            if kind == PADDING:
                rest = payload[at:]
                buf.seek(at + len(rest) - len(rest.lstrip(b"\x00")))
                found = True
                continue
            buf.seek(at + 1)
            if kind in (DATAGRAM_WITH_LENGTH, DATAGRAM):
                length = buf.pull_uint_var() if kind == DATAGRAM_WITH_LENGTH else end - at - 1
                datagrams.append(buf.pull_bytes(length))
                if max_datagram_frame_size is None or buf.tell() - at - 1 >= max_datagram_frame_size:
                    return None  # aioquic closes the connection for it
                eliciting = True
            elif kind in (ACK, ACK_ECN):
                if ack is not None:
                    return None  # two ACK frames in one packet: leave the oddity to aioquic
                ack = pull_ack_frame(buf)
                if kind == ACK_ECN:
                    buf.pull_uint_var()
                    buf.pull_uint_var()
                    buf.pull_uint_var()
            elif STREAM_BASE <= kind <= STREAM_LAST and not kind & STREAM_FIN:  # (a FIN is aioquic's)
                stream_id = buf.pull_uint_var()
                offset = buf.pull_uint_var() if kind & STREAM_OFF else 0
                length = buf.pull_uint_var() if kind & STREAM_LEN else end - buf.tell()
                if offset + length > UINT_VAR_MAX:
                    return None  # aioquic closes the connection for it
                streams.append((stream_id, offset, buf.pull_bytes(length)))
                eliciting = True
            elif kind == PING:
                eliciting = True
            else:
                return None
            found = True
    except (BufferReadError, ValueError):
        return None
    if not found:
        return None
    return datagrams, ack, eliciting, streams
