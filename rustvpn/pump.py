"""The packet pump shared by both transports: TUN <-> the N packet channels of a session.

Outgoing: read packets from the TUN device in batches, pick a channel per packet (port hash or
round-robin), and hand each channel all of its packets at once (one TLS record / QUIC send
per batch rather than per packet). When a channel's send buffer is over its high-water mark the
pump stops reading the TUN device, so the kernel's queue takes the pressure (and drops), rather
than our memory.

Incoming: channels deliver decoded packets, which are written to the TUN device at once.

Offload (TCP mode, see offload.py): a device opened with virtio headers hands over 64 KB TCP
segments. In a session where both peers offered offload they cross whole, header included; in any
other session each read is turned into finished MTU-sized packets here before it is sent, and
packets from the peer get an all-zero header on the way in.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence

from rustvpn.flow_hash import StreamSelector
from rustvpn.offload import MAX_OFFLOAD_FRAME, VNET_HDR_LEN, OffloadError, is_plain, plain_packets
from rustvpn.stats import Counters
from rustvpn.tun import TunDevice

log = logging.getLogger("rustvpn.pump")

# Packets, and bytes, read from the TUN device per wake-up before yielding to the event loop: with
# offload one read can be 64 KB, and a long batch delays everything else (pings wait behind it).
TUN_BATCH = 128
TUN_BATCH_BYTES = 256 * 1024


class PacketChannel(ABC):
    """One duplex packet path of a session: a TLS data connection or a QUIC data stream."""

    def __init__(self) -> None:
        self.counters = Counters()
        self._drained: asyncio.Future[None] | None = None
        self.paused = False

    @abstractmethod
    def send_packets(self, packets: list[bytes]) -> None:
        """Queue a batch of packets for the peer (framed as the channel's wire format wants)."""

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


class PacketPump:
    """Moves packets between one TUN device and the channels of the current session."""

    def __init__(self, tun: TunDevice, totals: Counters) -> None:
        self.tun = tun
        self.totals = totals
        self._channels: Sequence[PacketChannel] = ()
        self._selector: StreamSelector | None = None
        self._mtu = 0
        self._offload = False  # this session carries virtio-headed segments whole
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reading = False
        self._resume_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start reading the TUN device; packets that arrive with no session are dropped."""
        self._loop = asyncio.get_running_loop()
        self._add_reader()

    def stop(self) -> None:
        self.detach()
        self._remove_reader()

    def attach(self, channels: Sequence[PacketChannel], mtu: int, *, offload: bool = False) -> None:
        """Bind a session's channels; ``offload``: both peers agreed to carry offloaded segments."""
        if self.tun.vnet_hdr:
            self.tun.set_offload(offload)
        elif offload:
            raise ValueError("offload needs a device opened with virtio headers")
        self._offload = offload
        self._channels = list(channels)
        self._selector = StreamSelector(len(channels))
        self._mtu = mtu

    def detach(self) -> None:
        self._channels = ()
        self._selector = None
        if self._resume_task is not None:
            self._resume_task.cancel()
            self._resume_task = None
        if self._loop is not None and not self._loop.is_closed():
            self._add_reader()

    def deliver(self, channel: PacketChannel, packets: list[bytes]) -> None:
        """Packets from the peer: write them to the TUN device."""
        counters, totals = channel.counters, self.totals
        # An offload peer's frames carry their own virtio header; other peers' packets get a blank one.
        write = self.tun.write if self._offload or not self.tun.vnet_hdr else self.tun.write_plain
        overhead = VNET_HDR_LEN if self._offload else 0
        for packet in packets:
            size = len(packet) - overhead
            if write(packet):
                counters.packets_in += 1
                counters.bytes_in += size
                totals.packets_in += 1
                totals.bytes_in += size
            else:
                counters.dropped += 1
                totals.dropped += 1

    def _add_reader(self) -> None:
        if not self._reading and self._loop is not None and self.tun.fd >= 0:
            self._loop.add_reader(self.tun.fd, self._on_tun_readable)
            self._reading = True

    def _remove_reader(self) -> None:
        if self._reading and self._loop is not None and self.tun.fd >= 0:
            self._loop.remove_reader(self.tun.fd)
        self._reading = False

    def _on_tun_readable(self) -> None:
        channels, selector, totals, mtu = self._channels, self._selector, self.totals, self._mtu
        vnet_hdr, offload = self.tun.vnet_hdr, self._offload
        batches: dict[int, list[bytes]] = {}
        read = self.tun.read
        budget = TUN_BATCH_BYTES
        for _ in range(TUN_BATCH):
            if budget <= 0:
                break
            try:
                data = read()
            except OSError as exc:
                log.warning("reading %s failed: %s", self.tun.name, exc.strerror or exc)
                break
            if data is None:
                break
            budget -= len(data)
            if selector is None or len(data) <= (VNET_HDR_LEN if vnet_hdr else 0):
                # No session, or a read that carries no packet: never a frame.
                totals.dropped += 1 if data else 0
                continue
            if offload:
                # Whole segment, header and all; the flow is hashed on the packet behind the header.
                if len(data) > MAX_OFFLOAD_FRAME:
                    totals.dropped += 1
                    continue
                index = selector.select(memoryview(data)[VNET_HDR_LEN:])
                batch = batches.get(index)
                if batch is None:
                    batches[index] = [data]
                else:
                    batch.append(data)
                continue
            if not vnet_hdr:
                packets = [data]
            elif is_plain(data):
                packets = [data[VNET_HDR_LEN:]]
            else:
                try:
                    packets = plain_packets(data)  # a segment the kernel queued before offload went off
                except OffloadError as exc:
                    log.debug("dropped an offloaded packet from %s: %s", self.tun.name, exc)
                    totals.dropped += 1
                    continue
            for packet in packets:
                if len(packet) > mtu:
                    totals.dropped += 1
                    continue
                index = selector.select(packet)
                batch = batches.get(index)
                if batch is None:
                    batches[index] = [packet]
                else:
                    batch.append(packet)
        if not batches:
            return
        overhead = VNET_HDR_LEN if offload else 0
        blocked: list[PacketChannel] = []
        for index, packets in batches.items():
            channel = channels[index]
            size = sum(len(p) for p in packets) - overhead * len(packets)
            channel.send_packets(packets)
            counters = channel.counters
            counters.packets_out += len(packets)
            counters.bytes_out += size
            totals.packets_out += len(packets)
            totals.bytes_out += size
            if channel.paused:
                blocked.append(channel)
        if blocked and self._resume_task is None:
            self._remove_reader()
            self._resume_task = asyncio.ensure_future(self._resume_when_writable(blocked))

    async def _resume_when_writable(self, blocked: list[PacketChannel]) -> None:
        try:
            for channel in blocked:
                await channel.wait_writable()
        finally:
            self._resume_task = None
        self._add_reader()
