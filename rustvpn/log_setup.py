"""Logging: plain lines on stderr, level from --log-level or RUST_LOG (as the reference reads it)."""

from __future__ import annotations

import logging
import os
import sys

_LEVELS = {
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}


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


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(_ours_or_warning)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))


def _ours_or_warning(record: logging.LogRecord) -> bool:
    """Libraries (pyroute2, aioquic, asyncio) speak only at WARNING and above: their chatter is
    not a session event, and at debug level pyroute2 would dump whole netlink messages."""
    if record.name == "rustvpn" or record.name.startswith("rustvpn."):
        return True
    # aioquic's own warnings repeat what our QUIC code logs with the peer's address.
    floor = logging.ERROR if record.name == "quic" else logging.WARNING
    return record.levelno >= floor
