"""The event loop the tunnel runs on: asyncio's own, with a shorter way from a wake-up to the
data path.

On an idle tunnel every packet wakes a process that has slept for milliseconds, its caches cold,
and asyncio's way from epoll to a reader's callback (the selector's key objects, a Handle queued
and popped, Handle._run, Context.run) costs tens of microseconds when cold. In a ping-pong of two
processes woken every 20 ms (bench/wakeup.py, medians of 8 runs) a round trip took 145 us with the
answering end on the standard loop, 113 on this one and 102 on a bare epoll loop.

So readers registered with :func:`add_data_reader` (the TUN queues, the TLS and UDP sockets) are
called straight from the poll when the loop has nothing else to run, in the order epoll reports
them, and before the timers due in the same turn, which is where the standard loop would run
them too. When other callbacks are ready (a busy loop), or in debug mode, they take the standard
way through the ready queue, so ordering between them and other callbacks is the standard loop's.
They run outside any contextvars context of their own and must not depend on one.

Everything else (timers, other readers and writers, futures) is asyncio's code, unchanged. The
loop needs asyncio's selector internals as they are in 3.11 to 3.13; if they are missing it runs
as the standard loop (:attr:`DataPathLoop.direct` is False).
"""

from __future__ import annotations

import asyncio
import heapq
import select
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")

# As asyncio's base_events: a day at most, and purge cancelled timers once they are over half of
# more than 100.
MAXIMUM_SELECT_TIMEOUT = 24 * 3600
_MIN_SCHEDULED_TIMER_HANDLES = 100
_MIN_CANCELLED_TIMER_HANDLES_FRACTION = 0.5

# As the selector's select: any event but writability makes a reader ready (errors and hang-ups
# too), any but readability a writer.
_NOT_OUT = ~select.EPOLLOUT
_NOT_IN = ~select.EPOLLIN


class _DataReader(asyncio.Handle):
    """The handle of a data-path reader: what marks it for the direct call."""

    __slots__ = ()
    _callback: Callable[[], None]  # (Handle's own, which typeshed does not declare)


class DataPathLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop, calling data-path readers straight from the poll when idle."""

    def __init__(self) -> None:
        super().__init__(selectors.EpollSelector())
        loop: Any = self
        selector = loop._selector
        self.direct = (
            isinstance(getattr(selector, "_selector", None), select.epoll)
            and isinstance(getattr(selector, "_fd_to_key", None), dict)
            and all(
                hasattr(self, name)
                for name in ("_ready", "_scheduled", "_stopping", "_timer_cancelled_count", "_clock_resolution")
            )
        )

    def add_data_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """As add_reader, for a callback that is called directly from the poll when the loop is
        idle. It takes no arguments and no context."""
        self.add_reader(fd, callback)  # asyncio's registration, with its checks
        if self.direct:
            # Its handle swapped for one that marks the direct call (the data alone changes: no
            # system call; the handle dropped was never queued).
            selector: Any = self._selector  # type: ignore[attr-defined]
            key = selector.get_key(fd)
            writer = key.data[1]
            selector.modify(fd, key.events, (_DataReader(callback, (), self, None), writer))

    def _run_once(self) -> None:
        """One turn of the loop, as asyncio's BaseEventLoop._run_once, but with the poll done
        here: data-path readers run at once when nothing else is ready."""
        loop: Any = self  # (asyncio's internals, which typeshed does not declare)
        scheduled: list[Any] = loop._scheduled
        count = len(scheduled)
        if (
            not self.direct
            or loop._debug  # (the standard turn times each callback)
            or (
                count > _MIN_SCHEDULED_TIMER_HANDLES
                and loop._timer_cancelled_count / count > _MIN_CANCELLED_TIMER_HANDLES_FRACTION
            )  # (it purges them)
        ):
            super()._run_once()  # type: ignore[misc]
            return
        while scheduled and scheduled[0]._cancelled:
            loop._timer_cancelled_count -= 1
            heapq.heappop(scheduled)._scheduled = False

        ready = loop._ready
        if ready or loop._stopping:
            timeout = 0.0
        elif scheduled:
            # (epoll.poll rounds up to whole milliseconds itself, as the selector's select does.)
            timeout = min(max(0.0, scheduled[0]._when - self.time()), MAXIMUM_SELECT_TIMEOUT)
        else:
            timeout = -1.0
        # Direct calls only when nothing waits in the ready queue: then the standard loop too
        # would run these readers first, in this order.
        direct = not ready
        selector = loop._selector
        fd_to_key = selector._fd_to_key
        try:
            events = selector._selector.poll(timeout, max(len(fd_to_key), 1))
        except InterruptedError:
            events = []
        for fd, mask in events:
            key = fd_to_key.get(fd)  # (looked up now: an earlier callback may have removed it)
            if key is None:
                continue
            reader, writer = key.data
            if mask & _NOT_OUT and reader is not None and key.events & selectors.EVENT_READ:
                if reader._cancelled:
                    loop._remove_reader(fd)
                elif direct and type(reader) is _DataReader:
                    try:
                        reader._callback()
                    except (SystemExit, KeyboardInterrupt):
                        raise
                    except BaseException as exc:  # as Handle._run: reported, and the loop goes on
                        message = f"Exception in callback {reader._callback!r}"
                        self.call_exception_handler({"message": message, "exception": exc, "handle": reader})
                else:
                    ready.append(reader)
            if mask & _NOT_IN and writer is not None and key.events & selectors.EVENT_WRITE:
                if writer._cancelled:
                    loop._remove_writer(fd)
                else:
                    ready.append(writer)

        if scheduled:
            end = self.time() + loop._clock_resolution
            while scheduled and scheduled[0]._when < end:
                handle = heapq.heappop(scheduled)
                handle._scheduled = False
                ready.append(handle)
        for _ in range(len(ready)):
            handle = ready.popleft()
            if not handle._cancelled:
                handle._run()


def add_data_reader(loop: asyncio.AbstractEventLoop, fd: int, callback: Callable[[], None]) -> None:
    """Register a data-path reader: called straight from the poll on a DataPathLoop, an ordinary
    reader on any other loop (the unit tests run the pump on asyncio's own)."""
    if isinstance(loop, DataPathLoop):
        loop.add_data_reader(fd, callback)
    else:
        loop.add_reader(fd, callback)


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """asyncio.run on a DataPathLoop."""
    with asyncio.Runner(loop_factory=DataPathLoop) as runner:
        return runner.run(main)
