#!/usr/bin/env python3
"""What one tunnel packet costs in Python on QUIC mode's packet path, with no I/O at all.

Two rustvpn session machines (the client's and the server's, with real TLS and keys) are joined in
memory on a virtual clock. Each round the client's first data stream is handed a burst of
1360-byte TCP-looking packets, as the pump hands over a batch read from the device; the client's
datagrams go to the server as one batch, as one wake-up reads them from the socket; the server's
ACKs go back. Timed apart: the client's sending (DATAGRAM queue, short cut, sealing, loss
recovery's record), the server's receiving (opening, frame parsing, ACK state, delivery to a
sink), and each side's ACK work. Prints microseconds per packet. ``--no-datagrams`` measures the
stream path instead (packets framed on a data stream, as with the Rust reference peer).

No root and no network: run it on two commits to see what a change to the per-packet path
gained, e.g. ``.venv/bin/python bench/quic_packet_cost.py --rounds 3000``. Absolute numbers
depend on the machine: compare within one sitting.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from aioquic.quic.connection import NetworkAddress

from rustvpn import quic_config
from rustvpn.pki import write_demo_set
from rustvpn.quic_config import create_connection, quic_configuration
from rustvpn.quic_machine import Phase, QuicSessionMachine
from rustvpn.settings import TunnelConfig

CLIENT: NetworkAddress = ("198.18.0.1", 40000)
SERVER: NetworkAddress = ("198.18.0.2", 1105)
PATH_DATAGRAM_SIZE = 1472  # a 1500-byte IPv4 path, as the transport sets it
PACKET_SIZE = 1360
ROUND_GAP = 0.0004  # virtual seconds between bursts


def tcp_packet(seq: int, size: int = PACKET_SIZE) -> bytes:
    body = seq.to_bytes(4, "big") * (size // 4)
    return bytes([0x45]) + bytes(8) + bytes([6]) + bytes(10) + (5000).to_bytes(2, "big") * 2 + body[: size - 24]


def machines(directory: Path, datagrams: bool = True) -> tuple[QuicSessionMachine, QuicSessionMachine]:
    pki = write_demo_set(directory, [SERVER[0]])
    quic_config.MAX_DATAGRAM_SIZE = PATH_DATAGRAM_SIZE  # (what the transport gives each connection)

    def config(role: str) -> TunnelConfig:
        side = "server" if role == "server" else "client"
        return TunnelConfig(
            transport="quic",
            role=role,
            ca_bundle=str(pki["ca"]),
            cert=str(pki[f"{side}_cert"]),
            key=str(pki[f"{side}_key"]),
            stream_count=2,
            mtu=1400,
            server=SERVER[0] if role == "client" else None,
            datagrams=datagrams,
        )

    client_quic = create_connection(quic_configuration(config("client"), is_client=True))
    client = QuicSessionMachine(client_quic, config("client"))
    server_quic = create_connection(
        quic_configuration(config("server"), is_client=False), client.quic.original_destination_connection_id
    )
    server = QuicSessionMachine(server_quic, config("server"))
    now = 0.0
    client.connect(SERVER, now)
    while not (client.phase is Phase.UP and server.phase is Phase.UP):
        now += 0.005
        for source, target, addr in ((client, server, CLIENT), (server, client, SERVER)):
            target.receive_datagrams([(data, addr) for data, _ in source.datagrams_to_send(now)], now)
        for machine in (client, server):
            timer = machine.get_timer()
            if timer is not None and timer <= now:
                machine.handle_timer(now)
        if now > 5:
            raise SystemExit("quic_packet_cost.py: the two machines did not connect")
    client.bind(lambda _channel, _packets: None)
    server.bind(lambda _channel, _packets: None)
    return client, server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3000)
    ap.add_argument("--burst", type=int, default=32, help="packets handed to the client per round")
    ap.add_argument(
        "--no-datagrams", action="store_true", help="packets on the data streams, as with the Rust reference peer"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        client, server = machines(Path(directory), datagrams=not args.no_datagrams)
    burst = [tcp_packet(i) for i in range(args.burst)]
    send = recv = server_ack = client_ack = 0.0
    packets = 0
    now = 1.0
    clock = time.perf_counter
    for _ in range(args.rounds):
        now += ROUND_GAP
        t0 = clock()
        client.channels[0].send_packets(burst)
        out = client.datagrams_to_send(now)
        t1 = clock()
        server.receive_datagrams([(data, CLIENT) for data, _ in out], now)
        t2 = clock()
        back = server.datagrams_to_send(now)
        t3 = clock()
        client.receive_datagrams([(data, SERVER) for data, _ in back], now)
        t4 = clock()
        send, recv, server_ack, client_ack = send + t1 - t0, recv + t2 - t1, server_ack + t3 - t2, client_ack + t4 - t3
        packets += len(out)
        for machine in (client, server):
            timer = machine.get_timer()
            if timer is not None and timer <= now:
                machine.handle_timer(now)
    fast = client.fast_path
    # (aioquic sends an ACK of its own now and then)
    if not args.no_datagrams and (fast is None or fast.sent < 0.99 * packets):
        raise SystemExit("quic_packet_cost.py: the packets did not take the short cut")
    each = 1e6 / packets
    print(
        f"{packets} packets of {PACKET_SIZE} bytes, us per packet: client send {send * each:.2f}, "
        f"server receive {recv * each:.2f}, server ACKs {server_ack * each:.2f}, "
        f"client ACKs {client_ack * each:.2f}; total {(send + recv + server_ack + client_ack) * each:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
