"""The status snapshot's process figures (asyncio tasks, threads, open fds, RSS), measured on this very
process: each figure must move when the test changes what the process holds."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from rustvpn.stats import TunnelState
from rustvpn.status import process_figures, snapshot
from rustvpn.status_client import query
from rustvpn.status_format import format_status
from rustvpn.status_server import StatusServer
from tests.unit.test_status import office_status, run, server_config

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")


def _fds_by_fstat() -> int:
    """Open descriptors counted another way: probe every number below the soft limit."""
    count = 0
    for fd in range(min(os.sysconf("SC_OPEN_MAX"), 4096)):
        try:
            os.fstat(fd)
        except OSError:
            continue
        count += 1
    return count


def test_open_fds_counts_exactly() -> None:
    assert process_figures()["open_fds"] == _fds_by_fstat()
    before = process_figures()["open_fds"]
    pipes = [os.pipe() for _ in range(5)]
    try:
        assert process_figures()["open_fds"] == before + 10  # type: ignore[operator]
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
    assert process_figures()["open_fds"] == before


def _untracked_threads() -> int:
    """Kernel-counted threads minus the ones Python knows of: constant unless the count is wrong.

    Other tests leave worker threads that may come and go at any moment (executor threads), so
    the figure is compared with Python's own count, taken as close together as possible."""
    for _ in range(5):
        before = threading.active_count()
        figure = process_figures()["threads"]
        if threading.active_count() == before:
            assert isinstance(figure, int)
            return figure - before
    raise AssertionError("threads kept starting and stopping while sampled")


def test_threads_follow_started_threads() -> None:
    offset = _untracked_threads()
    release = threading.Event()
    workers = [threading.Thread(target=release.wait) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        assert _untracked_threads() == offset  # the three new ones are counted
        assert process_figures()["threads"] >= 4
    finally:
        release.set()
        for worker in workers:
            worker.join()
    # join() returns once Python is done with a thread; the kernel may count it a moment longer.
    deadline = time.monotonic() + 2
    while _untracked_threads() != offset and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _untracked_threads() == offset


def test_rss_follows_touched_memory() -> None:
    before = process_figures()["rss_bytes"]
    assert isinstance(before, int) and before > 1 << 20
    block = bytearray(64 << 20)  # zeroed pages: calloc'd memory only counts once touched
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    grown = process_figures()["rss_bytes"]
    assert isinstance(grown, int) and grown - before >= 60 << 20
    del block


def test_heap_blocks_count_live_python_objects_not_freed_ones() -> None:
    before = process_figures()["heap_blocks"]
    assert isinstance(before, int) and before > 1000
    held = [object() for _ in range(50_000)]
    grown = process_figures()["heap_blocks"]
    assert isinstance(grown, int) and grown - before >= 50_000
    del held
    after = process_figures()["heap_blocks"]
    assert isinstance(after, int) and after - before < 5_000  # freed: gone from the count, unlike RSS


def test_malloc_bytes_count_what_the_c_allocator_holds_not_what_it_keeps() -> None:
    before = process_figures()["malloc_bytes"]
    assert isinstance(before, int) and before > 1 << 20  # glibc: the test machines have 2.33 or later
    # Many blocks of 64 KB (bytes objects of this size come from malloc), held, then freed.
    held = [bytes(64 << 10) for _ in range(256)]
    grown = process_figures()["malloc_bytes"]
    assert isinstance(grown, int) and grown - before >= 16 << 20
    del held
    after = process_figures()["malloc_bytes"]
    assert isinstance(after, int) and after - before < 1 << 20  # given back, whatever RSS keeps


def test_asyncio_tasks_only_inside_a_loop() -> None:
    assert process_figures()["asyncio_tasks"] is None

    async def main() -> tuple[int | None, int | None]:
        idle = asyncio.Event()
        base = process_figures()["asyncio_tasks"]
        extra = [asyncio.ensure_future(idle.wait()) for _ in range(4)]
        await asyncio.sleep(0)
        more = process_figures()["asyncio_tasks"]
        idle.set()
        await asyncio.gather(*extra)
        return base, more

    base, more = run(main())
    assert base is not None and base >= 1
    assert more == base + 4


def test_snapshot_carries_figures_and_status_prints_them() -> None:
    snap = office_status()
    assert set(snap["process"]) == {"asyncio_tasks", "threads", "open_fds", "rss_bytes", "heap_blocks", "malloc_bytes"}
    assert snap["process"]["asyncio_tasks"] is None  # taken outside a loop here
    text = format_status(snap)
    line = next(line for line in text.splitlines() if "process:" in line)
    assert line.split(": ", 1)[1].startswith("- tasks, ")
    assert " fds, " in line and line.endswith(" allocated)") and " RSS (" in line
    figures = {"asyncio_tasks": 7, "threads": 2, "open_fds": 1234, "rss_bytes": 55 * 1024 * 1024}
    text = format_status({**snap, "process": figures})
    assert "process: 7 tasks, 2 threads, 1,234 fds, 55.00 MiB RSS" in text
    # The labels stay aligned on their colons with the new line.
    lines = text.splitlines()
    assert len({line.index(":") for line in lines[1:] if ": " in line}) == 1
    # A daemon of an older release sends no figures: no line, no error.
    old = {k: v for k, v in snap.items() if k != "process"}
    assert "process:" not in format_status(old)
    assert "process: - tasks" in format_status({**snap, "process": {"threads": "x"}})


def test_figures_come_from_the_daemon_over_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "office" / "status.sock"
    config = server_config()

    async def main() -> dict[str, int | None]:
        server = StatusServer(str(path), lambda: snapshot("office", config, TunnelState(state="listening"), None))
        await server.start()
        try:
            held = [asyncio.ensure_future(asyncio.sleep(30)) for _ in range(3)]
            got = (await query(str(path)))["process"]
            for task in held:
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)
            return dict(got)
        finally:
            await server.close()

    figures = run(main())
    # This test's task, the three sleepers and the server's handler for our request, at least.
    assert isinstance(figures["asyncio_tasks"], int) and figures["asyncio_tasks"] >= 5
    assert isinstance(figures["open_fds"], int) and figures["open_fds"] >= 4
    assert isinstance(figures["rss_bytes"], int) and figures["rss_bytes"] > 1 << 20
