"""Logging: journald with structured fields when stderr is the journal, else plain lines on
stderr. The level comes from --log-level / the config file, or RUST_LOG as the reference reads it.

Every record carries RUSTVPN_INSTANCE, RUSTVPN_TRANSPORT and, during a session, RUSTVPN_PEER and
RUSTVPN_SESSION, so ``journalctl RUSTVPN_INSTANCE=NAME`` finds one tunnel's story.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

_LEVELS = {
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}


@dataclass
class LogContext:
    """Fields stamped on every record; the session engine keeps peer and session current."""

    instance: str = ""
    transport: str = ""
    peer: str = ""
    session: str = ""


CONTEXT = LogContext()


def level_from_rust_log(value: str | None) -> str | None:
    """RUST_LOG is a list of ``[target=]level`` directives; the last level named wins."""
    if not value:
        return None
    found = None
    for directive in value.split(","):
        level = directive.rpartition("=")[2].strip().lower()
        if level in _LEVELS:
            found = level
    return found


def resolve_level(flag: str | None) -> str:
    return (flag or level_from_rust_log(os.environ.get("RUST_LOG")) or "info").lower()


def stderr_is_journal() -> bool:
    """systemd sets $JOURNAL_STREAM to the device:inode of the stream it connected us to."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):  # AttributeError: no stderr at all (fd 2 closed)
        return False
    return bool(ino) and f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


class _Stamp(logging.Filter):
    """Adds the context fields and lets libraries (pyroute2, aioquic, asyncio) through only at
    WARNING and above: their chatter is not a session event, and pyroute2 at debug level would
    dump whole netlink messages."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.RUSTVPN_INSTANCE = CONTEXT.instance
        record.RUSTVPN_TRANSPORT = CONTEXT.transport
        if CONTEXT.peer:
            record.RUSTVPN_PEER = CONTEXT.peer
            record.RUSTVPN_SESSION = CONTEXT.session
        if record.name == "rustvpn" or record.name.startswith("rustvpn."):
            return True
        # aioquic's own warnings repeat what our QUIC code logs with the peer's address.
        floor = logging.ERROR if record.name == "quic" else logging.WARNING
        return record.levelno >= floor


def setup_logging(level: str, *, instance: str = "", transport: str = "") -> None:
    CONTEXT.instance, CONTEXT.transport = instance, transport
    handler: logging.Handler
    if stderr_is_journal():
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER=f"rustvpn@{instance}" if instance else "rustvpn")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        prefix = f"[{instance}] " if instance else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)-7s {prefix}%(name)s: %(message)s"))
    handler.addFilter(_Stamp())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
