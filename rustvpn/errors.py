"""The error hierarchy; the CLI maps each class to a one-line message and an exit code."""

from __future__ import annotations

import os


class RustvpnError(Exception):
    """Base class for errors that end with a clear message instead of a traceback."""

    exit_code = 1


class ConfigError(RustvpnError):
    """Bad settings: a flag, a config key, a certificate path."""

    exit_code = 2


class SystemSetupError(RustvpnError):
    """The host cannot give us what we need: root, /dev/net/tun, a free device name, a port."""

    exit_code = os.EX_OSERR


class ProtocolError(RustvpnError):
    """The peer sent something the wire protocol does not allow (a bad frame, bad exchange text)."""


class FrameError(ProtocolError):
    """A packet frame with length 0, above the MTU, or cut short."""


class ExchangeError(ProtocolError):
    """The config exchange text could not be read."""


class ExchangeMismatch(ProtocolError):
    """The peer's exchanged settings do not match ours; names the key and both values."""

    def __init__(self, key: str, ours: object, theirs: object, detail: str = "") -> None:
        self.key = key
        self.ours = ours
        self.theirs = theirs
        why = f" ({detail})" if detail else ""
        super().__init__(f"config exchange mismatch on {key}: ours={ours!r} peer={theirs!r}{why}")


class PeerRejected(ProtocolError):
    """The peer failed authentication: certificate, CN or token."""


class SessionLost(RustvpnError):
    """A live session ended: the peer closed, a connection broke or timed out."""


def describe_error(exc: BaseException) -> str:
    """A short one-line reason for a failed call: TLS's reason code, the OS error text, or the message."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    reason = getattr(exc, "reason", None)  # ssl.SSLError: e.g. KEY_VALUES_MISMATCH
    if isinstance(reason, str) and reason:
        return reason
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
