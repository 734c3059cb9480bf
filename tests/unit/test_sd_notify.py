"""Unit tests for rustvpn.sd_notify against a real AF_UNIX datagram socket as $NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rustvpn import sd_notify
from rustvpn.sd_notify import Notifier, watchdog_interval
from systemd import daemon


class Listener:
    """The systemd side: a bound datagram socket collecting what the daemon sends."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address

    def next(self, timeout: float = 2.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(65536).decode()

    def drain(self) -> list[str]:
        """Every datagram already queued, without waiting."""
        messages = []
        self.sock.setblocking(False)
        try:
            while True:
                messages.append(self.sock.recv(65536).decode())
        except BlockingIOError:
            pass
        return messages


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    directory = tmp_path
    if len(str(tmp_path / "notify.sock")) >= 100:  # sun_path holds 107 bytes
        directory = Path(tempfile.mkdtemp(prefix="rvpn-"))
    path = str(directory / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        yield Listener(sock, path)
    finally:
        sock.close()
        if directory != tmp_path:
            shutil.rmtree(directory, ignore_errors=True)


def fields(message: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in message.split("\n") if line)


# --------------------------------------------------------------------------- messages


def test_ready_sends_ready_and_status(listener: Listener) -> None:
    notifier = Notifier()
    assert notifier.enabled
    notifier.ready("waiting for peer")
    message = listener.next()
    assert "READY=1" in message.split("\n")
    assert "STATUS=waiting for peer" in message.split("\n")
    assert listener.drain() == []


def test_status_is_sent_once_per_change(listener: Listener) -> None:
    notifier = Notifier()
    notifier.ready("waiting for peer")
    assert fields(listener.next())["STATUS"] == "waiting for peer"
    notifier.status("waiting for peer")  # unchanged since ready(): not resent
    notifier.status("connected to 198.18.0.1:40112, 5 streams")
    assert fields(listener.next()) == {"STATUS": "connected to 198.18.0.1:40112, 5 streams"}
    notifier.status("connected to 198.18.0.1:40112, 5 streams")
    notifier.status("connected to 198.18.0.1:40112, 5 streams")
    notifier.status("reconnecting in 3 s")
    assert fields(listener.next()) == {"STATUS": "reconnecting in 3 s"}
    notifier.status("waiting for peer")  # a change back is a change
    assert fields(listener.next()) == {"STATUS": "waiting for peer"}
    assert listener.drain() == []


def test_status_before_ready(listener: Listener) -> None:
    notifier = Notifier()
    notifier.status("setting up device")
    assert fields(listener.next()) == {"STATUS": "setting up device"}
    notifier.status("setting up device")
    assert listener.drain() == []


def test_stopping_sends_stopping(listener: Listener) -> None:
    notifier = Notifier()
    notifier.ready("up")
    listener.next()
    notifier.stopping()
    assert fields(listener.next())["STOPPING"] == "1"
    assert listener.drain() == []


# --------------------------------------------------------------------------- watchdog


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("200000", None, 0.1),
        ("200000", "self", 0.1),
        ("20000000", None, 10.0),
        ("200000", "other", None),
        ("0", None, None),
        ("-5", None, None),
        ("abc", None, None),
        ("", None, None),
        (None, None, None),
        (None, "self", None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            value = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(value, value)
            monkeypatch.setenv(name, value)
    if expected is None:
        assert watchdog_interval() is None
    else:
        assert watchdog_interval() == pytest.approx(expected)


async def _run_watchdog(notifier: Notifier, seconds: float) -> None:
    notifier.start_watchdog()
    await asyncio.sleep(seconds)


@pytest.mark.parametrize("pid", [None, "self"])
def test_watchdog_pings_until_stopped(listener: Listener, monkeypatch: pytest.MonkeyPatch, pid: str | None) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # pings every 0.1 s
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))

    async def scenario() -> tuple[list[str], list[str]]:
        notifier = Notifier()
        await _run_watchdog(notifier, 0.5)
        during = listener.drain()
        notifier.stop_watchdog()
        await asyncio.sleep(0.35)
        return during, listener.drain()

    during, after = asyncio.run(scenario())
    assert all(fields(m) == {"WATCHDOG": "1"} for m in during), during
    # ~6 expected (one at once, then every 0.1 s); loose bounds for a busy machine.
    assert 3 <= len(during) <= 10, during
    assert after == []


def test_stopping_stops_the_watchdog(listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")

    async def scenario() -> list[str]:
        notifier = Notifier()
        await _run_watchdog(notifier, 0.2)
        notifier.stopping()
        listener.drain()
        await asyncio.sleep(0.3)
        return listener.drain()

    assert asyncio.run(scenario()) == []


def test_watchdog_of_another_pid_is_not_ours(listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert asyncio.run(_run_watchdog(Notifier(), 0.3)) is None
    assert listener.drain() == []


def test_no_watchdog_without_watchdog_usec(listener: Listener) -> None:
    asyncio.run(_run_watchdog(Notifier(), 0.2))
    assert listener.drain() == []


def test_stop_watchdog_without_start_is_harmless(listener: Listener) -> None:
    notifier = Notifier()
    notifier.stop_watchdog()
    notifier.stop_watchdog()
    assert listener.drain() == []


# --------------------------------------------------------------------------- not under systemd


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch, listener: Listener) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET")
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    calls: list[str] = []
    monkeypatch.setattr(sd_notify.daemon, "notify", lambda message, *a, **k: calls.append(message) or True)
    notifier = Notifier()
    assert not notifier.enabled

    async def scenario() -> None:
        notifier.ready("waiting for peer")
        notifier.status("connected")
        await _run_watchdog(notifier, 0.25)
        notifier.stopping()

    asyncio.run(scenario())
    assert calls == []
    assert listener.drain() == []


def test_notify_socket_removed_mid_run(listener: Listener) -> None:
    notifier = Notifier()
    notifier.ready("waiting for peer")
    listener.next()
    os.unlink(listener.address)
    notifier.status("connected")  # ENOENT inside daemon.notify: logged, not raised
    notifier.stopping()


def test_notify_socket_closed_mid_run(listener: Listener) -> None:
    notifier = Notifier()
    notifier.ready("waiting for peer")
    listener.sock.close()  # the path stays, nobody listens: ECONNREFUSED
    notifier.status("connected")
    notifier.stopping()


def test_watchdog_survives_a_gone_socket(listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")

    async def scenario() -> None:
        notifier = Notifier()
        notifier.start_watchdog()
        await asyncio.sleep(0.1)
        os.unlink(listener.address)
        await asyncio.sleep(0.2)  # pings keep failing quietly in the loop's callbacks
        notifier.stop_watchdog()

    loop_errors: list[object] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
        await scenario()

    asyncio.run(main())
    assert loop_errors == []


def test_bad_notify_socket_value_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/not-a-socket")
    notifier = Notifier()
    notifier.ready("x")
    notifier.status("y")
    notifier.stopping()


# --------------------------------------------------------------------------- abstract namespace


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"rustvpn-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        try:
            supported = daemon.notify("STATUS=probe")
        except OSError:
            supported = False
        if not supported:
            pytest.skip("this libsystemd's sd_notify does not support abstract '@' sockets")
        listener = Listener(sock, "@" + name)
        assert listener.next() == "STATUS=probe"
        Notifier().ready("waiting for peer")
        assert fields(listener.next()) == {"READY": "1", "STATUS": "waiting for peer"}
