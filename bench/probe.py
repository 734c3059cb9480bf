#!/usr/bin/env python3
"""ICMP echo requests at a fixed interval that sleep between sends, for RTT under load.

iputils ping, asked for an interval of 10 ms, spins between a reply and its next request
(``sched_yield()`` and non-blocking reads, whenever the next send is at most 10 ms away): on a
2-core machine whose CPUs a loaded tunnel saturates, that is a third CPU-hungry process, and the
RTT it reports is then in good part the tunnel waiting for the CPU that ping itself takes (perf:
ping ran 615 ms of CPU in 4 s under load). This prober waits in ``select()`` instead. It times as
ping does: the request's time is taken just before it is sent, the reply's is the kernel's receive
timestamp (``SO_TIMESTAMPNS``), so its own wake-up delay is not counted.

Prints one line per reply in ping's format (``icmp_seq=N ttl=T time=X ms``) and, when the time is up
or on SIGINT, ``N packets transmitted``. IPv4, raw socket: needs root (or CAP_NET_RAW).

    probe.py ADDRESS --interval 0.01 --seconds 5
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import struct
import sys
import time

SO_TIMESTAMPNS = 35  # Linux; SCM_TIMESTAMPNS has the same value
PAYLOAD = bytes(range(48)) + bytes(8)  # 56 bytes, as ping's default


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int) -> bytes:
    body = struct.pack("!HH", ident, seq) + PAYLOAD
    return struct.pack("!BBH", 8, 0, checksum(struct.pack("!BBH", 8, 0, 0) + body)) + body


def kernel_time(ancdata: list[tuple[int, int, bytes]]) -> float | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            return float(seconds + nanoseconds / 1e9)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between requests")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to send for")
    args = parser.parse_args()

    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    ident = os.getpid() & 0xFFFF
    stop = False

    def interrupted(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, interrupted)
    sent_at: dict[int, float] = {}  # sequence number -> wall-clock send time (the kernel stamps in wall time)
    sent = 0
    start = time.monotonic()
    due = start
    while not stop:
        now = time.monotonic()
        if now >= due:
            if now - start >= args.seconds:
                break
            sent += 1
            seq = sent & 0xFFFF
            request = echo_request(ident, seq)
            sent_at[seq] = time.time()
            sock.sendto(request, (args.address, 0))
            due = max(due + args.interval, now)  # late (a busy machine): one now, not a burst to catch up
            continue
        try:
            readable, _, _ = select.select([sock], [], [], due - now)
        except InterruptedError:
            continue
        if not readable:
            continue
        data, ancdata, _, _ = sock.recvmsg(2048, 64)
        header = (data[0] & 0x0F) * 4
        if len(data) < header + 8:
            continue
        kind, _, _, reply_id, seq = struct.unpack("!BBHHH", data[header : header + 8])
        if kind != 0 or reply_id != ident or seq not in sent_at:
            continue
        received = kernel_time(ancdata) or time.time()
        rtt_ms = (received - sent_at.pop(seq)) * 1000
        print(f"{len(data) - header} bytes from {args.address}: icmp_seq={seq} ttl={data[8]} time={rtt_ms:.3f} ms")
    print(f"{sent} packets transmitted")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
