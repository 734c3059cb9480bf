"""A userspace link impairer: the stand-in for ``tc netem`` on kernels built without sch_netem.

``linkbox.py bridge IF_A IF_B SEED`` runs in a namespace of its own between the client's and the
server's veth links and copies every Ethernet frame from one interface to the other through
AF_PACKET sockets, so both hosts see one plain link (ARP, ND, IPv4, IPv6 all cross it). Lines on
stdin change the link; each is answered by one line on stdout:

    loss PERCENT     drop that share of frames, independently in each direction
    delay MS         hold every frame that long, in each direction (a fixed one-way delay)
    down / up        drop everything / nothing (a cut cable, without the carrier loss)
    stats            one JSON line: frames seen, forwarded and dropped per direction

``linkbox.py nocsum IF`` turns off transmit checksum offload on IF (and with it TSO), run in the
namespace that owns IF. Without that, frames handed to the box by the local stack carry partial
checksums and full-size GSO super-frames that only a kernel-internal path may forward.
"""

from __future__ import annotations

import array
import collections
import errno
import fcntl
import json
import os
import random
import select
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
SOL_PACKET = 263  # not exported by the socket module of Python 3.11
PACKET_IGNORE_OUTGOING = 23  # Linux >= 4.20; we must not see the frames we send ourselves
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17
MAX_FRAME = 65536
RX_BATCH = 256  # frames taken from one socket before looking at the other and the clock
QUEUE_LIMIT = 20000  # frames held per direction while delaying (netem's own default is 1000)
SOCKET_BUFFER = 8 * 1024 * 1024


def disable_tx_checksum(ifname: str) -> None:
    """ETHTOOL_STXCSUM off: the stack then computes checksums itself and segments before the link."""
    value = array.array("B", struct.pack("II", ETHTOOL_STXCSUM, 0))
    address, _ = value.buffer_info()
    request = struct.pack("16sP", ifname.encode(), address)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, request)


def open_port(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    sock.bind((ifname, ETH_P_ALL))
    sock.setblocking(False)
    return sock


class Direction:
    """Frames arriving on one port and leaving by the other, with their counters."""

    def __init__(self, name: str, rx: socket.socket, tx: socket.socket) -> None:
        self.name = name
        self.rx, self.tx = rx, tx
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.counts = {"seen": 0, "forwarded": 0, "lost": 0, "down": 0, "overflow": 0, "send_errors": 0}

    def send(self, frame: bytes) -> None:
        try:
            self.tx.send(frame)
            self.counts["forwarded"] += 1
        except OSError as exc:
            # A full device queue drops the frame, as a congested link would.
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.ENETDOWN, errno.ENXIO, errno.EMSGSIZE):
                raise
            self.counts["send_errors"] += 1


class Box:
    def __init__(self, if_a: str, if_b: str, seed: int) -> None:
        a, b = open_port(if_a), open_port(if_b)
        self.directions = {a.fileno(): Direction("a_to_b", a, b), b.fileno(): Direction("b_to_a", b, a)}
        self.random = random.Random(seed)
        self.loss = 0.0
        self.delay = 0.0
        self.down = False

    def receive(self, direction: Direction, now: float) -> None:
        counts = direction.counts
        for _ in range(RX_BATCH):
            try:
                frame = direction.rx.recv(MAX_FRAME)
            except BlockingIOError:
                return
            counts["seen"] += 1
            if self.down:
                counts["down"] += 1
            elif self.loss and self.random.random() < self.loss:
                counts["lost"] += 1
            elif self.delay:
                if len(direction.queue) >= QUEUE_LIMIT:
                    counts["overflow"] += 1
                else:
                    direction.queue.append((now + self.delay, frame))
            else:
                direction.send(frame)

    def release(self, now: float) -> float | None:
        """Send the delayed frames that are due; return the next due time, if any."""
        next_due: float | None = None
        for direction in self.directions.values():
            queue = direction.queue
            while queue and queue[0][0] <= now:
                direction.send(queue.popleft()[1])
            if queue and (next_due is None or queue[0][0] < next_due):
                next_due = queue[0][0]
        return next_due

    def command(self, line: str) -> str:
        words = line.split()
        if not words:
            return "error: empty command"
        verb, args = words[0], words[1:]
        if verb == "loss" and len(args) == 1:
            self.loss = float(args[0]) / 100.0
        elif verb == "delay" and len(args) == 1:
            self.delay = float(args[0]) / 1000.0
        elif verb == "down" and not args:
            self.down = True
            for direction in self.directions.values():
                direction.counts["down"] += len(direction.queue)  # frames in flight are cut too
                direction.queue.clear()
        elif verb == "up" and not args:
            self.down = False
        elif verb == "stats" and not args:
            return json.dumps({d.name: d.counts for d in self.directions.values()})
        else:
            return f"error: unknown command {line.strip()!r}"
        return "ok"

    def run(self) -> None:
        poller = select.epoll()
        for fd in self.directions:
            poller.register(fd, select.EPOLLIN)
        stdin = sys.stdin.fileno()
        poller.register(stdin, select.EPOLLIN)
        pending = b""
        print("ready", flush=True)
        next_due: float | None = None
        while True:
            timeout = -1.0 if next_due is None else max(0.0, next_due - time.monotonic())
            events = poller.poll(timeout)
            now = time.monotonic()
            for fd, _ in events:
                if fd == stdin:
                    data = os.read(stdin, 4096)
                    if not data:
                        return  # the test hung up: the link goes away with us
                    pending += data
                    while b"\n" in pending:
                        line, pending = pending.split(b"\n", 1)
                        print(self.command(line.decode()), flush=True)
                else:
                    self.receive(self.directions[fd], now)
            next_due = self.release(time.monotonic())


def main(argv: list[str]) -> None:
    if argv[1] == "nocsum":
        disable_tx_checksum(argv[2])
    elif argv[1] == "bridge":
        Box(argv[2], argv[3], int(argv[4])).run()
    else:
        raise SystemExit(f"usage: {argv[0]} bridge IF_A IF_B SEED | nocsum IF")


if __name__ == "__main__":
    main(sys.argv)
