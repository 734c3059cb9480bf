"""The tunnel's congestion controller telling its own queue from one that other traffic holds.

RTT samples come in every millisecond, as ACKs would in bulk; a sample's value stands for the
queue in front of the peer at that time: ``queue(now, cc)`` returns seconds above the base RTT.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable

import pytest
from aioquic.quic.packet_builder import QuicSentPacket
from quic_helpers import send_then_ack, sent_packet

from rustvpn.quic_congestion import (
    BASE_RTT_WINDOW,
    COMPETE_SCORE,
    COMPETING,
    DELAY,
    INTERVAL,
    PROBE_PERIOD,
    PROBE_TIME,
    QUEUE_TARGET,
    TunnelCongestionControl,
)

BASE = 0.001
SIZE = 1200
MINIMUM = 2 * SIZE
Queue = Callable[[float, TunnelCongestionControl], float]
Condition = Callable[[TunnelCongestionControl], bool]


def run(
    cc: TunnelCongestionControl,
    start: float,
    seconds: float,
    queue: Queue,
    grow: float = 0.0,
    until: Condition | None = None,
) -> float:
    """Feed samples for up to ``seconds`` from ``start`` (stopping as soon as ``until`` holds), the
    window growing by ``grow`` packets a sample as ACKs would grow it; returns the time reached."""
    now = start
    for _ in range(round(seconds / 0.001)):
        now += 0.001
        cc.on_rtt_measurement(now=now, rtt=BASE + queue(now, cc))
        cc.congestion_window += int(grow * SIZE)
        if until is not None and until(cc):
            break
    return now


def controller(window_packets: int = 400) -> TunnelCongestionControl:
    cc = TunnelCongestionControl(max_datagram_size=SIZE)
    cc.congestion_window = window_packets * SIZE
    cc.on_rtt_measurement(now=0.0, rtt=BASE)
    return cc


def probing(cc: TunnelCongestionControl) -> bool:
    return cc._probe_until is not None


def others_queue(now: float, cc: TunnelCongestionControl) -> float:
    """A queue a loss-based flow keeps: 10 ms whatever our window."""
    return 0.010


def own_queue(now: float, cc: TunnelCongestionControl) -> float:
    """Our own queue: what our window holds beyond a 100-packet pipe, at 100 packets per ms."""
    return max(0.0, (cc.congestion_window / SIZE - 100) / 100_000)  # 500 packets: the 4 ms target


def short_of_probe(cc: TunnelCongestionControl, queue: Queue) -> float:
    """Run ``cc`` until its delay control calls a probe; checks it took a score's worth."""
    now = run(cc, 0.0, 2 * COMPETE_SCORE * INTERVAL, queue, until=probing)
    assert probing(cc) and cc.mode == DELAY
    assert (COMPETE_SCORE - 1) * INTERVAL <= now <= (COMPETE_SCORE + 2) * INTERVAL
    assert cc.congestion_window == MINIMUM  # held at the minimum for the probe
    return now


def test_a_queue_that_stays_through_cuts_and_a_probe_is_someone_elses() -> None:
    cc = controller()
    window = cc.congestion_window
    now = short_of_probe(cc, others_queue)
    now = run(cc, now, PROBE_TIME + 3 * INTERVAL, others_queue, until=lambda cc: not probing(cc))
    # The queue stayed without our packets: competing, from the window before the queue came,
    # in slow start; no more cuts on delay.
    assert cc.mode == COMPETING and cc.mode_changes == 1
    assert cc.congestion_window == window and cc.ssthresh is None
    run(cc, now, PROBE_PERIOD / 2, others_queue)
    assert cc.congestion_window == window


def test_a_queue_of_our_own_never_makes_it_compete() -> None:
    cc = controller(1000)
    run(cc, 0.0, 20.0, own_queue, grow=0.2)
    assert cc.mode == DELAY and cc.mode_changes == 0 and cc._score < 3
    assert 400 * SIZE <= cc.congestion_window <= 520 * SIZE  # cut back to the target, again and again


def test_a_probe_that_finds_the_queue_gone_keeps_delay_control_and_the_window() -> None:
    """A queue that stands whatever the cuts and goes with our packets (the window here grows
    by more than any cut takes back): the score climbs, the probe drains the queue, so it was
    ours; the window comes back as it was."""
    cc = controller()

    def queue(now: float, cc: TunnelCongestionControl) -> float:
        return 0.006 if cc.congestion_window > MINIMUM else 0.0

    now = short_of_probe(cc, queue)
    window = cc._probe_window
    now = run(cc, now, PROBE_TIME + 3 * INTERVAL, queue, until=lambda cc: not probing(cc))
    assert cc.mode == DELAY and cc.mode_changes == 0
    assert cc.congestion_window == window
    # No second probe before PROBE_PERIOD, however the score climbs.
    run(cc, now, PROBE_PERIOD - 2 * INTERVAL, queue, grow=0.5, until=probing)
    assert not probing(cc)


def test_competing_goes_back_to_delay_control_once_the_other_traffic_is_gone(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "rustvpn.quic")
    cc = controller()
    now = short_of_probe(cc, others_queue)
    now = run(cc, now, PROBE_TIME + 3 * INTERVAL, others_queue, until=lambda cc: not probing(cc))
    assert cc.mode == COMPETING
    # The other flow stops; our own traffic, loss-based now, keeps a queue of 20 ms that only the
    # next probe takes away.
    gone: Queue = lambda now, cc: 0.020 if cc.congestion_window > MINIMUM else 0.0  # noqa: E731
    window = cc.congestion_window
    started = now
    now = run(cc, now, PROBE_PERIOD + INTERVAL, gone, until=probing)
    assert cc.mode == COMPETING and now - started >= PROBE_PERIOD - INTERVAL
    run(cc, now, PROBE_TIME + 3 * INTERVAL, gone, until=lambda cc: not probing(cc))
    assert cc.mode == DELAY and cc.mode_changes == 2
    assert cc.congestion_window == cc.ssthresh == window // 2
    # Each change is logged once, for the journal.
    said = [r.getMessage() for r in caplog.records if r.name == "rustvpn.quic"]
    assert [m.split(":")[1].strip() for m in said] == ["competing by loss", "delay-based again"]


def test_spikes_and_short_queues_do_not_call_a_probe() -> None:
    """Alone at a bottleneck, fewer than half of the intervals show a queue: the score stays low."""
    cc = controller()
    window = cc.congestion_window

    def queue(now: float, cc: TunnelCongestionControl) -> float:
        return 0.010 if int(now / INTERVAL) % 5 < 2 else 0.0  # 2 intervals in 5

    run(cc, 0.0, 10.0, queue, until=probing)
    assert cc.mode == DELAY and not probing(cc) and cc._score < 3
    assert cc.congestion_window < window  # (the queued intervals were cut all the same)


def test_the_base_rtt_is_the_lowest_sample_of_the_last_one_to_two_windows() -> None:
    cc = controller()
    now = run(cc, 0.0, 1.0, lambda now, cc: 0.0)
    assert cc._base_rtt == BASE
    # A longer route: samples 5 ms higher from now on. The old base holds for up to two windows
    # (a queue others hold most of the time is not learnt as the path), then the new one counts.
    longer: Queue = lambda now, cc: 0.005  # noqa: E731
    now = run(cc, now, BASE_RTT_WINDOW, longer)
    assert cc._base_rtt == BASE
    run(cc, now, BASE_RTT_WINDOW + 0.1, longer)
    assert abs(cc._base_rtt - (BASE + 0.005)) < 1e-9
    assert QUEUE_TARGET < 0.005  # (so the samples after the change were read as a queue till then)


def test_persistent_congestion_during_a_probe_is_not_undone_by_its_end() -> None:
    cc = controller()
    now = short_of_probe(cc, others_queue)
    cc.on_persistent_congestion()
    run(cc, now, PROBE_TIME + 3 * INTERVAL, others_queue, until=lambda cc: not probing(cc))
    assert not probing(cc) and cc.congestion_window == MINIMUM


def lossy_link(cc: TunnelCongestionControl, seconds: float, every: int) -> int:
    """Packets every 0.1 ms, acknowledged 1 ms later, one in ``every`` lost (none queued: RTT
    samples at the base); returns how many times the window was cut."""
    cuts, now, number = 0, 0.0, 0
    for _ in range(round(seconds / 0.001)):
        now += 0.001
        for _ in range(10):
            number += 1
            packet = sent_packet(number, now - 0.001, SIZE)
            cc.on_packet_sent(packet=packet)
            if number % every:
                cc.on_packet_acked(now=now, packet=packet)
            else:
                window = cc.congestion_window
                cc.on_packets_lost(now=now, packets=[packet])
                cuts += cc.congestion_window < window
        cc.on_rtt_measurement(now=now, rtt=BASE)
    return cuts


def test_delay_control_lets_sparse_losses_without_a_queue_pass() -> None:
    cc = controller()
    assert lossy_link(cc, 2.0, every=100) == 0  # 1%: the link's, not congestion
    assert cc.lost_packets == 200
    assert lossy_link(controller(), 2.0, every=20) > 20  # 5%: cut, once per round of losses
    # Competing by loss, every round of losses counts, as for the flows it competes with.
    competing = controller()
    competing.mode = COMPETING
    competing._next_probe = 1e9
    assert lossy_link(competing, 2.0, every=100) > 20


def test_the_window_grows_only_while_it_is_in_use() -> None:
    """Inner flows sending less than the window allows tell nothing about a larger one: in slow
    start as in congestion avoidance, ACKs grow the window only if at least half of it was in
    flight since the packet left."""
    for ssthresh in (None, 100 * SIZE):
        cc = TunnelCongestionControl(max_datagram_size=SIZE)
        cc.congestion_window, cc.ssthresh = 100 * SIZE, ssthresh
        # A trickle: 10 packets in flight at a time against a window of 100, for a while.
        number, now = 0, 1.0
        for _ in range(50):
            batch = [sent_packet(number + k, now) for k in range(10)]
            number, now = number + 10, now + 0.001
            send_then_ack(cc, batch, now)
        assert cc.congestion_window == 100 * SIZE, ssthresh
        # The window filled: the same ACKs grow it (by one per packet in slow start).
        send_then_ack(cc, [sent_packet(number + k, now) for k in range(100)], now + 0.001)
        assert cc.congestion_window == (200 if ssthresh is None else 101) * SIZE, ssthresh


def slow_link(cc: TunnelCongestionControl, seconds: float, per_ms: int) -> tuple[float, float]:
    """The window filled at every step, through a link that carries ``per_ms`` packets a
    millisecond (a packet's ACK comes when the link has carried it, at least BASE after it
    left); returns the share of intervals whose lowest RTT sample was above the target and the
    share of the link used."""
    flight: collections.deque[QuicSentPacket] = collections.deque()
    now, number, carried, intervals, queued, lowest = 1.0, 0, 0, 0, 0, math.inf
    for step in range(round(seconds / 0.001)):
        now += 0.001
        while cc.bytes_in_flight + SIZE <= cc.congestion_window:
            packet = sent_packet(number, now, SIZE)
            number += 1
            cc.on_packet_sent(packet=packet)
            flight.append(packet)
        served = 0
        while flight and served < per_ms and (flight[0].sent_time or 0.0) <= now - BASE + 1e-9:
            packet = flight.popleft()
            served += 1
            cc.on_packet_acked(now=now, packet=packet)
            rtt = now - (packet.sent_time or 0.0)
        if served:
            cc.on_rtt_measurement(now=now, rtt=rtt)
            lowest = min(lowest, rtt)
        carried += served
        if step % round(INTERVAL / 0.001) == 0:
            intervals += 1
            queued += lowest - BASE > QUEUE_TARGET
            lowest = math.inf
    return queued / intervals, carried / (per_ms * round(seconds / 0.001))


def test_alone_at_a_slow_link_the_window_settles_below_the_queue_target() -> None:
    """At 2 packets a millisecond (about 20 Mbit/s), the target's queue is 8 packets and an
    interval spans several RTTs. Growing by a packet per RTT, as far from the target as near it,
    held the queue above the target in most intervals, and the score called a drain probe every
    PROBE_PERIOD with the tunnel alone. Growth that slows near the target keeps the queue below
    it, and the link full."""
    cc = controller(4)
    cc.ssthresh = cc.congestion_window  # (congestion avoidance from the start)
    queued, used = slow_link(cc, 10.0, per_ms=2)
    assert cc.mode == DELAY and cc.mode_changes == 0
    assert cc._next_probe == 0.0, "a drain probe was called with the tunnel alone"
    assert queued < 0.4
    assert used > 0.95
