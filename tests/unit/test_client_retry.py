"""The client's retry schedule after failed connects: quick at first (1 s, then 2 s; a refused first
connect used to wait 2 s), then the reference peer's 5 s; with what systemd's STATUS= says meanwhile.
The connects are real ones, refused on loopback."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from typing import Any

from rustvpn.config_file import build_config
from rustvpn.session import RETRY_DELAYS, TunnelEngine, describe_state
from rustvpn.stats import TunnelState


def refused_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_failed_connects_are_retried_after_1_then_2_seconds() -> None:
    port = refused_port()
    config = build_config("tcp", "client", {"server": "127.0.0.1", "device": "rv-test"}, lambda k: k, check_files=False)
    attempts: list[float] = []
    said: list[str] = []

    async def connect() -> Any:
        attempts.append(time.monotonic())
        await asyncio.open_connection("127.0.0.1", port)  # refused: ConnectionRefusedError (an OSError)

    async def main() -> None:
        engine = TunnelEngine(config, None, TunnelState(), on_change=lambda s: said.append(describe_state(s)))  # type: ignore[arg-type]
        task = asyncio.create_task(engine.run_client(connect))
        deadline = time.monotonic() + 8
        while len(attempts) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert len(attempts) == 3
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    # (A lost session is retried after RETRY_DELAYS[0]; a failed connect counts one failure more.)
    assert RETRY_DELAYS[1:3] == (1.0, 2.0) and RETRY_DELAYS[-1] == 5.0
    for gap, delay in zip(gaps, RETRY_DELAYS[1:], strict=False):
        assert delay <= gap < delay + 0.5
    # What systemd's STATUS= showed: each wait, and why.
    assert said[:4:2] == ["connecting", "connecting"]
    assert said[1].startswith("reconnecting in 1 s after: ") and str(port) in said[1]
    assert said[3].startswith("reconnecting in 2 s after: ")
