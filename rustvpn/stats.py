"""Traffic counters and the live state of a tunnel (what logs and `status` report)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Counters:
    """Packets and bytes each way. ``out`` = towards the peer, ``in`` = from the peer."""

    packets_out: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    bytes_in: int = 0
    dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "packets_out": self.packets_out,
            "bytes_out": self.bytes_out,
            "packets_in": self.packets_in,
            "bytes_in": self.bytes_in,
            "dropped": self.dropped,
        }


@dataclass
class TunnelState:
    """Where the tunnel is in its life; updated by the session engine."""

    state: str = "starting"  # starting, listening, connecting, handshaking, connected, reconnecting, stopping
    peer: str | None = None
    peer_cn: str | None = None
    streams: int = 0
    reconnects: int = 0
    retry_in: float = 0.0
    sessions: int = 0
    last_error: str | None = None
    started_at: float = field(default_factory=time.monotonic)
    session_started_at: float | None = None
    totals: Counters = field(default_factory=Counters)
