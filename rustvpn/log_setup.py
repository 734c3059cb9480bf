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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # pyroute2 and asyncio are noisy at debug; their internals are not our session events.
    for noisy in ("pyroute2", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
