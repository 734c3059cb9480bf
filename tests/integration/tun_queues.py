"""Which queue of a two-queue TUN device the kernel puts each kind of packet on. Run as root in a
namespace of its own:

    tun_queues.py DEVICE    prints one JSON line: {"steering": ..., "main": [protocols], "side": [protocols]}

It opens DEVICE with a side queue (tun.py), gives it an IPv4 and an IPv6 address, sends a UDP
datagram, a TCP SYN and a ping out of it over each IP version, and reads both queues: the IP
protocol number of each packet found on each.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import time

from rustvpn.tun import TunDevice

LOCAL4, PEER4 = "192.0.2.1", "192.0.2.9"
LOCAL6, PEER6 = "fd00:5e::1", "fd00:5e::9"


def protocol(packet: bytes) -> int:
    packet = packet[10:]  # the virtio header
    return packet[9] if packet[0] >> 4 == 4 else packet[6]


def main() -> None:
    name = sys.argv[1]
    tun = TunDevice.open(name, vnet_hdr=True, side_queue=True)
    for cmd in (
        ["ip", "addr", "add", f"{LOCAL4}/24", "dev", name],
        ["ip", "addr", "add", f"{LOCAL6}/64", "dev", name, "nodad"],
        ["ip", "link", "set", name, "up"],
    ):
        subprocess.run(cmd, check=True)
    for family, peer in ((socket.AF_INET, PEER4), (socket.AF_INET6, PEER6)):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"x", (peer, 9))
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            tcp.connect((peer, 80))  # its SYN goes out; no answer comes
        subprocess.run(["ping", "-c", "1", "-W", "0.2", peer], capture_output=True, check=False)
        tcp.close()
    found: dict[str, list[int]] = {"main": [], "side": []}
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        ready, _, _ = select.select([tun.fd, tun.side_fd], [], [], 0.1)
        for fd in ready:
            found["main" if fd == tun.fd else "side"].append(protocol(os.read(fd, 65536)))
    print(json.dumps({"steering": tun.steering, **found}), flush=True)
    tun.close()


if __name__ == "__main__":
    main()
