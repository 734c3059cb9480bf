"""CoDel's drop decision (RFC 8289), without I/O: when a queue has stood above its target delay
for a whole interval, drop one packet, then more often (interval / sqrt(drops)) until it goes
below the target again. Inner TCP slows down on the first loss of a round trip; dropping every
packet above a bound instead (tail drop) costs it a whole window of losses at once.

The caller asks once per arrival, with how long the oldest packet still queued has waited (the
RFC asks at dequeue; the oldest packet's wait is the same figure, known without timestamping
every packet).
"""

from __future__ import annotations

import collections
import math

__all__ = ["INTERVAL", "TARGET", "CoDel", "QueueWait"]

TARGET = 0.005  # seconds a queue may stand
INTERVAL = 0.1  # seconds it must stand above TARGET before the first drop: about a worst-case RTT


class CoDel:
    __slots__ = ("_drop_next", "_first_above", "_last_count", "count", "dropping", "interval", "target")

    def __init__(self, target: float = TARGET, interval: float = INTERVAL) -> None:
        self.target = target
        self.interval = interval
        self.dropping = False
        self.count = 0  # drops in the current (or last) dropping state
        self._last_count = 0
        self._first_above: float | None = None  # when the queue will have stood above TARGET an interval
        self._drop_next = 0.0

    def should_drop(self, now: float, waited: float) -> bool:
        """True if one packet should be dropped now; ``waited``: the oldest queued packet's wait."""
        if waited < self.target:
            self._first_above = None
            self.dropping = False
            return False
        if self._first_above is None:
            self._first_above = now + self.interval
            return False
        if now < self._first_above:
            return False
        if not self.dropping:
            self.dropping = True
            # Back into dropping soon after leaving it: start near the rate that was needed then.
            delta = self.count - self._last_count
            recent = now - self._drop_next < 16 * self.interval
            self.count = delta if delta > 1 and recent else 1
            self._last_count = self.count
            self._drop_next = now + self.interval / math.sqrt(self.count)
            return True
        if now >= self._drop_next:
            self.count += 1
            self._drop_next += self.interval / math.sqrt(self.count)
            return True
        return False


class QueueWait:
    """How long the oldest item of a first-in, first-out queue has waited, from the running total
    of items (or bytes) ever queued and of those gone: a time stamp per enqueued batch, not per
    item, and none kept in the queue itself (aioquic's)."""

    __slots__ = ("_stamps",)

    def __init__(self) -> None:
        self._stamps: collections.deque[tuple[int, float]] = collections.deque()  # (total after a batch, time)

    def queued(self, total: int, now: float) -> None:
        """A batch was queued at ``now``; ``total``: everything ever queued, this batch included."""
        self._stamps.append((total, now))

    def restart(self, total: int, now: float) -> None:
        """Everything still queued counts as queued at ``now``."""
        self._stamps.clear()
        self._stamps.append((total, now))

    def delay(self, gone: int, now: float) -> float:
        """The oldest item's wait, when ``gone`` of the total have left the queue."""
        stamps = self._stamps
        while stamps and stamps[0][0] <= gone:
            stamps.popleft()
        return now - stamps[0][1] if stamps else 0.0
