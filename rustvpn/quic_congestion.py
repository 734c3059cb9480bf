"""Congestion control for the tunnel's QUIC connection: loss-based like Reno, with a ceiling on the
queue it may build in front of the peer.

aioquic offers Reno and CUBIC, both loss-based: with nothing dropping packets they grow the window
until the peer's UDP receive buffer (megabytes here) is full of tunnel packets, and every flow in
the tunnel, a ping too, waits behind them. This controller also backs off when a queue stands in
front of the peer: when even the smallest RTT sample of an interval exceeds the base RTT by more
than ``queue_target`` (or a quarter of the base RTT on long paths). The smallest sample, as
CoDel's minimum sojourn, lets the spikes of a busy event loop or a descheduled process pass; and
its growth slows as that queue nears the target, so that the window settles below it. The
inner flows then meet the queue at the tunnel's entry, where CoDel (quic_datagram) slows them
down. Per acknowledged packet it only adds: this runs for every packet the tunnel sends, in
Python. Registered with aioquic as ``rustvpn``.

A delay-based sender alone at a bottleneck keeps the queue short; next to a loss-based flow (any
TCP download outside the tunnel) it yields until it starves, since that flow keeps a queue whatever
we do: through a 200 Mbit/s bottleneck, the tunnel got 6-48 Mbit/s against the other flow's
150-185. So, as Copa switches modes, the controller finds out whether a queue is its own, and
competes by loss alone ("competing") while it is not. The test is a drain probe, as BBR's
PROBE_RTT: hold the window at its minimum for a while and count the intervals that still show a
queue once ours has drained; if a third or more do, the queue is someone else's. A delay-mode
sender probes when its window cuts do not seem to pay (a score: +1 for each interval with a
queue, -1 for each without, up to COMPETE_SCORE), and a competing one every PROBE_PERIOD, to go
back to delay control once the other traffic is gone.

The pacer (:class:`TunnelPacer`) spreads what the window allows over the RTT in bursts of half a
millisecond rather than packet by packet.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

from aioquic.quic.congestion.base import (
    K_MINIMUM_WINDOW,
    QuicCongestionControl,
    register_congestion_control,
)
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.recovery import QuicPacketPacer

__all__ = ["COMPETING", "CONGESTION_CONTROL", "DELAY", "STREAM_QUEUE_TARGET", "TunnelCongestionControl", "TunnelPacer"]

log = logging.getLogger("rustvpn.quic")

CONGESTION_CONTROL = "rustvpn"
LOSS_REDUCTION = 0.7  # as CUBIC
DELAY_REDUCTION = 0.85  # gentler: a queue is a warning, a loss a fact
# Queueing delay allowed in front of the peer, above the base RTT; at least what one busy event
# loop adds (a batch of packets through aioquic takes a millisecond or more). It depends on what
# carries the packets (set per session: see queue_target). With DATAGRAM frames, 2 ms cost 9% of
# the throughput for no gain in p99 under load (lab, iperf3 with pings every 10 ms, 2 pairs).
# Over streams only (as with the Rust reference peer), where each packet costs aioquic's general
# packet code, 2 ms kept the throughput (222-267 against 253-261 Mbit/s) and took the ping's p50
# under load from 6.0-6.1 to 4.1-4.7 ms and its p99 from 10.9-15.2 to 6.1-12.5 (3 pairs); 1 ms
# took p99 to 5.9-8.3 at 11% less throughput.
QUEUE_TARGET = 0.004
STREAM_QUEUE_TARGET = 0.002
BASE_RTT_WINDOW = 10.0  # seconds: the base RTT is the lowest sample of the last 10-20 s
INTERVAL = 0.02  # seconds (or one base RTT, if longer) over which a queue must stand
# Growth per RTT in congestion avoidance: a share of the window (as Scalable TCP), not one packet
# as in Reno, so that a window cut by a delay signal comes back in a few RTTs on any path.
GROWTH_SHARE = 1 / 64
# Delay mode probes when this score is reached: +1 for an interval with a standing queue (and a
# window cut), -1 for one without. Alone at a 200 Mbit/s bottleneck, at most 40% of the intervals
# had a queue (lab, per second); next to a TCP flow, 50-86%. At 20 Mbit/s alone too the score gets
# there (each interval is several RTTs of growth against one cut): the probe tells the two apart.
COMPETE_SCORE = 25
# Probes: at most one per PROBE_PERIOD, holding the window at its minimum for PROBE_TIME, or three
# RTTs if longer (so that a queue of our own can drain).
PROBE_PERIOD = 4.0
PROBE_TIME = 0.2
DELAY, COMPETING = "delay", "competing"
# Losses delay control lets pass: up to this share of the packets of this interval and the last.
# Where the queue is watched, congestion shows as a queue before it drops packets; sparse losses
# with no queue are the link's (radio, a bad cable), and the inner flows slow down for them
# already. Cutting the window for each round of them cost 40% over a link losing 1% at random
# (78-95 against 139-160 Mbit/s, lab, tests/faults' LinkBox); at 5% both cut alike.
LOSS_TOLERANCE = 0.02


# Pacing: the shortest wait for the pacer's next send, and the most sending time it may save up.
# aioquic's pacer waits one packet's time (23 us at 500 Mbit/s) once its bucket of at most 16
# packets is spent: a busy sender then wakes on its timer every packet or two and spends its time
# on wake-ups. Tunnels fell into that state in most sessions (4 of 5 in one test), at a third of
# the throughput, with the sender CPU-bound. Waking at most every quarter millisecond with
# half a millisecond of credit paces in bursts of that much, one GSO send each, as Linux paces
# TCP in bursts of about a millisecond (TSO autosizing). Below about 45 Mbit/s a packet's time is
# longer than the floor, and nothing changes.
MIN_PACING_GAP = 0.00025
PACING_BURST = 0.0005


class TunnelPacer(QuicPacketPacer):
    """aioquic's token-bucket pacer with a floor on its waits and a bucket of at least
    PACING_BURST: the same rate, in fewer and larger bursts. Installed on each connection
    (quic_config), since aioquic makes its own."""

    def next_send_time(self, now: float) -> float | None:  # type: ignore[override]
        at: float | None = super().next_send_time(now)  # (aioquic returns None for "send now")
        return None if at is None else max(at, now + MIN_PACING_GAP)

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        super().update_rate(congestion_window, smoothed_rtt)
        self.bucket_max = max(self.bucket_max, PACING_BURST)

    def allowance(self, now: float) -> int | None:
        """How many packets may go at ``now``, as many as calls of ``next_send_time`` (None: send)
        and ``update_after_send`` in turn would let go, for the price of one; None when the rate
        is not known yet (no limit). Follow with :meth:`spend`."""
        if self.packet_time is None:
            return None
        self.update_bucket(now=now)
        return math.ceil(self.bucket_time / self.packet_time) if self.bucket_time > 0 else 0

    def spend(self, packets: int) -> None:
        """``packets`` sent at the time of the last :meth:`allowance`, as ``update_after_send``
        once for each would count them."""
        if self.packet_time is not None and packets:
            self.bucket_time = max(0.0, self.bucket_time - packets * self.packet_time)


class TunnelCongestionControl(QuicCongestionControl):
    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._max_datagram_size = max_datagram_size
        self._recovery_start = -math.inf  # when the window was last reduced
        self._stash = 0.0
        # Delay mode: the share of the usual growth an ACK brings, 1 with no queue, falling to 0 as
        # the queue nears the target (from the running minimum of this interval's samples).
        self._headroom = 1.0
        self._used_at = 0.0  # when a packet last left with at least half the window in flight
        self._base_rtt = math.inf  # the lowest RTT sample of this window and the last one
        self._window_min = math.inf  # this window's
        self._window_start = 0.0
        self._interval_min = math.inf
        self._interval_start = 0.0
        # The ACK delay the peer reported in the ACK being applied, set by the short cut
        # (quic_fastpath) before it hands the ACK to aioquic, which passes the controller its RTT
        # sample with that delay still in it.
        self.peer_ack_delay = 0.0
        # In-flight packets loss detection declared lost, for `rustvpn status` (path_stats).
        self.lost_packets = 0
        # The queue allowed above the base RTT; the session lowers it when streams carry its packets.
        self.queue_target = QUEUE_TARGET
        # DELAY or COMPETING (see the module's docstring; `rustvpn status` shows it), and how often
        # it changed.
        self.mode = DELAY
        self.mode_changes = 0
        self._score = 0  # delay mode: towards COMPETE_SCORE
        self._window_before_queue = 0  # the window when the score last left 0
        self._next_probe = 0.0  # the earliest time for the next drain probe
        self._probe_until: float | None = None  # during a probe: when it ends
        self._probe_counts_from = 0.0
        self._probe_intervals = self._probe_queued = 0  # during a probe: intervals, with a queue
        self._probe_window = 0  # the window the probe set aside
        # Packets acknowledged and declared lost in this interval and the one before
        self._acked = self._lost = self._acked_before = self._lost_before = 0

    def _minimum(self) -> int:
        return K_MINIMUM_WINDOW * self._max_datagram_size

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        self.bytes_in_flight += packet.sent_bytes
        if 2 * self.bytes_in_flight >= self.congestion_window:
            self._used_at = packet.sent_time or 0.0

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self.bytes_in_flight -= packet.sent_bytes
        self._acked += 1
        sent = packet.sent_time or 0.0
        if sent <= self._recovery_start:
            return  # sent before the last reduction: its ACK says nothing about the new window
        if self._used_at < sent:
            # The window has not been half used since this packet left: the inner flows send less
            # than it allows, and its ACK says nothing about a larger one (RFC 9002, 7.8). Grown
            # regardless, it reached 48 MB in 4 s of competing, and meant no limit at all.
            return
        if self.ssthresh is None or self.congestion_window < self.ssthresh:
            self.congestion_window += packet.sent_bytes  # slow start
            return
        self._stash += packet.sent_bytes * self._headroom
        # One packet more per (a share of) a window acknowledged, slowed down near the queue target.
        if self._stash >= min(self.congestion_window, self._max_datagram_size / GROWTH_SHARE):
            self._stash = 0.0
            self.congestion_window += self._max_datagram_size

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        last_sent = 0.0
        lost = 0
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes
            last_sent = packet.sent_time or 0.0
            lost += 1
        self.lost_packets += lost
        self._lost += lost
        if last_sent <= self._recovery_start:
            return  # one reduction per round trip of losses
        if self.mode == DELAY and self._probe_until is None:
            recent = self._lost + self._lost_before
            if recent <= LOSS_TOLERANCE * (recent + self._acked + self._acked_before):
                return
        self._reduce(now, LOSS_REDUCTION)

    def on_persistent_congestion(self) -> None:
        # (Nor does the end of a probe: its window, or the one before the queue, would come back.)
        self.congestion_window = self._probe_window = self._window_before_queue = self._minimum()
        self._recovery_start = -math.inf

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        held, self.peer_ack_delay = self.peer_ack_delay, 0.0
        if held > max(self.queue_target, self._base_rtt / 4):
            # The peer held its ACK back longer than the queue allowed: the sample tells nothing
            # of the queue. This is the up to 23 ms a lone packet's ACK waits for a ride
            # (quic_fastpath.LONE_ACK_DELAY); read as a queue, it would cut the window at every
            # ping on an idle tunnel. The usual delays (aioquic's 1 ms, plus a late timer) stay
            # in, as they were when the target was tuned, and as RFC 9002 keeps them in min_rtt.
            return
        if rtt < self._base_rtt:
            self._base_rtt = rtt
        if rtt < self._window_min:
            self._window_min = rtt
        if now - self._window_start > BASE_RTT_WINDOW:
            # The lowest sample of the last one to two windows: a longer route is learnt, but
            # not a queue that others hold most of the time (a probe compares with the base).
            self._base_rtt = min(self._window_min, rtt)
            self._window_min, self._window_start = rtt, now
        if rtt < self._interval_min:
            self._interval_min = rtt
        target = max(self.queue_target, self._base_rtt / 4)
        if self.mode == DELAY:
            # Growth slows as the queue nears the target, so that the window settles below it
            # rather than swinging across it: growth per RTT against one cut per interval held
            # a queue above the target whenever an interval spans several RTTs (at 20 Mbit/s, a
            # 6 ms RTT and 80% of the intervals queued), and the score then called a drain probe
            # every PROBE_PERIOD with the tunnel alone.
            self._headroom = max(0.0, 1.0 - (self._interval_min - self._base_rtt) / target)
        if now - self._interval_start < max(INTERVAL, self._base_rtt):
            return
        queued = self._interval_min - self._base_rtt > target
        self._interval_min, self._interval_start = math.inf, now
        self._acked_before, self._lost_before, self._acked, self._lost = self._acked, self._lost, 0, 0
        if self._probe_until is not None:
            if now >= self._probe_counts_from:
                self._probe_intervals += 1
                self._probe_queued += queued
            if now >= self._probe_until:
                self._end_probe(now)
        elif self.mode == COMPETING:
            if now >= self._next_probe:
                self._start_probe(now, rtt)
        elif queued:
            if not self._score:
                self._window_before_queue = self.congestion_window
            self._reduce(now, DELAY_REDUCTION)
            self._score += 1
            if self._score >= COMPETE_SCORE and now >= self._next_probe:
                self._start_probe(now, rtt)
        elif self._score:
            self._score -= 1

    def _start_probe(self, now: float, rtt: float) -> None:
        log.debug(
            "congestion control: drain probe (%s, score %d, window %d, rtt %.2f ms, base %.2f ms)",
            self.mode,
            self._score,
            self.congestion_window,
            rtt * 1000,
            self._base_rtt * 1000,
        )
        self._probe_window = self.congestion_window
        self.congestion_window = self._minimum()
        self._probe_until = now + max(PROBE_TIME, 3 * rtt)
        self._probe_counts_from = now + rtt  # what we had queued is gone by then
        self._probe_intervals = self._probe_queued = 0
        self._recovery_start = self._probe_until  # no growth from what the probe sends

    def _end_probe(self, now: float) -> None:
        self._probe_until = None
        self._recovery_start = now
        self._next_probe = now + PROBE_PERIOD
        self._score = 0
        # A queue of our own is gone after the first RTT of the probe; one that others hold was
        # there in 40-100% of the intervals after it (lab, next to a TCP flow).
        others = 3 * self._probe_queued >= self._probe_intervals > 0
        log.debug(
            "congestion control: probe found a queue in %d of %d intervals: %s",
            self._probe_queued,
            self._probe_intervals,
            "others'" if others else "own",
        )
        if others and self.mode == DELAY:
            # The queue stayed without our packets: not ours. Compete from the window we had when
            # it came, finding our share as at start (slow start, until a loss).
            self._set_mode(COMPETING)
            log.info(
                "congestion control: competing by loss: the RTT shows a queue that this end's packets "
                "do not make (other traffic on the path, or the queue this end's ACKs come back through)"
            )
            self.congestion_window = max(self._window_before_queue, self._probe_window)
            self.ssthresh = None
        elif not others and self.mode == COMPETING:
            # The queue went with our packets: it was ours. Delay control again, from half.
            self._set_mode(DELAY)
            log.info("congestion control: delay-based again: the queue the RTT shows is this end's own")
            self.congestion_window = self.ssthresh = max(self._probe_window // 2, self._minimum())
        else:
            self.congestion_window = self._probe_window

    def _set_mode(self, mode: str) -> None:
        self.mode = mode
        self.mode_changes += 1
        self._headroom = 1.0  # (competing, no queue slows growth; delay mode sets it per sample)

    def _reduce(self, now: float, factor: float) -> None:
        self._recovery_start = now
        self.congestion_window = max(int(self.congestion_window * factor), self._minimum())
        self.ssthresh = self.congestion_window
        self._stash = 0.0


register_congestion_control(CONGESTION_CONTROL, TunnelCongestionControl)
