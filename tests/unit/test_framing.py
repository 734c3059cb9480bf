"""Unit tests for rustvpn.framing: u16 big-endian length-prefixed frames."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rustvpn.errors import FrameError, ProtocolError
from rustvpn.framing import (
    HEADER_SIZE,
    MAX_CONTROL_MESSAGE,
    MAX_FRAME_LENGTH,
    FrameDecoder,
    encode_frame,
    encode_frames,
)

# No example database on disk (the tree is shared) and no deadline (CI machines can be slow).
PROPERTY = settings(database=None, deadline=None, max_examples=200)


def frame(payload: bytes) -> bytes:
    """Independent reference encoder: u16 big-endian length, then the payload."""
    return struct.pack("!H", len(payload)) + payload


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the given offsets (any order, duplicates allowed: they make empty chunks)."""
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --------------------------------------------------------------------------- encode_frame


def test_constants_match_protocol() -> None:
    assert HEADER_SIZE == 2
    assert MAX_FRAME_LENGTH == 0xFFFF
    assert MAX_CONTROL_MESSAGE == 4096


@pytest.mark.parametrize(
    "payload",
    [b"\x01", b"hello", bytes(range(256)), b"\x00" * 1500, b"x" * 0xFFFF],
    ids=["1", "5", "256", "1500", "max"],
)
def test_encode_frame_is_big_endian_length_then_payload(payload: bytes) -> None:
    assert encode_frame(payload) == frame(payload)


def test_encode_frame_header_bytes_exact() -> None:
    assert encode_frame(b"\xaa" * 0x0102)[:2] == b"\x01\x02"
    assert encode_frame(b"ab") == b"\x00\x02ab"


def test_encode_frame_refuses_empty_payload() -> None:
    with pytest.raises(FrameError):
        encode_frame(b"")


def test_encode_frame_refuses_payload_above_max_length() -> None:
    assert encode_frame(b"x" * 1400, max_length=1400) == frame(b"x" * 1400)
    with pytest.raises(FrameError):
        encode_frame(b"x" * 1401, max_length=1400)


def test_encode_frame_refuses_payload_above_u16() -> None:
    with pytest.raises(FrameError):
        encode_frame(b"x" * (MAX_FRAME_LENGTH + 1))


def test_encode_frame_control_message_limit() -> None:
    assert len(encode_frame(b"c" * MAX_CONTROL_MESSAGE, MAX_CONTROL_MESSAGE)) == MAX_CONTROL_MESSAGE + 2
    with pytest.raises(FrameError):
        encode_frame(b"c" * (MAX_CONTROL_MESSAGE + 1), MAX_CONTROL_MESSAGE)


def test_frame_error_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        encode_frame(b"")


# --------------------------------------------------------------------------- encode_frames


def test_encode_frames_concatenates_frames() -> None:
    payloads = [b"a", b"bc", b"\x00" * 300]
    assert encode_frames(payloads) == b"".join(frame(p) for p in payloads)


def test_encode_frames_accepts_any_iterable_and_empty() -> None:
    assert encode_frames(iter([b"x", b"yz"])) == b"\x00\x01x\x00\x02yz"
    assert encode_frames([]) == b""


@pytest.mark.parametrize("bad", [b"", b"x" * (MAX_FRAME_LENGTH + 1)], ids=["empty", "oversized"])
def test_encode_frames_refuses_bad_payload_anywhere(bad: bytes) -> None:
    with pytest.raises(FrameError):
        encode_frames([b"ok", bad, b"ok"])


# --------------------------------------------------------------------------- FrameDecoder basics


@pytest.mark.parametrize("max_length", [0, -1, MAX_FRAME_LENGTH + 1])
def test_decoder_rejects_bad_max_length(max_length: int) -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_length)


@pytest.mark.parametrize("max_length", [1, 1500, MAX_FRAME_LENGTH])
def test_decoder_accepts_valid_max_length(max_length: int) -> None:
    assert FrameDecoder(max_length).max_length == max_length


def test_decode_single_frame() -> None:
    decoder = FrameDecoder(1500)
    assert decoder.feed(b"\x00\x03abc") == [b"abc"]
    assert decoder.pending == 0
    decoder.check_clean_end()


def test_decode_several_frames_in_one_chunk() -> None:
    decoder = FrameDecoder(1500)
    payloads = [b"one", b"two!", b"\xff" * 1500]
    assert decoder.feed(b"".join(frame(p) for p in payloads)) == payloads


def test_decoded_payloads_are_bytes() -> None:
    decoder = FrameDecoder(1500)
    out = decoder.feed(bytearray(frame(b"abc") + frame(b"de")[:3]))
    out += decoder.feed(memoryview(b"e"))
    assert out == [b"abc", b"de"]
    assert all(type(p) is bytes for p in out)


def test_feed_empty_chunk_is_harmless() -> None:
    decoder = FrameDecoder(1500)
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\x00") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\x01z") == [b"z"]


def test_one_byte_at_a_time() -> None:
    payloads = [b"first", b"\x00", b"x" * 300, b"last frame"]
    stream = b"".join(frame(p) for p in payloads)
    decoder = FrameDecoder(1500)
    out: list[bytes] = []
    for i in range(len(stream)):
        out.extend(decoder.feed(stream[i : i + 1]))
    assert out == payloads
    assert decoder.pending == 0
    decoder.check_clean_end()


def test_frame_emitted_only_when_complete() -> None:
    decoder = FrameDecoder(1500)
    data = frame(b"abcd")
    for i in range(len(data) - 1):
        assert decoder.feed(data[i : i + 1]) == []
        assert decoder.pending == i + 1
    assert decoder.feed(data[-1:]) == [b"abcd"]
    assert decoder.pending == 0


def test_header_split_across_chunks() -> None:
    decoder = FrameDecoder(1500)
    # 0x0102 = 258: the high byte alone must not be taken as the length.
    payload = bytes(range(256)) + b"xy"
    assert decoder.feed(b"\x01") == []
    assert decoder.pending == 1
    assert decoder.feed(b"\x02" + payload[:100]) == []
    assert decoder.feed(payload[100:] + b"\x00") == [payload]
    assert decoder.pending == 1
    assert decoder.feed(b"\x01Q") == [b"Q"]


def test_chunk_ending_on_frame_boundary_then_more() -> None:
    decoder = FrameDecoder(100)
    assert decoder.feed(frame(b"a") + frame(b"bb")) == [b"a", b"bb"]
    assert decoder.pending == 0
    assert decoder.feed(frame(b"ccc")[:1]) == []
    assert decoder.feed(frame(b"ccc")[1:] + frame(b"d")) == [b"ccc", b"d"]


@pytest.mark.parametrize("wrap", [bytearray, memoryview], ids=["bytearray", "memoryview"])
def test_decoder_does_not_alias_caller_buffer(wrap: type) -> None:
    decoder = FrameDecoder(100)
    receive_buffer = bytearray(frame(b"ok") + frame(b"hello")[:4])  # a frame, then header + "he"
    assert decoder.feed(wrap(receive_buffer)) == [b"ok"]
    receive_buffer[:] = b"XXXXXXXX"  # the caller reuses its receive buffer
    assert decoder.feed(b"llo") == [b"hello"]


def test_returned_payload_does_not_alias_caller_buffer() -> None:
    decoder = FrameDecoder(100)
    chunk = bytearray(frame(b"hello"))
    (out,) = decoder.feed(memoryview(chunk))
    chunk[2:] = b"XXXXX"
    assert out == b"hello"


# --------------------------------------------------------------------------- bad lengths


def test_length_at_limit_accepted() -> None:
    decoder = FrameDecoder(10)
    assert decoder.feed(frame(b"0123456789")) == [b"0123456789"]


def test_length_zero_rejected() -> None:
    decoder = FrameDecoder(1500)
    with pytest.raises(FrameError):
        decoder.feed(b"\x00\x00")


def test_length_zero_rejected_after_good_frames_and_split_header() -> None:
    decoder = FrameDecoder(1500)
    assert decoder.feed(frame(b"ok") + b"\x00") == [b"ok"]
    with pytest.raises(FrameError):
        decoder.feed(b"\x00rest")


def test_length_above_max_rejected() -> None:
    decoder = FrameDecoder(10)
    with pytest.raises(FrameError, match="11"):
        decoder.feed(frame(b"x" * 11))


def test_huge_length_with_small_limit_rejected_from_header_alone() -> None:
    # 0xFFFF must be refused as soon as the header is seen, without waiting for 65535 bytes.
    decoder = FrameDecoder(1500)
    with pytest.raises(FrameError):
        decoder.feed(b"\xff\xff")


def test_huge_length_rejected_when_header_arrives_one_byte_at_a_time() -> None:
    decoder = FrameDecoder(1500)
    assert decoder.feed(b"\xff") == []
    with pytest.raises(FrameError):
        decoder.feed(b"\xff")


def test_control_limit_decoder() -> None:
    decoder = FrameDecoder(MAX_CONTROL_MESSAGE)
    assert decoder.feed(frame(b"m" * MAX_CONTROL_MESSAGE)) == [b"m" * MAX_CONTROL_MESSAGE]
    with pytest.raises(FrameError):
        decoder.feed(struct.pack("!H", MAX_CONTROL_MESSAGE + 1))


@pytest.mark.parametrize("bad_header", [b"\x00\x00", b"\x05\xdd", b"\xff\xff"], ids=["zero", "1501", "ffff"])
def test_decoder_refuses_input_after_failure(bad_header: bytes) -> None:
    decoder = FrameDecoder(1500)
    with pytest.raises(FrameError):
        decoder.feed(bad_header)
    # Even perfectly valid data (or nothing at all) is refused afterwards.
    with pytest.raises(FrameError):
        decoder.feed(frame(b"valid"))
    with pytest.raises(FrameError):
        decoder.feed(b"")


# --------------------------------------------------------------------------- truncation


def test_clean_end_on_empty_stream() -> None:
    decoder = FrameDecoder(1500)
    decoder.check_clean_end()
    assert decoder.pending == 0


def test_truncated_inside_header() -> None:
    decoder = FrameDecoder(1500)
    decoder.feed(b"\x00")
    assert decoder.pending == 1
    with pytest.raises(FrameError):
        decoder.check_clean_end()


def test_truncated_inside_payload_reports_leftover() -> None:
    decoder = FrameDecoder(1500)
    assert decoder.feed(frame(b"whole") + frame(b"cut short")[:6]) == [b"whole"]
    assert decoder.pending == 6
    with pytest.raises(FrameError, match="6 bytes"):
        decoder.check_clean_end()


def test_truncated_frame_completed_later_is_clean() -> None:
    decoder = FrameDecoder(1500)
    data = frame(b"abcdef")
    decoder.feed(data[:5])
    with pytest.raises(FrameError):
        decoder.check_clean_end()
    assert decoder.feed(data[5:]) == [b"abcdef"]
    decoder.check_clean_end()


# --------------------------------------------------------------------------- properties

payload_lists = st.lists(st.binary(min_size=1, max_size=600), max_size=12)


@PROPERTY
@given(payloads=payload_lists, data=st.data())
def test_round_trip_under_arbitrary_chunking(payloads: list[bytes], data: st.DataObject) -> None:
    stream = encode_frames(payloads)
    assert stream == b"".join(encode_frame(p) for p in payloads)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30), label="cuts")
    decoder = FrameDecoder(600)
    assert feed_all(decoder, split_at(stream, cuts)) == payloads
    assert decoder.pending == 0
    decoder.check_clean_end()


@PROPERTY
@given(payloads=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=8), data=st.data())
def test_truncated_stream_is_detected(payloads: list[bytes], data: st.DataObject) -> None:
    stream = encode_frames(payloads)
    boundaries = set()
    pos = 0
    for p in payloads:
        boundaries.add(pos)
        pos += 2 + len(p)
    cut = data.draw(st.integers(0, len(stream) - 1).filter(lambda n: n not in boundaries), label="cut")
    complete = [p for p, start in zip(payloads, sorted(boundaries), strict=True) if start + 2 + len(p) <= cut]
    last_boundary = max(b for b in boundaries if b <= cut)

    decoder = FrameDecoder(MAX_FRAME_LENGTH)
    assert decoder.feed(stream[:cut]) == complete
    assert decoder.pending == cut - last_boundary
    with pytest.raises(FrameError):
        decoder.check_clean_end()


def _decode_outcome(max_length: int, chunks: list[bytes]) -> tuple[str, list[bytes], int]:
    decoder = FrameDecoder(max_length)
    out: list[bytes] = []
    try:
        for chunk in chunks:
            out.extend(decoder.feed(chunk))
    except FrameError:
        return ("error", [], 0)
    return ("ok", out, decoder.pending)


@PROPERTY
@given(stream=st.binary(max_size=400), max_length=st.integers(1, 300), data=st.data())
def test_arbitrary_bytes_chunking_invariant_and_only_frame_errors(
    stream: bytes, max_length: int, data: st.DataObject
) -> None:
    # Garbage input may only ever produce FrameError, and chunking must never change the outcome.
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts")
    whole = _decode_outcome(max_length, [stream])
    assert _decode_outcome(max_length, split_at(stream, cuts)) == whole
    if whole[0] == "ok":
        assert all(1 <= len(p) <= max_length for p in whole[1])
        assert sum(2 + len(p) for p in whole[1]) + whole[2] == len(stream)


@PROPERTY
@given(length=st.integers(0, MAX_FRAME_LENGTH), max_length=st.integers(1, MAX_FRAME_LENGTH))
def test_header_validity_decided_by_length_alone(length: int, max_length: int) -> None:
    decoder = FrameDecoder(max_length)
    header = struct.pack("!H", length)
    if length == 0 or length > max_length:
        with pytest.raises(FrameError):
            decoder.feed(header)
    else:
        assert decoder.feed(header) == []
        assert decoder.pending == 2
