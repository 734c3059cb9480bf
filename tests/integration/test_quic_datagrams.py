"""QUIC mode's DATAGRAM-frame path end to end: real TUN devices in two namespaces, real UDP.

With both sides offering it (the default) packets cross as DATAGRAM frames, which the log says and
`rustvpn status` shows: the data streams carry next to nothing while the totals grow. With
`--no-datagrams` on one side the session stays on the data streams, as with the reference peer.
The tests in test_tunnel.py run QUIC with the defaults too, so they cross this path as well.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.netns import CLIENT_TUN4, CLIENT_TUN6, SERVER_TUN4, SERVER_TUN6, NetnsPair
from tests.integration.test_tunnel import (
    assert_pings,
    checksummed_transfer,
    client_args,
    server_args,
    start_pair,
    tun_ip,
)

pytestmark = pytest.mark.root

SESSION_UP = r"session up with"
DATAGRAMS_IN_USE = "DATAGRAM frames carry the packets"
# A tunnel MTU whose packets all fit one DATAGRAM frame on the 1500-byte veth (up to 1442 do).
MTU = "1400"


def status(hosts: NetnsPair, netns: str, runtime: Path, name: str) -> dict[str, Any]:
    out = hosts.run(netns, sys.executable, "-m", "rustvpn", "status", name, "--json", "--runtime-dir", str(runtime))
    return dict(json.loads(out.stdout))


def transfer(hosts: NetnsPair, size: int) -> None:
    """A checksummed TCP transfer from client to server through the tunnel."""
    checksummed_transfer(hosts, hosts.client, hosts.server, tun_ip(SERVER_TUN4), size, seed="11")


def stream_packets_out(report: dict[str, Any]) -> int:
    return sum(int(row["packets_out"]) for row in report["streams"])


def start(hosts: NetnsPair, tmp_path: Path, server_extra: list[str], client_extra: list[str]) -> tuple[Any, Any, Path]:
    runtime = tmp_path / "run"
    srv, cli = start_pair(
        hosts,
        "quic",
        server_args("quic", "--status-socket", str(runtime / "srv" / "status.sock"), *server_extra, mtu=MTU),
        client_args("quic", "--status-socket", str(runtime / "cli" / "status.sock"), *client_extra, mtu=MTU),
    )
    srv.wait_for(SESSION_UP)
    cli.wait_for(SESSION_UP)
    return srv, cli, runtime


def test_datagrams_on_both_sides(hosts: NetnsPair, tmp_path: Path) -> None:
    srv, cli, runtime = start(hosts, tmp_path, [], [])
    for end in (srv, cli):
        assert DATAGRAMS_IN_USE in end.log() and "up to 1442 bytes fit, mtu 1400" in end.log()
    assert_pings(hosts, hosts.client, SERVER_TUN4, SERVER_TUN6)
    assert_pings(hosts, hosts.server, CLIENT_TUN4, CLIENT_TUN6)
    transfer(hosts, 20 * 1024 * 1024)

    for netns, name in ((hosts.client, "cli"), (hosts.server, "srv")):
        report = status(hosts, netns, runtime, name)
        assert report["state"] == "connected" and report["mtu"] == 1400
        totals = report["totals"]
        assert totals["packets_out"] > 5000 or totals["packets_in"] > 5000, totals  # the transfer's share
        # Every packet fit a DATAGRAM frame: the data streams carried (next to) none of them.
        assert stream_packets_out(report) <= totals["packets_out"] // 100, report["streams"]
        # ... and the DATAGRAM path, a channel of its own in the status, carried (next to) all of them.
        datagrams = report["datagrams"]
        assert datagrams is not None, report
        assert datagrams["packets_out"] >= totals["packets_out"] * 99 // 100, (datagrams, totals)
        assert datagrams["packets_in"] >= totals["packets_in"] * 99 // 100, (datagrams, totals)


def test_no_datagrams_on_one_side_stays_on_streams(hosts: NetnsPair, tmp_path: Path) -> None:
    srv, cli, runtime = start(hosts, tmp_path, [], ["--no-datagrams"])
    for end in (srv, cli):
        assert DATAGRAMS_IN_USE not in end.log()
    assert_pings(hosts, hosts.client, SERVER_TUN4, SERVER_TUN6)
    transfer(hosts, 10 * 1024 * 1024)
    report = status(hosts, hosts.client, runtime, "cli")
    # All of it on the data streams, as with the reference peer.
    handed = report["totals"]["packets_out"]  # what the pump handed to the channels
    assert handed > 1000
    assert report["datagrams"] is None
    # Every packet went to a stream: sent, or dropped by the stream's queue (CoDel may drop a
    # few under the transfer; those count in the stream's "dropped", not in its "packets_out").
    sent = stream_packets_out(report)
    queue_drops = sum(int(row["dropped"]) for row in report["streams"])
    assert sent <= handed <= sent + queue_drops, report["streams"]


def test_packets_above_what_fits_take_the_streams(hosts: NetnsPair, tmp_path: Path) -> None:
    """At MTU 1500 full-size packets do not fit one DATAGRAM frame: they cross on the streams."""
    runtime = tmp_path / "run"
    srv, cli = start_pair(
        hosts,
        "quic",
        server_args("quic", "--status-socket", str(runtime / "srv" / "status.sock")),
        client_args("quic", "--status-socket", str(runtime / "cli" / "status.sock")),
    )
    cli.wait_for(SESSION_UP)
    srv.wait_for(SESSION_UP)
    assert "larger ones (mtu 1500) take the streams" in cli.log()
    transfer(hosts, 10 * 1024 * 1024)
    before = status(hosts, hosts.client, runtime, "cli")
    assert stream_packets_out(before) > 1000  # the transfer's full-size segments
    # A ping is small: it goes as a DATAGRAM frame, the streams do not see it.
    assert hosts.ping(hosts.client, tun_ip(SERVER_TUN4), count=5).returncode == 0
    after = status(hosts, hosts.client, runtime, "cli")
    assert after["totals"]["packets_out"] >= before["totals"]["packets_out"] + 5
    assert stream_packets_out(after) == stream_packets_out(before)


UDP_BURST = str(Path(__file__).with_name("udp_burst.py"))


def tun_rx_packets(hosts: NetnsPair, netns: str) -> int:
    """What the kernel counts as written to the server's TUN device: one per write."""
    return int(hosts.run(netns, "cat", "/sys/class/net/rustvpn/statistics/rx_packets").stdout)


@pytest.mark.parametrize("address", [SERVER_TUN4, SERVER_TUN6])
def test_a_udp_burst_reaches_the_device_in_merged_writes_and_intact(
    hosts: NetnsPair, tmp_path: Path, address: str
) -> None:
    """Datagrams of one UDP flow that arrive in one batch go to the TUN device as one UDP GSO
    write, which the kernel cuts back into the datagrams the peer sent: all intact, in order, in
    fewer writes than datagrams."""
    start(hosts, tmp_path, [], [])
    count, size, target = 3000, 1200, tun_ip(address)
    before = tun_rx_packets(hosts, hosts.server)
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", hosts.server, sys.executable, UDP_BURST, "recv", target, "5301", str(count), str(size)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "listening"
        hosts.run(hosts.client, sys.executable, UDP_BURST, "send", target, "5301", str(count), str(size))
        result = json.loads(receiver.stdout.readline())
        assert receiver.wait(30) == 0
    finally:
        receiver.kill()
    writes = tun_rx_packets(hosts, hosts.server) - before
    assert result["bad"] == 0 and result["in_order"], result
    # A burst faster than the tunnel loses some on the way (the client's device queue is full);
    # what came, came whole.
    assert result["received"] >= count // 10, result
    assert writes <= result["received"] * 3 // 4, (writes, result)


def tun_tx_dropped(hosts: NetnsPair, netns: str) -> int:
    """Packets the kernel dropped because a queue of the device was full."""
    return int(hosts.run(netns, "cat", "/sys/class/net/rustvpn/statistics/tx_dropped").stdout)


def test_pings_cross_a_flood_that_overflows_the_device_queue(hosts: NetnsPair, tmp_path: Path) -> None:
    """A local UDP sender floods the tunnel far beyond what it carries. The client's device drops
    most of the flood where it waits, on its main queue; the pings sent alongside wait on the side
    queue, behind nothing, and cross. On one queue they were dropped like the flood (tun.py)."""
    _, cli, _ = start(hosts, tmp_path, [], [])
    assert "take a queue of their own, fixed by a steering program" in cli.log()
    target = tun_ip(SERVER_TUN4)
    dropped_before = tun_tx_dropped(hosts, hosts.client)
    sink = subprocess.Popen(
        ["ip", "netns", "exec", hosts.server, sys.executable, UDP_BURST, "recv", target, "5302", str(10**9), "1200"],
        stdout=subprocess.PIPE,
        text=True,
    )
    flood: subprocess.Popen[str] | None = None
    try:
        assert sink.stdout is not None
        assert sink.stdout.readline().strip() == "listening"
        flood = subprocess.Popen(
            ["ip", "netns", "exec", hosts.client, sys.executable, UDP_BURST, "flood", target, "5302", "6", "1200"],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1)  # the flood fills the device's main queue
        ping = hosts.run(hosts.client, "ping", "-n", "-q", "-c", "100", "-i", "0.02", "-W", "2", target, check=False)
        flood_out, _ = flood.communicate(timeout=30)
        came = json.loads(sink.stdout.readline())["received"]
    finally:
        for proc in (flood, sink):
            if proc is not None:
                proc.kill()
    sent = int(flood_out)
    dropped = tun_tx_dropped(hosts, hosts.client) - dropped_before
    replies = re.search(r"(\d+) received", ping.stdout)
    assert replies is not None, ping.stdout
    answered = int(replies.group(1))
    print(f"flood: {sent} sent, {dropped} dropped by the client's device, {came} came; pings answered: {answered}/100")
    assert dropped >= sent // 4, (sent, dropped)  # the flood overflowed the queue it waits in
    assert answered >= 90, ping.stdout
