"""The packet pump shared by both transports: TUN <-> the N packet channels of a session.

Outgoing: read packets from the TUN device in batches, pick a channel per packet (port hash; a
ping's identifier; else round-robin, passing over channels busy with bulk), and hand each channel
all of its packets at once (one TLS record / QUIC send per batch rather than per packet). The first
packet after a quiet spell is read alone (no second read to learn that none follows), and in TCP
mode the answer of the local stack to packets from the peer is read right after writing them.
When a TLS connection's send buffer is over its high-water mark the pump stops reading the TUN
device, so the kernel's queue takes the pressure (and drops), rather than our memory. QUIC channels
never pause the pump: they manage their own queues (CoDel, and drops of bulk beyond a bound).

Incoming: channels deliver decoded packets, which are written to the TUN device at once.

A device with a side queue (tun.py) has pings and other packets that are neither TCP
nor UDP on a queue of their own: the pump writes such packets from the peer there, reads the answer
from there, and reads it whenever it reads the main queue: first, and again once what it read there
is sent.

While no session is attached (start-up, reconnects) the packets read are held, not dropped (see
HeldPackets), and sent first when the next session attaches.

Offload (TCP mode, see offload.py): a device opened with virtio headers hands over 64 KB TCP
segments. In a session where both peers offered offload they cross whole, header included; in any
other session each read is turned into finished MTU-sized packets here before it is sent, and
packets from the peer get an all-zero header on the way in.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence

from rustvpn.event_loop import add_data_reader
from rustvpn.flow_hash import StreamSelector, echo_id, is_echo_reply, is_echo_request
from rustvpn.gro import coalesce, is_udp_merge
from rustvpn.offload import MAX_OFFLOAD_FRAME, VNET_HDR_LEN, ZERO_HDR, OffloadError, is_plain, plain_packets
from rustvpn.stats import Counters
from rustvpn.tun import READ_SIZE, TunDevice

log = logging.getLogger("rustvpn.pump")

# What a channel dropped of a batch instead of queuing it: (packets, bytes, as read). The pump
# counts those as dropped, not as sent, on the channel and in the totals.
Drops = tuple[int, int]
NO_DROPS: Drops = (0, 0)

# Packets, and bytes, read from the TUN device per wake-up before yielding to the event loop: with
# offload one read can be 64 KB, and a long batch delays everything else (pings wait behind it).
# 64 KB (and 64 KB of TLS reads) took a few tenths of a ms off ping under load, at 10% of throughput.
TUN_BATCH = 128
TUN_BATCH_BYTES = 256 * 1024
# A wake-up this soon after the last one means packets are coming in a stream: read them in batches.
BUSY_GAP = 0.001
# A channel handed this much in one batch carries bulk: packets of no flow go elsewhere.
BULK_BYTES = 16 * 1024
# Reads kept while no session is attached: the newest HOLD_PACKETS, at most HOLD_BYTES in all,
# none older than HOLD_SECONDS when the session comes (older ones would only be retransmitted
# anyway by then).
HOLD_PACKETS = 128
HOLD_BYTES = 256 * 1024
HOLD_SECONDS = 1.0


class PacketChannel(ABC):
    """One duplex packet path of a session: a TLS data connection or a QUIC data stream."""

    def __init__(self) -> None:
        self.counters = Counters()
        self._drained: asyncio.Future[None] | None = None
        self.paused = False

    @abstractmethod
    def send_packets(self, packets: list[bytes]) -> Drops:
        """Queue a batch of packets for the peer (framed as the channel's wire format wants);
        returns what was dropped instead (the channel counts those in its ``dropped``)."""

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    async def wait_writable(self) -> None:
        if not self.paused:
            return
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        await self._drained


class HeldPackets:
    """TUN reads waiting for a session, as WireGuard stages packets during its handshake. Sans-IO:
    the caller passes the time.

    Without them the first packet of every connection opened during start-up or a reconnect (a
    TCP SYN, a DNS query, a ping) would be lost and wait for its own retransmission timeout.
    Bounded: the newest ``max_packets`` reads and at most ``max_bytes``, each at most ``max_age``
    seconds old when taken; whatever falls out is counted as dropped by the caller.
    """

    __slots__ = ("_bytes", "_queue", "max_age", "max_bytes", "max_packets")

    def __init__(
        self, max_packets: int = HOLD_PACKETS, max_bytes: int = HOLD_BYTES, max_age: float = HOLD_SECONDS
    ) -> None:
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def size(self) -> int:
        """Bytes held."""
        return self._bytes

    def hold(self, data: bytes, now: float) -> int:
        """Keep one read; returns how many reads were dropped (stale or pushed out, maybe this one)."""
        queue = self._queue
        dropped = self._expire(now)
        if len(data) > self.max_bytes:
            return dropped + 1
        queue.append((now, data))
        self._bytes += len(data)
        while len(queue) > self.max_packets or self._bytes > self.max_bytes:
            self._bytes -= len(queue.popleft()[1])
            dropped += 1
        return dropped

    def take(self, now: float) -> tuple[list[bytes], int]:
        """All reads still fresh, oldest first, and how many were stale; nothing is held after."""
        stale = self._expire(now)
        fresh = [data for _, data in self._queue]
        self._queue.clear()
        self._bytes = 0
        return fresh, stale

    def _expire(self, now: float) -> int:
        queue, oldest = self._queue, now - self.max_age
        dropped = 0
        while queue and queue[0][0] < oldest:
            self._bytes -= len(queue.popleft()[1])
            dropped += 1
        return dropped


def _batch_length(item: tuple[int, list[bytes]]) -> int:
    return len(item[1])


class PacketPump:
    """Moves packets between one TUN device and the channels of the current session."""

    def __init__(self, tun: TunDevice, totals: Counters) -> None:
        self.tun = tun
        self.totals = totals
        self.held = HeldPackets()
        self._channels: Sequence[PacketChannel] = ()
        self._selector: StreamSelector | None = None
        self._mtu = 0
        self._offload = False  # this session carries virtio-headed segments whole
        self._eager = False
        self._next = 0  # round-robin for packets of no flow
        self._busy: Sequence[int] = ()  # channels that took bulk in the last batch
        self._last_read = 0.0  # when the device was last read
        self._last_batch = 0.0  # when the last batch of reads ended (a stream of packets)
        self._empty = True  # the last read found the device empty (EAGAIN)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._resume_task: asyncio.Task[None] | None = None
        self._gathering = False
        self._gathered: list[tuple[PacketChannel, list[bytes]]] = []
        self._answer_due = False  # a packet other than TCP was written in the gathered batch
        self._ping_due = False  # of which an ICMP echo request, its reply not read yet
        self._ping_read = False  # the device was read for a ping's reply in this batch
        self._merge_udp = True  # runs of a UDP flow merged into one write (until the kernel refuses)

    def start(self) -> None:
        """Start reading the TUN device; packets that arrive with no session are held."""
        self._loop = asyncio.get_running_loop()
        self._add_reader()

    def stop(self) -> None:
        self.detach()
        self._remove_reader()

    def attach(
        self,
        channels: Sequence[PacketChannel],
        mtu: int,
        *,
        offload: bool = False,
        eager: bool = False,
    ) -> None:
        """Bind a session's channels and send them what was held meanwhile.

        ``offload``: both peers agreed to carry offloaded segments.

        ``eager`` (TCP mode): a send costs one socket write per channel, so small batches are
        sent where that saves a wait. The first packet after a quiet spell is read and sent alone
        (no second read to learn that none follows: on an idle tunnel a wake-up is for one packet),
        and after writing packets from the peer the device is read at once: what the local stack
        answers (a ping's reply, a TCP ACK) is usually there already, and goes out without another
        turn of the event loop. The channels' send_packets must be safe to call from inside their
        own delivery. Not for QUIC: each send is a round of aioquic work there, and single reads
        cost about 10% of its throughput.
        """
        if self.tun.vnet_hdr:
            self.tun.set_offload(offload)
        elif offload:
            raise ValueError("offload needs a device opened with virtio headers")
        self._offload = offload
        self._eager = eager
        self._channels = list(channels)
        self._selector = StreamSelector(len(channels))
        self._mtu = mtu
        self._next = 0
        self._busy = ()
        held, stale = self.held.take(time.monotonic())
        self.totals.dropped += stale
        if held:
            log.info("sending %d packets read while no session was up (%d too old, dropped)", len(held), stale)
            self._send(held)
        elif stale:
            log.info("dropped %d packet(s) read while no session was up: too old to send", stale)

    def detach(self) -> None:
        self._channels = ()
        self._selector = None
        if self._resume_task is not None:
            self._resume_task.cancel()
            self._resume_task = None
        if self._loop is not None and not self._loop.is_closed():
            self._add_reader()

    def gather(self) -> None:
        """Hold the TCP packets delivered until :meth:`release`. QUIC mode brackets each batch of
        datagrams from the socket with the two, as each datagram delivers its packets alone:
        written together, the packets of one TCP flow in the batch go to the kernel as one
        (gro.py)."""
        self._gathering = True
        self._ping_read = False

    def release(self) -> None:
        """Write what was delivered since :meth:`gather`, in order."""
        self._gathering = False
        gathered, self._gathered = self._gathered, []
        for channel, packets in gathered:
            self._write(channel, packets)
        if self._ping_due:
            # A ping's reply is in the device's queue already (the kernel answers inside the
            # write), behind whatever this end's stack queued before it: read the device now,
            # even in a stream of reads, rather than after the next turn of the loop, which
            # under load was most of a ping's wait at this end (0.9 ms of 1.4, median).
            self._ping_due = self._answer_due = False
            if self._reading:
                if self.tun.side_fd >= 0:
                    self._read_side()
                else:
                    self._read_batch()
        elif self._answer_due:
            # A ping (or a DNS query to the host) written in the batch was answered by the local
            # stack inside the write: read the answer now, as the eager TCP-mode pump does, not on
            # the next wake-up (0.07 ms of an idle QUIC ping). Once per batch, not per packet, so
            # a UDP flood costs one failed read a batch; and not for TCP, whose answers are ACKs
            # that each would cost a QUIC packet alone (half the throughput, when it was tried).
            self._answer_due = False
            self._read_answer(self.tun.fd)

    def batch(self) -> PacketPump:
        """For ``with pump.batch():``, gather() on the way in, release() on the way out, also on an
        error. The pump is its own context manager: a generator-based one cost seven Python calls
        per batch of datagrams, on the way of every idle ping at both ends."""
        return self

    def __enter__(self) -> None:
        self.gather()

    def __exit__(self, *_exc: object) -> None:
        self.release()

    def deliver(self, channel: PacketChannel, packets: list[bytes]) -> None:
        """Packets from the peer: write them to the TUN device (what it refuses is dropped, as a
        router would: EAGAIN for a full queue, EINVAL for a packet or header the kernel rejects)."""
        if self._gathering:
            # Only TCP and UDP wait for the end of the batch (what can be merged: runs of one flow
            # go to the kernel as one write); anything else (a ping) goes at once. Each flow keeps
            # its order: all its packets take the same way.
            merge: list[bytes] = []
            other: list[bytes] = []
            udp = False
            for p in packets:
                proto = (p[9] if p[0] >> 4 == 4 else p[6]) if len(p) > 9 else 0
                if proto == 6:
                    merge.append(p)
                elif proto == 17:
                    merge.append(p)
                    udp = True
                else:
                    other.append(p)
            if udp:
                self._answer_due = True  # (DNS to this host: the answer is read after the write)
            if merge:
                gathered = self._gathered
                if gathered and gathered[-1][0] is channel:
                    gathered[-1][1].extend(merge)
                else:
                    gathered.append((channel, merge))
            if not other:
                return
            ping = any(map(is_echo_request, other))
            side = self.tun.side_fd
            self._write(channel, other, side)  # (the side queue's, when the device has one: tun.py)
            if ping and not self._ping_read and self._reading:
                # The first ping of a batch: the kernel answered it inside the write, so its
                # reply goes out now, not after the rest of the batch and the ACK in the packet
                # that brought the ping (0.03-0.1 ms of an idle QUIC ping's wait at this end).
                # Later ones in the batch are read at its end (one read of the device a batch,
                # not one a ping, under a ping flood).
                self._ping_read = True
                now = time.monotonic()
                if len(other) == 1 and now - self._last_read > BUSY_GAP:
                    # A ping on an idle tunnel: its reply is all the device holds, so one read,
                    # not a second one that fails (EAGAIN). In a stream of reads the reply may
                    # queue behind what the stack sent before it: read to EAGAIN, below.
                    self._last_read = now
                    self._read_one(side)
                elif side >= 0:
                    self._read_side()  # (the reply is there, in a queue of its own: not the bulk)
                else:
                    self._read_batch()  # (to EAGAIN: the answers of the rest of `other` too)
                return
            if ping or not all(map(is_echo_reply, other)):
                self._answer_due = True  # (nothing answers a ping's reply: no read that would fail)
            self._ping_due |= ping
            return
        side = self.tun.side_fd
        if side >= 0:
            # Packets that are neither TCP nor UDP (pings) take the side queue, where the stack's
            # answer comes too (the eager pump reads it from there, at once); each flow keeps its way.
            at = VNET_HDR_LEN if self._offload else 0  # (an offload peer's frames carry the header)
            other = [
                p for p in packets if len(p) <= at + 9 or (p[at + 9] if p[at] >> 4 == 4 else p[at + 6]) not in (6, 17)
            ]
            if other:
                if len(other) < len(packets):
                    others = set(map(id, other))
                    self._write(channel, [p for p in packets if id(p) not in others])
                self._write(channel, other, side)
                return
        self._write(channel, packets)

    def _write(self, channel: PacketChannel, packets: list[bytes], fd: int = -1) -> None:
        """Write packets to the device, on the main queue or on queue ``fd``."""
        if fd < 0:
            fd = self.tun.fd
        offload = self._offload
        written = size = 0
        if offload or not self.tun.vnet_hdr:
            # An offload peer's frames carry their own virtio header: written as they are.
            write = os.write
            for packet in packets:
                try:
                    write(fd, packet)
                except OSError:
                    continue
                written += 1
                size += len(packet)
            if offload:
                size -= VNET_HDR_LEN * written
        elif len(packets) == 1:
            try:
                os.writev(fd, (ZERO_HDR, packets[0]))  # a blank header, without copying the packet
                written, size = 1, len(packets[0])
            except OSError:
                pass
        else:
            # Runs of one TCP or UDP flow go to the kernel as one segment each (gro.py): one trip
            # through its receive path instead of one per packet.
            writev = os.writev
            at = 0  # the first of packets that this write carries
            for one in coalesce(packets, udp=self._merge_udp):
                buffers, count, length = one
                try:
                    writev(fd, buffers)
                except OSError as exc:
                    if exc.errno == errno.EINVAL and is_udp_merge(one):
                        w, n = self._udp_merge_refused(packets[at : at + count], exc)
                        written += w
                        size += n
                    at += count
                    continue
                at += count
                written += count
                size += length
        counters, totals = channel.counters, self.totals
        dropped = len(packets) - written
        counters.packets_in += written
        counters.bytes_in += size
        counters.dropped += dropped
        totals.packets_in += written
        totals.bytes_in += size
        totals.dropped += dropped
        if self._eager and written:
            # (Even after a ping's reply, which nothing answers: skipping that read, which fails,
            # measured no faster, 0.03 ms slower in 13 of 16 interleaved pairs.)
            self._read_answer(fd)

    def _udp_merge_refused(self, packets: list[bytes], exc: OSError) -> tuple[int, int]:
        """A kernel before 6.2 takes no UDP GSO on a TUN write: write the run's datagrams one by
        one, and merge no UDP on this device from now on. The packets and bytes written."""
        if self._merge_udp:
            self._merge_udp = False
            log.info("%s refused a merged UDP write (%s): UDP packets go one per write", self.tun.name, exc.strerror)
        written = size = 0
        for packet in packets:
            try:
                os.writev(self.tun.fd, (ZERO_HDR, packet))
            except OSError:
                continue
            written += 1
            size += len(packet)
        return written, size

    def _read_answer(self, fd: int) -> None:
        """Read what the stack answered to packets just written to queue ``fd``, unless in a
        stream of reads."""
        if not self._reading:
            return
        now = time.monotonic()
        if now - self._last_batch > BUSY_GAP:
            # Not in a stream of reads: there, answers (TCP ACKs) wait for the next batch, where
            # they share a record with the others, rather than each costing a record, a send and
            # a read of their own. And when nothing answers (a ping's reply was written), the
            # failed read tells the next wake-up that the device was empty.
            self._last_read = now
            self._read_one(fd)

    def _add_reader(self) -> None:
        if not self._reading and self._loop is not None and self.tun.fd >= 0:
            add_data_reader(self._loop, self.tun.fd, self._on_tun_readable)
            if self.tun.side_fd >= 0:
                add_data_reader(self._loop, self.tun.side_fd, self._on_side_readable)
            self._reading = True

    def _remove_reader(self) -> None:
        if self._reading and self._loop is not None and self.tun.fd >= 0:
            self._loop.remove_reader(self.tun.fd)
            if self.tun.side_fd >= 0:
                self._loop.remove_reader(self.tun.side_fd)
        self._reading = False

    def _on_tun_readable(self) -> None:
        if self._eager and self._empty:
            now = time.monotonic()
            if now - self._last_read > BUSY_GAP:
                # The device was empty and nothing was read for a while: this wake-up is most
                # likely for one packet (a ping, a request), so one read, not a second one that
                # fails with EAGAIN. If more are waiting, the device stays readable and the next
                # wake-up reads them all in a batch. (Quiet time alone is no sign: with the event
                # loop busy for a millisecond, every wake-up would look quiet.)
                self._last_read = now
                self._busy = ()
                self._read_one()
                return
        self._read_batch()

    def _read_batch(self) -> None:
        side = self.tun.side_fd
        reads: list[bytes] = []
        if side >= 0:
            # The side queue first: a ping there goes before the bulk read here (both channels'
            # sends put the shortest batches first).
            self._drain(side, reads)
        self._empty = self._drain(self.tun.fd, reads)
        if reads:
            self._send(reads, in_stream=True)
            if side >= 0:
                # A ping that came while the batch was sent (QUIC: about 1 ms for 128 packets) goes
                # now, not after the rest of the loop's turn: p99 under load 8.4 -> 7.6 ms, medians
                # of 10 interleaved runs, for one failed read a batch.
                late: list[bytes] = []
                self._drain(side, late)
                if late:
                    self._send(late)
        self._last_read = self._last_batch = time.monotonic()  # after the batch: sending takes a while

    def _drain(self, fd: int, reads: list[bytes]) -> bool:
        """Read queue ``fd`` into ``reads``, at most one batch (TUN_BATCH packets, TUN_BATCH_BYTES
        bytes); whether the queue was read to its end."""
        budget = TUN_BATCH_BYTES
        try:
            # A read more than the queue holds (EAGAIN) ends a batch: there is no cheaper way to
            # learn that it is empty.
            for _ in range(TUN_BATCH):
                data = os.read(fd, READ_SIZE)
                reads.append(data)
                budget -= len(data)
                if budget <= 0:
                    break
        except BlockingIOError:
            return True
        except OSError as exc:
            log.warning("reading %s failed: %s", self.tun.name, exc.strerror or exc)
        return False

    def _read_one(self, fd: int = -1) -> None:
        """Read one packet, from the main queue or from queue ``fd``, and send it."""
        main = fd < 0 or fd == self.tun.fd
        try:
            data = os.read(self.tun.fd if fd < 0 else fd, READ_SIZE)
        except BlockingIOError:
            if main:
                self._empty = True
            return
        except OSError as exc:
            log.warning("reading %s failed: %s", self.tun.name, exc.strerror or exc)
            return
        if main:
            self._empty = False  # more may be waiting: the next wake-up reads a batch
        self._send([data])

    def _on_side_readable(self) -> None:
        now = time.monotonic()
        if now - self._last_read > BUSY_GAP:
            # A quiet tunnel: this wake-up is most likely for one ping, so one read, not a second
            # one that fails. If more wait, the queue stays readable and the next turn reads them.
            self._last_read = now
            self._read_one(self.tun.side_fd)
            return
        self._read_side()

    def _read_side(self) -> None:
        """Read the side queue to its end and send what it held. Its reads tell nothing of the
        bulk (``_busy``): they are not a stream's."""
        reads: list[bytes] = []
        self._drain(self.tun.side_fd, reads)
        self._last_read = time.monotonic()
        if reads:
            self._send(reads)

    def _send(self, reads: list[bytes], in_stream: bool = False) -> None:
        """Sort reads from the device into per-channel batches and hand each channel its batch;
        with no session, hold them. ``in_stream``: a wake-up of a stream of reads (not the first
        after a quiet spell), whose batch tells which channels carry bulk now."""
        channels, selector, totals = self._channels, self._selector, self.totals
        if selector is None:
            now, hold, dropped = time.monotonic(), self.held.hold, 0
            for data in reads:
                if data:  # an empty read carries no packet
                    dropped += hold(data, now)
            totals.dropped += dropped
            return
        flow = selector.flow
        batches: dict[int, list[bytes]] = {}
        dropped = 0
        if self._offload:
            # Whole segments, header and all; the flow is hashed on the packet behind the header.
            for data in reads:
                if not VNET_HDR_LEN < len(data) <= MAX_OFFLOAD_FRAME:
                    dropped += 1 if data else 0
                    continue
                index = flow(data, VNET_HDR_LEN)
                if index < 0:
                    index = self._unflowed(data, VNET_HDR_LEN)
                batch = batches.get(index)
                if batch is None:
                    batches[index] = [data]
                else:
                    batch.append(data)
        else:
            vnet_hdr, mtu = self.tun.vnet_hdr, self._mtu
            for data in reads:
                if not vnet_hdr:
                    if not data:
                        continue
                    packets = [data]
                elif len(data) <= VNET_HDR_LEN:
                    dropped += 1 if data else 0
                    continue
                elif is_plain(data):
                    packets = [data[VNET_HDR_LEN:]]
                else:
                    try:
                        packets = plain_packets(data)  # a segment the kernel queued before offload went off
                    except OffloadError as exc:
                        log.debug("dropped an offloaded packet from %s: %s", self.tun.name, exc)
                        dropped += 1
                        continue
                for packet in packets:
                    if len(packet) > mtu:
                        dropped += 1
                        continue
                    index = flow(packet)
                    if index < 0:
                        index = self._unflowed(packet, 0)
                    batch = batches.get(index)
                    if batch is None:
                        batches[index] = [packet]
                    else:
                        batch.append(packet)
        if dropped:
            totals.dropped += dropped
        overhead = VNET_HDR_LEN if self._offload else 0
        blocked: list[PacketChannel] | None = None
        busy: list[int] | None = None
        # The shortest batches first: a ping, a request or a flow's ACKs then leave before the
        # bulk of another channel is built and sent (QUIC builds packet by packet in Python: a
        # ping read behind 100 bulk packets waited about a millisecond for them). Each flow keeps
        # to one channel, so no flow is reordered.
        order = sorted(batches.items(), key=_batch_length) if len(batches) > 1 else batches.items()
        for index, packets in order:
            channel = channels[index]
            count = len(packets)
            size = sum(map(len, packets)) - overhead * count
            if size >= BULK_BYTES:
                busy = [index] if busy is None else [*busy, index]
            lost, lost_bytes = channel.send_packets(packets)
            if lost:
                count -= lost
                size -= lost_bytes - overhead * lost
                totals.dropped += lost
            counters = channel.counters
            counters.packets_out += count
            counters.bytes_out += size
            totals.packets_out += count
            totals.bytes_out += size
            if channel.paused:
                blocked = [channel] if blocked is None else [*blocked, channel]
        if in_stream:
            self._busy = busy or ()
        if blocked and self._resume_task is None:
            self._remove_reader()
            self._resume_task = asyncio.ensure_future(self._resume_when_writable(blocked))

    def _unflowed(self, packet: bytes, start: int) -> int:
        """A channel for a packet without ports, passing over the channels that carried bulk in
        the last batch (a ping would wait behind their queues).

        A ping takes the channel of its identifier, so that its request and reply share one
        connection both ways (the reply's record carries the TCP ACK of the request's, and one
        socket stays warm instead of two): about 50 us less round-trip time on an idle tunnel
        than with round-robin. Anything else (fragments, other protocols) goes round-robin.
        """
        count, busy = len(self._channels), self._busy
        echo = echo_id(packet, start)
        if echo >= 0 and echo % count not in busy:
            return echo % count
        index = self._next
        for _ in range(count):
            if index not in busy:
                break
            index = (index + 1) % count
        self._next = (index + 1) % count
        return index

    async def _resume_when_writable(self, blocked: list[PacketChannel]) -> None:
        try:
            for channel in blocked:
                await channel.wait_writable()
        finally:
            self._resume_task = None
        self._add_reader()
