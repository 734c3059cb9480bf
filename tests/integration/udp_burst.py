"""A burst of numbered UDP datagrams through the tunnel, checked at the far end.

    udp_burst.py send ADDRESS PORT COUNT SIZE   datagrams 0..COUNT-1 of SIZE bytes, as fast as it can
    udp_burst.py recv ADDRESS PORT COUNT SIZE   prints "listening", then one JSON line: how many came,
                                                how many were not what was sent, whether in order
    udp_burst.py flood ADDRESS PORT SECONDS SIZE  datagrams as fast as it can for SECONDS; prints how many

Datagram n is n as 4 bytes and then its low byte repeated: any change on the way shows.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time


def datagram(seq: int, size: int) -> bytes:
    return seq.to_bytes(4, "big") + bytes([seq % 251]) * (size - 4)


def main() -> None:
    mode, address, port, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if mode == "flood":
        sent, end, payload = 0, time.monotonic() + count, datagram(0, size)
        while time.monotonic() < end:
            for _ in range(100):
                with contextlib.suppress(OSError):
                    sock.sendto(payload, (address, port))
                    sent += 1
        print(sent, flush=True)
        return
    if mode == "send":
        for seq in range(count):
            with contextlib.suppress(OSError):  # a full queue on the way: lost like any datagram
                sock.sendto(datagram(seq, size), (address, port))
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024 * 1024)
    sock.bind((address, port))
    print("listening", flush=True)
    seqs: list[int] = []
    bad = 0
    sock.settimeout(20)  # for the first one
    while True:
        try:
            data = sock.recv(65535)
        except TimeoutError:
            break
        sock.settimeout(1)
        seq = int.from_bytes(data[:4], "big")
        seqs.append(seq)
        bad += data != datagram(seq, size)
    print(json.dumps({"received": len(seqs), "bad": bad, "in_order": seqs == sorted(seqs)}), flush=True)


if __name__ == "__main__":
    main()
