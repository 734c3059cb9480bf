"""A short cut through aioquic for the 1-RTT packets of the DATAGRAM-frame data path.

aioquic builds and parses every packet through general machinery: a packet builder that asks
each kind of frame whether it has something to send, and a parser that dispatches each frame to a
handler and queues an event. For a tunnel packet that crosses as one DATAGRAM frame this costs
about 90 us to send and 60 us to receive on the benchmark machine, far more than the encryption
itself, and it is most of a QUIC-mode ping's round trip. The short cut handles the common case
with a few lines per packet and leaves everything else to aioquic, on the same connection state:

* sending (:meth:`DatagramFastPath.flush`): DATAGRAM frames queued in aioquic go out in packets
  of DATAGRAM frames only, under aioquic's congestion window and pacer, registered with its loss
  recovery exactly as its own packets are (so ACKs, RTT samples and congestion control work
  unchanged). ACKs, stream data and control frames still go out through aioquic's
  ``datagrams_to_send``.
* receiving (:meth:`DatagramFastPath.receive`): a short-header packet for our current connection
  id from the current peer address, in the current key phase, holding only PADDING, PING, ACK and
  DATAGRAM frames, is decrypted and applied here; anything else (stream data, control frames, a key
  update, a duplicate, a packet that does not decrypt) goes to aioquic's ``receive_datagram``
  untouched, as nothing is changed before the packet is known to be one of ours.

The wire format is plain RFC 9000/9001/9221: a peer running stock aioquic (or any QUIC stack)
sees ordinary packets. Used only between two rustvpn peers that agreed on ``datagram=1``.

aioquic internals relied on (aioquic 1.7.2), all read or updated as its own code does:
``QuicConnection._cryptos``, ``._spaces``, ``._loss`` (with ``._pacer``), ``._packet_number``,
``._peer_cid``, ``._network_paths``, ``._datagrams_pending``, ``._max_datagram_size``,
``._spin_bit``/``._spin_highest_pn``, ``._close_at``/``._idle_timeout()``,
``._ack_eliciting_sent_since_receipt``, ``._ack_delay``, ``._remote_ack_delay_exponent``,
``._pacing_at``, ``._handshake_confirmed``, ``._close_pending``, ``._quic_logger``, and the
``aead``/``hp`` objects of a crypto context. tests/unit/test_quic_fastpath.py checks the short cut
against stock aioquic peers in both directions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from aioquic._buffer import Buffer, BufferReadError
from aioquic._crypto import CryptoError
from aioquic.quic.connection import NetworkAddress, QuicConnection, QuicConnectionState
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicPacketType, pull_ack_frame, push_ack_frame
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.rangeset import RangeSet
from aioquic.quic.recovery import MAX_ACK_RANGES, QuicPacketSpace
from aioquic.tls import Epoch

from rustvpn.quic_congestion import TunnelCongestionControl

__all__ = ["DatagramFastPath"]

AEAD_TAG = 16
PN_SEND_SIZE = 2  # bytes of packet number we send, as aioquic does
PN_MAX_SIZE = 4
SAMPLE_SIZE = 16
MAX_ACK_FRAME = 128  # bytes an ACK frame may take in a packet of ours (older ranges are left out)

PADDING, PING, ACK, ACK_ECN = 0x00, 0x01, 0x02, 0x03
ACK_BYTE = bytes((ACK,))
DATAGRAM, DATAGRAM_WITH_LENGTH = 0x30, 0x31


def _varint(value: int) -> bytes:
    """A QUIC variable-length integer in its shortest form, as aioquic's Buffer writes it."""
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    return (value | 0xC000000000000000).to_bytes(8, "big")


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

# What _parse_frames finds: DATAGRAM payloads, the ACK (ranges, encoded delay) if any, and whether
# the packet is ack-eliciting.
_Frames = tuple[list[bytes], "tuple[RangeSet, int] | None", bool]


class DatagramFastPath:
    """The short cut for one connection (see the module docstring)."""

    def __init__(self, quic: QuicConnection) -> None:
        self.quic = quic
        self.sent = 0  # packets sent and received through the short cut (for tests and status)
        self.received = 0
        self.acked = False  # the last packet receive() took carried an ACK frame, not applied yet
        self._ack: tuple[Any, int] | None = None
        # Packet numbers whose DATAGRAM frames peek() delivered ahead of their turn: receive()
        # applies them in order without delivering them again.
        self._delivered_early: set[int] = set()
        # The 1-RTT keys and packet space, once the handshake is over for good (see _steady): the
        # same objects for the rest of the connection, and looking them up by Epoch costs a
        # Python-level Enum.__hash__ each time.
        self._pair: CryptoPair | None = None
        self._space: QuicPacketSpace | None = None

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
        if not pending:
            space = self._space
            if not ack_alone or space is None or space.ack_at is None or space.ack_at > now or not self.can_send():
                return []
            return [self._ack_only(space, now)]
        if not self.can_send():
            return None
        pair, space = self._pair, self._space
        assert pair is not None and space is not None
        crypto = pair.send
        loss = q._loss
        pacer = loss._pacer
        peer_cid = q._peer_cid.cid
        header_size = 1 + len(peer_cid) + PN_SEND_SIZE
        packet_room = q._max_datagram_size - header_size - AEAD_TAG
        first_byte = self._first_byte(pair)
        aead, hp = crypto.aead, crypto.hp
        pn = q._packet_number
        out: list[bytes] = []
        while pending:
            pacing_at = pacer.next_send_time(now=now)
            if pacing_at is not None:
                q._pacing_at = pacing_at  # aioquic's timer then wakes the sender
                break
            cc = loss._cc  # (the window and the bytes in flight are properties of loss recovery over it)
            room = min(packet_room, cc.congestion_window - cc.bytes_in_flight - header_size - AEAD_TAG)
            frames: list[bytes] = []
            used = 0
            handlers: list[tuple[Callable[..., None], Any]] = []
            if space.ack_at is not None and not out:
                ack, _ = self._ack_frame(space, now)
                if len(ack) + 3 + len(pending[0]) <= room:
                    frames.append(ack)
                    used = len(ack)
                    handlers.append((q._on_ack_delivery, (space, space.largest_received_packet)))
                    space.ack_at = None
            while pending:
                data = pending[0]
                length = _varint(len(data))
                size = 1 + len(length) + len(data)
                if used + size > room:
                    break
                frames += (b"\x31", length, data)
                used += size
                pending.popleft()
            if len(frames) == len(handlers):  # no DATAGRAM frame fits: an ACK alone is aioquic's
                if handlers:
                    space.ack_at = now  # (the check above makes this unreachable)
                break
            datagram = _seal(aead, hp, first_byte, peer_cid, pn, b"".join(frames))
            self._record(space, pn, datagram, now, True, handlers)
            pacer.update_after_send(now=now)
            pn += 1
            out.append(datagram)
        q._packet_number = pn
        self.sent += len(out)
        return out

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
        packet = QuicSentPacket(
            epoch=Epoch.ONE_RTT,
            in_flight=eliciting,
            is_ack_eliciting=eliciting,
            is_crypto_packet=False,
            packet_number=pn,
            packet_type=QuicPacketType.ONE_RTT,
            sent_time=now,
            sent_bytes=len(datagram),
            delivery_handlers=handlers,
        )
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
        datagram = _seal(crypto.aead, crypto.hp, self._first_byte(pair), q._peer_cid.cid, pn, payload)
        self._record(space, pn, datagram, now, ping, handlers)
        q._packet_number = pn + 1
        self.sent += 1
        return datagram

    # -- receiving ----------------------------------------------------------------------------
    def peek(self, data: bytes, addr: NetworkAddress) -> list[bytes] | None:
        """The DATAGRAM frames of a packet read ahead of its turn, to deliver now; nothing else of
        the packet is applied (no ACK range, no ACK frame, no timer) until receive() takes it in
        arrival order, so the peer never sees it acknowledged ahead of the packets before it.
        None when it is not one of ours, was seen already or carries no DATAGRAM frame."""
        opened = self._open_ours(data, addr)
        if opened is None or not opened[2][0] or opened[1] in self._delivered_early:
            return None
        if len(self._delivered_early) >= MAX_EARLY:  # receive() never came for some (a closed path)
            self._delivered_early.clear()
        self._delivered_early.add(opened[1])
        return opened[2][0]

    def receive(self, data: bytes, addr: NetworkAddress, now: float) -> list[bytes] | None:
        """Apply one UDP payload if it is a packet for the short cut.

        Returns the payloads of its DATAGRAM frames (maybe none; none if peek() delivered them),
        or None when it is not one of ours: aioquic's ``receive_datagram`` must then take it;
        nothing was changed.
        """
        opened = self._open_ours(data, addr)
        if opened is None:
            return None
        plain_header, pn, (datagrams, ack, ack_eliciting) = opened
        if self._delivered_early:
            with contextlib.suppress(KeyError):
                self._delivered_early.remove(pn)
                datagrams = []
        q, space = self.quic, self._space
        assert space is not None  # (_open_ours found the connection steady)
        self.acked = ack is not None
        self._ack = ack
        # From here on the packet is ours: apply it as aioquic's receive_datagram would, except
        # for its ACK frame, which apply_ack() applies once the caller has delivered the packet's
        # DATAGRAM frames: loss recovery's work must not delay a ping on its way to the device.
        if pn > space.expected_packet_number:  # (sic: aioquic's own rule, kept identical)
            space.expected_packet_number = pn + 1
        if pn > q._spin_highest_pn:
            spin = bool(plain_header[0] & 0x20)
            q._spin_bit = not spin if q._is_client else spin
            q._spin_highest_pn = pn
        q._close_at = now + q._idle_timeout()
        q._ack_eliciting_sent_since_receipt = False
        if pn > space.largest_received_packet:
            space.largest_received_packet = pn
            space.largest_received_time = now
        space.ack_queue.add(pn)
        space.received_packets.add(pn)
        if len(space.ack_queue) > MAX_ACK_RANGES:
            space.ack_queue.shift()
        if ack_eliciting:
            if space.ack_at is None:
                space.ack_at = now + LONE_ACK_DELAY
            else:
                space.ack_at = min(space.ack_at, now + q._ack_delay)
        self.received += 1
        return datagrams

    def _open_ours(self, data: bytes, addr: NetworkAddress) -> tuple[bytes, int, _Frames] | None:
        """Decrypt a packet for the short cut and parse its frames, changing nothing: its plain
        header, packet number and frames, or None when aioquic must take it."""
        q = self.quic
        cid = q.host_cid
        header_size = 1 + len(cid) + PN_SEND_SIZE
        if (
            len(data) < header_size + PN_MAX_SIZE + SAMPLE_SIZE - PN_SEND_SIZE
            or data[0] & 0xC0 != 0x40  # a long header, or not a QUIC packet
            or data[1 : 1 + len(cid)] != cid
            or q._state is not QuicConnectionState.CONNECTED
            or q._close_pending
            or (self._pair is None and not self._steady())
        ):
            return None
        path = q._network_paths[0]
        if path.addr != addr or not path.is_validated:
            return None
        pair, space = self._pair, self._space
        assert pair is not None and space is not None
        crypto = pair.recv
        if crypto.aead is None:
            return None
        try:
            plain_header, pn, payload = self._open(crypto, data, 1 + len(cid), space.expected_packet_number)
        except (CryptoError, _NotOurs):
            return None  # aioquic drops it (and logs why), or takes a key update
        if pn in space.received_packets or plain_header[0] & 0x18:
            return None  # a duplicate, or reserved bits set: aioquic drops or closes
        parsed = _parse_frames(payload, q._configuration.max_datagram_frame_size)
        if parsed is None:
            return None
        return plain_header, pn, parsed

    def apply_ack(self, now: float) -> None:
        """Apply the ACK frame of the last packet receive() took (see there)."""
        ack, self._ack, self.acked = self._ack, None, False
        if ack is None:
            return
        q = self.quic
        ack_ranges, delay_encoded = ack
        ack_delay = (delay_encoded << q._remote_ack_delay_exponent) / 1000000
        loss = q._loss
        loss.peer_completed_address_validation = True
        if isinstance(loss._cc, TunnelCongestionControl):
            loss._cc.peer_ack_delay = min(ack_delay, loss.max_ack_delay)
        assert self._space is not None  # (receive() took the packet)
        loss.on_ack_received(ack_rangeset=ack_ranges, ack_delay=ack_delay, now=now, space=self._space)
        if isinstance(loss._cc, TunnelCongestionControl):
            loss._cc.peer_ack_delay = 0.0  # (no RTT sample taken: no newly acknowledged packet)

    @staticmethod
    def _open(crypto: object, data: bytes, pn_offset: int, expected: int) -> tuple[bytes, int, bytes]:
        """Remove header protection and decrypt; raises _NotOurs for another key phase."""
        hp, aead = crypto.hp, crypto.aead  # type: ignore[attr-defined]
        sample_at = pn_offset + PN_MAX_SIZE
        mask = hp._mask(data[sample_at : sample_at + SAMPLE_SIZE])
        first = data[0] ^ (mask[0] & 0x1F)
        if (first >> 2) & 1 != crypto.key_phase or first & 0x03 != PN_SEND_SIZE - 1:  # type: ignore[attr-defined]
            raise _NotOurs  # a key update, or a packet number length we do not send
        truncated = ((data[pn_offset] ^ mask[1]) << 8) | (data[pn_offset + 1] ^ mask[2])
        pn = _decode_packet_number(truncated, expected)
        plain_header = bytes((first, *data[1:pn_offset])) + truncated.to_bytes(2, "big")
        payload = aead.decrypt(data[pn_offset + PN_SEND_SIZE :], plain_header, pn)
        return plain_header, pn, payload


class _NotOurs(Exception):
    pass


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


def _seal(aead: Any, hp: Any, first_byte: int, peer_cid: bytes, pn: int, payload: bytes) -> bytes:
    """A 1-RTT packet with a 2-byte packet number: payload encrypted, header protected."""
    header = bytes((first_byte, *peer_cid)) + (pn & 0xFFFF).to_bytes(PN_SEND_SIZE, "big")
    sealed: bytes = aead.encrypt(payload, header, pn)
    # Header protection (RFC 9001 section 5.4): the sample starts 4 bytes after the packet
    # number's start; a frame is at least 2 bytes, so the sealed payload always has one.
    sample_at = PN_MAX_SIZE - PN_SEND_SIZE
    mask = hp._mask(sealed[sample_at : sample_at + SAMPLE_SIZE])
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


def _parse_frames(payload: bytes, max_datagram_frame_size: int | None) -> _Frames | None:
    """The DATAGRAM payloads, the ACK (ranges, encoded delay) if any, and whether the packet is
    ack-eliciting; None if the packet holds any other frame or is malformed (aioquic's concern)."""
    buf = Buffer(data=payload)
    datagrams: list[bytes] = []
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
            elif kind == PING:
                eliciting = True
            else:
                return None
            found = True
    except (BufferReadError, ValueError):
        return None
    if not found:
        return None
    return datagrams, ack, eliciting
