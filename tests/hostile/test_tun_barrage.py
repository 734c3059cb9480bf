"""Packets from the TUN device: whatever the kernel hands the pump must never crash it.

An AF_PACKET socket bound to the live tunnel's TUN interface sends malformed IPv4 and IPv6 packets
(bad and truncated headers, absurd lengths, extension-header chains that run off the end, not IP
at all); the kernel delivers them to the TUN file descriptor as they are, so the daemon reads them,
hashes them onto a stream, frames them and sends them to its peer, which writes them to its own
TUN device (where the kernel drops most). Both ends are hit at once, during a ping loop through
the same tunnel. Flow hashing of such packets is unit-tested in tests/unit/test_flow_hash.py.

Zero-length reads cannot be produced this way (the kernel refuses a 0-byte AF_PACKET send with
EINVAL), so the pump's zero-length guard is driven through a datagram socket pair standing in for
the device's file descriptor: the same read() boundaries, zero-length reads included.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from rustvpn.pump import NO_DROPS, Drops, PacketChannel, PacketPump
from rustvpn.stats import Counters
from rustvpn.tun import TunDevice
from tests.hostile.nettools import ETH_P_IP, ETH_P_IPV6, ns_socket
from tests.hostile.world import World

pytestmark = [pytest.mark.root, pytest.mark.hostile]

MTU = 1500  # world.A_MTU: nothing above it is sent


@pytest.fixture(params=["tcp", "quic"])
def world(request: pytest.FixtureRequest) -> World:
    return request.getfixturevalue(f"{request.param}_world")  # type: ignore[no-any-return]


def ipv4(payload: bytes, *, ihl: int = 5, total: int | None = None, proto: int = 17, frag: int = 0) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total if total is not None else 20 + len(payload),
                         0x1234, frag, 64, proto, 0, bytes([198, 19, 1, 2]), bytes([198, 19, 1, 1]))  # fmt: skip
    return header + payload


def ipv6(next_header: int, payload: bytes, *, length: int | None = None) -> bytes:
    addr = bytes.fromhex("fd000019000000000000000000000001")
    size = len(payload) if length is None else length
    return struct.pack("!IHBB", 6 << 28, size, next_header, 64) + addr + addr + payload


def malformed(rng: random.Random) -> Iterator[tuple[int, bytes]]:
    """(ethertype, packet) pairs, each wrong in its own way."""
    for size in range(1, 20):  # shorter than any IPv4 header
        yield ETH_P_IP, bytes([0x45]) + rng.randbytes(size - 1)
    for ihl in (0, 1, 4, 15):  # header length below the minimum, or beyond the packet
        yield ETH_P_IP, ipv4(rng.randbytes(8), ihl=ihl)
    for total in (0, 10, 19, 65535):  # total length field that lies
        yield ETH_P_IP, ipv4(rng.randbytes(30), total=total)
    for proto in (6, 17, 33, 132, 136):  # port protocols with their ports cut off
        for cut in range(4):
            yield ETH_P_IP, ipv4(rng.randbytes(cut), proto=proto)
    for frag in (0x2000, 0x0001, 0x3FFF, 0x1FFF):  # fragments, first and later
        yield ETH_P_IP, ipv4(rng.randbytes(40), frag=frag)
    for ihl in range(6, 16):  # options of random bytes
        yield ETH_P_IP, ipv4(rng.randbytes(4 * (ihl - 5) + 8), ihl=ihl)
    for size in range(1, 40, 3):  # shorter than the IPv6 header
        yield ETH_P_IPV6, bytes([0x60]) + rng.randbytes(size - 1)
    yield ETH_P_IPV6, ipv6(17, rng.randbytes(16), length=60000)  # payload length that lies
    for ext in (0, 43, 60, 135, 139, 140, 51):  # an extension header whose length runs off the end
        yield ETH_P_IPV6, ipv6(ext, bytes([17, 200]) + rng.randbytes(6))
    chain = b"".join(bytes([0 if i % 2 else 60, 0]) + bytes(6) for i in range(40))
    yield ETH_P_IPV6, ipv6(0, chain)  # 40 extension headers and no end to them
    yield ETH_P_IPV6, ipv6(0, chain[:-3])  # the same, cut inside the last one
    yield ETH_P_IPV6, ipv6(44, bytes([17, 0, 0, 1]))  # a fragment header cut short
    yield ETH_P_IPV6, ipv6(59, rng.randbytes(100))  # "no next header", with bytes after it
    for version in (0, 1, 5, 7, 15):  # not IP at all
        yield ETH_P_IP, bytes([version << 4]) + rng.randbytes(rng.randint(0, 60))
    for _ in range(120):  # random bytes behind a plausible first byte, up to the MTU
        ethertype, first = rng.choice([(ETH_P_IP, 0x45), (ETH_P_IPV6, 0x60)])
        yield ethertype, bytes([first]) + rng.randbytes(rng.randint(0, MTU - 1))


def barrage(netns: str, device: str, seed: int, rounds: int, sent: list[int]) -> None:
    """Send every malformed packet ``rounds`` times out of ``device`` (into its TUN fd)."""
    packets = list(malformed(random.Random(seed)))
    sockets = {proto: ns_socket(netns, socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(proto))
               for proto in (ETH_P_IP, ETH_P_IPV6)}  # fmt: skip
    try:
        for _ in range(rounds):
            for index, (proto, packet) in enumerate(packets):
                sockets[proto].sendto(packet, (device, proto))
                sent[0] += 1
                if index % 50 == 0:
                    time.sleep(0.01)  # stay under the device's queue: every packet should reach the pump
    finally:
        for sock in sockets.values():
            sock.close()


def test_malformed_packets_from_the_tun_device_at_both_ends(world: World) -> None:
    client, server = world.a_client, world.a_server
    before = {d.name: d.status()["totals"] for d in (client, server)}
    sent = {"client": [0], "server": [0]}
    with world.unaffected():
        threads = [
            threading.Thread(target=barrage, args=(world.client_ns, "rva", 1, 8, sent["client"])),
            threading.Thread(target=barrage, args=(world.server_ns, "rva", 2, 8, sent["server"])),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert sent["client"][0] > 1000 and sent["server"][0] > 1000
    for daemon, side in ((client, "client"), (server, "server")):
        totals = daemon.status()["totals"]
        read = totals["packets_out"] - before[daemon.name]["packets_out"]
        # Everything sent out of the device was read by the pump and sent to the peer (pings too).
        assert read >= sent[side][0], f"{daemon.name} read {read} of the {sent[side][0]} packets sent into it"
        # And the peer took them in (or its kernel refused them: counted as dropped). QUIC may
        # carry them as DATAGRAM frames, which a burst may lose: most, not all, must arrive.
        peer = server if daemon is client else client
        peer_totals = peer.status()["totals"]
        got = sum(peer_totals[k] - before[peer.name][k] for k in ("packets_in", "dropped"))
        assert got >= 0.9 * sent[side][0], f"{peer.name} took in {got} of {sent[side][0]}"


class _Recorder(PacketChannel):
    """A channel that keeps what the pump sends it."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    def send_packets(self, packets: list[bytes]) -> Drops:
        self.sent.extend(packets)
        return NO_DROPS


def test_pump_survives_zero_length_and_garbage_reads() -> None:
    """A datagram socket pair keeps packet boundaries, zero-length ones included: reads from its
    end come back one packet each, as from a TUN fd."""
    device_end, kernel_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    packets = [packet for _, packet in malformed(random.Random(3))]

    async def main() -> tuple[list[bytes], Counters]:
        device_end.setblocking(False)
        kernel_end.setblocking(False)  # its queue holds a few datagrams: wait for the pump, not on it
        loop = asyncio.get_running_loop()
        totals = Counters()
        pump = PacketPump(TunDevice("hostile0", os.dup(device_end.fileno())), totals)
        channels = [_Recorder() for _ in range(3)]
        pump.start()
        pump.attach(channels, MTU)
        try:
            for packet in packets:
                await loop.sock_sendall(kernel_end, b"")  # a zero-length read before every packet
                await loop.sock_sendall(kernel_end, packet)
            await loop.sock_sendall(kernel_end, b"")
            async with asyncio.timeout(5):
                while sum(len(c.sent) for c in channels) < len(packets):
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # anything extra would show up now
        finally:
            pump.stop()
            pump.tun.close()
        return [p for c in channels for p in c.sent], totals

    try:
        forwarded, totals = asyncio.run(main())
    finally:
        device_end.close()
        kernel_end.close()
    assert b"" not in forwarded, "a zero-length read became a packet"
    assert sorted(forwarded) == sorted(packets), "the pump lost or changed packets around zero-length reads"
    assert totals.packets_out == len(packets)
