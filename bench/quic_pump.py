#!/usr/bin/env python3
"""Bare aioquic pump: how fast plain aioquic moves bytes between two hosts, with no TUN and no VPN logic.

The baseline for rustvpn's QUIC mode. The client sends as fast as aioquic lets it for --seconds, either
as DATAGRAM frames (--mode datagram) or as writes to one bidirectional stream (--mode stream), then ends
the stream (FIN). The server counts the payload bytes it receives from the first one to the FIN and
writes its goodput to --result as JSON. aioquic is used plainly: default QuicConfiguration apart from
the certificates and, in datagram mode, max_datagram_frame_size; no ALPN.

    server: quic_pump.py server --bind 198.18.0.2 --port 20070 --mode datagram --cert server.pem \
                --key server.key --result server.json
    client: quic_pump.py client --server 198.18.0.2 --port 20070 --mode datagram --ca ca.pem \
                --seconds 5 --result client.json

Each side also reports the CPU seconds (user+system, whole process) it spent in its own measuring window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, DatagramFrameReceived, QuicEvent, StreamDataReceived

# The DATAGRAM frame size each side accepts; only needs to exceed what fits in one packet.
MAX_DATAGRAM_FRAME = 65536
# Payload of the largest DATAGRAM frame that fits one packet with default settings: a 1200-byte QUIC
# packet (QuicConfiguration.max_datagram_size) minus the short header (1 flags byte, the peer's 8-byte
# connection id, aioquic's 2-byte packet number), the 16-byte AEAD tag, and the frame's type byte and
# 2-byte length. Checked against aioquic 1.7.2: 1170 goes out as one 1200-byte packet, 1171 never does.
SHORT_HEADER = 1 + 8 + 2
AEAD_TAG = 16
DATAGRAM_FRAME_OVERHEAD = 1 + 2
STREAM_CHUNK = 64 * 1024  # one write to the stream
STREAM_BACKLOG = 256 * 1024  # unsent stream bytes kept queued in aioquic: enough to fill a window, bounded
DATAGRAM_BACKLOG = 256  # DATAGRAM frames kept queued in aioquic, for the same reason
ACCEPT_TIMEOUT = 60.0  # the server gives up if no client has finished by then


def datagram_payload_size(config: QuicConfiguration) -> int:
    return config.max_datagram_size - SHORT_HEADER - AEAD_TAG - DATAGRAM_FRAME_OVERHEAD


def cpu_now() -> float:
    t = os.times()
    return t.user + t.system


class Outcome:
    """What the server measured; filled by the receiving protocol, awaited by main."""

    def __init__(self) -> None:
        self.bytes = 0
        self.first: float | None = None  # monotonic time of the first payload byte
        self.last: float | None = None  # ... and of the last one
        self.cpu_first = 0.0
        self.cpu_last = 0.0
        self.done = asyncio.get_running_loop().create_future()  # True on FIN, an error text otherwise


class Receiver(QuicConnectionProtocol):
    """Counts DATAGRAM and stream payload bytes until the client's FIN."""

    def __init__(self, *args: Any, outcome: Outcome, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcome = outcome

    def _count(self, n: int) -> None:
        o = self.outcome
        if n == 0:
            return
        now = time.monotonic()
        if o.first is None:
            o.first, o.cpu_first = now, cpu_now()
        o.bytes += n
        o.last = now

    def quic_event_received(self, event: QuicEvent) -> None:
        # not passed to the base class: it would also buffer every stream byte in a StreamReader
        o = self.outcome
        if isinstance(event, DatagramFrameReceived):
            self._count(len(event.data))
        elif isinstance(event, StreamDataReceived):
            self._count(len(event.data))
            if event.end_stream and not o.done.done():
                o.cpu_last = cpu_now()
                o.done.set_result(True)
        elif isinstance(event, ConnectionTerminated) and not o.done.done():
            o.done.set_result(f"connection closed before the end of the stream: {event.reason_phrase!r}")


class Sender(QuicConnectionProtocol):
    """Tops up aioquic's send queue each time it may send (after an ACK or a timer), until the deadline."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mode = "datagram"
        self.deadline = 0.0
        self.pumping = False
        self.stream_id = 0
        self.written = 0  # stream bytes (or DATAGRAM frames) handed to aioquic
        self.payload = b""

    def start(self, mode: str, seconds: float) -> None:
        self.mode = mode
        self.stream_id = self._quic.get_next_available_stream_id()
        size = datagram_payload_size(self._quic.configuration) if mode == "datagram" else STREAM_CHUNK
        self.payload = os.urandom(size)
        self.deadline = time.monotonic() + seconds
        self.pumping = True
        self.transmit()

    def backlog(self) -> int:
        """Bytes (stream) or frames (datagram) given to aioquic and not yet sent."""
        if self.mode == "datagram":
            return len(self._quic._datagrams_pending)  # no public API for the DATAGRAM queue in aioquic
        stream = self._quic._streams.get(self.stream_id)  # nor for how much of a stream has been sent
        return self.written - (stream.sender.highest_offset if stream is not None else 0)

    def refill(self) -> None:
        if self.mode == "datagram":
            while self.backlog() < DATAGRAM_BACKLOG:
                self._quic.send_datagram_frame(self.payload)
                self.written += 1
        else:
            while self.backlog() < STREAM_BACKLOG:
                self._quic.send_stream_data(self.stream_id, self.payload)
                self.written += len(self.payload)

    def sent_bytes(self) -> int:
        """Payload bytes that left in packets (so the receiver's count gives the DATAGRAM loss)."""
        if self.mode == "datagram":
            return (self.written - self.backlog()) * len(self.payload)
        return self.written - self.backlog()

    def transmit(self) -> None:
        # Keep the queue full while aioquic sends all of it: it stops sending (leaves a backlog) only when
        # the congestion window, pacing or flow control hold it back; the next ACK or timer calls us again.
        while self.pumping:
            if time.monotonic() >= self.deadline:
                self.pumping = False
                self._quic.send_stream_data(self.stream_id, b"", end_stream=True)  # the end marker
                break
            self.refill()
            super().transmit()
            if self.backlog() > 0:
                return
        super().transmit()


def server_config(args: argparse.Namespace) -> QuicConfiguration:
    config = QuicConfiguration(is_client=False)
    config.load_cert_chain(args.cert, args.key)
    if args.mode == "datagram":
        config.max_datagram_frame_size = MAX_DATAGRAM_FRAME
    return config


def client_config(args: argparse.Namespace) -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, server_name=args.server)
    config.load_verify_locations(args.ca)
    if args.mode == "datagram":
        config.max_datagram_frame_size = MAX_DATAGRAM_FRAME
    return config


async def run_server(args: argparse.Namespace) -> dict[str, Any]:
    outcome = Outcome()
    server = await serve(
        args.bind, args.port, configuration=server_config(args), create_protocol=partial(Receiver, outcome=outcome)
    )
    try:
        done = await asyncio.wait_for(outcome.done, ACCEPT_TIMEOUT)
    finally:
        server.close()  # also closes the connection; the client sees it end
        await asyncio.sleep(0.1)  # let the CONNECTION_CLOSE leave
    if done is not True:
        raise RuntimeError(str(done))
    if outcome.first is None or outcome.last is None or outcome.last <= outcome.first:
        raise RuntimeError("no payload received")
    seconds = outcome.last - outcome.first
    return {
        "mode": args.mode,
        "bytes": outcome.bytes,
        "seconds": round(seconds, 4),
        "mbit_s": outcome.bytes * 8 / seconds / 1e6,
        "cpu_s": round(outcome.cpu_last - outcome.cpu_first, 3),
    }


async def run_client(args: argparse.Namespace) -> dict[str, Any]:
    config = client_config(args)
    async with connect(args.server, args.port, configuration=config, create_protocol=Sender) as proto:
        assert isinstance(proto, Sender)
        cpu0, t0 = cpu_now(), time.monotonic()
        proto.start(args.mode, args.seconds)
        # the server closes the connection once it has the FIN, i.e. every stream byte
        await asyncio.wait_for(proto.wait_closed(), args.seconds + 30)
        cpu1, t1 = cpu_now(), time.monotonic()
    return {
        "sent_bytes": proto.sent_bytes(),
        "mode": args.mode,
        "seconds": round(t1 - t0, 4),
        "cpu_s": round(cpu1 - cpu0, 3),
        "datagram_payload": datagram_payload_size(config) if args.mode == "datagram" else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("role", choices=["server", "client"])
    ap.add_argument("--mode", choices=["datagram", "stream"], required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--bind", default="0.0.0.0", help="server: address to listen on")
    ap.add_argument("--cert", default="server.pem", help="server: certificate (PEM)")
    ap.add_argument("--key", default="server.key", help="server: private key (PEM)")
    ap.add_argument("--server", default="", help="client: server address, also checked against its certificate")
    ap.add_argument("--ca", default="ca.pem", help="client: CA bundle that the server certificate chains to")
    ap.add_argument("--seconds", type=float, default=5.0, help="client: how long to send")
    ap.add_argument("--result", type=Path, required=True, help="where to write the JSON result")
    args = ap.parse_args()
    try:
        result = asyncio.run(run_server(args) if args.role == "server" else run_client(args))
    except Exception as e:  # one line for the harness's log, not a traceback
        print(f"quic_pump {args.role}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    args.result.write_text(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
