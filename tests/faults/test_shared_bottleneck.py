"""QUIC mode next to a TCP flow outside the tunnel, through one bottleneck: a token bucket (tbf) on
both veth ends, with a queue of 50 ms.

A delay-based controller alone would yield to the queue the other flow keeps until the tunnel
starves (6-48 Mbit/s against 150-185 at 200 Mbit/s, before quic_congestion learnt to tell queues
apart). The test checks the behaviour that prevents it, through the real daemons, the kernel's TCP
and its qdisc: the client's status says "competing" while the other flow runs, and "delay" again
once it has stopped (a drain probe finds the queue its own). How much each flow gets is the
benchmark's to measure (bench/run.py, "Sharing a bottleneck"), not asserted here. A second test
takes the tunnel alone through a slow link with a deep buffer (20 Mbit/s, 200 ms), where delay
control must hold its queue without calling drain probes.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from rustvpn.quic_congestion import PROBE_PERIOD
from tests.faults.conftest import FigureLog
from tests.faults.harness import SERVER_TUN_IP, Tunnel, start_tunnel, wait_until
from tests.integration.netns import SERVER_UNDERLAY4, NetnsPair

pytestmark = [pytest.mark.root, pytest.mark.faults]

BOTTLENECK = ("tbf", "rate", "100mbit", "burst", "32k", "latency", "50ms")
# A slow uplink with a deep buffer, where an interval of the controller spans several RTTs.
SLOW_LINK = ("tbf", "rate", "20mbit", "burst", "32k", "latency", "200ms")
TUNNEL_PORT, OUTSIDE_PORT = 5301, 5302
# The outside flow: loss-based, as Linux's default and most servers' TCP. (Beside BBR, which paces
# at the rate it measured and keeps little queue of its own, a probe finds the queue gone about
# as often as not: whether delay control or competing is right there depends on BBR's phase.)
OUTSIDE_CONGESTION = "cubic"


def veth(hosts: NetnsPair, netns: str) -> str:
    line = hosts.run(netns, "ip", "-o", "link", "show", "type", "veth").stdout.splitlines()[0]
    return line.split(":")[1].strip().split("@")[0]


def shape(hosts: NetnsPair, qdisc: tuple[str, ...]) -> None:
    """The same bottleneck on both veth ends."""
    for netns in (hosts.client, hosts.server):
        hosts.run(netns, "tc", "qdisc", "add", "dev", veth(hosts, netns), "root", *qdisc)


def congestion(tunnel: Tunnel) -> str | None:
    path = tunnel.client_status().get("path") or {}
    value = path.get("congestion")
    return value if isinstance(value, str) else None


def probes(tunnel: Tunnel) -> str:
    """The client's journal lines about congestion control (probes and their verdicts)."""
    return "\n".join(line for line in tunnel.client.log().splitlines() if "congestion control" in line)


def iperf(hosts: NetnsPair, netns: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, "iperf3", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def stop(flows: list[subprocess.Popen[bytes]]) -> None:
    for flow in flows:
        if flow.poll() is None:
            flow.terminate()
    for flow in flows:
        try:
            flow.wait(timeout=10)
        except subprocess.TimeoutExpired:
            flow.kill()


def test_quic_competes_beside_an_outside_tcp_flow_and_goes_back_to_delay_control(
    hosts: NetnsPair, figures: FigureLog
) -> None:
    shape(hosts, BOTTLENECK)
    # At debug level the client logs each drain probe and its verdict: a failure shows why.
    tunnel = start_tunnel(hosts, "quic", "--log-level", "debug")
    flows: list[subprocess.Popen[bytes]] = []
    try:
        flows += [
            iperf(hosts, hosts.server, "-s", "-B", SERVER_TUN_IP, "-p", str(TUNNEL_PORT)),
            iperf(hosts, hosts.server, "-s", "-B", SERVER_UNDERLAY4, "-p", str(OUTSIDE_PORT)),
        ]
        time.sleep(0.5)
        flows.append(iperf(hosts, hosts.client, "-c", SERVER_TUN_IP, "-p", str(TUNNEL_PORT), "-t", "60"))
        # Alone, the tunnel's queue is its own: delay control throughout.
        time.sleep(3)
        assert congestion(tunnel) == "delay"
        outside = iperf(
            hosts, hosts.client, "-c", SERVER_UNDERLAY4, "-p", str(OUTSIDE_PORT), "-t", "60", "-C", OUTSIDE_CONGESTION
        )
        flows.append(outside)
        started = time.monotonic()
        assert wait_until(lambda: congestion(tunnel) == "competing", 20), (
            f"never competed with the outside flow:\n{probes(tunnel)}"
        )
        figures.add("competing after", time.monotonic() - started, "s")
        outside.terminate()
        outside.wait(timeout=10)
        stopped = time.monotonic()
        assert wait_until(lambda: congestion(tunnel) == "delay", 2 * PROBE_PERIOD + 5), (
            f"stayed competing:\n{probes(tunnel)}"
        )
        figures.add("delay control again after", time.monotonic() - stopped, "s")
        # The session went on throughout.
        assert tunnel.client_status()["state"] == "connected"
    finally:
        stop(flows)


def test_quic_alone_at_a_slow_link_holds_delay_control_without_drain_probes(hosts: NetnsPair) -> None:
    """Alone at 20 Mbit/s, the queue is the tunnel's own and delay control keeps it below its
    target: no drain probe is called. (Before quic_congestion slowed its growth near the target,
    the queue stood above it in 80% of the intervals there, and the score called a probe every
    PROBE_PERIOD; a flow that came next waited for the next one, up to 4 s.)"""
    shape(hosts, SLOW_LINK)
    tunnel = start_tunnel(hosts, "quic", "--log-level", "debug")
    flows: list[subprocess.Popen[bytes]] = []
    try:
        flows.append(iperf(hosts, hosts.server, "-s", "-B", SERVER_TUN_IP, "-p", str(TUNNEL_PORT)))
        time.sleep(0.5)
        flows.append(iperf(hosts, hosts.client, "-c", SERVER_TUN_IP, "-p", str(TUNNEL_PORT), "-t", "30", "-C", "cubic"))
        assert wait_until(lambda: tunnel.client_status()["totals"]["bytes_out"] > 10_000_000, 15), (
            "the transfer did not get going"
        )
        time.sleep(2 * PROBE_PERIOD)
        assert "drain probe" not in probes(tunnel), f"probed alone:\n{probes(tunnel)}"
        assert congestion(tunnel) == "delay"
    finally:
        stop(flows)
