"""TCP mode end to end: real TUN devices in two network namespaces, real TLS, real sockets.

The server and client are started with the seed README's command lines (addresses changed to
test ranges), and everything is checked from outside: ping, routes, a checksummed transfer,
and the log lines that explain a refusal.
"""

from __future__ import annotations

import subprocess
import sys
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
    NetnsPair,
    RustvpnProcess,
)

pytestmark = pytest.mark.root

SESSION_UP = r"session up with"
TRANSFER = str(Path(__file__).with_name("transfer.py"))


def server_args(*extra: str, stream_count: str = "5", mtu: str = "1500") -> list[str]:
    return [
        "tcpserver",
        "--control-bind-address", "0.0.0.0", "--control-port", "1107",
        "--data-bind-address", "0.0.0.0", "--data-port", "1108",
        "--device", "rustvpn",
        "--ca-bundle", "ca.pem", "--server-cert", "server.pem", "--server-key", "server.key",
        "--ipv4", SERVER_TUN4, "--ipv6", SERVER_TUN6,
        "--route", EXTRA_ROUTE4, "--route", EXTRA_ROUTE6,
        "--stream-count", stream_count, "--mtu", mtu,
        *extra,
    ]  # fmt: skip


def client_args(
    *extra: str, stream_count: str = "5", mtu: str = "1500", cert: str = "client.pem", key: str = "client.key"
) -> list[str]:
    return [
        "tcpclient",
        "--server", SERVER_UNDERLAY4, "--control-port", "1107", "--data-port", "1108",
        "--device", "rustvpn",
        "--ca-bundle", "ca.pem", "--client-cert", cert, "--client-key", key,
        "--ipv4", CLIENT_TUN4, "--ipv6", CLIENT_TUN6,
        "--route", EXTRA_ROUTE4, "--route", EXTRA_ROUTE6,
        "--stream-count", stream_count, "--mtu", mtu,
        *extra,
    ]  # fmt: skip


def start_pair(hosts: NetnsPair, server: list[str], client: list[str]) -> tuple[RustvpnProcess, RustvpnProcess]:
    srv = hosts.spawn(hosts.server, server, "server")
    srv.wait_for("control plane listening")
    cli = hosts.spawn(hosts.client, client, "client")
    return srv, cli


def tun_ip(cidr: str) -> str:
    return cidr.split("/")[0]


def test_ping_ipv4_ipv6_and_routes(hosts: NetnsPair) -> None:
    srv, cli = start_pair(hosts, server_args(), client_args())
    srv.wait_for(SESSION_UP)
    cli.wait_for(SESSION_UP)

    for ns, target in ((hosts.client, SERVER_TUN4), (hosts.client, SERVER_TUN6), (hosts.server, CLIENT_TUN4)):
        result = hosts.ping(ns, tun_ip(target))
        assert result.returncode == 0, f"ping {target} from {ns} failed:\n{result.stdout}{result.stderr}"
        assert " 0% packet loss" in result.stdout

    for ns in (hosts.client, hosts.server):
        routes4 = hosts.run(ns, "ip", "-4", "route", "show", "dev", "rustvpn").stdout
        routes6 = hosts.run(ns, "ip", "-6", "route", "show", "dev", "rustvpn").stdout
        assert EXTRA_ROUTE4 in routes4 and "198.19.1.0/24" in routes4, routes4
        assert EXTRA_ROUTE6 in routes6 and "fd00:19::/64" in routes6, routes6
        link = hosts.run(ns, "ip", "link", "show", "rustvpn").stdout
        assert "mtu 1500" in link and "UP" in link, link

    # The log tells the story of the session without secrets.
    assert "number_of_streams=5 mtu=1500" in cli.log()
    assert "5 data connections" in srv.log()

    # SIGTERM: clean exit, device removed.
    assert cli.stop() == 0
    assert hosts.run(hosts.client, "ip", "link", "show", "rustvpn", check=False).returncode != 0
    srv.wait_for("session with .* lost")


def test_transfer_20mb_checksum(hosts: NetnsPair) -> None:
    _srv, cli = start_pair(hosts, server_args(), client_args())
    cli.wait_for(SESSION_UP)
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", hosts.server, sys.executable, TRANSFER, "recv", tun_ip(SERVER_TUN4), "5201"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "listening"
        size = 20 * 1024 * 1024
        sent = hosts.run(
            hosts.client, sys.executable, TRANSFER, "send", tun_ip(SERVER_TUN4), "5201", str(size), "7", timeout=120
        ).stdout.split()
        received = receiver.stdout.readline().split()
        assert receiver.wait(30) == 0
    finally:
        receiver.kill()
    assert sent == [str(size), sent[1]]
    assert received == sent, f"sent {sent}, received {received}"


def test_server_restart_client_recovers(hosts: NetnsPair) -> None:
    srv, cli = start_pair(hosts, server_args(), client_args())
    cli.wait_for(SESSION_UP)
    srv.kill()
    cli.wait_for("session with .* lost")
    # The client keeps its device and routes while the server is gone.
    assert "192.0.2.0/24" in hosts.run(hosts.client, "ip", "route", "show", "dev", "rustvpn").stdout
    assert hosts.ping(hosts.client, tun_ip(SERVER_TUN4), count=1).returncode != 0

    hosts.spawn(hosts.server, server_args(), "server2").wait_for(SESSION_UP, timeout=30)
    cli.wait_for(SESSION_UP, count=2, timeout=30)
    assert hosts.ping(hosts.client, tun_ip(SERVER_TUN4)).returncode == 0
    assert hosts.ping(hosts.client, tun_ip(SERVER_TUN6)).returncode == 0


def test_client_certificate_from_another_ca_refused(hosts: NetnsPair) -> None:
    srv, cli = start_pair(hosts, server_args(), client_args(cert="other/client.pem", key="other/client.key"))
    srv.wait_for(r"TLS handshake from 198\.18\.0\.1:\d+ failed: certificate rejected")
    cli.wait_for(r"connecting to 198\.18\.0\.2 failed: .*refused our certificate")
    assert SESSION_UP not in srv.log() + cli.log()


def test_server_certificate_from_another_ca_refused(hosts: NetnsPair) -> None:
    srv, cli = start_pair(
        hosts,
        server_args("--server-cert", "other/server.pem", "--server-key", "other/server.key"),
        client_args(),
    )
    cli.wait_for(r"connecting to 198\.18\.0\.2 failed: TLS handshake .* certificate rejected")
    assert SESSION_UP not in srv.log() + cli.log()


@pytest.mark.parametrize("side", ["client", "server"])
def test_wrong_peer_cn_refused(hosts: NetnsPair, side: str) -> None:
    if side == "client":
        srv, cli = start_pair(hosts, server_args(), client_args("--peer-cn", "not-the-server"))
        cli.wait_for(r"CN 'rustvpn-server' does not match expected --peer-cn 'not-the-server'")
    else:
        srv, cli = start_pair(hosts, server_args("--peer-cn", "not-the-client"), client_args())
        srv.wait_for(r"CN 'rustvpn-client' does not match expected --peer-cn 'not-the-client'")
    assert SESSION_UP not in srv.log() + cli.log()


def test_right_peer_cn_accepted(hosts: NetnsPair) -> None:
    srv, cli = start_pair(hosts, server_args("--peer-cn", "rustvpn-client"), client_args("--peer-cn", "rustvpn-server"))
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
    hosts: NetnsPair, key: str, server_kw: dict[str, str], client_kw: dict[str, str]
) -> None:
    srv, cli = start_pair(hosts, server_args(**server_kw), client_args(**client_kw))
    ours_c, ours_s = next(iter(client_kw.values())), next(iter(server_kw.values()))
    cli.wait_for(rf"config exchange mismatch on {key}: ours={ours_c} peer={ours_s}")
    srv.wait_for(rf"config exchange mismatch on {key}: ours={ours_s} peer={ours_c}")
    assert SESSION_UP not in srv.log() + cli.log()


def test_build_id_mismatch_refused(hosts: NetnsPair) -> None:
    srv, cli = start_pair(hosts, server_args("--build-id", "abc123"), client_args())
    cli.wait_for(r"config exchange mismatch on build_id: ours='rustvpn-[^']+' peer='abc123'")
    srv.wait_for(r"config exchange mismatch on build_id: ours='abc123'")
