"""Bulk TCP transfer with a checksum at each end: `recv ADDR PORT` / `send ADDR PORT BYTES SEED`."""

from __future__ import annotations

import hashlib
import random
import socket
import sys


def recv(addr: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((addr, port))
        listener.listen(1)
        print("listening", flush=True)
        listener.settimeout(60)
        conn, _ = listener.accept()
        conn.settimeout(60)
        digest, total = hashlib.sha256(), 0
        with conn:
            while chunk := conn.recv(1 << 16):
                digest.update(chunk)
                total += len(chunk)
    print(total, digest.hexdigest(), flush=True)


def send(addr: str, port: int, size: int, seed: int) -> None:
    data = random.Random(seed).randbytes(size)
    with socket.create_connection((addr, port), timeout=60) as conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # wait for the receiver to close: everything arrived
    print(len(data), hashlib.sha256(data).hexdigest(), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "recv":
        recv(sys.argv[2], int(sys.argv[3]))
    else:
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
