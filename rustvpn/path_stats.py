"""The underlay path as each transport's own sender sees it: round-trip time, congestion window,
bytes in flight and packets judged lost. What `rustvpn status` shows under "path", so that an
operator can tell a slow or lossy underlay from a slow tunnel without a packet capture.

TCP mode reads the kernel's ``TCP_INFO`` of each data connection; QUIC mode reads aioquic's loss
recovery and the tunnel's congestion controller. Figures a transport does not have are None.
"""

from __future__ import annotations

import math
import socket
import statistics
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PathFigures", "combine", "parse_tcp_info", "quic_path", "tcp_path"]

# struct tcp_info (linux/tcp.h): the byte offsets of the fields used. Every kernel since 4.6 fills
# all of them; an older one returns a shorter struct, and the fields beyond it read as None.
_U32_AT = {
    "snd_mss": 16,
    "unacked": 24,
    "rtt": 68,  # smoothed, microseconds
    "rttvar": 72,
    "snd_cwnd": 80,  # segments
    "total_retrans": 100,
    "min_rtt": 148,  # microseconds
}
TCP_INFO_SIZE = 232  # (asked for; the kernel copies at most what it has)


@dataclass(frozen=True, slots=True)
class PathFigures:
    """One path's figures. ``lost_packets`` counts what the sender judged lost: in QUIC mode the
    packets its loss detection declared lost, in TCP mode the segments the kernel retransmitted
    (``tcpi_total_retrans``, which also counts spurious retransmissions)."""

    rtt_ms: float | None = None  # smoothed
    rtt_var_ms: float | None = None
    min_rtt_ms: float | None = None
    cwnd_bytes: int | None = None
    in_flight_bytes: int | None = None
    lost_packets: int | None = None
    # The congestion control at work: the kernel's algorithm in TCP mode ("cubic"); in QUIC mode
    # the tunnel controller's mode, "delay" or "competing" (quic_congestion).
    congestion: str | None = None
    connections: int = 1  # how many transport connections these figures sum up

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ms(seconds_or_none: float | None, scale: float) -> float | None:
    return None if seconds_or_none is None else round(seconds_or_none * scale, 3)


def parse_tcp_info(raw: bytes, congestion: str | None = None) -> PathFigures:
    """The figures of one TCP connection from its ``TCP_INFO`` bytes (and ``TCP_CONGESTION``'s)."""

    def u32(name: str) -> int | None:
        at = _U32_AT[name]
        return struct.unpack_from("=I", raw, at)[0] if len(raw) >= at + 4 else None

    mss, cwnd, unacked = u32("snd_mss"), u32("snd_cwnd"), u32("unacked")
    rtt, rttvar, min_rtt = u32("rtt"), u32("rttvar"), u32("min_rtt")
    # A connection that has not had an RTT sample yet reports 0 (min_rtt: ~0, "unset").
    no_sample = not rtt
    return PathFigures(
        rtt_ms=None if no_sample else _ms(rtt, 1e-3),
        rtt_var_ms=None if no_sample else _ms(rttvar, 1e-3),
        min_rtt_ms=None if no_sample or min_rtt in (None, 0xFFFFFFFF) else _ms(min_rtt, 1e-3),
        cwnd_bytes=None if mss is None or cwnd is None else cwnd * mss,
        in_flight_bytes=None if mss is None or unacked is None else unacked * mss,
        lost_packets=u32("total_retrans"),
        congestion=congestion,
    )


def tcp_path(sock: socket.socket | None) -> PathFigures | None:
    """The figures of a connected TCP socket; None without one, or when the kernel will not say."""
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
        name = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
    except OSError:  # closed meanwhile, or not TCP
        return None
    return parse_tcp_info(raw, name.split(b"\0", 1)[0].decode("ascii", "replace") or None)


def quic_path(recovery: Any) -> PathFigures:
    """The figures of a QUIC connection from aioquic's ``QuicPacketRecovery`` (aioquic 1.7 internals:
    its RTT estimator's fields) and its congestion controller (``lost_packets`` if it counts them,
    as the tunnel's own does)."""
    sampled = bool(recovery._rtt_initialized)
    rtt_min = recovery._rtt_min
    lost = getattr(recovery._cc, "lost_packets", None)
    mode = getattr(recovery._cc, "mode", None)
    return PathFigures(
        rtt_ms=_ms(recovery._rtt_smoothed, 1e3) if sampled else None,
        rtt_var_ms=_ms(recovery._rtt_variance, 1e3) if sampled else None,
        min_rtt_ms=_ms(rtt_min, 1e3) if sampled and math.isfinite(rtt_min) else None,
        cwnd_bytes=int(recovery.congestion_window),
        in_flight_bytes=int(recovery.bytes_in_flight),
        lost_packets=lost if isinstance(lost, int) else None,
        congestion=mode if isinstance(mode, str) else None,
    )


def combine(paths: Sequence[PathFigures | None]) -> PathFigures | None:
    """Several connections over one underlay path (TCP mode's data connections) as one: the median
    smoothed RTT and its variation (each connection's own queue adds to its RTT, and the median
    is the typical packet's), the lowest minimum, windows, bytes in flight and losses summed, and
    the congestion controls named once each."""
    known = [p for p in paths if p is not None]
    if not known:
        return None
    sampled = [p for p in known if p.rtt_ms is not None]
    mins = [p.min_rtt_ms for p in known if p.min_rtt_ms is not None]

    def total(values: list[int | None]) -> int | None:
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    return PathFigures(
        rtt_ms=round(statistics.median(p.rtt_ms for p in sampled if p.rtt_ms is not None), 3) if sampled else None,
        rtt_var_ms=round(statistics.median(p.rtt_var_ms or 0.0 for p in sampled), 3) if sampled else None,
        min_rtt_ms=min(mins) if mins else None,
        cwnd_bytes=total([p.cwnd_bytes for p in known]),
        in_flight_bytes=total([p.in_flight_bytes for p in known]),
        lost_packets=total([p.lost_packets for p in known]),
        congestion=", ".join(sorted({p.congestion for p in known if p.congestion})) or None,
        connections=sum(p.connections for p in known),
    )
