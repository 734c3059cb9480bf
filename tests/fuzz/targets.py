"""Fuzz targets: one function per parser, taking the fuzzer's raw bytes and raising on any broken invariant.

Plain Python with no atheris import, so a crash file replays anywhere: ``tests/fuzz/run.py --reproduce``,
or a unit test (tests/unit/test_fuzz_regressions.py). Each target splits its input with ByteReader
(its own documented layout) rather than atheris's FuzzedDataProvider, so what a crash input means does
not depend on the fuzzer.

A target returns normally when the parser either accepts the input or refuses it with its own error
class, and every check holds. Any other exception, or a failed check (AssertionError), is a crash.
"""

from __future__ import annotations

import atexit
import bisect
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from rustvpn.config_exchange import KNOWN_OPTIONS, ExchangeParams, format_exchange, parse_exchange, validate_exchange
from rustvpn.config_file import SCHEMA, load_config_file
from rustvpn.errors import ConfigError, ExchangeError, ExchangeMismatch, FrameError
from rustvpn.flow_hash import StreamSelector, flow_ports
from rustvpn.framing import MAX_FRAME_LENGTH, FrameDecoder, encode_frame
from rustvpn.quic_fastpath import _parse_frames
from rustvpn.settings import TunnelConfig
from rustvpn.status_server import _BadRequest, _parse_request


class ByteReader:
    """Reads parameters off the front of a fuzz input; reads past the end give zeros or nothing."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int) -> bytes:
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk

    def byte(self) -> int:
        chunk = self.take(1)
        return chunk[0] if chunk else 0

    def u16(self) -> int:
        return self.byte() << 8 | self.byte()

    def rest(self) -> bytes:
        return self.take(self.remaining)


def _one_line(message: str) -> bool:
    # splitlines() also breaks on \r, \x0b, \x85, \u2028...: all of them split a log line somewhere.
    return len(message.splitlines()) == 1 and not message.endswith(("\n", "\r"))


# --------------------------------------------------------------------------- framing


def framing_input(max_length: int, flags: int, chunks: list[bytes]) -> bytes:
    """The framing target's layout: u16 (max_length - 1), a flags byte, then chunks each after a size byte."""
    parts = [struct.pack("!HB", max_length - 1, flags)]
    for chunk in chunks:
        assert len(chunk) <= 255
        parts += [bytes([len(chunk)]), chunk]
    return b"".join(parts)


def _wrap(chunk: bytes, kind: int) -> bytes | bytearray | memoryview:
    """The buffer types transports hand to feed(): bytes, a reused bytearray, views (one not at offset 0)."""
    if kind == 1:
        return bytearray(chunk)
    if kind == 2:
        return memoryview(bytearray(chunk))
    if kind == 3:
        return memoryview(b"\xa5" + chunk)[1:]
    return chunk


def _frame_bounds(stream: bytes, max_length: int) -> tuple[list[int], int | None]:
    """Straight from PROTOCOL.md, on the whole stream: the end offsets of whole frames, and where an invalid
    length header sits (or None)."""
    ends: list[int] = []
    pos = 0
    while pos + 2 <= len(stream):
        length = stream[pos] << 8 | stream[pos + 1]
        if not 1 <= length <= max_length:
            return ends, pos
        if pos + 2 + length > len(stream):
            break
        pos += 2 + length
        ends.append(pos)
    return ends, None


def _refuses_input(decoder: FrameDecoder) -> bool:
    for probe in (b"", b"\x00\x01x"):
        try:
            decoder.feed(probe)
        except FrameError:
            continue
        return False
    return True


def fuzz_framing(data: bytes) -> None:
    """FrameDecoder on arbitrary chunks with an arbitrary limit.

    Layout: u16 max length - 1; flags (bits 0-1: buffer type, bit 2: overwrite the caller's buffer after
    each feed); then chunks, each preceded by its size byte. Checks: only FrameError; payloads and
    ``pending`` agree with a whole-stream reference decode after every chunk; payloads re-encode to the
    consumed prefix; the decoder never holds more than one incomplete frame; an invalid length fails
    exactly when its header is complete, and the decoder then refuses all input.
    """
    reader = ByteReader(data)
    max_length = reader.u16() % MAX_FRAME_LENGTH + 1
    flags = reader.byte()
    chunks: list[bytes] = []
    while reader.remaining:
        chunks.append(reader.take(reader.byte()))
    stream = b"".join(chunks)
    ends, bad_at = _frame_bounds(stream, max_length)

    decoder = FrameDecoder(max_length)
    out: list[bytes] = []
    fed = 0
    for chunk in chunks:
        buffer = _wrap(chunk, flags & 3)
        invalid_seen = bad_at is not None and bad_at + 2 <= fed + len(chunk)
        try:
            got = decoder.feed(buffer)
        except FrameError:
            assert invalid_seen, f"FrameError on a valid stream prefix of {fed + len(chunk)} bytes"
            assert _refuses_input(decoder), "decoder took input after failing"
            return
        assert not invalid_seen, f"invalid length at offset {bad_at} not refused"
        if flags & 4 and not isinstance(buffer, bytes) and not (isinstance(buffer, memoryview) and buffer.readonly):
            buffer[:] = b"\xee" * len(buffer)  # a transport reusing its receive buffer must not corrupt state
        fed += len(chunk)
        out += got
        whole = bisect.bisect_right(ends, fed)
        consumed = ends[whole - 1] if whole else 0
        assert len(out) == whole, f"{len(out)} payloads after {fed} bytes, expected {whole}"
        assert all(type(p) is bytes for p in got)
        assert decoder.pending == fed - consumed, (decoder.pending, fed, consumed)
        assert decoder.pending <= max_length + 1, "decoder holds more than one incomplete frame"
        start = consumed - sum(2 + len(p) for p in got)
        assert b"".join(encode_frame(p, max_length) for p in got) == stream[start:consumed]
    try:
        decoder.check_clean_end()
    except FrameError:
        assert decoder.pending, "clean end refused"
    else:
        assert not decoder.pending, "truncated frame not reported at end of stream"


# --------------------------------------------------------------------------- config exchange

# Stands for our session secret: it must never show up in an error about what the peer sent.
OUR_TOKEN = "q7ZfK2mV9xLc4RtB8nWy3HsD6jPa1EuG"
OURS = ExchangeParams(build_id="fuzz-1", number_of_streams=4, mtu=1400, token=OUR_TOKEN)
# Errors about peer input go to the log: bounded, whatever the peer sends. (Peer text is cut to 80
# characters, each up to 10 once repr() escapes it.)
MAX_EXCHANGE_MESSAGE = 1024


def _check_exchange_message(message: str, text: bytes) -> None:
    assert _one_line(message), f"message is not one line: {message!r}"
    assert len(message) <= MAX_EXCHANGE_MESSAGE, f"message of {len(message)} characters"
    assert OUR_TOKEN not in message or OUR_TOKEN.encode() in text, "our token leaked into an error"


def fuzz_exchange(data: bytes) -> None:
    """parse_exchange + validate_exchange against fixed params of ours.

    Layout: a flags byte (bit 0: token required, as in TCP mode), then the peer's exchange text. Checks:
    only ExchangeError / ExchangeMismatch; messages are one bounded line without our token; a token
    mismatch shows placeholders only, and no other mismatch depends on the token; accepted params carry
    the peer's token and options and round-trip through format_exchange.
    """
    reader = ByteReader(data)
    need_token = bool(reader.byte() & 1)
    text = reader.rest()
    try:
        theirs = parse_exchange(text)
    except ExchangeError as exc:
        _check_exchange_message(str(exc), text)
        return
    for key, value in theirs.items():
        assert key and ";" not in key and "=" not in key and ";" not in value
    assert parse_exchange(";".join(f"{k}={v}" for k, v in theirs.items()).encode()) == theirs
    try:
        result = validate_exchange(OURS, theirs, need_token=need_token)
    except ExchangeMismatch as exc:
        _check_exchange_message(str(exc), text)
        if exc.key == "token":
            assert need_token and exc.ours == "<hidden>" and exc.theirs in ("<missing>", "<malformed>"), repr(exc)
        else:
            # The token is checked last, so no other refusal may depend on (or show) it.
            with_other_token = dict(theirs, token="T" * 32)
            try:
                validate_exchange(OURS, with_other_token, need_token=need_token)
            except ExchangeMismatch as again:
                assert str(again) == str(exc), "mismatch message depends on the token"
            else:
                raise AssertionError("outcome depends on the token") from None
        return
    assert (result.build_id, result.number_of_streams, result.mtu) == ("fuzz-1", 4, 1400)
    assert result.token == theirs.get("token", "")
    assert result.options == {o for o in KNOWN_OPTIONS if theirs.get(o) == "1"}
    hidden = replace(result, token="hidden")
    assert repr(result) == repr(hidden) and result.describe() == hidden.describe(), "token shown"
    again = validate_exchange(OURS, parse_exchange(format_exchange(result)), need_token=need_token)
    assert again == result, (again, result)


# --------------------------------------------------------------------------- flow hash

_PORTED = {6, 17, 33, 132, 136}  # TCP, UDP, DCCP, SCTP, UDP-Lite: ports are their first 4 bytes
# IPv6 extension header length from its length byte (RFC 8200 4.x, RFC 4302 for AH); fragments are left out.
_EXT_LEN: dict[int, Callable[[int], int]] = {
    **{nh: (lambda n: (n + 1) * 8) for nh in (0, 43, 60, 135, 139, 140)},
    51: lambda n: (n + 2) * 4,
}


def reference_port_offset(packet: bytes) -> int | None:
    """Where the ports of an unfragmented TCP/UDP-like packet start, walked independently of flow_hash."""
    if not packet:
        return None
    if packet[0] >> 4 == 4:
        if len(packet) < 20 or (packet[0] & 0x0F) < 5:
            return None
        more_fragments, fragment_offset = packet[6] & 0x20, (packet[6] & 0x1F) << 8 | packet[7]
        if more_fragments or fragment_offset or packet[9] not in _PORTED:
            return None
        start = (packet[0] & 0x0F) * 4
    elif packet[0] >> 4 == 6:
        if len(packet) < 40:
            return None
        next_header, start = packet[6], 40
        for hops in range(16):  # flow_hash walks at most 16 headers (15 extensions, then the transport)
            if next_header in _PORTED:
                break
            if hops == 15 or next_header not in _EXT_LEN or len(packet) < start + 8:
                return None
            next_header, start = packet[start], start + _EXT_LEN[next_header](packet[start + 1])
    else:
        return None
    return start if len(packet) >= start + 4 else None


def fuzz_flow_hash(data: bytes) -> None:
    """flow_ports and StreamSelector on any bytes.

    Layout: stream count - 1, a buffer-type byte, then the packet. Checks: never raises; ports agree with
    an independent header walk for bytes, bytearray and memoryview; the index is in range, is the port
    hash for ported packets (without moving the round-robin) and the round-robin turn otherwise; swapping
    the two ports gives swapped ports and the same stream.
    """
    reader = ByteReader(data)
    count = reader.byte() + 1
    kind = reader.byte() & 3
    packet = reader.rest()
    offset = reference_port_offset(packet)
    expected = None if offset is None else struct.unpack_from("!HH", packet, offset)
    assert flow_ports(_wrap(packet, kind)) == expected, (flow_ports(packet), expected, offset)

    selector = StreamSelector(count)
    index = selector.select(_wrap(packet, kind))
    assert 0 <= index < count
    if expected is None:
        assert index == 0, "round-robin did not start at 0"
        assert selector.select(b"") == 1 % count, "round-robin did not advance"
        return
    assert index == (expected[0] ^ expected[1]) % count
    assert selector.select(b"") == 0, "a hashed packet moved the round-robin"

    assert offset is not None
    swapped = packet[:offset] + packet[offset + 2 : offset + 4] + packet[offset : offset + 2] + packet[offset + 4 :]
    assert flow_ports(swapped) == (expected[1], expected[0])
    assert StreamSelector(count).select(swapped) == index, "the two directions of a flow differ"


# --------------------------------------------------------------------------- YAML config file

_workdir: Path | None = None


def _config_path() -> Path:
    """A private file the config target rewrites for every input (load_config_file reads a path)."""
    global _workdir
    if _workdir is None:
        # The runner gives a directory it removes itself: libFuzzer's exit skips Python's atexit hooks.
        given = os.environ.get("RUSTVPN_FUZZ_WORKDIR")
        if given:
            _workdir = Path(given)
        else:
            _workdir = Path(tempfile.mkdtemp(prefix="rustvpn-fuzz-config-"))
            atexit.register(shutil.rmtree, _workdir, True)
    return _workdir / "fuzz.yaml"


# YAML's line breaks (what its marks count), to bound the line numbers errors give.
_YAML_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def _check_config_message(message: str, path: str, data: bytes) -> None:
    assert _one_line(message), f"error is not one line: {message!r}"
    assert message.startswith(f"{path}:"), f"error does not start with the file name: {message!r}"
    numbered = re.match(re.escape(path) + r":(\d+): ", message)
    if numbered:
        lines = len(_YAML_BREAK.findall(data.decode("utf-8", "replace"))) + 1
        assert 1 <= int(numbered[1]) <= lines, f"line {numbered[1]} of a {lines}-line file: {message!r}"


def fuzz_config_file(data: bytes) -> None:
    """load_config_file on a file with these bytes (the whole input), without and then with file checks.

    Checks: only ConfigError; its message is one line, starts with the file name and gives a line number
    within the file; an accepted file gives a TunnelConfig.
    """
    path = _config_path()
    path.write_bytes(data)
    # The file checks only run on an otherwise valid file, so they are tried only when that passes.
    for check_files in (False, True):
        try:
            loaded = load_config_file(str(path), check_files=check_files)
        except ConfigError as exc:
            _check_config_message(str(exc), str(path), data)
            return
        assert isinstance(loaded.config, TunnelConfig) and loaded.instance == "fuzz"


# --------------------------------------------------------------------------- status request


def fuzz_status_request(data: bytes) -> None:
    """The status socket's request parser on one request line (the whole input).

    Checks: only its own refusal (_BadRequest), with a short one-line message for the client; an accepted
    request is the status command, and a bare word is accepted only as exactly ``status``.
    """
    try:
        command = _parse_request(data)
    except _BadRequest as exc:
        message = str(exc)
        assert message and _one_line(message) and len(message) < 200, repr(message)
        return
    assert command == "status"
    text = data.decode("utf-8").strip()
    assert text.startswith("{") or text == "status", repr(text)


def fuzz_quic_frames(data: bytes) -> None:
    """The QUIC short cut's frame parser (quic_fastpath._parse_frames) on a decrypted payload.

    Layout: u16 limit (our max_datagram_frame_size; 0 means none offered), then the payload. Checks: it
    never raises; what it accepts holds at least one frame, its DATAGRAM payloads and its STREAM frames'
    data each appear in the input in order, DATAGRAM payloads within the limit, STREAM frames within
    QUIC's 2^62 offset limit, and an ACK's ranges are non-negative and ascending.
    """
    limit = int.from_bytes(data[:2], "big") or None
    payload = data[2:]
    parsed = _parse_frames(payload, limit)
    if parsed is None:
        return
    assert payload, "an empty payload was accepted"
    datagrams, ack, eliciting, streams = parsed
    assert limit is not None or not datagrams
    at = 0
    for datagram in datagrams:
        assert limit is not None and len(datagram) < limit
        found = payload.find(datagram, at)
        assert found >= 0, "a DATAGRAM payload that is not in the input"
        at = found + len(datagram)
    at = 0
    for stream_id, offset, chunk in streams:
        assert stream_id >= 0 and offset >= 0 and offset + len(chunk) < 2**62
        found = payload.find(chunk, at)
        assert found >= 0, "STREAM frame data that is not in the input"
        at = found + len(chunk)
    if ack is not None:
        ranges, delay = ack
        bounds = [(r.start, r.stop) for r in ranges]
        assert all(0 <= a < b for a, b in bounds) and bounds == sorted(bounds) and delay >= 0
    if datagrams or streams:
        assert eliciting


# --------------------------------------------------------------------------- self-test


def fuzz_selftest(data: bytes) -> None:
    """Crashes on inputs starting with ``B!``: proves the runner finds, reports and keeps a crash."""
    if len(data) >= 2 and data[0] == 0x42 and data[1] == 0x21:
        raise RuntimeError("self-test crash")


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    seeds: tuple[bytes, ...]
    dictionary: tuple[bytes, ...] = ()
    max_len: int = 4096
    options: tuple[str, ...] = ()  # further libFuzzer flags


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(2, "big") + payload


def _ipv4(proto: int, body: bytes, ihl: int = 5, frag: int = 0) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(body), 1, frag, 64, proto, 0, bytes(4), bytes(4))
    return header + bytes(4 * (ihl - 5)) + body


def _ipv6(next_header: int, body: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(body), next_header, 64, bytes(16), bytes(16)) + body


_PORTS = struct.pack("!HHII", 40000, 443, 1, 0)
_FLOW_SEEDS = (
    _ipv4(6, _PORTS),
    _ipv4(17, _PORTS, ihl=6),
    _ipv4(17, _PORTS, frag=0x2000),
    _ipv4(1, bytes(8)),
    _ipv6(6, _PORTS),
    _ipv6(0, bytes([43, 0]) + bytes(6) + bytes([60, 2, 0, 0]) + bytes(20) + bytes([17, 0]) + bytes(6) + _PORTS),
    _ipv6(51, bytes([6, 4]) + bytes(22) + _PORTS),
    _ipv6(44, bytes([17, 0, 0, 1]) + bytes(4) + _PORTS),
    _ipv6(58, bytes(8)),
)
_EXCHANGE_TEXTS = (
    b"build_id=fuzz-1;number_of_streams=4;mtu=1400;token=PeerToken0123456789abcdefghijklm",
    b"build_id=fuzz-1;number_of_streams=4;mtu=1400;token=PeerToken0123456789abcdefghijklm;datagram=1;offload=1",
    b"build_id=fuzz-1;number_of_streams=04;mtu=1400;x=1;;=;token",
    b"build_id=other;number_of_streams=4;mtu=1400",
    b"build_id=fuzz-1;number_of_streams=9;mtu=65536;token=\x01",
    b"mtu=1;mtu=2",
)
_EXCHANGE_WORDS = (
    b"build_id=", b"number_of_streams=", b"mtu=", b"token=", b"datagram=1", b"offload=1", b";", b"=",
    b"fuzz-1", b"4", b"1400", b"100", b"65535", b"\xc3\xa9", b"\xff", b"\x00",
)  # fmt: skip
_CONFIG_SEEDS = (
    b"transport: quic\nrole: server\n",
    b"transport: quic\nrole: client\nserver: vpn.example.com\nport: 4433\ndatagrams: false\n",
    b"# a TCP server\ntransport: tcp\nrole: server\ndevice: rvpn0\ncontrol_port: 1107\ndata_port: 1108\n"
    b"ipv4: 192.168.3.1/24\nipv6: 2001:db8::1/64\nroutes: [10.0.0.0/8, 'fd00::/8']\nmtu: 1400\n"
    b"stream_count: 5\nbuild_id: '0012345'\nlog_level: debug\nstatus_socket: /run/rustvpn/x/status.sock\n"
    b"offload: yes\npeer_cn: client\nca_bundle: ca.pem\ncert: server.pem\nkey: server.key\n",
    b'transport: "tcp"\nrole: client\nserver: "[2001:db8::1]"\nroutes:\n  - 10.1.2.3/16\n  - ~\nmtu: !!int "1500"\n',
    b"{transport: quic, role: server, bind_address: '::', port: 0x10}\n",
    b"transport: quic\nrole: server\n---\nrole: client\n",
    b"base: &b quic\ntransport: *b\n",
    b'transport: quic\nrole: server\nport: !!int "8080"\ndatagrams: !!bool "true"\npeer_cn: "a\\tb\\x41\\u00e9"\n',
    b"transport: |\n  quic\nrole: >-\n  server\nroutes: [[[[[[[[10.0.0.0/8]]]]]]]]\n",
    b'transport: tcp\nrole: client\nserver: "vpn"\nca_bundle: "ca.pem"\ncert: "/etc/c.pem"\nkey: \'k.key\'\n',
    b"%YAML 1.1\n--- !!map\n? transport\n: quic\nrole: {a: [b, {c: d}]}\n...\n",
)
_CONFIG_WORDS = (
    *(f"{key}: ".encode() for key in SCHEMA),
    *(b"!!" + tag for tag in (b"int ", b"bool ", b"str ", b"null ", b"float ", b"seq ", b"map ", b"binary ")),
    b"quic", b"tcp", b"server", b"client", b"true", b"no", b"~", b"null", b"0x", b"0o", b"1_0", b"---", b"...",
    b"&a ", b"*a", b"<<: ", b"? ", b"- ", b"[", b"]", b"{", b"}", b"'", b'"', b"|\n", b">-\n", b"\\n", b"\\x85",
    b"\\u2028", b"\\0", b"#", b"\t", b"\r\n", b"\xc2\x85", b"/24", b"::1/64", b"10.0.0.0/8", b"%TAG ", b"%YAML 1.1",
)  # fmt: skip

TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target(
            "framing",
            fuzz_framing,
            seeds=(
                framing_input(1500, 0, [_frame(b"abc") + _frame(b"de")]),
                framing_input(10, 1, [b"\x00", b"\x03ab", b"c\x00\x0a" + b"x" * 10]),
                framing_input(4096, 2, [_frame(b"m" * 200)[:100], _frame(b"m" * 200)[100:]]),
                framing_input(1, 3, [b"\x00\x01x"] * 3 + [b"\x00\x02"]),
                framing_input(1500, 5, [b"\x05\xdc" + b"p" * 200, b"\x05\xdd"]),
                framing_input(65535, 6, [b"\xff\xff" + bytes(253)]),
                framing_input(3, 4, [b"\x00\x00"]),
            ),
            dictionary=(b"\x00\x00", b"\x00\x01", b"\x05\xdc", b"\x05\xdd", b"\x10\x00", b"\x10\x01", b"\xff\xff"),
        ),
        Target(
            "exchange",
            fuzz_exchange,
            seeds=tuple(flag + text for text in _EXCHANGE_TEXTS for flag in (b"\x00", b"\x01")),
            dictionary=_EXCHANGE_WORDS,
        ),
        Target(
            "flow_hash",
            fuzz_flow_hash,
            seeds=tuple(bytes([count, kind]) + p for p in _FLOW_SEEDS for count, kind in ((3, 0), (0, 1), (99, 2))),
            dictionary=(b"\x45", b"\x46", b"\x4f", b"\x60", b"\x06", b"\x11", b"\x2c", b"\x33", b"\x3a", b"\x3b"),
        ),
        Target(
            "config_file",
            fuzz_config_file,
            seeds=_CONFIG_SEEDS,
            dictionary=_CONFIG_WORDS,
            max_len=8192,
            # Long inputs from the start: depth and length limits lie beyond what coverage rewards.
            options=("-len_control=0",),
        ),
        Target(
            "status_request",
            fuzz_status_request,
            seeds=(
                b"status\n",
                b'{"version": 1, "command": "status"}\n',
                b'{"command":"status","version":1.0}',
                b"[1, 2]",
                b"stat\xffus",
            ),
            dictionary=(b'"version"', b'"command"', b'"status"', b"status", b"{", b"}", b"[", b":", b"1", b"true"),
        ),
        Target(
            "quic_frames",
            fuzz_quic_frames,
            seeds=(
                b"\x05\xdc\x31\x03abc\x00\x00",
                b"\x05\xdc\x02\x05\x00\x01\x01\x00\x01\x31\x01z",
                b"\x00\x00\x30xyz",
                b"\x01\x00\x03\x40\x10\x00\x00\x02\x00\x01\x02\x03\x01",
                b"\x00\x00\x0e\x08\x44\x00\x40\x03abc\x0a\x0c\x02de",
                b"\x00\x00\x02\x05\x00\x01\x01\x00\x01\x08\x10rest",
            ),
            dictionary=(
                b"\x00",
                b"\x01",
                b"\x02",
                b"\x03",
                b"\x08",
                b"\x0a",
                b"\x0e",
                b"\x0f",
                b"\x30",
                b"\x31",
                b"\x40",
                b"\x80",
                b"\xc0",
            ),
            max_len=2048,
        ),
    )
}
# Not run by default: only there to check the runner itself (tests/fuzz/test_fuzz_bounded.py).
SELFTEST = Target("_selftest", fuzz_selftest, seeds=(b"B",))


def find_target(name: str) -> Target:
    if name == SELFTEST.name:
        return SELFTEST
    return TARGETS[name]


def dictionary_text(entries: tuple[bytes, ...]) -> str:
    """libFuzzer's -dict= format: one quoted entry a line, other than printable ASCII escaped as \\xNN."""
    lines = []
    for entry in entries:
        quoted = "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02x}" for b in entry)
        lines.append(f'"{quoted}"')
    return "\n".join(lines) + "\n"
