"""The config exchange text: ``build_id=..;number_of_streams=..;mtu=..;token=..``.

Parsing follows the reference peer: split on ``;``, then on the first ``=``; empty items, items
without ``=`` and items with an empty key are skipped; unknown keys are ignored (a key only one
side sends means "not supported"). Validation names the key and both values on failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rustvpn.errors import ExchangeError, ExchangeMismatch

KEY_BUILD_ID = "build_id"
KEY_STREAMS = "number_of_streams"
KEY_MTU = "mtu"
KEY_TOKEN = "token"
# Capabilities beyond the reference protocol, offered as ``key=1`` and used only when both sides
# offer them (the reference peer ignores unknown keys, so it never does).
OPTION_DATAGRAM = "datagram"  # QUIC: packets as RFC 9221 DATAGRAM frames instead of stream frames
OPTION_OFFLOAD = "offload"  # TCP: TUN segmentation offload, 64 KB segments carried whole
KNOWN_OPTIONS = (OPTION_DATAGRAM, OPTION_OFFLOAD)

MIN_STREAMS, MAX_STREAMS = 1, 100
MIN_MTU, MAX_MTU = 100, 65535
# Longest exchange text we accept (the QUIC config stream allows the reference's 10 MiB cap,
# but no legitimate text comes near this).
MAX_EXCHANGE_TEXT = 64 * 1024
_MAX_DIGITS = 6
# Peer text echoed in an error (and so in a log line) is cut to this: a peer must not be able to
# write 64 KiB log lines. Long enough for any real build id (a git commit is 40).
_MAX_SHOWN = 80


def _shown(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


@dataclass(frozen=True, slots=True)
class ExchangeParams:
    build_id: str
    number_of_streams: int
    mtu: int
    token: str
    options: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        # Tokens are secrets: never let one reach a log line through repr().
        return (
            f"ExchangeParams(build_id={self.build_id!r}, number_of_streams={self.number_of_streams}, "
            f"mtu={self.mtu}, token=<hidden>, options={sorted(self.options)})"
        )

    def describe(self) -> str:
        """Loggable summary: everything but the token."""
        text = f"build_id={self.build_id} number_of_streams={self.number_of_streams} mtu={self.mtu}"
        return text + "".join(f" {option}=1" for option in sorted(self.options))


def check_build_id(build_id: str) -> str:
    """A build id must survive the text format: no ``;``, no ``=`` and not empty."""
    if not build_id or ";" in build_id or "=" in build_id or not build_id.isprintable():
        raise ValueError(f"build id {build_id!r} must be non-empty printable text without ';' or '='")
    return build_id


def format_exchange(params: ExchangeParams) -> bytes:
    check_build_id(params.build_id)
    text = (
        f"{KEY_BUILD_ID}={params.build_id};{KEY_STREAMS}={params.number_of_streams};"
        f"{KEY_MTU}={params.mtu};{KEY_TOKEN}={params.token}"
    )
    for option in sorted(params.options):
        if option not in KNOWN_OPTIONS:
            raise ValueError(f"unknown exchange option {option!r}")
        text += f";{option}=1"
    return text.encode("utf-8")


def parse_exchange(data: bytes) -> dict[str, str]:
    if len(data) > MAX_EXCHANGE_TEXT:
        raise ExchangeError(f"config exchange text too long ({len(data)} bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ExchangeError("config exchange text is not valid UTF-8") from None
    values: dict[str, str] = {}
    for item in text.split(";"):
        key, sep, value = item.partition("=")
        if not sep or not key:
            continue
        if key in values:
            raise ExchangeError(f"config exchange text repeats key {_shown(key)!r}")
        values[key] = value
    return values


def _parse_count(key: str, raw: str | None, ours: int) -> int:
    if raw is None:
        raise ExchangeMismatch(key, ours, None, "missing")
    if not raw.isascii() or not raw.isdigit() or len(raw) > _MAX_DIGITS:
        raise ExchangeMismatch(key, ours, raw[:32], "not a number")
    return int(raw)


def validate_exchange(ours: ExchangeParams, theirs: Mapping[str, str], *, need_token: bool) -> ExchangeParams:
    """Check the peer's values against ours; return them as params or raise ExchangeMismatch."""
    build_id = theirs.get(KEY_BUILD_ID)
    if build_id != ours.build_id:
        theirs_shown = None if build_id is None else _shown(build_id)
        raise ExchangeMismatch(KEY_BUILD_ID, ours.build_id, theirs_shown, "missing" if build_id is None else "")

    streams = _parse_count(KEY_STREAMS, theirs.get(KEY_STREAMS), ours.number_of_streams)
    if not MIN_STREAMS <= streams <= MAX_STREAMS:
        raise ExchangeMismatch(KEY_STREAMS, ours.number_of_streams, streams, f"allowed {MIN_STREAMS}..{MAX_STREAMS}")
    if streams != ours.number_of_streams:
        raise ExchangeMismatch(KEY_STREAMS, ours.number_of_streams, streams)

    mtu = _parse_count(KEY_MTU, theirs.get(KEY_MTU), ours.mtu)
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise ExchangeMismatch(KEY_MTU, ours.mtu, mtu, f"allowed {MIN_MTU}..{MAX_MTU}")
    if mtu != ours.mtu:
        raise ExchangeMismatch(KEY_MTU, ours.mtu, mtu)

    token = theirs.get(KEY_TOKEN, "")
    if need_token and not (0 < len(token) <= 256 and token.isascii() and token.isprintable()):
        # Never echo a token, even a malformed one.
        raise ExchangeMismatch(KEY_TOKEN, "<hidden>", "<missing>" if not token else "<malformed>")
    # An option counts as offered only as exactly "1"; anything else is "not supported".
    options = frozenset(option for option in KNOWN_OPTIONS if theirs.get(option) == "1")
    return ExchangeParams(build_id=build_id, number_of_streams=streams, mtu=mtu, token=token, options=options)
