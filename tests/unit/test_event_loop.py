"""The tunnel's event loop (event_loop.py): data-path readers called straight from the poll when
the loop is idle, and everything else as on asyncio's own loop. Socket pairs stand in for the
TUN queues and sockets; no root needed."""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from rustvpn import event_loop
from rustvpn.event_loop import DataPathLoop, add_data_reader


@contextmanager
def pipe() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A datagram socket pair: (the end a reader watches, the end that makes it readable)."""
    watched, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    watched.setblocking(False)
    try:
        yield watched, other
    finally:
        watched.close()
        other.close()


def drain(sock: socket.socket) -> None:
    try:
        while True:
            sock.recv(64)
    except BlockingIOError:
        pass


def test_the_loop_runs_direct_on_this_python() -> None:
    """The selector internals it needs are there (3.11 to 3.13): else it would quietly be the
    standard loop, and the tests below would not test the direct way."""
    assert event_loop.run(_direct()) is True


async def _direct() -> bool:
    loop = asyncio.get_running_loop()
    return isinstance(loop, DataPathLoop) and loop.direct


async def one_read(
    note: Callable[[], None], make_readable: Callable[[asyncio.AbstractEventLoop, socket.socket], None]
) -> None:
    """A data reader on a fresh socket pair: make_readable(loop, other end) makes it readable
    (now or from a callback), and the reader's first call runs note(); then it is removed."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    with pipe() as (watched, other):

        def readable() -> None:
            drain(watched)
            note()
            if not done.done():
                done.set_result(None)

        add_data_reader(loop, watched.fileno(), readable)
        make_readable(loop, other)
        await asyncio.wait_for(done, 5)
        loop.remove_reader(watched.fileno())


@pytest.mark.parametrize(
    ("run", "caller"),
    [
        (event_loop.run, "_run_once"),  # straight from the loop's turn
        (asyncio.run, "_run"),  # an ordinary reader: Handle._run (through Context.run, which is C)
    ],
    ids=["data-path loop", "standard loop"],
)
def test_an_idle_loop_calls_a_data_reader_straight_from_the_poll(
    run: Callable[[Coroutine[Any, Any, None]], None], caller: str
) -> None:
    """On the data-path loop not through a Handle queued on the ready queue (Handle._run,
    Context.run): the caller of the callback is the loop's turn itself. On asyncio's own loop
    add_data_reader registers an ordinary reader."""
    callers: list[str] = []
    # (stack()[1] is the reader, [2] whatever called it)
    run(one_read(lambda: callers.append(inspect.stack()[2].function), lambda _loop, other: other.send(b"x")))
    assert callers == [caller]


def test_with_callbacks_ready_a_data_reader_waits_its_turn_behind_them() -> None:
    """A busy loop keeps the standard order: a callback made ready in one turn runs before the
    reader of a socket that became readable in that turn."""
    order: list[str] = []

    def make_both_ready(loop: asyncio.AbstractEventLoop, other: socket.socket) -> None:
        other.send(b"x")
        loop.call_soon(order.append, "soon")

    event_loop.run(
        one_read(lambda: order.append("reader"), lambda loop, other: loop.call_soon(make_both_ready, loop, other))
    )
    assert order == ["soon", "reader"]


def test_an_error_in_a_data_reader_is_reported_and_the_loop_goes_on() -> None:
    reported: list[BaseException | None] = []
    calls = 0

    async def main() -> None:
        nonlocal calls
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: reported.append(context.get("exception")))
        with pipe() as (watched, other):

            def readable() -> None:
                nonlocal calls
                drain(watched)
                calls += 1
                raise ValueError("bad packet")

            add_data_reader(loop, watched.fileno(), readable)
            other.send(b"x")
            await until(lambda: calls == 1)
            other.send(b"y")
            await until(lambda: calls == 2)  # still registered, still called
            loop.remove_reader(watched.fileno())
        await asyncio.sleep(0.01)  # timers and futures still run

    event_loop.run(main())
    assert [type(e) for e in reported] == [ValueError, ValueError]
    assert str(reported[0]) == "bad packet"


def test_a_reader_removed_by_an_earlier_callback_of_the_same_turn_is_not_called() -> None:
    """Both sockets readable in one poll: whichever reader runs first removes the other's, and
    the other is not called (the registration is looked up when its turn comes)."""
    called: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pipe() as (a, a_other), pipe() as (b, b_other):
            socks = {a.fileno(): a, b.fileno(): b}

            def reader(fd: int, peer: int) -> Callable[[], None]:
                def readable() -> None:
                    drain(socks[fd])
                    called.append(fd)
                    loop.remove_reader(peer)

                return readable

            add_data_reader(loop, a.fileno(), reader(a.fileno(), b.fileno()))
            add_data_reader(loop, b.fileno(), reader(b.fileno(), a.fileno()))
            a_other.send(b"x")
            b_other.send(b"x")
            await until(lambda: len(called) == 1)
            await asyncio.sleep(0.05)
            for fd in socks:
                loop.remove_reader(fd)

    event_loop.run(main())
    assert len(called) == 1


def test_removing_or_replacing_a_data_reader_stops_it() -> None:
    calls: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pipe() as (watched, other):
            fd = watched.fileno()

            def reader(name: str) -> Callable[[], None]:
                def readable() -> None:
                    drain(watched)
                    calls.append(name)

                return readable

            add_data_reader(loop, fd, reader("data"))
            other.send(b"x")
            await until(lambda: calls == ["data"])
            loop.add_reader(fd, reader("plain"))  # replaces it
            other.send(b"x")
            await until(lambda: calls == ["data", "plain"])
            assert loop.remove_reader(fd)
            add_data_reader(loop, fd, reader("data again"))
            assert loop.remove_reader(fd)
            other.send(b"x")
            await asyncio.sleep(0.05)

    event_loop.run(main())
    assert calls == ["data", "plain"]


def test_timers_writers_and_socket_calls_work_as_on_the_standard_loop() -> None:
    """The rest of asyncio on this loop: timers in order and on time (including the purge of
    many cancelled ones), a writer callback, sock_recv, and a data reader beside them."""
    fired: list[int] = []

    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in (3, 1, 2):
            loop.call_later(0.01 * i, fired.append, i)
        cancelled = [loop.call_later(60, fired.append, -1) for _ in range(300)]
        for handle in cancelled:
            handle.cancel()  # over half of more than 100: the standard turn purges them
        await asyncio.sleep(0.05)
        with pipe() as (watched, other), pipe() as (data, data_other):
            got: list[bytes] = []
            add_data_reader(loop, data.fileno(), lambda: got.append(data.recv(64)))
            writable = loop.create_future()
            loop.add_writer(other.fileno(), lambda: writable.done() or writable.set_result(None))
            await asyncio.wait_for(writable, 5)
            loop.remove_writer(other.fileno())
            other.send(b"ping")
            data_other.send(b"data")
            assert await asyncio.wait_for(loop.sock_recv(watched, 64), 5) == b"ping"
            await until(lambda: got == [b"data"])
            loop.remove_reader(data.fileno())
        return loop.time() - start

    elapsed = event_loop.run(main())
    assert fired == [1, 2, 3]
    assert elapsed >= 0.05


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


@pytest.mark.parametrize("debug", [False, True])
def test_run_returns_what_the_coroutine_returns(debug: bool) -> None:
    async def main() -> int:
        asyncio.get_running_loop().set_debug(debug)
        await asyncio.sleep(0)
        return 42

    assert event_loop.run(main()) == 42
