"""Both transports end to end: real TUN devices in two network namespaces, real TLS, real sockets.

Server and client are started with the seed README's command lines (addresses changed to test
ranges), and everything is checked from outside: ping, routes, a checksummed transfer, and the
log lines that explain a refusal. Every test runs once over TCP and once over QUIC.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.integration.netns import (
    CLIENT_TUN4,
    CLIENT_TUN6,
    EXTRA_ROUTE4,
    EXTRA_ROUTE6,
    SERVER_TUN4,
    SERVER_TUN6,
    SERVER_UNDERLAY4,
    SERVER_UNDERLAY6,
    NetnsPair,
    RustvpnProcess,
)

pytestmark = pytest.mark.root

SESSION_UP = r"session up with"
LISTENING = {"tcp": "control plane listening", "quic": "QUIC listening"}
TRANSFER = str(Path(__file__).with_name("transfer.py"))


@pytest.fixture(params=["tcp", "quic"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def server_args(mode: str, *extra: str, stream_count: str = "5", mtu: str = "1500", bind: str = "0.0.0.0") -> list[str]:
    if mode == "tcp":
        head = ["tcpserver", "--control-bind-address", bind, "--control-port", "1107",
                "--data-bind-address", bind, "--data-port", "1108"]  # fmt: skip
    else:
        head = ["server", "--bind-address", bind, "--port", "1105"]
    return [
        *head,
        "--device", "rustvpn",
        "--ca-bundle", "ca.pem", "--server-cert", "server.pem", "--server-key", "server.key",
        "--ipv4", SERVER_TUN4, "--ipv6", SERVER_TUN6,
        "--route", EXTRA_ROUTE4, "--route", EXTRA_ROUTE6,
        "--stream-count", stream_count, "--mtu", mtu,
        *extra,
    ]  # fmt: skip


def client_args(
    mode: str,
    *extra: str,
    stream_count: str = "5",
    mtu: str = "1500",
    cert: str = "client.pem",
    key: str = "client.key",
    server: str = SERVER_UNDERLAY4,
    device: str = "rustvpn",
    tun4: str = CLIENT_TUN4,
    tun6: str = CLIENT_TUN6,
) -> list[str]:
    if mode == "tcp":
        head = ["tcpclient", "--server", server, "--control-port", "1107", "--data-port", "1108"]
    else:
        head = ["client", "--server", server, "--port", "1105"]
    return [
        *head,
        "--device", device,
        "--ca-bundle", "ca.pem", "--client-cert", cert, "--client-key", key,
        "--ipv4", tun4, "--ipv6", tun6,
        "--route", EXTRA_ROUTE4, "--route", EXTRA_ROUTE6,
        "--stream-count", stream_count, "--mtu", mtu,
        *extra,
    ]  # fmt: skip


def start_pair(
    hosts: NetnsPair, mode: str, server: list[str], client: list[str]
) -> tuple[RustvpnProcess, RustvpnProcess]:
    srv = hosts.spawn(hosts.server, server, "server")
    srv.wait_for(LISTENING[mode])
    cli = hosts.spawn(hosts.client, client, "client")
    return srv, cli


def tun_ip(cidr: str) -> str:
    return cidr.split("/")[0]


def assert_pings(hosts: NetnsPair, netns: str, *targets: str) -> None:
    for target in targets:
        result = hosts.ping(netns, tun_ip(target))
        assert result.returncode == 0, f"ping {target} from {netns} failed:\n{result.stdout}{result.stderr}"


def test_ping_ipv4_ipv6_and_routes(hosts: NetnsPair, mode: str) -> None:
    srv, cli = start_pair(hosts, mode, server_args(mode), client_args(mode))
    srv.wait_for(SESSION_UP)
    cli.wait_for(SESSION_UP)

    assert_pings(hosts, hosts.client, SERVER_TUN4, SERVER_TUN6)
    assert_pings(hosts, hosts.server, CLIENT_TUN4, CLIENT_TUN6)

    for ns in (hosts.client, hosts.server):
        routes4 = hosts.run(ns, "ip", "-4", "route", "show", "dev", "rustvpn").stdout
        routes6 = hosts.run(ns, "ip", "-6", "route", "show", "dev", "rustvpn").stdout
        assert EXTRA_ROUTE4 in routes4 and "198.19.1.0/24" in routes4, routes4
        assert EXTRA_ROUTE6 in routes6 and "fd00:19::/64" in routes6, routes6
        link = hosts.run(ns, "ip", "link", "show", "rustvpn").stdout
        assert "mtu 1500" in link and "UP" in link, link

    # The log tells the story of the session.
    assert "number_of_streams=5 mtu=1500" in cli.log()
    assert "5 streams" in srv.log()
    # Both modes give pings a queue of the device of their own (tests/integration/test_tun_queues.py).
    for log in (cli.log(), srv.log()):
        assert "take a queue of their own, fixed by a steering program" in log, log

    # SIGTERM: clean exit, device removed; the server notices and goes back to listening.
    assert cli.stop() == 0
    assert hosts.run(hosts.client, "ip", "link", "show", "rustvpn", check=False).returncode != 0
    srv.wait_for("session with .* lost")
    srv.wait_for("waiting for a peer", count=2)


def checksummed_transfer(
    hosts: NetnsPair, sender: str, receiver_ns: str, address: str, size: int, *, port: str = "5201", seed: str = "7"
) -> None:
    """A TCP transfer of ``size`` random bytes through the tunnel, SHA-256 compared at both ends."""
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", receiver_ns, sys.executable, TRANSFER, "recv", address, port],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "listening"
        sent = hosts.run(sender, sys.executable, TRANSFER, "send", address, port, str(size), seed, timeout=180)
        received = receiver.stdout.readline().split()
        assert receiver.wait(30) == 0
    finally:
        receiver.kill()
    assert sent.stdout.split()[0] == str(size)
    assert received == sent.stdout.split(), f"sent {sent.stdout.split()}, received {received}"


def test_transfer_20mb_checksum(hosts: NetnsPair, mode: str) -> None:
    _srv, cli = start_pair(hosts, mode, server_args(mode), client_args(mode))
    cli.wait_for(SESSION_UP)
    checksummed_transfer(hosts, hosts.client, hosts.server, tun_ip(SERVER_TUN4), 20 * 1024 * 1024)


# Datagrams "<seq> <wall-clock send time>" to an address every 20 ms, for a while.
DATAGRAM_SENDER = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end, seq = time.time() + float(sys.argv[3]), 0
while time.time() < end:
    seq += 1
    try:
        sock.sendto(f"{seq} {time.time():.6f}".encode(), (sys.argv[1], int(sys.argv[2])))
    except OSError:
        pass
    time.sleep(0.02)
"""
# Prints every datagram received on a port until none came for a while.
DATAGRAM_RECEIVER = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", int(sys.argv[1])))
sock.settimeout(float(sys.argv[2]))
print("listening", flush=True)
try:
    while True:
        print(sock.recv(100).decode(), flush=True)
except TimeoutError:
    pass
"""


def log_time(line: str) -> float:
    """The wall-clock time of a log line (the logging module stamps lines with time.time())."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_packets_read_before_the_session_arrive_when_it_is_up(hosts: NetnsPair, mode: str) -> None:
    """The server's device is up long before a client comes: what the server's host sends into the
    tunnel meanwhile is held (the last second of it) and delivered once the session is up, as
    WireGuard does with packets staged during its handshake."""
    srv = hosts.spawn(hosts.server, server_args(mode), "server")
    srv.wait_for(LISTENING[mode])
    port = "5300"
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", hosts.client, sys.executable, "-c", DATAGRAM_RECEIVER, port, "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    sender = subprocess.Popen(
        ["ip", "netns", "exec", hosts.server, sys.executable, "-c", DATAGRAM_SENDER, tun_ip(CLIENT_TUN4), port, "30"]
    )
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "listening"
        time.sleep(1.5)  # the server reads (and holds) datagrams with no session to send them on
        hosts.spawn(hosts.client, client_args(mode), "client").wait_for(SESSION_UP)
        up = srv.wait_for(r"(?m)^.*session up with.*$").group(0)
        srv.wait_for(r"sending \d+ packets read while no session was up")
        time.sleep(0.5)
        sender.terminate()
        sender.wait(10)
        lines, _ = receiver.communicate(timeout=30)
    finally:
        sender.kill()
        receiver.kill()
    sent_at = [float(line.split()[1]) for line in lines.splitlines() if re.fullmatch(r"\d+ [\d.]+", line)]
    # Read by the server a good while before its session came up (its loop was idle: a datagram is
    # read as soon as it is sent), and yet received by the client.
    early = [t for t in sent_at if t < log_time(up) - 0.1]
    assert early, f"no datagram sent before the session came up ({log_time(up):.3f}) arrived: {sent_at[:5]}"
    assert len(sent_at) > len(early)  # and the tunnel carries the ones sent after it, of course


def test_ipv6_underlay(hosts: NetnsPair, mode: str) -> None:
    srv, cli = start_pair(hosts, mode, server_args(mode, bind="::"), client_args(mode, server=SERVER_UNDERLAY6))
    cli.wait_for(SESSION_UP)
    srv.wait_for(r"session up with \[?fd00:18::1")
    assert_pings(hosts, hosts.client, SERVER_TUN4, SERVER_TUN6)


def test_server_restart_client_recovers(hosts: NetnsPair, mode: str) -> None:
    srv, cli = start_pair(hosts, mode, server_args(mode), client_args(mode))
    cli.wait_for(SESSION_UP)
    srv.kill()
    cli.wait_for("session with .* lost", timeout=20)
    # The client keeps its device and routes while the server is gone.
    assert EXTRA_ROUTE4 in hosts.run(hosts.client, "ip", "route", "show", "dev", "rustvpn").stdout
    assert hosts.ping(hosts.client, tun_ip(SERVER_TUN4), count=1).returncode != 0

    hosts.spawn(hosts.server, server_args(mode), "server2").wait_for(SESSION_UP, timeout=30)
    cli.wait_for(SESSION_UP, count=2, timeout=30)
    assert_pings(hosts, hosts.client, SERVER_TUN4, SERVER_TUN6)


def test_second_client_refused_while_first_works(hosts: NetnsPair, mode: str) -> None:
    srv, cli = start_pair(hosts, mode, server_args(mode), client_args(mode))
    cli.wait_for(SESSION_UP)
    second = hosts.spawn(
        hosts.client,
        client_args(mode, device="rustvpn2", tun4="198.19.2.2/24", tun6="fd00:29::2/64"),
        "client2",
    )
    second.wait_for("connecting to .* failed: .*busy")
    srv.wait_for("refusing .*session is already active|refusing .*server busy|refusing .*busy")
    assert_pings(hosts, hosts.client, SERVER_TUN4, SERVER_TUN6)
    assert srv.log().count("session up with") == 1
    assert "lost" not in cli.log()


def test_client_certificate_from_another_ca_refused(hosts: NetnsPair, mode: str) -> None:
    srv, cli = start_pair(
        hosts, mode, server_args(mode), client_args(mode, cert="other/client.pem", key="other/client.key")
    )
    if mode == "tcp":
        srv.wait_for(r"TLS handshake from 198\.18\.0\.1:\d+ failed: certificate rejected")
        cli.wait_for(r"connecting to 198\.18\.0\.2 failed: .*refused our certificate")
    else:
        srv.wait_for(r"QUIC session set-up with 198\.18\.0\.1:\d+ failed: TLS handshake failed: .*issuer certificate")
        cli.wait_for(r"connecting to 198\.18\.0\.2 failed: .*(certificate|alert)")
    assert SESSION_UP not in srv.log() + cli.log()


def test_server_certificate_from_another_ca_refused(hosts: NetnsPair, mode: str) -> None:
    srv, cli = start_pair(
        hosts, mode, server_args(mode, "--server-cert", "other/server.pem", "--server-key", "other/server.key"),
        client_args(mode),
    )  # fmt: skip
    cli.wait_for(r"connecting to 198\.18\.0\.2 failed: .*certificate")
    assert SESSION_UP not in srv.log() + cli.log()


@pytest.mark.parametrize("side", ["client", "server"])
def test_wrong_peer_cn_refused(hosts: NetnsPair, mode: str, side: str) -> None:
    if side == "client":
        srv, cli = start_pair(hosts, mode, server_args(mode), client_args(mode, "--peer-cn", "not-the-server"))
        cli.wait_for(r"CN 'rustvpn-server' does not match expected --peer-cn 'not-the-server'")
    else:
        srv, cli = start_pair(hosts, mode, server_args(mode, "--peer-cn", "not-the-client"), client_args(mode))
        srv.wait_for(r"CN 'rustvpn-client' does not match expected --peer-cn 'not-the-client'")
    assert SESSION_UP not in srv.log() + cli.log()


def test_right_peer_cn_accepted(hosts: NetnsPair, mode: str) -> None:
    srv, cli = start_pair(
        hosts, mode, server_args(mode, "--peer-cn", "rustvpn-client"), client_args(mode, "--peer-cn", "rustvpn-server")
    )
    cli.wait_for(SESSION_UP)
    srv.wait_for(SESSION_UP)


@pytest.mark.parametrize(
    ("key", "server_kw", "client_kw"),
    [
        ("number_of_streams", {"stream_count": "5"}, {"stream_count": "3"}),
        ("mtu", {"mtu": "1500"}, {"mtu": "1400"}),
    ],
)
def test_mismatch_refused_naming_the_key(
    hosts: NetnsPair, mode: str, key: str, server_kw: dict[str, str], client_kw: dict[str, str]
) -> None:
    srv, cli = start_pair(hosts, mode, server_args(mode, **server_kw), client_args(mode, **client_kw))
    ours_c, ours_s = next(iter(client_kw.values())), next(iter(server_kw.values()))
    cli.wait_for(rf"config exchange mismatch on {key}: ours={ours_c} peer={ours_s}")
    srv.wait_for(rf"config exchange mismatch on {key}: ours={ours_s} peer={ours_c}")
    assert SESSION_UP not in srv.log() + cli.log()


def test_build_id_mismatch_refused(hosts: NetnsPair, mode: str) -> None:
    srv, cli = start_pair(hosts, mode, server_args(mode, "--build-id", "abc123"), client_args(mode))
    cli.wait_for(r"config exchange mismatch on build_id: ours='rustvpn-[^']+' peer='abc123'")
    srv.wait_for(r"config exchange mismatch on build_id: ours='abc123'")
