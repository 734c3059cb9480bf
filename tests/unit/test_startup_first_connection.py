"""rustvpn.app.FirstConnection: a client's first connection attempt runs while the device is being
configured; the engine gets its session (or its error) later, and a start-up that fails before the
engine took it leaves no session behind.

The connect functions here are stand-ins for a transport (the transport is not under test), except
in the last test, where a real TcpClient connects to a real TcpServer on loopback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from test_tcp_transport import client_config, serving

from rustvpn.app import FirstConnection, make_connect
from rustvpn.config_exchange import ExchangeParams
from rustvpn.errors import SessionLost
from rustvpn.pki import write_demo_set
from rustvpn.pump import PacketChannel, PacketPump
from rustvpn.session import Session

T = TypeVar("T")
LOOPBACK = "127.0.0.1"


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def main() -> T:
        async with asyncio.timeout(15):
            return await coro

    return asyncio.run(main())


class StubSession(Session):
    """A session with no channels that records how it ended."""

    def __init__(self, name: str) -> None:
        super().__init__(name, None, ExchangeParams("b", 1, 1400, "t" * 32))
        self.shutdowns = 0

    @property
    def channels(self) -> Sequence[PacketChannel]:
        return ()

    def bind(self, pump: PacketPump) -> None:
        pass

    def _shutdown(self) -> None:
        self.shutdowns += 1


class Attempts:
    """A connect function: attempt N waits for ``release(N)`` and then returns or raises what it was given."""

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0
        self._outcomes: dict[int, asyncio.Future[Session]] = {}

    def _outcome(self, n: int) -> asyncio.Future[Session]:
        return self._outcomes.setdefault(n, asyncio.get_running_loop().create_future())

    async def __call__(self) -> Session:
        self.started += 1
        try:
            return await self._outcome(self.started)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    def release(self, n: int, outcome: Session | BaseException) -> None:
        if isinstance(outcome, BaseException):
            self._outcome(n).set_exception(outcome)
        else:
            self._outcome(n).set_result(outcome)


def counter() -> tuple[list[int], Callable[[], None]]:
    calls: list[int] = []
    return calls, lambda: calls.append(1)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_first_attempt_starts_before_anyone_asks_and_its_session_is_handed_over_once() -> None:
    async def scenario() -> None:
        attempts, (done, on_done) = Attempts(), counter()
        first = FirstConnection(attempts, on_done)
        await settle()
        assert attempts.started == 1  # connecting while the device is being configured
        session = StubSession("first")
        attempts.release(1, session)
        await settle()
        assert done == []  # nothing is attached before the engine asks
        assert await first.connect() is session
        assert done == [1]
        # Later calls are plain new attempts (reconnects); on_first_done does not run again.
        second = StubSession("second")
        attempts.release(2, second)
        assert await first.connect() is second
        assert (attempts.started, done) == (2, [1])
        await first.abandon()  # the engine took the session: nothing to end
        assert session.shutdowns == 0

    run(scenario())


def test_a_failed_first_attempt_reaches_the_engine_and_still_marks_the_first_attempt_done() -> None:
    async def scenario() -> None:
        attempts, (done, on_done) = Attempts(), counter()
        first = FirstConnection(attempts, on_done)
        attempts.release(1, SessionLost("refused"))
        await settle()
        with pytest.raises(SessionLost, match="refused"):
            await first.connect()
        assert done == [1]  # the pump starts reading (and dropping) while the engine retries

    run(scenario())


def test_cancelling_the_engine_while_it_waits_for_the_first_attempt_cancels_that_attempt() -> None:
    async def scenario() -> None:
        attempts, (done, on_done) = Attempts(), counter()
        first = FirstConnection(attempts, on_done)
        waiting = asyncio.ensure_future(first.connect())
        await settle()
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert attempts.cancelled == 1
        assert done == [1]

    run(scenario())


def test_abandon_stops_a_pending_first_attempt() -> None:
    async def scenario() -> None:
        attempts, (done, on_done) = Attempts(), counter()
        first = FirstConnection(attempts, on_done)
        await settle()
        await first.abandon()
        assert (attempts.started, attempts.cancelled, done) == (1, 1, [])

    run(scenario())


def test_abandon_ends_a_first_session_the_engine_never_took() -> None:
    async def scenario() -> None:
        attempts, (done, on_done) = Attempts(), counter()
        first = FirstConnection(attempts, on_done)
        session = StubSession("first")
        attempts.release(1, session)
        await settle()
        await first.abandon()  # e.g. the device set-up failed
        assert session.ended.done() and session.ended.result() == "start-up failed"
        assert session.shutdowns == 1
        assert done == []

    run(scenario())


def test_abandon_after_a_failed_first_attempt_is_quiet() -> None:
    async def scenario() -> None:
        attempts, (_, on_done) = Attempts(), counter()
        first = FirstConnection(attempts, on_done)
        attempts.release(1, SessionLost("refused"))
        await settle()
        await first.abandon()  # the error is consumed, not left for "exception never retrieved"

    run(scenario())


# -- with the real TCP transport on loopback ---------------------------------------------------


async def wait(awaitable: Awaitable[T]) -> T:
    async with asyncio.timeout(5):
        return await awaitable


def test_a_real_first_session_abandoned_at_start_up_ends_on_the_server_too(tmp_path: Path) -> None:
    certs = write_demo_set(tmp_path, [LOOPBACK])

    async def scenario() -> None:
        async with serving(certs) as rig:
            first = FirstConnection(make_connect(client_config(certs, rig.ports)), lambda: None)
            peer_side = await wait(rig.server.next_session())  # set up without anyone asking for it
            await first.abandon()  # as when configuring the device fails
            reason = await wait(peer_side.ended)
            assert reason == "peer closed the connection"

    run(scenario())
