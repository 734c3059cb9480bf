"""Which queue of a two-queue TUN device the kernel puts each kind of packet on. Run as root in a
namespace of its own:

    tun_queues.py DEVICE        prints one JSON line: {"steering": ..., "main": [protocols], "side": [protocols]}
    tun_queues.py DEVICE learn  the same, for the answers to packets "from the peer" written on each queue

It opens DEVICE with a side queue (tun.py) and gives it an IPv4 and an IPv6 address. Then it sends
a UDP datagram, a TCP SYN and a ping out of it over each IP version; or, with ``learn``, writes
pings from the peer on the side queue (the pump's way), and TCP SYNs to a closed port of two flows,
one on each queue, for the local stack to answer (echo replies, RSTs). It reads both queues: the
IP protocol number of each packet found on each, in order.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time

from rustvpn.offload import VNET_HDR_LEN
from rustvpn.tun import TunDevice

LOCAL4, PEER4 = "192.0.2.1", "192.0.2.9"
LOCAL6, PEER6 = "fd00:5e::1", "fd00:5e::9"


def protocol(read: bytes) -> int:
    """The IP protocol of a packet read from the device (behind its virtio header)."""
    return read[VNET_HDR_LEN + 9] if read[VNET_HDR_LEN] >> 4 == 4 else read[VNET_HDR_LEN + 6]


def flow(read: bytes) -> str:
    """An answer's flow: "ping ID" for an IPv4 echo reply, "tcp PORT" for a TCP segment to PORT,
    else the protocol number."""
    kind, packet = protocol(read), read[VNET_HDR_LEN:]
    if packet[0] >> 4 == 4 and kind == 1 and packet[20] == 0:
        return f"ping {struct.unpack_from('!H', packet, 24)[0]}"
    if packet[0] >> 4 == 4 and kind == 6:
        return f"tcp {struct.unpack_from('!H', packet, 22)[0]}"
    return str(kind)


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(proto: int, body: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, proto, 0,
                         socket.inet_aton(PEER4), socket.inet_aton(LOCAL4))  # fmt: skip
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + body


def echo_request(ident: int, seq: int) -> bytes:
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"queue"
    return ipv4(1, icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:])


def syn(sport: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, 9, 1000, 0, 5 << 4, 0x02, 65535, 0, 0)
    pseudo = socket.inet_aton(PEER4) + socket.inet_aton(LOCAL4) + struct.pack("!BBH", 0, 6, len(tcp))
    return ipv4(6, tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:])


def from_the_peer(tun: TunDevice) -> None:
    """Pings on the side queue, as the pump writes them, and two TCP flows, one on each queue: only
    the kernel learning from the writes, not its hash, puts every answer on the queue of its flow's
    writes. (To the kernel all pings between two addresses are one flow, whatever their id.)"""
    for seq in range(3):
        os.write(tun.side_fd, bytes(VNET_HDR_LEN) + echo_request(101, seq))
        os.write(tun.side_fd, bytes(VNET_HDR_LEN) + syn(40001))
        os.write(tun.fd, bytes(VNET_HDR_LEN) + syn(40002))
        time.sleep(0.05)


def from_here() -> None:
    for family, peer in ((socket.AF_INET, PEER4), (socket.AF_INET6, PEER6)):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"x", (peer, 9))
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            tcp.connect((peer, 80))  # its SYN goes out; no answer comes
        subprocess.run(["ping", "-c", "1", "-W", "0.2", peer], capture_output=True, check=False)
        tcp.close()


def main() -> None:
    name, learn = sys.argv[1], sys.argv[2:] == ["learn"]
    tun = TunDevice.open(name, vnet_hdr=True, side_queue=True)
    for cmd in (
        ["ip", "addr", "add", f"{LOCAL4}/24", "dev", name],
        ["ip", "addr", "add", f"{LOCAL6}/64", "dev", name, "nodad"],
        ["ip", "link", "set", name, "up"],
    ):
        subprocess.run(cmd, check=True)
    if learn:
        from_the_peer(tun)
    else:
        from_here()
    found: dict[str, list[int | str]] = {"main": [], "side": []}
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        ready, _, _ = select.select([tun.fd, tun.side_fd], [], [], 0.1)
        for fd in ready:
            packet = os.read(fd, 65536)
            found["main" if fd == tun.fd else "side"].append(flow(packet) if learn else protocol(packet))
    print(json.dumps({"steering": tun.steering, **found}), flush=True)
    tun.close()


if __name__ == "__main__":
    main()
