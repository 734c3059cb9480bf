"""A checksummed TCP transfer through the tunnel while the underlay loses 1%, 5% or 20% of its frames,
or delays every frame by 100 ms, in each transport mode: the transfer completes, byte for byte.

Loss and delay are applied by a LinkBox in each direction independently (loss 5% drops 5% of the
frames client->server and 5% server->client; delay 100 ms is one way, so the round trip gains
200 ms), which is what netem on both veth ends would do; this machine's kernel has no sch_netem.
Each case checks that the impairment really happened (the box's drop count, the underlay's ping
time) so a broken box cannot make the test pass. Sizes keep each case well under two minutes here
(the slowest, QUIC at 20% loss, about 16 s); durations, which include starting the transfer's two
processes, are reported, never asserted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from tests.faults.conftest import FigureLog
from tests.faults.harness import BoxedHosts, Transfer, start_tunnel
from tests.integration.netns import SERVER_UNDERLAY4

pytestmark = [pytest.mark.root, pytest.mark.faults]

MB = 1024 * 1024


@dataclass(frozen=True)
class Impairment:
    loss: float  # percent, each direction
    delay_ms: float  # one way
    sizes: dict[str, int]  # bytes to transfer, by mode: TCP mode is several times faster here

    def __str__(self) -> str:
        return f"loss{self.loss:g}" if self.loss else f"delay{self.delay_ms:g}ms"


CASES = [
    Impairment(loss=1, delay_ms=0, sizes={"tcp": 64 * MB, "quic": 16 * MB}),
    Impairment(loss=5, delay_ms=0, sizes={"tcp": 32 * MB, "quic": 8 * MB}),
    Impairment(loss=20, delay_ms=0, sizes={"tcp": 8 * MB, "quic": 2 * MB}),
    Impairment(loss=0, delay_ms=100, sizes={"tcp": 32 * MB, "quic": 8 * MB}),
]
TRANSFER_TIMEOUT = 240.0  # fails the case: "completes" must mean within a bounded time


def underlay_rtt_ms(boxed: BoxedHosts) -> float:
    result = boxed.run(boxed.client, "ping", "-c", "3", "-i", "0.2", "-W", "2", SERVER_UNDERLAY4, check=False)
    summary = next(line for line in result.stdout.splitlines() if line.startswith("rtt"))
    return float(summary.split("=")[1].split("/")[0])  # the minimum


@pytest.mark.parametrize("case", CASES, ids=str)
def test_transfer_over_impaired_link(boxed: BoxedHosts, mode: str, case: Impairment, figures: FigureLog) -> None:
    assert boxed.box is not None
    # Delay is a property of the path, there before the tunnel: a congestion controller that met the
    # link at 0.1 ms and then sees 200 ms (BBR keeps its minimum RTT for 10 s) would measure that jump,
    # not the link. Loss comes once the session is up: the set-up under loss is not what is tested.
    boxed.box.impair(delay_ms=case.delay_ms)
    tunnel = start_tunnel(boxed, mode)
    boxed.box.impair(loss=case.loss, delay_ms=case.delay_ms)
    if case.delay_ms:
        rtt = underlay_rtt_ms(boxed)
        assert rtt >= 2 * case.delay_ms * 0.95, f"underlay RTT {rtt} ms: the delay is not on"
    before = boxed.box.stats()

    size = case.sizes[mode]
    result = Transfer(boxed, size).finish(TRANSFER_TIMEOUT)
    stats = boxed.box.stats()
    after = tunnel.client_status()

    assert result.intact, f"sent {result.sent} (rc {result.sender_rc}), received {result.received}"
    assert result.sent[0] == str(size)
    figures.add("transfer", f"{size // MB} MiB in {result.seconds:.1f} s ({size / MB / result.seconds:.2f} MiB/s)")
    total_seen = total_lost = 0
    for direction, counts in stats.items():
        seen = counts["seen"] - before[direction]["seen"]
        lost = counts["lost"] - before[direction]["lost"]
        total_seen, total_lost = total_seen + seen, total_lost + lost
        figures.add(f"underlay frames {direction}", f"{seen} seen, {lost} lost ({100 * lost / max(seen, 1):.1f}%)")
    if case.loss:
        # The box dropped about the share asked for (within 4 standard deviations of a binomial draw),
        # over enough frames to tell: else the impairment was not what this case claims to test.
        p = case.loss / 100
        expected, sigma = total_seen * p, math.sqrt(total_seen * p * (1 - p))
        assert total_seen > 1000, f"only {total_seen} frames crossed the box"
        assert abs(total_lost - expected) <= 4 * sigma, f"{total_lost} of {total_seen} frames lost, expected {p:.0%}"
    figures.add("sessions lost during the transfer", after["sessions"] - 1)

    # The sender's view of the path in `rustvpn status` shows the impairment.
    path = after["path"]
    assert path is not None, "no path figures with a session up"
    figures.add("path as the client's status shows it", str(path))
    if case.delay_ms:
        assert path["min_rtt_ms"] >= 2 * case.delay_ms * 0.95, path
        assert path["rtt_ms"] >= path["min_rtt_ms"], path
    assert path["rtt_ms"] is not None, path
    if case.loss:
        assert path["lost_packets"] > 0, f"{case.loss}% of the frames lost, none counted: {path}"
    if mode == "tcp":  # each data connection's own TCP path, one per stream
        assert path["connections"] == len(after["streams"])
        assert all(stream["path"]["rtt_ms"] is not None for stream in after["streams"]), after["streams"]
