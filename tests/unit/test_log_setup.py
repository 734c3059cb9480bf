"""Unit tests for rustvpn.log_setup: levels, RUST_LOG, journal detection, context fields, filtering."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest

from rustvpn import events, log_setup
from rustvpn.log_setup import CONTEXT, level_from_rust_log, resolve_level, setup_logging, stderr_is_journal

try:
    from systemd.journal import JournalHandler
except ImportError:  # pragma: no cover - systemd-python is a dependency, but stay honest
    JournalHandler = None

needs_journal_handler = pytest.mark.skipif(JournalHandler is None, reason="systemd.journal not importable")


def _pytest_owned(handler: logging.Handler) -> bool:
    return type(handler).__module__.startswith("_pytest")


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Put the root logger and CONTEXT back as they were; no journal or RUST_LOG from outside."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("RUST_LOG", raising=False)
    root = logging.getLogger()
    level = root.level
    # pytest adds and removes its own capture handlers around each phase; leave those to it.
    foreign = [h for h in root.handlers if not _pytest_owned(h)]
    context = dataclasses.replace(CONTEXT)
    yield
    for handler in root.handlers:
        if handler not in foreign and not _pytest_owned(handler):
            handler.close()
    root.handlers[:] = [h for h in root.handlers if _pytest_owned(h)] + foreign
    root.setLevel(level)
    for field in dataclasses.fields(CONTEXT):
        setattr(CONTEXT, field.name, getattr(context, field.name))


def _detach_and_close(stream: TextIO) -> None:
    """Drop the root handlers that write to ``stream`` (setup_logging made them), then close it."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if isinstance(handler, logging.StreamHandler) and handler.stream is stream:
            root.removeHandler(handler)
    stream.close()


class PipeStderr:
    """A plain pipe to stand in for stderr; read() returns what was written so far."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._monkeypatch = monkeypatch
        self._read_fd, write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self.stream = os.fdopen(write_fd, "w", encoding="utf-8")

    def install(self) -> None:
        # pytest's capture puts its own sys.stderr back at the start of each test phase, so this
        # must run in the test itself, not in a fixture's set-up.
        self._monkeypatch.setattr(sys, "stderr", self.stream)

    def read(self) -> str:
        self.stream.flush()
        chunks = []
        try:
            while data := os.read(self._read_fd, 65536):
                chunks.append(data)
        except BlockingIOError:
            pass
        return b"".join(chunks).decode()

    def close(self) -> None:
        _detach_and_close(self.stream)
        os.close(self._read_fd)


@pytest.fixture
def pipe_stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[PipeStderr]:
    pipe = PipeStderr(monkeypatch)
    yield pipe
    pipe.close()


class FileStderr:
    """A regular file to stand in for stderr; ``ident`` is its real ``st_dev:st_ino``."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self._monkeypatch = monkeypatch
        self.stream = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by the fixture
        st = os.fstat(self.stream.fileno())
        self.ident = f"{st.st_dev}:{st.st_ino}"

    def install(self) -> str:
        """Make it sys.stderr (in the test itself, see PipeStderr.install); returns ``ident``."""
        self._monkeypatch.setattr(sys, "stderr", self.stream)
        return self.ident

    def close(self) -> None:
        _detach_and_close(self.stream)


@pytest.fixture
def file_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileStderr]:
    stderr = FileStderr(tmp_path / "stderr.txt", monkeypatch)
    yield stderr
    stderr.close()


def make_record(name: str = "rustvpn.session", level: int = logging.INFO, msg: str = "hello") -> logging.LogRecord:
    return logging.getLogger(name).makeRecord(name, level, __file__, 1, msg, (), None)


# --------------------------------------------------------------------------- levels


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("debug", "debug"),
        ("INFO", "info"),
        ("rust_vpn=trace", "trace"),
        ("warn,rust_vpn=debug", "debug"),  # the last level named wins
        ("rust_vpn=debug,warn", "warn"),
        ("rust_vpn::quic=error", "error"),
        ("warning", "warning"),
        ("rust_vpn=debug,garbage", "debug"),
        (" debug , rust_vpn = info ", "info"),
        ("garbage", None),
        ("rust_vpn=loud", None),
        (",,,", None),
        ("", None),
        (None, None),
    ],
)
def test_level_from_rust_log(value: str | None, expected: str | None) -> None:
    assert level_from_rust_log(value) == expected


def test_resolve_level_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_level(None) == "info"
    monkeypatch.setenv("RUST_LOG", "debug")
    assert resolve_level(None) == "debug"
    assert resolve_level("warn") == "warn"  # the flag beats RUST_LOG
    assert resolve_level("ERROR") == "error"
    monkeypatch.setenv("RUST_LOG", "warn,rust_vpn=trace")
    assert resolve_level(None) == "trace"
    monkeypatch.setenv("RUST_LOG", "nonsense")
    assert resolve_level(None) == "info"
    monkeypatch.setenv("RUST_LOG", "")
    assert resolve_level(None) == "info"


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("error", logging.ERROR),
        ("warn", logging.WARNING),
        ("warning", logging.WARNING),
        ("info", logging.INFO),
        ("debug", logging.DEBUG),
        ("trace", logging.DEBUG),
        ("bogus", logging.INFO),
    ],
)
def test_setup_logging_sets_root_level(pipe_stderr: PipeStderr, level: str, expected: int) -> None:
    pipe_stderr.install()
    setup_logging(level)
    assert logging.getLogger().level == expected


# --------------------------------------------------------------------------- plain stderr


def test_plain_pipe_gets_a_stream_handler_with_instance_prefix(pipe_stderr: PipeStderr) -> None:
    pipe_stderr.install()
    setup_logging("info", instance="wan", transport="quic")
    root = logging.getLogger()
    assert len(root.handlers) == 1
    handler = root.handlers[0]
    assert type(handler) is logging.StreamHandler
    assert handler.stream is sys.stderr
    logging.getLogger("rustvpn.session").info("session up with %s", "198.18.0.1")
    lines = pipe_stderr.read().splitlines()
    assert len(lines) == 1
    assert "INFO" in lines[0]
    assert lines[0].endswith("[wan] rustvpn.session: session up with 198.18.0.1")


def test_no_prefix_without_instance(pipe_stderr: PipeStderr) -> None:
    pipe_stderr.install()
    setup_logging("info")
    logging.getLogger("rustvpn").warning("plain")
    (line,) = pipe_stderr.read().splitlines()
    assert line.endswith(" rustvpn: plain")
    assert "[" not in line


def test_setup_logging_twice_keeps_one_handler(pipe_stderr: PipeStderr) -> None:
    pipe_stderr.install()
    setup_logging("info", instance="a")
    setup_logging("debug", instance="b")
    assert len(logging.getLogger().handlers) == 1
    logging.getLogger("rustvpn.x").debug("once")
    (line,) = pipe_stderr.read().splitlines()
    assert "[b] rustvpn.x: once" in line


def test_journal_stream_of_another_file_keeps_plain_stderr(
    pipe_stderr: PipeStderr, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe_stderr.install()
    other = tmp_path / "other"
    other.write_text("")
    st = os.stat(other)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    setup_logging("info", instance="wan")
    assert type(logging.getLogger().handlers[0]) is logging.StreamHandler


# --------------------------------------------------------------------------- filtering


def test_library_chatter_is_filtered(pipe_stderr: PipeStderr) -> None:
    pipe_stderr.install()
    setup_logging("debug", instance="t", transport="tcp")
    logging.getLogger("pyroute2.netlink.core").debug("lib-dbg-1")
    logging.getLogger("pyroute2.netlink.core").info("lib-inf-2")
    logging.getLogger("pyroute2").warning("lib-wrn-3")
    logging.getLogger("quic").warning("quic-wrn-4")
    logging.getLogger("quic").error("quic-err-5")
    logging.getLogger("asyncio").info("aio-inf-6")
    logging.getLogger("rustvpnx").info("nsx-inf-7")  # not our namespace, only a shared prefix
    logging.getLogger("rustvpn.x").info("ours-inf-8")
    logging.getLogger("rustvpn.x").debug("ours-dbg-9")
    logging.getLogger("rustvpn").debug("top-dbg-10")
    out = pipe_stderr.read()
    for dropped in ("lib-dbg-1", "lib-inf-2", "quic-wrn-4", "aio-inf-6", "nsx-inf-7"):
        assert dropped not in out
    for kept in ("lib-wrn-3", "quic-err-5", "ours-inf-8", "ours-dbg-9", "top-dbg-10"):
        assert kept in out


def test_our_debug_follows_the_level(pipe_stderr: PipeStderr) -> None:
    pipe_stderr.install()
    setup_logging("info")
    logging.getLogger("rustvpn.x").debug("ours-dbg-9")
    logging.getLogger("rustvpn.x").info("ours-inf-8")
    out = pipe_stderr.read()
    assert "ours-dbg-9" not in out
    assert "ours-inf-8" in out


@pytest.mark.parametrize(
    ("name", "level", "passes"),
    [
        ("rustvpn", logging.DEBUG, True),
        ("rustvpn.app", logging.DEBUG, True),
        ("rustvpnx", logging.ERROR, True),
        ("rustvpnx", logging.INFO, False),
        ("pyroute2.netlink.core", logging.DEBUG, False),
        ("pyroute2.netlink.core", logging.INFO, False),
        ("pyroute2", logging.WARNING, True),
        ("pyroute2.ndb", logging.CRITICAL, True),
        ("quic", logging.WARNING, False),
        ("quic", logging.ERROR, True),
        ("asyncio", logging.WARNING, True),
        ("root", logging.INFO, False),
    ],
)
def test_stamp_filter_floors(name: str, level: int, passes: bool) -> None:
    assert log_setup._Stamp().filter(make_record(name, level)) is passes


def test_stamp_adds_instance_and_transport_but_no_peer_outside_a_session() -> None:
    CONTEXT.instance, CONTEXT.transport, CONTEXT.peer, CONTEXT.session = "wan", "quic", "", ""
    record = make_record()
    assert log_setup._Stamp().filter(record)
    assert record.RUSTVPN_INSTANCE == "wan"
    assert record.RUSTVPN_TRANSPORT == "quic"
    assert not hasattr(record, "RUSTVPN_PEER")
    assert not hasattr(record, "RUSTVPN_SESSION")


def test_stamp_adds_peer_and_session_during_a_session() -> None:
    CONTEXT.instance, CONTEXT.transport = "wan", "tcp"
    CONTEXT.peer, CONTEXT.session = "198.18.0.1:40112", "3f2a"
    record = make_record()
    log_setup._Stamp().filter(record)
    assert (record.RUSTVPN_PEER, record.RUSTVPN_SESSION) == ("198.18.0.1:40112", "3f2a")
    # Stamped on library records that are dropped as well as on ours.
    library = make_record("pyroute2", logging.DEBUG)
    assert not log_setup._Stamp().filter(library)
    assert library.RUSTVPN_INSTANCE == "wan"
    # The session ends: new records carry no peer.
    CONTEXT.peer, CONTEXT.session = "", ""
    later = make_record()
    log_setup._Stamp().filter(later)
    assert not hasattr(later, "RUSTVPN_PEER")


def test_setup_logging_sets_context_and_its_handler_stamps(pipe_stderr: PipeStderr) -> None:
    pipe_stderr.install()
    setup_logging("info", instance="lab", transport="tcp")
    assert (CONTEXT.instance, CONTEXT.transport) == ("lab", "tcp")
    record = make_record()
    assert logging.getLogger().handlers[0].filter(record)
    assert (record.RUSTVPN_INSTANCE, record.RUSTVPN_TRANSPORT) == ("lab", "tcp")


# --------------------------------------------------------------------------- journal detection


def test_stderr_is_journal_only_for_its_own_device_and_inode(
    file_stderr: FileStderr, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal_stream = file_stderr.install()
    assert not stderr_is_journal()  # no $JOURNAL_STREAM
    monkeypatch.setenv("JOURNAL_STREAM", journal_stream)
    assert stderr_is_journal()
    dev, ino = journal_stream.split(":")
    for wrong in (f"{dev}:{int(ino) + 1}", f"{int(dev) + 1}:{ino}", f"{dev}:", f":{ino}", dev, "", ":", "x:y"):
        monkeypatch.setenv("JOURNAL_STREAM", wrong)
        assert not stderr_is_journal(), wrong


def test_stderr_is_journal_false_for_a_pipe(pipe_stderr: PipeStderr, monkeypatch: pytest.MonkeyPatch) -> None:
    pipe_stderr.install()
    st = os.fstat(sys.stderr.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev + 1}:{st.st_ino}")
    assert not stderr_is_journal()


def test_stderr_is_journal_false_without_a_file_descriptor(
    file_stderr: FileStderr, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal_stream = file_stderr.install()
    monkeypatch.setenv("JOURNAL_STREAM", journal_stream)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not stderr_is_journal()
    closed = open(os.devnull, "w")  # noqa: SIM115 - closed on purpose
    closed.close()
    monkeypatch.setattr(sys, "stderr", closed)
    assert not stderr_is_journal()


def test_stderr_is_journal_false_when_stderr_is_none(file_stderr: FileStderr, monkeypatch: pytest.MonkeyPatch) -> None:
    journal_stream = file_stderr.install()
    monkeypatch.setenv("JOURNAL_STREAM", journal_stream)
    monkeypatch.setattr(sys, "stderr", None)
    assert stderr_is_journal() is False


# --------------------------------------------------------------------------- journal handler


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, text: str, /, **fields: Any) -> None:
        # Positional-only: JournalHandler also passes record.__dict__, which has a 'message' key.
        self.sent.append((text, fields))


@needs_journal_handler
def test_setup_logging_selects_journal_handler(file_stderr: FileStderr, monkeypatch: pytest.MonkeyPatch) -> None:
    journal_stream = file_stderr.install()
    monkeypatch.setenv("JOURNAL_STREAM", journal_stream)
    setup_logging("info", instance="wan", transport="quic")
    root = logging.getLogger()
    assert len(root.handlers) == 1
    handler = root.handlers[0]
    assert isinstance(handler, JournalHandler)
    # JournalHandler keeps its sender_function as the instance attribute `send`.
    recorder = Recorder()
    handler.send = recorder  # type: ignore[attr-defined]

    log = logging.getLogger("rustvpn.session")
    log.info("listening on 0.0.0.0:1105", extra=events.event(events.LISTENING))
    CONTEXT.peer, CONTEXT.session = "198.18.0.1:40112", "7c1e"
    log.info("session up", extra=events.event(events.SESSION_UP))
    logging.getLogger("pyroute2.netlink.core").info("chatter")  # filtered before the journal

    assert [message for message, _ in recorder.sent] == ["listening on 0.0.0.0:1105", "session up"]
    listening, up = (fields for _, fields in recorder.sent)
    assert listening["MESSAGE_ID"] == events.LISTENING
    assert listening["RUSTVPN_INSTANCE"] == "wan"
    assert listening["RUSTVPN_TRANSPORT"] == "quic"
    assert "RUSTVPN_PEER" not in listening
    assert "RUSTVPN_SESSION" not in listening
    assert listening["SYSLOG_IDENTIFIER"] == "rustvpn@wan"
    assert up["MESSAGE_ID"] == events.SESSION_UP
    assert (up["RUSTVPN_PEER"], up["RUSTVPN_SESSION"]) == ("198.18.0.1:40112", "7c1e")
    assert up["PRIORITY"] == "6"  # LOG_INFO
    assert up["LOGGER"] == "rustvpn.session"
    # Nothing went to the plain stderr file.
    sys.stderr.flush()
    assert Path(sys.stderr.name).read_text() == ""


@needs_journal_handler
def test_journal_identifier_without_instance(file_stderr: FileStderr, monkeypatch: pytest.MonkeyPatch) -> None:
    journal_stream = file_stderr.install()
    monkeypatch.setenv("JOURNAL_STREAM", journal_stream)
    setup_logging("info")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, JournalHandler)
    recorder = Recorder()
    handler.send = recorder  # type: ignore[attr-defined]
    logging.getLogger("rustvpn").warning("w")
    ((message, fields),) = recorder.sent
    assert message == "w"
    assert fields["SYSLOG_IDENTIFIER"] == "rustvpn"
    assert fields["PRIORITY"] == "4"  # LOG_WARNING


@needs_journal_handler
def test_journal_handler_with_stamp_filter_sends_fields() -> None:
    recorder = Recorder()
    handler = JournalHandler(sender_function=recorder, SYSLOG_IDENTIFIER="rustvpn@lab")
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(log_setup._Stamp())
    CONTEXT.instance, CONTEXT.transport = "lab", "tcp"
    CONTEXT.peer, CONTEXT.session = "[2001:db8::2]:50000", "s-1"
    logger = logging.getLogger("rustvpn.test_log_setup")
    record = logger.makeRecord(
        logger.name, logging.INFO, __file__, 1, "session up", (), None, extra=events.event(events.SESSION_UP)
    )
    handler.handle(record)
    ((message, fields),) = recorder.sent
    assert message == "session up"
    assert fields["MESSAGE_ID"] == events.SESSION_UP
    assert fields["RUSTVPN_INSTANCE"] == "lab"
    assert fields["RUSTVPN_TRANSPORT"] == "tcp"
    assert fields["RUSTVPN_PEER"] == "[2001:db8::2]:50000"
    assert fields["RUSTVPN_SESSION"] == "s-1"
    assert fields["SYSLOG_IDENTIFIER"] == "rustvpn@lab"


def test_message_ids_are_distinct_journal_ids() -> None:
    ids = {name: value for name, value in vars(events).items() if name.isupper()}
    assert len(ids) >= 8
    assert len(set(ids.values())) == len(ids)
    for value in ids.values():
        assert len(value) == 32
        int(value, 16)
        assert value == value.lower()
    assert events.event(events.STARTED) == {"MESSAGE_ID": events.STARTED}
