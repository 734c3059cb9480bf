"""Path figures (rustvpn/path_stats.py): TCP_INFO read from real loopback connections and checked
against `ss`, the kernel's own reader of it; QUIC's from a machine pair on a virtual clock whose
one-way delay is known; and how several connections combine into one path."""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from quic_helpers import machine_pair, tunnel_config, udp_packet, write_pki

from rustvpn.path_stats import PathFigures, combine, parse_tcp_info, quic_path, tcp_path
from rustvpn.quic_machine import Phase
from rustvpn.status_format import format_status


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def exchange(client: socket.socket, server: socket.socket, rounds: int = 20) -> None:
    """Request and reply, so that both ends have RTT samples and nothing is left unacknowledged."""
    for _ in range(rounds):
        client.sendall(b"x" * 1000)
        assert len(server.recv(4096)) > 0
        server.sendall(b"y" * 1000)
        assert len(client.recv(4096)) > 0


def ss_figures(sock: socket.socket) -> dict[str, float]:
    """rtt, rttvar, cwnd, mss and minrtt of one connection, as `ss -tin` prints them."""
    local = sock.getsockname()
    out = subprocess.run(
        ["ss", "-tinH", "src", f"{local[0]}:{local[1]}"], capture_output=True, text=True, check=True
    ).stdout
    rtt = re.search(r"\brtt:([\d.]+)/([\d.]+)", out)
    cwnd, mss, minrtt = (re.search(rf"\b{k}:([\d.]+)", out) for k in ("cwnd", "mss", "minrtt"))
    assert rtt and cwnd and mss and minrtt, f"ss printed no figures: {out!r}"
    return {
        "rtt": float(rtt[1]),
        "rttvar": float(rtt[2]),
        "cwnd": float(cwnd[1]),
        "mss": float(mss[1]),
        "minrtt": float(minrtt[1]),
    }


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_tcp_figures_are_what_the_kernel_reports(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = tcp_pair
    exchange(client, server)
    figures = tcp_path(client)
    seen = ss_figures(client)  # (taken right after, on an idle connection: the same state)
    assert figures is not None
    assert figures.rtt_ms == pytest.approx(seen["rtt"], abs=0.0015)  # (ss rounds to 3 decimals)
    assert figures.rtt_var_ms == pytest.approx(seen["rttvar"], abs=0.0015)
    assert figures.min_rtt_ms == pytest.approx(seen["minrtt"], abs=0.0015)
    assert figures.cwnd_bytes == int(seen["cwnd"] * seen["mss"])
    assert figures.in_flight_bytes == 0
    assert figures.lost_packets == 0
    assert figures.connections == 1
    # The kernel's algorithm for new connections, unless the socket chose its own.
    assert figures.congestion == Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"reno")  # (always built in)
    assert (tcp_path(client) or PathFigures()).congestion == "reno"


def test_a_closed_socket_has_no_figures(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, _ = tcp_pair
    client.close()
    assert tcp_path(client) is None
    assert tcp_path(None) is None


def test_a_connection_without_an_rtt_sample_reports_none_for_it() -> None:
    info = bytearray(232)
    struct.pack_into("=I", info, 16, 1448)  # snd_mss
    struct.pack_into("=I", info, 80, 10)  # snd_cwnd
    struct.pack_into("=I", info, 148, 0xFFFFFFFF)  # min_rtt: unset
    figures = parse_tcp_info(bytes(info))
    assert (figures.rtt_ms, figures.rtt_var_ms, figures.min_rtt_ms) == (None, None, None)
    assert figures.cwnd_bytes == 14480
    assert figures.lost_packets == 0


def test_an_older_kernels_shorter_struct_leaves_the_newer_fields_none() -> None:
    info = bytearray(104)  # up to tcpi_total_retrans (Linux 2.6)
    struct.pack_into("=I", info, 68, 2500)  # rtt, us
    struct.pack_into("=I", info, 72, 400)
    struct.pack_into("=I", info, 100, 7)
    figures = parse_tcp_info(bytes(info))
    assert figures.rtt_ms == 2.5
    assert figures.rtt_var_ms == 0.4
    assert figures.min_rtt_ms is None
    assert figures.lost_packets == 7


def test_connections_over_one_path_combine_into_one() -> None:
    a = PathFigures(rtt_ms=1.0, rtt_var_ms=0.1, min_rtt_ms=0.5, cwnd_bytes=100, in_flight_bytes=10, lost_packets=1,
                    congestion="cubic")  # fmt: skip
    b = PathFigures(rtt_ms=3.0, rtt_var_ms=0.3, min_rtt_ms=0.4, cwnd_bytes=200, in_flight_bytes=0, lost_packets=2,
                    congestion="cubic")  # fmt: skip
    c = PathFigures(rtt_ms=9.0, rtt_var_ms=0.9, min_rtt_ms=0.6, cwnd_bytes=300, in_flight_bytes=5, lost_packets=0,
                    congestion="bbr")  # fmt: skip
    fresh = PathFigures(cwnd_bytes=50, in_flight_bytes=0, lost_packets=0)  # no RTT sample yet
    whole = combine([a, b, c, fresh, None])  # (None: a connection closed meanwhile)
    assert whole == PathFigures(
        rtt_ms=3.0, rtt_var_ms=0.3, min_rtt_ms=0.4, cwnd_bytes=650, in_flight_bytes=15, lost_packets=3,
        congestion="bbr, cubic", connections=4,
    )  # fmt: skip
    assert combine([None, None]) is None
    assert combine([]) is None


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_pki(tmp_path_factory.mktemp("pki"))


def test_quic_figures_follow_the_connections_rtt_and_losses(pki: dict[str, Path]) -> None:
    wire, client, server, _, server_rec = machine_pair(tunnel_config(pki, "client"), tunnel_config(pki, "server"))
    assert wire.run(lambda: client.phase is Phase.UP and server.phase is Phase.UP)
    client.bind(lambda channel, packets: None)
    server.bind(server_rec.sink)
    channel = client.channels[0]
    for i in range(0, 240, 6):  # batches answered 20 ms later: the smoothed RTT converges on it
        channel.send_packets([udp_packet(i + k) for k in range(6)])
        wire.round_trip(0.020)
    assert wire.run(lambda: client.quic._loss.bytes_in_flight == 0, seconds=1)
    figures = quic_path(client.quic._loss)
    assert figures.rtt_ms is not None and 19.0 <= figures.rtt_ms <= 21.0
    # aioquic's variation (what its probe timeout uses) is taken from the minimum, not from the
    # smoothed RTT as in RFC 9002: reported as it is.
    assert figures.rtt_var_ms == round(client.quic._loss._rtt_variance * 1000, 3)
    # (The handshake crossed in one virtual instant: aioquic's floor of 1 ms is the minimum.)
    assert figures.min_rtt_ms == 1.0
    assert figures.in_flight_bytes == 0
    assert figures.cwnd_bytes == client.quic._loss.congestion_window > 0
    assert figures.lost_packets == 0
    assert figures.congestion == "delay"  # (alone on the wire: its queue is its own)

    dropped = 0

    def lose_every_third(datagrams: list[bytes]) -> list[bytes]:
        nonlocal dropped
        kept = [d for i, d in enumerate(datagrams) if i % 3 != 1]
        dropped += len(datagrams) - len(kept)
        return kept

    wire.client_filter = lose_every_third
    for i in range(0, 60, 6):
        channel.send_packets([udp_packet(100 + i + k) for k in range(6)])
        wire.step()
    wire.client_filter = None
    assert wire.run(lambda: client.quic._loss.bytes_in_flight == 0, seconds=3)
    lost = quic_path(client.quic._loss).lost_packets
    assert dropped > 0
    # Every dropped packet carried DATAGRAM frames (the client sends nothing else here), and loss
    # detection declared each lost; none that arrived was counted.
    assert lost == dropped


def test_status_shows_the_path_and_tcp_streams_rtt() -> None:
    path = {"rtt_ms": 1.234, "rtt_var_ms": 0.2, "min_rtt_ms": 0.9, "cwnd_bytes": 65536, "in_flight_bytes": 0,
            "lost_packets": 3, "connections": 2}  # fmt: skip
    stream = {"bytes_in": 0, "packets_in": 0, "bytes_out": 0, "packets_out": 0, "dropped": 0}
    tcp = {
        "transport": "tcp",
        "path": path,
        "streams": [
            {"index": 0, **stream, "path": {**path, "rtt_ms": 1.5, "lost_packets": 1}},
            {"index": 1, **stream, "path": {**path, "rtt_ms": None, "lost_packets": 2}},
        ],
    }
    text = format_status(tcp)
    line = "path: rtt 1.23 ms (min 0.900, var 0.200), window 64.00 KiB, in flight 0 B, 3 segments retransmitted"
    assert line + ", over 2 connections\n" in text
    assert re.search(r"rtt\s+retransmits\n.*1\.50 ms\s+1\n.*-\s+2$", text, re.S)
    quic = {"transport": "quic", "path": {**path, "connections": 1}, "streams": [{"index": 0, **stream, "path": None}]}
    text = format_status(quic)
    assert "path: rtt 1.23 ms (min 0.900, var 0.200), window 64.00 KiB, in flight 0 B, 3 packets lost\n" in text + "\n"
    text = format_status({**quic, "path": {**path, "connections": 1, "congestion": "competing"}})
    assert ", 3 packets lost, congestion: competing\n" in text + "\n"
    assert "retransmits" not in text  # QUIC's streams share the one connection's path
    assert "path:" not in format_status({"transport": "quic", "path": None})
    assert ", 1 segment retransmitted" in format_status({"transport": "tcp", "path": {**path, "lost_packets": 1}})
    assert ", 1 packet lost" in format_status({"transport": "quic", "path": {**path, "lost_packets": 1}})
