#!/usr/bin/env python3
"""The floor for a tunnel written in Python: a plain asyncio relay between a TUN device and UDP.

Each packet read from the device is sealed with AES-256-GCM and sent as one datagram; each datagram
received is opened and written to the device. Nothing else: no handshake (both ends read one
throwaway key from a file), no replay window, no congestion control, no queue management, no
framing beyond the nonce. It is not a VPN and is not part of rustvpn: the benchmark runs it to show,
in the same run, what any Python program on asyncio pays per packet on this machine, so that
rustvpn's own numbers (idle RTT above all) can be read against it as well as against OpenVPN.

Run as root in a namespace, one end each:
    py_relay.py server --bind ADDR --port N --dev NAME --addr CIDR --mtu N --key-file F
    py_relay.py client --server ADDR --port N --dev NAME --addr CIDR --mtu N --key-file F
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
COUNTER = struct.Struct("!Q")  # the nonce's per-packet part, sent in clear before the sealed packet
BURST = 64  # reads per wake-up before the loop looks at the other descriptor


def open_tun(name: str, cidr: str, mtu: int) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    subprocess.run(["ip", "addr", "add", cidr, "dev", name], check=True)
    subprocess.run(["ip", "link", "set", name, "mtu", str(mtu), "up"], check=True)
    return fd


class Relay:
    def __init__(self, fd: int, sock: socket.socket, key: bytes, is_client: bool, connected: bool) -> None:
        self.fd, self.sock, self.aead = fd, sock, AESGCM(key)
        # Each direction has its own nonce prefix, so one key never sees a nonce twice.
        self.send_prefix, self.recv_prefix = (b"\0\0\0\1", b"\0\0\0\2") if is_client else (b"\0\0\0\2", b"\0\0\0\1")
        self.sent = 0
        self.connected = connected  # the server learns its peer from the first packet that opens

    def tun_readable(self) -> None:
        fd, sock, seal, prefix = self.fd, self.sock, self.aead.encrypt, self.send_prefix
        for _ in range(BURST):
            try:
                packet = os.read(fd, 65535)
            except BlockingIOError:
                return
            if not self.connected:
                continue  # no peer yet: dropped, as a router without a route would
            self.sent += 1
            counter = COUNTER.pack(self.sent)
            # (try/except rather than contextlib.suppress: no object made per packet)
            try:  # noqa: SIM105
                sock.send(counter + seal(prefix + counter, packet, None))
            except OSError:
                pass  # a full socket buffer or an ICMP error: the packet is lost, as on a wire

    def udp_readable(self) -> None:
        fd, sock, open_, prefix = self.fd, self.sock, self.aead.decrypt, self.recv_prefix
        for _ in range(BURST):
            try:
                data, addr = sock.recvfrom(65535)
            except BlockingIOError:
                return
            except OSError:
                continue
            if len(data) <= COUNTER.size:
                continue
            try:
                packet = open_(prefix + data[: COUNTER.size], data[COUNTER.size :], None)
            except InvalidTag:
                continue
            if not self.connected:
                sock.connect(addr)
                self.connected = True
            try:  # noqa: SIM105
                os.write(fd, packet)
            except OSError:
                pass  # the device refused it (full queue, a malformed packet): dropped


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("role", choices=("server", "client"))
    ap.add_argument("--bind", help="server: address to listen on")
    ap.add_argument("--server", help="client: the server's address")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dev", required=True)
    ap.add_argument("--addr", required=True, help="this end's tunnel address, CIDR")
    ap.add_argument("--mtu", type=int, default=1400)
    ap.add_argument("--key-file", required=True, help="32 bytes, the same file at both ends")
    args = ap.parse_args()
    key = Path(args.key_file).read_bytes()
    if len(key) != 32:
        print(f"py_relay.py: {args.key_file}: want 32 bytes, found {len(key)}", file=sys.stderr)
        return 2
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    is_client = args.role == "client"
    if is_client:
        sock.connect((args.server, args.port))
    else:
        sock.bind((args.bind, args.port))
    sock.setblocking(False)
    fd = open_tun(args.dev, args.addr, args.mtu)
    relay = Relay(fd, sock, key, is_client, connected=is_client)
    loop = asyncio.new_event_loop()
    loop.add_reader(fd, relay.tun_readable)
    loop.add_reader(sock.fileno(), relay.udp_readable)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, loop.stop)
    print(f"py_relay {args.role}: {args.dev} {args.addr} up", flush=True)
    loop.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
