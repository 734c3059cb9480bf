"""rustvpn.pump: packets held while no session is attached (HeldPackets, and the pump around it),
the reads and batches of the pump, and what it does after writing packets from the peer.

The pump runs on a datagram socket pair standing in for the TUN device's file descriptor: reads
from its end come back one packet each, as from a TUN fd, and no root is needed. The test writes
"what the kernel routes into the tunnel" on the other end.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import pytest

from rustvpn import pump as pump_module
from rustvpn.flow_hash import StreamSelector, echo_id, flow_ports, is_echo_reply, is_echo_request
from rustvpn.offload import VNET_HDR_LEN, plain_packets
from rustvpn.pump import HOLD_PACKETS, NO_DROPS, Drops, HeldPackets, PacketChannel, PacketPump
from rustvpn.stats import Counters
from rustvpn.tun import TunDevice
from tests.unit.test_gro import run as tcp_run
from tests.unit.test_gro import udp_run

MTU = 1500


def udp4(sport: int, dport: int, payload: bytes = b"") -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, b"\xc6\x13\x01\x02",
                       b"\xc6\x13\x01\x01") + udp  # fmt: skip


def ping4(seq: int, ident: int = 7, kind: int = 8) -> bytes:
    icmp = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + b"x" * 16
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0, b"\xc6\x13\x01\x02",
                       b"\xc6\x13\x01\x01") + icmp  # fmt: skip


# -- HeldPackets: sans-IO -------------------------------------------------------------------------


def test_held_reads_come_back_in_order_once() -> None:
    held = HeldPackets()
    for i in range(5):
        assert held.hold(bytes([i]) * 10, now=100.0 + i / 10) == 0
    assert (len(held), held.size) == (5, 50)
    assert held.take(now=100.5) == ([bytes([i]) * 10 for i in range(5)], 0)
    assert (len(held), held.size) == (0, 0)
    assert held.take(now=100.6) == ([], 0)


def test_only_the_newest_are_kept_the_rest_counted() -> None:
    held = HeldPackets(max_packets=3)
    dropped = sum(held.hold(bytes([i]), now=1.0) for i in range(10))
    assert dropped == 7
    assert held.take(now=1.0) == ([bytes([7]), bytes([8]), bytes([9])], 0)


def test_the_byte_cap_pushes_out_the_oldest_and_refuses_a_read_above_it() -> None:
    held = HeldPackets(max_bytes=100)
    assert held.hold(b"a" * 60, now=1.0) == 0
    assert held.hold(b"b" * 30, now=1.0) == 0
    assert held.hold(b"c" * 30, now=1.0) == 1  # 120 bytes: the oldest goes
    assert held.size == 60
    assert held.hold(b"d" * 101, now=1.0) == 1  # could never fit: itself dropped, the rest kept
    assert held.take(now=1.0) == ([b"b" * 30, b"c" * 30], 0)


def test_reads_older_than_max_age_are_dropped_and_counted() -> None:
    held = HeldPackets(max_age=1.0)
    held.hold(b"old", now=10.0)
    held.hold(b"older-but-fresh", now=10.5)
    held.hold(b"new", now=11.2)  # b"old" is 1.2 s old by now: dropped on the way
    assert len(held) == 2
    assert held.take(now=11.6) == ([b"new"], 1)  # 1.1 s old: stale when the session comes


def test_holding_never_exceeds_its_bounds() -> None:
    rng = random.Random(5)
    held = HeldPackets(max_packets=16, max_bytes=4000, max_age=0.5)
    now, kept_in, dropped = 0.0, 0, 0
    for _ in range(2000):
        now += rng.random() / 20
        dropped += held.hold(rng.randbytes(rng.randrange(1, 1500)), now)
        kept_in += 1
        assert len(held) <= 16 and held.size <= 4000
        if rng.random() < 0.01:
            fresh, stale = held.take(now + rng.random())
            kept_in -= len(fresh) + stale
    fresh, stale = held.take(now)
    assert dropped == kept_in - len(fresh) - stale  # every read is either sent or counted


# -- the pump on a datagram socket pair -------------------------------------------------------------


class Recorder(PacketChannel):
    """A channel that keeps what the pump sends it."""

    def __init__(self, on_send: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.on_send = on_send

    def send_packets(self, packets: list[bytes]) -> Drops:
        self.sent.extend(packets)
        if self.on_send is not None:
            self.on_send()
        return NO_DROPS


@contextmanager
def socket_device(vnet_hdr: bool = False) -> Iterator[tuple[TunDevice, socket.socket]]:
    device_end, kernel_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    device_end.setblocking(False)
    kernel_end.setblocking(False)  # its queue holds a few datagrams: wait for the pump, not on it
    tun = TunDevice("unit0", os.dup(device_end.fileno()), vnet_hdr)
    try:
        yield tun, kernel_end
    finally:
        tun.close()
        device_end.close()
        kernel_end.close()


def run(scenario: Callable[[PacketPump, socket.socket], Awaitable[None]]) -> Counters:
    with socket_device() as (tun, kernel_end):
        return run_on(tun, kernel_end, scenario)


def run_on(
    tun: TunDevice, kernel_end: socket.socket, scenario: Callable[[PacketPump, socket.socket], Awaitable[None]]
) -> Counters:
    totals = Counters()

    async def main() -> None:
        pump = PacketPump(tun, totals)
        pump.start()
        try:
            async with asyncio.timeout(10):
                await scenario(pump, kernel_end)
        finally:
            pump.stop()

    asyncio.run(main())
    return totals


async def put(kernel: socket.socket, *packets: bytes) -> None:
    """Route packets into the "tunnel": they wait on the device for the pump."""
    for packet in packets:
        await asyncio.get_running_loop().sock_sendall(kernel, packet)


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.005)


def sent(channels: list[Recorder]) -> list[bytes]:
    return [p for c in channels for p in c.sent]


def test_packets_read_with_no_session_go_to_the_next_one_first() -> None:
    early = [udp4(4000 + i, 53, b"q") for i in range(3)] + [ping4(1)]
    later = [udp4(4000, 53, b"later"), ping4(2)]
    channels = [Recorder() for _ in range(3)]

    async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
        await put(kernel, *early)
        await until(lambda: len(pump.held) == len(early))
        pump.attach(channels, MTU)
        assert sorted(sent(channels)) == sorted(early)  # at once, before anything else
        await put(kernel, *later)
        await until(lambda: len(sent(channels)) == len(early) + len(later))

    totals = run(scenario)
    assert sorted(sent(channels)) == sorted(early + later)
    # A flow's packets keep their order across the hold: held ones first.
    flow = [p for p in sent(channels) if p[20:24] == struct.pack("!HH", 4000, 53)]
    assert flow == [early[0], later[0]]
    assert (totals.packets_out, totals.dropped) == (len(early) + len(later), 0)


class Dropper(Recorder):
    """A channel whose queue takes only its first ``room`` packets, as a full one does."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def send_packets(self, packets: list[bytes]) -> Drops:
        kept, lost = packets[: self.room], packets[self.room :]
        self.room -= len(kept)
        self.counters.dropped += len(lost)
        self.sent.extend(kept)
        return len(lost), sum(map(len, lost))


def test_packets_a_channel_drops_count_as_dropped_not_as_sent() -> None:
    """`rustvpn status` shows the totals: what a channel's queue dropped (CoDel, a full queue, a
    connection going) must show there as dropped, and not among the packets sent."""
    packets = [udp4(4000, 53, bytes(10 * i)) for i in range(1, 6)]
    channel = Dropper(room=2)

    async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
        pump.attach([channel], MTU)
        await put(kernel, *packets)
        await until(lambda: channel.counters.dropped + len(channel.sent) == len(packets))

    totals = run(scenario)
    assert channel.sent == packets[:2]
    kept_bytes = sum(map(len, packets[:2]))
    assert (totals.packets_out, totals.bytes_out, totals.dropped) == (2, kept_bytes, 3)
    assert (channel.counters.packets_out, channel.counters.bytes_out, channel.counters.dropped) == (2, kept_bytes, 3)


def test_packets_read_between_sessions_go_to_the_next_session() -> None:
    first, second = [Recorder()], [Recorder(), Recorder()]

    async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
        pump.attach(first, MTU)
        await put(kernel, ping4(1))
        await until(lambda: len(first[0].sent) == 1)
        pump.detach()  # the session is lost: the client reconnects
        await put(kernel, ping4(2), udp4(1, 2))
        await until(lambda: len(pump.held) == 2)
        pump.attach(second, MTU)

    totals = run(scenario)
    assert first[0].sent == [ping4(1)]
    assert sorted(sent(second)) == sorted([ping4(2), udp4(1, 2)])
    assert totals.dropped == 0


def test_stale_and_surplus_held_packets_are_dropped_and_counted() -> None:
    channels = [Recorder()]
    count = HOLD_PACKETS + 10

    async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
        await put(kernel, *(ping4(seq) for seq in range(count)))
        await until(lambda: len(pump.held) + pump.totals.dropped == count)
        assert (len(pump.held), pump.totals.dropped) == (HOLD_PACKETS, 10)
        pump.attach(channels, MTU)
        assert channels[0].sent == [ping4(seq) for seq in range(10, count)]  # the newest, in order
        pump.detach()
        pump.held.max_age = -1.0  # anything held is too old when the next session comes
        await put(kernel, ping4(999))
        await until(lambda: len(pump.held) == 1)
        pump.attach(channels, MTU)

    totals = run(scenario)
    assert len(channels[0].sent) == HOLD_PACKETS
    assert totals.dropped == 11


def test_empty_reads_are_neither_held_nor_counted() -> None:
    channels = [Recorder()]

    async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
        await put(kernel, b"", ping4(1))
        await until(lambda: len(pump.held) == 1)
        pump.attach(channels, MTU)

    totals = run(scenario)
    assert channels[0].sent == [ping4(1)]
    assert totals.dropped == 0


class BatchRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def send_packets(self, packets: list[bytes]) -> Drops:
        self.batches.append(len(packets))
        return super().send_packets(packets)


@pytest.mark.parametrize("eager", [True, False])
def test_a_burst_is_read_whole_and_in_order(eager: bool) -> None:
    """An eager pump reads the first packet after a quiet spell alone (on an idle tunnel it is
    the only one), then the rest of the burst in one batch; a pump that is not eager reads the
    whole burst in one batch."""
    channel = BatchRecorder()
    burst = [udp4(7, 9, i.to_bytes(2, "big")) for i in range(8)]

    async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
        pump.attach([channel], MTU, eager=eager)
        await put(kernel, *burst)  # all queued before the pump wakes up
        await until(lambda: len(channel.sent) == len(burst))

    run(scenario)
    assert channel.sent == burst
    assert channel.batches == ([1, len(burst) - 1] if eager else [len(burst)])


def test_a_ping_keeps_to_the_channel_of_its_identifier_and_other_packets_of_no_flow_rotate() -> None:
    channels = [Recorder() for _ in range(3)]
    pings = [ping4(seq, ident=4) for seq in range(3)] + [ping4(9, ident=4, kind=0)]  # requests, a reply
    others = [bytes([0x45]) + bytes(19) for _ in range(3)]  # protocol 0: no ports, no identifier

    async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
        pump.attach(channels, MTU)
        await put(kernel, *pings, *others)
        await until(lambda: len(sent(channels)) == len(pings) + len(others))

    run(scenario)
    assert channels[4 % 3].sent[: len(pings)] == pings
    assert sorted(len(c.sent) for c in channels) == [1, 1, 4 + 1]


def test_packets_of_no_flow_pass_over_the_channel_that_carries_bulk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ping behind a bulk flow's queue would wait for all of it: it takes another channel."""
    monkeypatch.setattr(pump_module, "BUSY_GAP", float("inf"))  # every wake-up reads a batch
    channels = [Recorder() for _ in range(3)]
    bulk = [udp4(5000, 6000, bytes(4000)) for _ in range(8)]  # 32 KB in one batch
    bulk_channel = StreamSelector(3).flow(bulk[0])

    async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
        pump.attach(channels, 9000)
        await put(kernel, *bulk)  # queued at once (no wait): the pump reads them in one batch
        await until(lambda: len(sent(channels)) == len(bulk))
        # The pings' identifier would put them on the bulk flow's channel.
        await put(kernel, *(ping4(seq, ident=bulk_channel) for seq in range(6)))
        await until(lambda: len(sent(channels)) == len(bulk) + 6)

    run(scenario)
    assert channels[bulk_channel].sent == bulk
    others = [c for i, c in enumerate(channels) if i != bulk_channel]
    assert [len(c.sent) for c in others] == [3, 3]  # round-robin over the rest


@pytest.mark.parametrize(("eager", "quiet"), [(True, True), (False, True), (True, False)])
def test_after_writing_packets_from_the_peer_the_answer_goes_out_at_once(
    monkeypatch: pytest.MonkeyPatch, eager: bool, quiet: bool
) -> None:
    """With an eager pump and a quiet device, what the device holds after a delivery is sent
    from inside the delivery itself: here the "answer" is queued before the delivery, and
    no event loop iteration runs between the delivery and the check. In a stream of reads the
    answer waits for the next batch instead."""
    if not quiet:
        monkeypatch.setattr(pump_module, "BUSY_GAP", float("inf"))
    channels = [Recorder()]
    at_once = eager and quiet

    async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
        pump.attach(channels, MTU, eager=eager)
        kernel.send(ping4(5))  # the local stack's answer, already waiting on the device
        pump.deliver(channels[0], [ping4(4)])
        assert channels[0].sent == ([ping4(5)] if at_once else [])
        assert kernel.recv(2000) == ping4(4)
        await until(lambda: channels[0].sent == [ping4(5)])

    totals = run(scenario)
    assert (totals.packets_in, totals.packets_out) == (1, 1)


@pytest.mark.parametrize(
    ("kind", "quiet"), [("udp", True), ("tcp", True), ("udp", False), ("ping", True), ("ping", False)]
)
def test_in_a_gathered_batch_the_answer_to_a_packet_that_is_not_tcp_goes_out_at_once(
    monkeypatch: pytest.MonkeyPatch, kind: str, quiet: bool
) -> None:
    """QUIC mode's pump is not eager, but a packet other than TCP written from a batch of
    datagrams on a quiet device has its answer read and sent at the end of the batch, with no
    event loop iteration in between; TCP packets (their answers are ACKs, better sent with the
    next batch) and a busy device wait for the next wake-up. A ping's reply goes at once, even in
    a stream of reads and before the batch ends: the kernel has queued it inside the write."""
    if not quiet:
        monkeypatch.setattr(pump_module, "BUSY_GAP", float("inf"))
    channels = [Recorder()]
    packet = {"tcp": tcp_run(4, 1)[0], "udp": udp4(53, 4000, b"answer me"), "ping": ping4(4)}[kind]
    answer = ping4(5, kind=0)
    at_once = kind == "ping" or (quiet and kind != "tcp")

    async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
        pump.attach(channels, MTU)
        kernel.send(bytes(VNET_HDR_LEN) + answer)  # the stack's answer, waiting on the device
        with pump.batch():
            pump.deliver(channels[0], [packet])
            assert channels[0].sent == ([answer] if kind == "ping" else [])
        assert channels[0].sent == ([answer] if at_once else [])
        assert plain_packets(kernel.recv(70000)) == [packet]
        await until(lambda: channels[0].sent == [answer])

    with socket_device(vnet_hdr=True) as (tun, kernel_end):
        monkeypatch.setattr(tun, "set_offload", lambda enabled: None)
        totals = run_on(tun, kernel_end, scenario)
    assert (totals.packets_in, totals.packets_out) == (1, 1)


def test_a_gathered_batch_reads_one_answer_however_many_packets_it_wrote(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once per batch, not per packet: a UDP flood from the peer costs one read a batch."""
    channels = [Recorder()]
    answers = [udp4(4000, 53, b"a"), udp4(4000, 53, b"b")]

    async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
        pump.attach(channels, MTU)
        for answer in answers:
            kernel.send(bytes(VNET_HDR_LEN) + answer)
        with pump.batch():
            for seq in range(3):
                pump.deliver(channels[0], [udp4(53, 4000, bytes([seq]))])
        assert channels[0].sent == answers[:1]  # the second waits for the next wake-up
        await until(lambda: channels[0].sent == answers)

    with socket_device(vnet_hdr=True) as (tun, kernel_end):
        monkeypatch.setattr(tun, "set_offload", lambda enabled: None)
        totals = run_on(tun, kernel_end, scenario)
    assert (totals.packets_in, totals.packets_out) == (3, 2)


def test_the_first_ping_of_a_batch_is_answered_before_the_batch_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its reply is in the device once the request is written: it is read and sent at once, not
    after the rest of the batch; a second ping in the batch is read for at the batch's end."""
    monkeypatch.setattr(pump_module, "BUSY_GAP", float("inf"))
    channels = [Recorder()]
    first_reply, second_reply = ping4(3, kind=0), ping4(4, kind=0)

    async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
        pump.attach(channels, MTU)
        pump.gather()
        kernel.send(bytes(VNET_HDR_LEN) + first_reply)  # (the kernel's answer, as it comes)
        pump.deliver(channels[0], [ping4(3)])
        assert channels[0].sent == [first_reply]  # inside the batch
        kernel.send(bytes(VNET_HDR_LEN) + second_reply)
        pump.deliver(channels[0], [ping4(4)])
        assert channels[0].sent == [first_reply]
        pump.release()
        assert channels[0].sent == [first_reply, second_reply]

    with socket_device(vnet_hdr=True) as (tun, kernel_end):
        monkeypatch.setattr(tun, "set_offload", lambda enabled: None)
        totals = run_on(tun, kernel_end, scenario)
    assert (totals.packets_in, totals.packets_out) == (2, 2)


def test_a_ping_on_an_idle_tunnel_has_its_reply_read_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """On an idle tunnel the reply is all the device holds: one read, not a second one that only
    learns that nothing follows; anything else waiting keeps the device readable for the next turn."""
    channels = [Recorder()]
    reply, later = ping4(3, kind=0), udp4(4000, 53)

    async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
        pump.attach(channels, MTU)
        for packet in (reply, later):
            kernel.send(bytes(VNET_HDR_LEN) + packet)
        with pump.batch():
            pump.deliver(channels[0], [ping4(3)])
            assert channels[0].sent == [reply]  # at once, and alone
        assert channels[0].sent == [reply]
        await until(lambda: channels[0].sent == [reply, later])

    with socket_device(vnet_hdr=True) as (tun, kernel_end):
        monkeypatch.setattr(tun, "set_offload", lambda enabled: None)
        totals = run_on(tun, kernel_end, scenario)
    assert (totals.packets_in, totals.packets_out) == (1, 2)


def test_a_ping_in_a_gathered_batch_has_the_device_read_whole_behind_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under load the reply to a ping queues behind what the local stack sent before it (ACKs of
    a bulk flow): the pump reads all of that at the end of the batch, in a stream of reads too,
    rather than the reply waiting for the next turn of the event loop."""
    monkeypatch.setattr(pump_module, "BUSY_GAP", float("inf"))
    channels = [Recorder()]
    before = [udp4(4000 + i, 53) for i in range(5)]
    reply = ping4(3, kind=0)

    async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
        pump.attach(channels, MTU)
        for packet in [*before, reply]:
            kernel.send(bytes(VNET_HDR_LEN) + packet)
        with pump.batch():
            pump.deliver(channels[0], [*tcp_run(4, 2), ping4(3)])
        assert channels[0].sent == [*before, reply]  # read and sent before the batch returned

    with socket_device(vnet_hdr=True) as (tun, kernel_end):
        monkeypatch.setattr(tun, "set_offload", lambda enabled: None)
        run_on(tun, kernel_end, scenario)


@contextmanager
def side_queue_device() -> Iterator[tuple[TunDevice, socket.socket, socket.socket]]:
    """A device with a side queue (tun.py): a socket pair for each of its two queues."""
    main_end, main_kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    side_end, side_kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ends = (main_end, main_kernel, side_end, side_kernel)
    for end in ends:
        end.setblocking(False)
    tun = TunDevice("unit0", os.dup(main_end.fileno()), True, os.dup(side_end.fileno()))
    try:
        yield tun, main_kernel, side_kernel
    finally:
        tun.close()
        for end in ends:
            end.close()


def enqueue(kernel: socket.socket, *packets: bytes) -> None:
    """Packets the kernel routes into the tunnel, waiting on a queue of a device with virtio headers."""
    for packet in packets:
        kernel.send(bytes(VNET_HDR_LEN) + packet)


def test_with_a_side_queue_a_ping_is_written_there_and_its_reply_read_from_there_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a stream of reads (bulk waiting on the main queue) a ping from the peer goes to the
    device on the side queue, and its reply is read from there at once; the bulk is left for the
    next turn rather than read in front of the reply. TCP goes on the main queue."""
    monkeypatch.setattr(pump_module, "BUSY_GAP", float("inf"))
    channels = [Recorder()]
    bulk = [udp4(4000 + i, 53) for i in range(5)]
    reply = ping4(3, kind=0)

    with side_queue_device() as (tun, main_kernel, side_kernel):

        async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
            pump.attach(channels, MTU)
            enqueue(main_kernel, *bulk)
            enqueue(side_kernel, reply)
            with pump.batch():
                pump.deliver(channels[0], [*tcp_run(4, 2), ping4(3)])
                assert channels[0].sent == [reply]  # at once
            assert channels[0].sent == [reply]  # and nothing of the bulk in this turn
            assert drain(side_kernel) == [bytes(VNET_HDR_LEN) + ping4(3)]
            written = drain(main_kernel)
            assert written and all(w[VNET_HDR_LEN + 9] == 6 for w in written)  # the TCP run
            await until(lambda: len(channels[0].sent) == 1 + len(bulk))
            assert channels[0].sent == [reply, *bulk]

        monkeypatch.setattr(tun, "set_offload", lambda enabled: None)
        totals = run_on(tun, main_kernel, scenario)
    assert totals.packets_out == 1 + len(bulk)


@pytest.mark.parametrize("offload", [False, True])
def test_the_eager_pump_writes_a_ping_to_the_side_queue_and_reads_its_reply_from_there(
    monkeypatch: pytest.MonkeyPatch, offload: bool
) -> None:
    """TCP mode (eager, deliveries outside any batch): a ping from the peer goes to the side
    queue, where the kernel's steering puts its reply, and the reply is read from there inside
    the delivery; the TCP packets beside it go to the main queue. (Written to the main queue, the
    reply came on the side queue a loop turn later: 0.11 ms more idle RTT.) An offload peer's
    frames carry their virtio header, which the check of the protocol skips."""
    channels = [Recorder()]
    reply = ping4(3, kind=0)
    header = bytes(VNET_HDR_LEN) if offload else b""
    tcp = [header + p for p in tcp_run(4, 2)]

    with side_queue_device() as (tun, main_kernel, side_kernel):

        async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
            pump.attach(channels, MTU, offload=offload, eager=True)
            enqueue(side_kernel, reply)
            pump.deliver(channels[0], [tcp[0], header + ping4(3), tcp[1]])
            # Inside the delivery (to an offload peer with the virtio header, as read).
            assert channels[0].sent == [header + reply]
            assert drain(side_kernel) == [bytes(VNET_HDR_LEN) + ping4(3)]
            written = drain(main_kernel)
            if offload:
                assert written == tcp  # (as they came: each frame has its header)
            else:
                assert written and all(w[VNET_HDR_LEN + 9] == 6 for w in written)
            # TCP alone stays on the main queue.
            pump.deliver(channels[0], tcp)
            assert drain(side_kernel) == [] and drain(main_kernel)

        monkeypatch.setattr(tun, "set_offload", lambda enabled: None)
        run_on(tun, main_kernel, scenario)


def test_on_a_quiet_tunnel_the_side_queue_is_read_a_packet_a_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wake-up of the side queue after a quiet spell is most likely for one ping: one read, not
    a second one that fails. A second ping waiting keeps the queue readable and goes a turn later;
    in a stream of reads the queue is read to its end."""
    channel = Recorder()
    pings = [ping4(1), ping4(2), ping4(3)]
    sends: list[int] = []  # how many packets each send carried
    channel.on_send = lambda: sends.append(len(channel.sent) - sum(sends))

    with side_queue_device() as (tun, main_kernel, side_kernel):

        async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
            pump.attach([channel], MTU)
            enqueue(side_kernel, *pings[:2])
            await until(lambda: len(channel.sent) == 2)
            monkeypatch.setattr(pump_module, "BUSY_GAP", float("inf"))  # from now on, never quiet
            enqueue(side_kernel, pings[2], ping4(4))
            await until(lambda: len(channel.sent) == 4)

        monkeypatch.setattr(tun, "set_offload", lambda enabled: None)
        run_on(tun, main_kernel, scenario)
    assert channel.sent == [*pings, ping4(4)]
    assert sends == [1, 1, 2]


def test_a_batch_that_brought_only_a_pings_reply_ends_without_reading_the_device(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """QUIC mode (a batch of datagrams): a ping's reply draws no answer, so the end of the batch
    does not read the device for one (a read that would fail, on the way of every idle ping);
    other packets of no flow still do."""
    channels = [Recorder()]
    waiting = udp4(4000, 53)  # something the local stack sent meanwhile

    with side_queue_device() as (tun, main_kernel, side_kernel):

        async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
            pump.attach(channels, MTU)
            enqueue(main_kernel, waiting)  # (no await below: the loop's own reads do not come)
            with pump.batch():
                pump.deliver(channels[0], [ping4(3, kind=0)])
            assert channels[0].sent == []
            assert drain(side_kernel) == [bytes(VNET_HDR_LEN) + ping4(3, kind=0)]  # written, on its queue
            with pump.batch():
                pump.deliver(channels[0], [ping4(3, kind=3)])  # an ICMP error: may be answered
            assert channels[0].sent == [waiting]

        monkeypatch.setattr(tun, "set_offload", lambda enabled: None)
        run_on(tun, main_kernel, scenario)


def test_a_read_of_the_main_queue_takes_the_side_queue_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both queues readable, the main one first: the ping waiting on the side queue is handed to
    its channel before the bulk read in the same turn."""
    channels = [Recorder()]
    bulk = [udp4(5000, 6000, bytes([i])) for i in range(6)]
    ping = ping4(1)

    with side_queue_device() as (tun, main_kernel, side_kernel):

        async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
            pump.attach(channels, MTU)
            enqueue(main_kernel, *bulk)
            enqueue(side_kernel, ping)
            await until(lambda: len(channels[0].sent) == len(bulk) + 1)

        monkeypatch.setattr(tun, "set_offload", lambda enabled: None)
        run_on(tun, main_kernel, scenario)
    assert channels[0].sent == [ping, *bulk]


def test_a_ping_that_comes_while_a_batch_is_sent_goes_before_the_loop_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ping put on the side queue while the bulk read from the main queue is being sent is read
    and sent right after it, in the same turn of the event loop, not in the next."""
    channel = Recorder()
    bulk = [udp4(5000, 6000, bytes([i])) for i in range(6)]
    ping = ping4(1)
    next_turn: list[list[bytes]] = []  # what had been sent when the next turn began

    with side_queue_device() as (tun, main_kernel, side_kernel):

        def on_send() -> None:
            if len(channel.sent) == len(bulk):  # the bulk's batch: the ping comes meanwhile
                enqueue(side_kernel, ping)
                asyncio.get_running_loop().call_soon(lambda: next_turn.append(list(channel.sent)))

        channel.on_send = on_send

        async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
            pump.attach([channel], MTU)
            enqueue(main_kernel, *bulk)
            await until(lambda: len(channel.sent) == len(bulk) + 1)

        monkeypatch.setattr(tun, "set_offload", lambda enabled: None)
        run_on(tun, main_kernel, scenario)
    assert next_turn == [[*bulk, ping]]


def test_short_batches_go_to_their_channels_before_bulk() -> None:
    """A ping read behind a bulk flow's packets is handed over before that flow's batch is, so
    it does not wait while the bulk is encrypted; each flow keeps its own order."""
    channels = [Recorder() for _ in range(3)]
    order: list[int] = []
    for index, channel in enumerate(channels):
        channel.on_send = lambda i=index: order.append(i)  # type: ignore[misc]
    bulk = [udp4(5000, 6000, bytes([i])) for i in range(6)]
    bulk_channel = StreamSelector(3).flow(bulk[0])
    ping = ping4(1, ident=(bulk_channel + 1) % 3)

    async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
        pump.attach(channels, MTU)  # not eager: the burst is read in one batch
        await put(kernel, *bulk[:3], ping, *bulk[3:])
        await until(lambda: len(sent(channels)) == len(bulk) + 1)

    run(scenario)
    assert order == [(bulk_channel + 1) % 3, bulk_channel]
    assert channels[bulk_channel].sent == bulk


def test_deliver_counts_what_the_device_refused() -> None:
    channel = Recorder()

    async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
        pump.attach([channel], MTU)
        kernel.close()  # every write fails now (ECONNREFUSED): a router drops
        pump.deliver(channel, [ping4(1), ping4(2)])

    totals = run(scenario)
    assert (channel.counters.packets_in, channel.counters.dropped) == (0, 2)
    assert (totals.packets_in, totals.dropped) == (0, 2)


def test_deliveries_gathered_for_a_batch_reach_the_device_together_and_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """QUIC mode brackets each batch of datagrams with gather/release: a run of one TCP flow that
    came one packet per delivery is written as one segment at the end; anything else at once."""
    first, second = Recorder(), Recorder()
    run_of_three = tcp_run(4, 3)
    other = ping4(9)
    got: list[bytes] = []

    async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
        pump.attach([first, second], MTU)
        pump.gather()
        for packet in run_of_three[:2]:
            pump.deliver(first, [packet])
        pump.deliver(second, [other])
        pump.deliver(first, [run_of_three[2]])
        got.append(kernel.recv(70000))  # the ping, at once
        with pytest.raises(BlockingIOError):
            kernel.recv(70000)  # the TCP packets wait for the end of the batch
        pump.release()
        while True:
            try:
                got.append(kernel.recv(70000))
            except BlockingIOError:
                break
        pump.deliver(first, [other])  # outside a batch: written at once
        got.append(kernel.recv(70000))

    with socket_device(vnet_hdr=True) as (tun, kernel_end):
        # the socket pair takes no TUNSETOFFLOAD ioctl; offload stays off here anyway
        monkeypatch.setattr(tun, "set_offload", lambda enabled: None)
        totals = run_on(tun, kernel_end, scenario)
    assert len(got) == 3
    assert plain_packets(got[0]) == [other]
    assert plain_packets(got[1]) == run_of_three  # one write: the three as one segment
    assert plain_packets(got[2]) == [other]
    assert (first.counters.packets_in, second.counters.packets_in) == (4, 1)
    assert first.counters.bytes_in == sum(map(len, run_of_three)) + len(other)
    assert (totals.packets_in, totals.dropped) == (5, 0)


def drain(kernel: socket.socket) -> list[bytes]:
    """Every write the pump made to the device, in order."""
    got: list[bytes] = []
    while True:
        try:
            got.append(kernel.recv(70000))
        except BlockingIOError:
            return got


def test_a_udp_run_gathered_in_a_batch_reaches_the_device_as_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """The datagrams of one UDP flow that came one per delivery in a batch wait for its end and
    go to the device as one UDP GSO write (gro.py); a ping in between goes at once."""
    channel = Recorder()
    burst = udp_run(4, 4)
    got: list[list[bytes]] = []

    async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
        pump.attach([channel], MTU)
        with pump.batch():
            for packet in burst[:2]:
                pump.deliver(channel, [packet])
            pump.deliver(channel, [ping4(1)])
            for packet in burst[2:]:
                pump.deliver(channel, [packet])
            got.append(drain(kernel))  # the ping only
        got.append(drain(kernel))

    with socket_device(vnet_hdr=True) as (tun, kernel_end):
        monkeypatch.setattr(tun, "set_offload", lambda enabled: None)
        totals = run_on(tun, kernel_end, scenario)
    assert [plain_packets(w) for w in got[0]] == [[ping4(1)]]
    assert [plain_packets(w) for w in got[1]] == [burst]  # one write, cut back into the four
    assert (channel.counters.packets_in, channel.counters.bytes_in) == (5, sum(map(len, burst)) + len(ping4(1)))
    assert totals.dropped == 0


def test_a_kernel_that_refuses_merged_udp_gets_the_datagrams_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before Linux 6.2 a TUN write with UDP GSO fails with EINVAL: the run's datagrams are then
    written one by one, none lost, and the pump merges no UDP any more (one refusal, once)."""
    channel = Recorder()
    first, second = udp_run(4, 3), udp_run(6, 3, first_id=10)
    refused: list[int] = []
    real_writev = os.writev

    def old_kernel_writev(fd: int, buffers: list[bytes]) -> int:
        if bytes(buffers[0])[1] == 5:  # GSO_UDP_L4
            refused.append(len(buffers))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_writev(fd, buffers)

    got: list[bytes] = []

    async def scenario(pump: PacketPump, kernel: socket.socket) -> None:
        pump.attach([channel], MTU)
        for burst in (first, second):
            with pump.batch():
                for packet in burst:
                    pump.deliver(channel, [packet])
            got.extend(drain(kernel))

    monkeypatch.setattr(pump_module.os, "writev", old_kernel_writev)
    with socket_device(vnet_hdr=True) as (tun, kernel_end):
        monkeypatch.setattr(tun, "set_offload", lambda enabled: None)
        totals = run_on(tun, kernel_end, scenario)
    assert len(refused) == 1
    assert [p for w in got for p in plain_packets(w)] == [*first, *second]
    assert len(got) == 6  # one write each
    assert (totals.packets_in, totals.dropped) == (6, 0)


# -- flow hashing at an offset (the virtio header in front of an offload read) --------------------


@pytest.mark.parametrize("start", [0, 10])
def test_echo_id_finds_pings_only(start: int) -> None:
    pad = bytes(start)
    assert echo_id(pad + ping4(1, ident=0x1234), start) == 0x1234
    assert echo_id(pad + ping4(1, ident=77, kind=0), start) == 77  # a reply
    assert echo_id(pad + ping4(1, ident=77, kind=3), start) == -1  # destination unreachable
    assert echo_id(pad + udp4(1, 2, bytes(20)), start) == -1
    fragment = bytearray(ping4(1))
    fragment[6] = 0x20  # more fragments
    assert echo_id(pad + bytes(fragment), start) == -1
    icmp6 = struct.pack("!IHBB", 6 << 28, 8, 58, 64) + bytes(32) + struct.pack("!BBHHH", 128, 0, 0, 99, 1)
    assert echo_id(pad + icmp6, start) == 99
    rng = random.Random(3)
    for _ in range(2000):  # garbage never raises
        echo_id(pad + bytes([rng.choice((0x45, 0x46, 0x4F, 0x60))]) + rng.randbytes(rng.randrange(60)), start)


def test_echo_requests_and_replies_are_told_apart_from_everything_else() -> None:
    assert is_echo_request(ping4(1)) and not is_echo_reply(ping4(1))
    assert is_echo_reply(ping4(1, kind=0)) and not is_echo_request(ping4(1, kind=0))
    assert not is_echo_request(ping4(1, kind=3)) and not is_echo_reply(ping4(1, kind=3))
    assert not is_echo_request(udp4(1, 2, bytes(20))) and not is_echo_reply(udp4(1, 2, bytes(20)))
    later_fragment = bytearray(ping4(1))
    later_fragment[7] = 0x10  # offset 16 bytes: what follows the header is not an ICMP header
    assert not is_echo_request(bytes(later_fragment))
    first_fragment = bytearray(ping4(1))
    first_fragment[6] = 0x20  # more fragments, offset 0: the request's head
    assert is_echo_request(bytes(first_fragment))
    icmp6 = struct.pack("!IHBB", 6 << 28, 8, 58, 64) + bytes(32) + struct.pack("!BBHHH", 128, 0, 0, 99, 1)
    assert is_echo_request(icmp6) and not is_echo_reply(icmp6)
    reply6 = icmp6[:40] + bytes([129]) + icmp6[41:]
    assert is_echo_reply(reply6) and not is_echo_request(reply6)
    assert not is_echo_reply(icmp6[:40] + bytes([0]) + icmp6[41:])  # ICMP's reply type is not ICMPv6's
    rng = random.Random(5)
    for _ in range(2000):  # garbage never raises
        packet = bytes([rng.choice((0x45, 0x46, 0x4F, 0x60))]) + rng.randbytes(rng.randrange(60))
        is_echo_request(packet)
        is_echo_reply(packet)


@pytest.mark.parametrize("start", [0, 10])
def test_flow_at_an_offset_agrees_with_flow_ports(start: int) -> None:
    rng = random.Random(11)
    packets = [udp4(rng.randrange(65536), rng.randrange(65536)) for _ in range(200)]
    packets += [bytes([0x45]) + rng.randbytes(rng.randrange(0, 60)) for _ in range(300)]  # garbage
    packets += [bytes([0x60]) + rng.randbytes(rng.randrange(0, 80)) for _ in range(300)]
    packets += [ping4(1), b""]
    for count in (1, 2, 5):
        selector = StreamSelector(count)
        for packet in packets:
            ports = flow_ports(packet)
            expected = 0 if count == 1 else -1 if ports is None else (ports[0] ^ ports[1]) % count
            assert selector.flow(bytes(start) + packet, start) == expected, packet.hex()
