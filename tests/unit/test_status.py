"""rustvpn.status, status_server, status_client and status_format over real AF_UNIX sockets in tmp_path.

The daemon side is a real StatusServer, the client side the real query()/status_command(). A
small stand-in session object feeds snapshot(): the session is input data here, not the thing
under test. Tests that need a second user (fork, then drop to 65534) run only as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from rustvpn import status_server
from rustvpn.config_exchange import ExchangeParams
from rustvpn.errors import SystemSetupError
from rustvpn.path_stats import PathFigures
from rustvpn.settings import TunnelConfig, build_config
from rustvpn.stats import Counters, TunnelState
from rustvpn.status import STATUS_VERSION, StatusUnavailable, default_socket_path, snapshot
from rustvpn.status_client import list_instances, query
from rustvpn.status_format import format_status, human_bytes, human_duration, status_command
from rustvpn.status_server import StatusServer

T = TypeVar("T")

TOKEN = "tok" * 10
TEST_TIMEOUT = 15.0
NOBODY = 65534


def run(coro: Coroutine[Any, Any, T], timeout: float = TEST_TIMEOUT) -> T:
    async def main() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# Inputs: a real config and state, a stand-in session


class FakeChannel:
    def __init__(self, counters: Counters) -> None:
        self.counters = counters


class FakeSession:
    def __init__(self) -> None:
        self.peer = "203.0.113.7:50432"
        self.peer_cn = "rustvpn-client"
        self.params = ExchangeParams("peer-build-7", 3, 1400, TOKEN)
        self.channels = [
            FakeChannel(Counters(packets_out=10, bytes_out=15_000, packets_in=20, bytes_in=2_048, dropped=1)),
            FakeChannel(Counters(packets_out=11, bytes_out=16_000, packets_in=0, bytes_in=0)),
            FakeChannel(Counters()),
        ]
        self.path: tuple[PathFigures | None, list[PathFigures | None]] = (None, [None, None, None])

    def path_report(self) -> tuple[PathFigures | None, list[PathFigures | None]]:
        return self.path


# The DATAGRAM-frame channel's counters: every field distinct, so a field put in the wrong place shows.
DATAGRAM_COUNTERS = {"packets_out": 31, "bytes_out": 40_960, "packets_in": 47, "bytes_in": 65_536, "dropped": 5}


class FakeQuicSession(FakeSession):
    """A QUIC session: it has a ``datagram_channel``, None unless both peers agreed to DATAGRAM frames."""

    def __init__(self, datagrams: bool = True) -> None:
        super().__init__()
        self.datagram_channel = FakeChannel(Counters(**DATAGRAM_COUNTERS)) if datagrams else None


def server_config(**values: Any) -> TunnelConfig:
    base = {"device": "rv-test", "mtu": 1400, "stream_count": 3, "ipv4": "10.8.0.1/24", "routes": ["192.168.50.0/24"]}
    return build_config("quic", "server", {**base, **values}, lambda k: k, check_files=False)


def connected_state() -> TunnelState:
    now = time.monotonic()
    return TunnelState(
        state="connected",
        peer="203.0.113.7:50432",
        peer_cn="rustvpn-client",
        streams=3,
        reconnects=3,
        sessions=4,
        last_error="peer closed",
        started_at=now - 7322,
        session_started_at=now - 192,
        totals=Counters(packets_out=1200, bytes_out=3_565_158, packets_in=900, bytes_in=1_268_777, dropped=2),
    )


def office_status() -> dict[str, Any]:
    return snapshot("office", server_config(), connected_state(), FakeSession())  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def serving(
    path: Path, provider: Callable[[], dict[str, Any]] = office_status, **kwargs: Any
) -> AsyncIterator[StatusServer]:
    server = StatusServer(str(path), provider, **kwargs)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def exchange(path: Path, data: bytes, *, eof: bool = False) -> dict[str, Any]:
    """Send raw bytes, return the one JSON reply line, and check the server then hangs up."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(data)
        if eof:
            writer.write_eof()
        line = await reader.readline()
        assert await reader.read() == b""
    finally:
        writer.close()
    reply: dict[str, Any] = json.loads(line)
    return reply


def stale_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()  # the file stays, nobody listens: what a killed daemon leaves behind


# ---------------------------------------------------------------------------------------------
# snapshot


def test_snapshot_fields() -> None:
    snap = office_status()
    assert json.loads(json.dumps(snap)) == snap
    assert snap["version"] == STATUS_VERSION == 1
    assert snap["instance"] == "office"
    assert snap["pid"] == os.getpid()
    assert (snap["transport"], snap["role"], snap["state"]) == ("quic", "server", "connected")
    assert (snap["device"], snap["mtu"], snap["stream_count"]) == ("rv-test", 1400, 3)
    assert snap["addresses"] == ["10.8.0.1/24"]
    assert snap["routes"] == ["10.8.0.0/24", "192.168.50.0/24"]
    assert snap["peer"] == {"address": "203.0.113.7:50432", "cn": "rustvpn-client", "build_id": "peer-build-7"}
    assert 7322 <= snap["uptime_s"] < 7330
    assert 192 <= snap["session_age_s"] < 200
    assert (snap["sessions"], snap["reconnects"], snap["last_error"]) == (4, 3, "peer closed")
    assert snap["totals"] == {
        "packets_out": 1200,
        "bytes_out": 3_565_158,
        "packets_in": 900,
        "bytes_in": 1_268_777,
        "dropped": 2,
    }
    assert [s["index"] for s in snap["streams"]] == [0, 1, 2]
    assert snap["streams"][0] == {
        "index": 0,
        "packets_out": 10,
        "bytes_out": 15_000,
        "packets_in": 20,
        "bytes_in": 2_048,
        "dropped": 1,
        "path": None,
    }
    assert snap["path"] is None
    assert snap["listen"] == {"quic": "0.0.0.0:1105"}
    assert snap["server"] is None
    assert snap["build_id"] == server_config().build_id


def test_snapshot_carries_the_path_as_a_whole_and_per_stream() -> None:
    session = FakeSession()
    whole = PathFigures(rtt_ms=2.5, rtt_var_ms=0.5, min_rtt_ms=2.0, cwnd_bytes=9000, in_flight_bytes=0,
                        lost_packets=4, congestion="cubic", connections=3)  # fmt: skip
    own = PathFigures(rtt_ms=3.0, min_rtt_ms=2.0, cwnd_bytes=3000, in_flight_bytes=0, lost_packets=1)
    session.path = (whole, [own, None, own])  # (None: a connection closed meanwhile)
    snap = snapshot("office", server_config(), connected_state(), session)  # type: ignore[arg-type]
    assert json.loads(json.dumps(snap)) == snap
    assert snap["path"] == {"rtt_ms": 2.5, "rtt_var_ms": 0.5, "min_rtt_ms": 2.0, "cwnd_bytes": 9000,
                            "in_flight_bytes": 0, "lost_packets": 4, "congestion": "cubic",
                            "connections": 3}  # fmt: skip
    assert [s["path"] for s in snap["streams"]] == [own.as_dict(), None, own.as_dict()]
    assert snap["streams"][0]["path"]["rtt_var_ms"] is None


def test_snapshot_never_contains_secrets() -> None:
    config = server_config(cert="/etc/rustvpn/server.pem", key="/etc/rustvpn/secret-server.key")
    text = json.dumps(snapshot("office", config, connected_state(), FakeSession()))  # type: ignore[arg-type]
    assert TOKEN not in text
    assert "token" not in text
    assert "secret-server.key" not in text


def test_snapshot_without_session_tcp_client() -> None:
    values = {"server": "fd00::1", "mtu": 1300, "stream_count": 2}
    config = build_config("tcp", "client", values, lambda k: k, check_files=False)
    state = TunnelState(state="reconnecting", reconnects=2, last_error="connection refused")
    snap = snapshot("laptop", config, state, None)
    assert snap["peer"] is None
    assert snap["session_age_s"] is None
    assert snap["streams"] == []
    assert (snap["mtu"], snap["stream_count"]) == (1300, 2)
    assert snap["listen"] is None
    assert snap["server"] == {"control": "[fd00::1]:1107", "data": "[fd00::1]:1108"}
    assert snap["addresses"] == [] and snap["routes"] == []
    assert snap["state"] == "reconnecting"


def test_snapshot_datagrams_none_without_datagram_channel() -> None:
    config, state = server_config(), connected_state()
    assert snapshot("office", config, TunnelState(state="listening"), None)["datagrams"] is None
    assert office_status()["datagrams"] is None  # FakeSession has no datagram_channel, as a TCP session
    no_dgram = snapshot("office", config, state, FakeQuicSession(datagrams=False))  # type: ignore[arg-type]
    assert no_dgram["datagrams"] is None
    assert len(no_dgram["streams"]) == 3


def test_snapshot_datagram_channel_counters() -> None:
    snap = snapshot("office", server_config(), connected_state(), FakeQuicSession())  # type: ignore[arg-type]
    assert json.loads(json.dumps(snap)) == snap
    assert snap["datagrams"] == DATAGRAM_COUNTERS
    assert snap["datagrams"] is not DATAGRAM_COUNTERS
    # The DATAGRAM path is a channel of its own, not one more stream.
    assert [s["index"] for s in snap["streams"]] == [0, 1, 2]
    assert snap["streams"][0]["packets_out"] == 10
    assert TOKEN not in json.dumps(snap)


def test_datagrams_over_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "office" / "status.sock"

    def provider() -> dict[str, Any]:
        return snapshot("office", server_config(), connected_state(), FakeQuicSession())  # type: ignore[arg-type]

    async def main() -> None:
        async with serving(path, provider):
            got = await query(str(path))
            assert got["datagrams"] == DATAGRAM_COUNTERS
            assert got["version"] == STATUS_VERSION == 1  # an added key keeps the protocol version

    run(main())


def test_default_socket_path() -> None:
    assert default_socket_path("office") == "/run/rustvpn/office/status.sock"


# ---------------------------------------------------------------------------------------------
# Server and client over real sockets


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "office" / "status.sock"

    async def main() -> None:
        async with serving(path):
            got = await query(str(path))
            assert got["version"] == STATUS_VERSION
            assert got["instance"] == "office"
            assert got["peer"]["cn"] == "rustvpn-client"
            assert got["totals"]["bytes_in"] == 1_268_777
            raw = await exchange(path, b'{"version": 1, "command": "status"}\n')
            assert raw["version"] == STATUS_VERSION and raw["ok"] is True
            assert raw["status"]["instance"] == "office"
            bare = await exchange(path, b"status\n")
            assert bare["ok"] is True
            # A client that half-closes instead of ending its line still gets an answer.
            assert (await exchange(path, b"status", eof=True))["ok"] is True
        assert not path.exists(), "close() removes the socket"

    run(main())


def test_socket_and_directory_modes(tmp_path: Path) -> None:
    path = tmp_path / "office" / "status.sock"

    async def main() -> None:
        async with serving(path):
            info = os.stat(path)
            assert stat.S_ISSOCK(info.st_mode)
            assert stat.S_IMODE(info.st_mode) == 0o660
            assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o750

    run(main())


def test_oversized_request_refused_and_server_keeps_serving(tmp_path: Path) -> None:
    path = tmp_path / "office" / "status.sock"

    async def main() -> None:
        async with serving(path):
            for data in (b"x" * 5000 + b"\n", b"y" * 5000):
                reply = await exchange(path, data)
                assert reply["ok"] is False and "too large" in reply["error"]
            assert (await query(str(path)))["instance"] == "office"

    run(main())


def test_silent_client_dropped_after_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_server, "REQUEST_TIMEOUT", 0.3)
    path = tmp_path / "office" / "status.sock"

    async def main() -> None:
        async with serving(path):
            reader, writer = await asyncio.open_unix_connection(str(path))
            started = time.monotonic()
            # Others are served while the silent client waits out its timeout.
            assert (await query(str(path)))["instance"] == "office"
            line = await reader.readline()
            assert await reader.read() == b""
            writer.close()
            assert 0.2 <= time.monotonic() - started < 3.0
            assert json.loads(line) == {"version": 1, "ok": False, "error": "request timed out"}
            assert (await query(str(path)))["instance"] == "office"

    run(main())


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\xff\xfe\xfd\n", "not UTF-8"),
        (b"{not json\n", "not valid JSON"),
        (b'["status"]\n', "unknown command"),
        (b"hello\n", "unknown command"),
        (b'{"command": "keys"}\n', "unknown command"),
        (b"[1]\n", "unknown command"),
        (b'{"version": 2, "command": "status"}\n', "unsupported status protocol version"),
        (b'{"version": true, "command": "status"}\n', "unsupported status protocol version"),
        (b"[" * 3000 + b"\n", "unknown command"),
        (b"{" * 3000 + b"\n", "not valid JSON"),
        (b"\n", "unknown command"),
    ],
)
def test_garbage_gets_error_reply(tmp_path: Path, data: bytes, error: str) -> None:
    path = tmp_path / "office" / "status.sock"

    async def main() -> None:
        async with serving(path):
            reply = await exchange(path, data)
            assert reply["version"] == STATUS_VERSION
            assert reply["ok"] is False and error in reply["error"]
            assert "status" not in reply
            assert (await query(str(path)))["instance"] == "office"

    run(main())


def test_empty_request_gets_error_reply(tmp_path: Path) -> None:
    path = tmp_path / "office" / "status.sock"

    async def main() -> None:
        async with serving(path):
            reply = await exchange(path, b"", eof=True)
            assert reply["ok"] is False and reply["error"] == "empty request"

    run(main())


def test_permission_refused_by_peer_credentials(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Allow only a uid and gid we do not have: our own connection then fails the SO_PEERCRED check.
    ours = {os.getegid(), *os.getgroups()}
    other_gid = next(g for g in range(54321, 60000) if g not in ours)
    other_uid = next(u for u in range(54321, 60000) if u != os.geteuid())
    path = tmp_path / "office" / "status.sock"

    async def main() -> None:
        async with serving(path, allowed_uids={other_uid}, allowed_gids={other_gid}):
            with pytest.raises(StatusUnavailable, match="permission denied") as info:
                await query(str(path))
            assert "run as root or a member of the daemon's group" in str(info.value)
            assert info.value.exit_code == 4 and not info.value.not_running
            reply = await exchange(path, b"status\n")
            assert reply == {"version": 1, "ok": False, "error": "permission denied"}

    with caplog.at_level(logging.WARNING, logger="rustvpn.status"):
        run(main())
    refusals = [r for r in caplog.records if r.name == "rustvpn.status" and "refused" in r.getMessage()]
    assert refusals and all(r.levelno == logging.WARNING for r in refusals)
    assert f"uid {os.geteuid()}" in refusals[0].getMessage()
    assert f"pid {os.getpid()}" in refusals[0].getMessage()


def test_provider_failure_is_an_error_reply(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def flaky() -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return office_status()

    path = tmp_path / "office" / "status.sock"

    async def main() -> None:
        async with serving(path, flaky):
            with pytest.raises(StatusUnavailable, match="internal error"):
                await query(str(path))
            assert (await query(str(path)))["instance"] == "office"

    with caplog.at_level(logging.ERROR, logger="rustvpn.status"):
        run(main())


def test_too_many_clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_server, "MAX_CLIENTS", 1)
    path = tmp_path / "office" / "status.sock"

    async def main() -> None:
        async with serving(path) as server:
            _, writer = await asyncio.open_unix_connection(str(path))
            while not server._clients:  # the silent client holds the only slot
                await asyncio.sleep(0.01)
            with pytest.raises(StatusUnavailable, match="busy"):
                await query(str(path))
            writer.close()
            while server._clients:
                await asyncio.sleep(0.01)
            assert (await query(str(path)))["instance"] == "office"

    run(main())


def test_close_with_clients_connected(tmp_path: Path) -> None:
    path = tmp_path / "office" / "status.sock"

    async def main() -> None:
        server = StatusServer(str(path), office_status)
        await server.start()
        reader, writer = await asyncio.open_unix_connection(str(path))
        while not server._clients:
            await asyncio.sleep(0.01)
        await server.close()
        assert await reader.read() == b""
        writer.close()
        assert not path.exists()
        await server.close()  # idempotent

    run(main())


def test_start_replaces_stale_socket_refuses_live_one(tmp_path: Path) -> None:
    path = tmp_path / "office" / "status.sock"
    stale_socket(path)

    async def main() -> None:
        async with serving(path):
            assert (await query(str(path)))["instance"] == "office"
            second = StatusServer(str(path), office_status)
            with pytest.raises(SystemSetupError, match="in use"):
                await second.start()
            assert (await query(str(path)))["instance"] == "office", "the live socket was left alone"

    run(main())


def test_start_refuses_non_socket(tmp_path: Path) -> None:
    path = tmp_path / "office" / "status.sock"
    path.parent.mkdir()
    path.write_text("not a socket")

    async def main() -> None:
        with pytest.raises(SystemSetupError, match="not a socket"):
            await StatusServer(str(path), office_status).start()

    run(main())
    assert path.read_text() == "not a socket"


def test_query_missing_and_stale(tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "status.sock"
    stale = tmp_path / "crashed" / "status.sock"
    stale_socket(stale)

    async def main() -> None:
        with pytest.raises(StatusUnavailable) as info:
            await query(str(missing))
        assert str(info.value) == f"rustvpn instance gone is not running (no {missing})"
        assert info.value.not_running and info.value.exit_code == 3
        with pytest.raises(StatusUnavailable) as info:
            await query(str(stale))
        assert str(info.value) == f"rustvpn instance crashed is not running (stale socket {stale})"
        assert info.value.not_running and info.value.exit_code == 3

    run(main())


def test_query_timeout_and_bad_reply(tmp_path: Path) -> None:
    mute = tmp_path / "mute" / "status.sock"
    liar = tmp_path / "liar" / "status.sock"
    for p in (mute, liar):
        p.parent.mkdir()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"<html>\n")
        writer.close()

    async def main() -> None:
        servers = [
            await asyncio.start_unix_server(never_answer, str(mute)),
            await asyncio.start_unix_server(garbage, str(liar)),
        ]
        try:
            with pytest.raises(StatusUnavailable, match=r"did not answer within 0\.3 s"):
                await query(str(mute), timeout=0.3)
            with pytest.raises(StatusUnavailable, match="bad status reply"):
                await query(str(liar))
        finally:
            for s in servers:
                s.close()

    run(main())


def test_list_instances(tmp_path: Path) -> None:
    root = tmp_path / "run"
    assert list_instances(str(root)) == []
    stale_socket(root / "beta" / "status.sock")
    stale_socket(root / "alpha" / "status.sock")
    (root / "empty").mkdir()
    (root / "file").mkdir()
    (root / "file" / "status.sock").write_text("")
    (root / "stray").write_text("")
    assert list_instances(str(root)) == ["alpha", "beta"]


# ---------------------------------------------------------------------------------------------
# Another user (root only): fork, drop privileges in the child, query from there


def _query_in_child(path: str, groups: list[int], write_fd: int) -> None:
    message = "crash"
    try:
        os.setgroups(groups)
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        try:
            asyncio.run(query(path, timeout=5.0))
            message = "ok"
        except StatusUnavailable as exc:
            message = f"error: {exc}"
    except BaseException as exc:
        message = f"crash: {exc!r}"
    finally:
        os.write(write_fd, message.encode())
        os._exit(0)


async def query_as_nobody(path: Path, groups: list[int]) -> str:
    """query() from a forked child running as uid/gid 65534; the server keeps running meanwhile."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _query_in_child(str(path), groups, write_fd)
    os.close(write_fd)
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            await asyncio.sleep(0.02)
        return os.read(read_fd, 65536).decode()
    finally:
        os.close(read_fd)


@contextlib.contextmanager
def shared_dir() -> Any:
    # tmp_path lives under a 0700 directory nobody cannot enter; this one it can.
    top = tempfile.mkdtemp(prefix="rustvpn-status-")
    os.chmod(top, 0o755)
    try:
        yield Path(top)
    finally:
        shutil.rmtree(top, ignore_errors=True)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child as another user")


@needs_root
def test_other_user_refused_by_peer_credentials(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        with shared_dir() as top:
            path = top / "office" / "status.sock"
            async with serving(path):
                # Open the file system wide so that only the SO_PEERCRED check stands in the way.
                os.chmod(path.parent, 0o755)
                os.chmod(path, 0o666)
                result = await query_as_nobody(path, [])
                assert result.startswith("error: permission denied on"), result
                assert (await query(str(path)))["instance"] == "office"

    with caplog.at_level(logging.WARNING, logger="rustvpn.status"):
        run(main())
    assert any(f"uid {NOBODY} gid {NOBODY}" in r.getMessage() for r in caplog.records)


@needs_root
def test_other_user_refused_by_file_modes(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        with shared_dir() as top:
            path = top / "office" / "status.sock"
            async with serving(path):
                result = await query_as_nobody(path, [])
                assert result.startswith("error: permission denied on"), result

    with caplog.at_level(logging.WARNING, logger="rustvpn.status"):
        run(main())
    assert not any("refused" in r.getMessage() for r in caplog.records), "the socket mode alone kept it out"


@needs_root
def test_member_of_daemon_group_by_supplementary_group() -> None:
    async def main() -> None:
        with shared_dir() as top:
            path = top / "office" / "status.sock"
            async with serving(path):
                # Primary gid 65534, the daemon's gid only as a supplementary group: as `usermod -aG` does.
                assert await query_as_nobody(path, [os.getegid()]) == "ok"

    run(main())


# ---------------------------------------------------------------------------------------------
# For people: format_status


def test_human_units() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1024) == "1.00 KiB"
    assert human_bytes(1_268_777) == "1.21 MiB"
    assert human_bytes(5 * 1024**3) == "5.00 GiB"
    assert human_duration(0) == "0s"
    assert human_duration(59.9) == "59s"
    assert human_duration(192) == "3m 12s"
    assert human_duration(3600) == "1h 0m"
    assert human_duration(7322) == "2h 2m"
    assert human_duration(90061) == "1d 1h"


def test_format_status_connected() -> None:
    text = format_status(office_status())
    lines = text.splitlines()
    assert lines[0] == "rustvpn@office: connected (quic server)"
    for expected in (
        "peer: 203.0.113.7:50432, CN rustvpn-client",
        "listen: 0.0.0.0:1105 (quic)",
        "device: rv-test, mtu 1400, 3 streams",
        "addresses: 10.8.0.1/24",
        "routes: 10.8.0.0/24, 192.168.50.0/24",
        "uptime: 2h 2m",
        "session age: 3m 12s",
        "sessions: 4, 3 reconnects",
        "last error: peer closed",
        "received: 1.21 MiB, 900 packets",
        "sent: 3.40 MiB, 1,200 packets",
        "dropped: 2 packets",
    ):
        assert expected in text, expected
    # The labels are right-aligned on their colons.
    colons = {line.index(":") for line in lines[1:] if ": " in line and not line.startswith("rustvpn@")}
    assert len(colons) == 1
    one = office_status()
    one["totals"] = {**one["totals"], "dropped": 1, "packets_in": 1}
    assert "dropped: 1 packet\n" in format_status(one) + "\n" and ", 1 packet\n" in format_status(one)
    table = lines[lines.index("") + 1 :]
    assert table[0].split() == ["stream", "received", "packets", "sent", "packets", "dropped"]
    assert table[1].split() == ["0", "2.00", "KiB", "20", "14.65", "KiB", "10", "1"]
    assert len(table) == 4
    assert TOKEN not in text


def test_format_status_listening_and_sparse() -> None:
    config = server_config()
    text = format_status(snapshot("office", config, TunnelState(state="listening"), None))
    assert text.splitlines()[0] == "rustvpn@office: listening (quic server)"
    assert "peer: none" in text and "session age: -" in text
    assert "last error" not in text and "stream " not in text
    # A status from another release with fields missing or odd still prints.
    odd = format_status({"instance": "x", "state": "connected", "totals": None, "streams": [None], "mtu": "big"})
    assert odd.startswith("rustvpn@x: connected")


def test_format_status_datagram_row() -> None:
    snap = snapshot("office", server_config(), connected_state(), FakeQuicSession())  # type: ignore[arg-type]
    lines = format_status(snap).splitlines()
    table = lines[lines.index("") + 1 :]
    assert table[0].split() == ["stream", "received", "packets", "sent", "packets", "dropped"]
    assert [row.split()[0] for row in table[1:]] == ["0", "1", "2", "dgram"]
    # received 64 KiB in 47 packets, sent 40 KiB in 31, 5 dropped: each value in its own column.
    assert table[-1].split() == ["dgram", "64.00", "KiB", "47", "40.00", "KiB", "31", "5"]
    assert len({len(row) for row in table}) == 1, "the row is aligned with the stream rows"


def test_format_status_without_datagrams_has_no_row() -> None:
    no_dgram = snapshot("office", server_config(), connected_state(), FakeQuicSession(datagrams=False))  # type: ignore[arg-type]
    for status in (no_dgram, office_status()):
        assert status["datagrams"] is None
        text = format_status(status)
        assert "dgram" not in text
        assert len(text.splitlines()[text.splitlines().index("") + 1 :]) == 4
    # A daemon of an older release sends no "datagrams" key at all.
    old = {k: v for k, v in office_status().items() if k != "datagrams"}
    assert "dgram" not in format_status(old)


def test_format_status_datagram_row_odd_values() -> None:
    # Odd values show as 0, as elsewhere; a non-dict is no row; the row shows without any streams.
    odd = format_status({"instance": "x", "streams": [], "datagrams": {"bytes_in": "x", "packets_in": True}})
    table = odd.splitlines()[odd.splitlines().index("") + 1 :]
    assert table[-1].split() == ["dgram", "0", "B", "0", "0", "B", "0", "0"]
    assert len(table) == 2
    for value in (None, [1, 2], "datagrams", 7):
        text = format_status({"instance": "x", "streams": None, "datagrams": value})
        assert "dgram" not in text and "stream " not in text


# ---------------------------------------------------------------------------------------------
# rustvpn status [NAME...] [--json]


def test_status_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "run"

    def provider(name: str) -> Callable[[], dict[str, Any]]:
        return lambda: snapshot(name, server_config(), connected_state(), FakeSession())  # type: ignore[arg-type]

    stale_socket(root / "gamma" / "status.sock")

    async def main() -> None:
        async with (
            serving(root / "alpha" / "status.sock", provider("alpha")),
            serving(root / "beta" / "status.sock", provider("beta")),
        ):

            def call(names: list[str], as_json: bool) -> tuple[int, str, str]:
                code = status_command(names, as_json, root=str(root))
                out, err = capsys.readouterr()
                return code, out, err

            # One named instance, --json: its status object itself.
            code, out, err = await asyncio.to_thread(call, ["alpha"], True)
            assert (code, err) == (0, "")
            doc = json.loads(out)
            assert doc["instance"] == "alpha" and doc["version"] == STATUS_VERSION
            assert TOKEN not in out

            # All instances, --json: one document; the stale one is an error entry and exit 3.
            code, out, err = await asyncio.to_thread(call, [], True)
            assert code == 3
            doc = json.loads(out)
            assert sorted(doc["instances"]) == ["alpha", "beta", "gamma"]
            assert doc["instances"]["beta"]["instance"] == "beta"
            assert "not running (stale socket" in doc["instances"]["gamma"]["error"]
            assert err.strip() == f"rustvpn instance gamma is not running (stale socket {root}/gamma/status.sock)"

            # For people: blocks separated by a blank line.
            code, out, err = await asyncio.to_thread(call, ["alpha", "beta"], False)
            assert (code, err) == (0, "")
            assert "rustvpn@alpha: connected (quic server)" in out
            assert "\n\nrustvpn@beta: connected (quic server)" in out

            # A named instance that does not exist.
            code, out, err = await asyncio.to_thread(call, ["nope"], True)
            assert (code, out) == (3, "")
            assert err.strip() == f"rustvpn instance nope is not running (no {root}/nope/status.sock)"
            code, out, err = await asyncio.to_thread(call, ["../alpha"], False)
            assert code == 3 and "not a valid instance name" in err

    run(main())


def test_status_command_no_instances(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert status_command([], False, root=str(tmp_path / "nothing")) == 3
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == "no rustvpn instances running"
    assert status_command([], True, root=str(tmp_path)) == 3
