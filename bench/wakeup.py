"""What a wake-up after a quiet spell costs an event loop: a ping-pong of two processes over a
socket pair, the answering one on asyncio's standard loop, on rustvpn's DataPathLoop, or on a bare
epoll loop, woken every INTERVAL ms. Prints the median round trip of each (interleaved rounds).

    .venv/bin/python bench/wakeup.py [--interval MS] [--count N] [--rounds R]

No root, no network: a Unix socket pair. The round trip is measured in the asking process, whose
own costs are the same for all three.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import signal
import socket
import statistics
import time

from rustvpn.event_loop import DataPathLoop, add_data_reader

LOOPS = ("standard", "data-path", "bare epoll")


def answer(kind: str, sock: socket.socket) -> None:
    """Echo every datagram back, forever (in the child)."""
    fd = sock.fileno()

    def readable() -> None:
        os.write(fd, os.read(fd, 2048))

    if kind == "bare epoll":
        poll = select.epoll()
        poll.register(fd, select.EPOLLIN)
        while True:
            for _fd, _events in poll.poll(1.0):
                readable()
    loop = DataPathLoop() if kind == "data-path" else asyncio.new_event_loop()
    add_data_reader(loop, fd, readable)

    def tick() -> None:  # a timer, as a daemon has (watchdog, keepalives)
        loop.call_later(1.0, tick)

    tick()
    loop.run_forever()


def round_trips(kind: str, interval: float, count: int) -> list[float]:
    asking, answering = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    answering.setblocking(False)
    pid = os.fork()
    if pid == 0:
        asking.close()
        try:
            answer(kind, answering)
        finally:
            os._exit(0)
    answering.close()
    message = bytes(84)  # an idle ping's size
    times: list[float] = []
    try:
        for _ in range(count):
            time.sleep(interval)
            start = time.perf_counter_ns()
            asking.send(message)
            asking.recv(2048)
            times.append((time.perf_counter_ns() - start) / 1000)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        asking.close()
    return times[10:]  # (the first few warm the answering process up)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=20.0, help="ms between pings (default 20)")
    parser.add_argument("--count", type=int, default=300, help="pings per run (default 300)")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved runs of each loop (default 6)")
    args = parser.parse_args()
    medians: dict[str, list[float]] = {kind: [] for kind in LOOPS}
    for _ in range(args.rounds):
        for kind in LOOPS:
            medians[kind].append(statistics.median(round_trips(kind, args.interval / 1000, args.count)))
    print(
        f"round trip, us (median of each run's median; {args.rounds} runs of {args.count}, every {args.interval:g} ms)"
    )
    for kind in LOOPS:
        runs = ", ".join(f"{m:.0f}" for m in medians[kind])
        print(f"  {kind:11s} {statistics.median(medians[kind]):6.1f}   ({runs})")


if __name__ == "__main__":
    main()
