"""Properties of FrameDecoder beyond tests/unit/test_framing.py, as the framing fuzz target checks them:
the decoder never holds more than one incomplete frame, refuses everything once it has failed, and gives
the same payloads when the caller reuses one receive buffer (or hands over views into it)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rustvpn.errors import FrameError
from rustvpn.framing import FrameDecoder, encode_frame

PROPERTY = settings(database=None, deadline=None, max_examples=200)


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    chunks, pos = [], 0
    for size in sizes:
        chunks.append(data[pos : pos + size])
        pos += size
    return [*chunks, data[pos:]]


@PROPERTY
@given(stream=st.binary(max_size=600), sizes=st.lists(st.integers(0, 80), max_size=20), max_length=st.integers(1, 300))
def test_pending_never_exceeds_one_incomplete_frame(stream: bytes, sizes: list[int], max_length: int) -> None:
    decoder = FrameDecoder(max_length)
    try:
        for chunk in chunked(stream, sizes):
            decoder.feed(chunk)
            assert decoder.pending <= max_length + 1  # a full header, and one byte short of the payload
    except FrameError:
        pass


@PROPERTY
@given(garbage=st.binary(min_size=2, max_size=200), max_length=st.integers(1, 100), later=st.binary(max_size=20))
def test_after_any_failure_everything_is_refused(garbage: bytes, max_length: int, later: bytes) -> None:
    decoder = FrameDecoder(max_length)
    try:
        decoder.feed(garbage)
    except FrameError:
        for data in (later, b"", encode_frame(b"x")):
            try:
                decoder.feed(data)
            except FrameError:
                continue
            raise AssertionError(f"fed {data!r} after a failure") from None


@PROPERTY
@given(
    payloads=st.lists(st.binary(min_size=1, max_size=120), max_size=10),
    sizes=st.lists(st.integers(1, 64), min_size=1, max_size=30),
    as_view=st.booleans(),
)
def test_reused_receive_buffer(payloads: list[bytes], sizes: list[int], as_view: bool) -> None:
    # A transport reading into one bytearray overwrites it before the next feed; nothing may alias it.
    stream = b"".join(encode_frame(p) for p in payloads)
    receive = bytearray(65)
    decoder = FrameDecoder(120)
    out: list[bytes] = []
    pos = 0
    turn = 0
    while pos < len(stream):
        chunk = stream[pos : pos + sizes[turn % len(sizes)]]
        pos, turn = pos + len(chunk), turn + 1
        if as_view:
            receive[1 : 1 + len(chunk)] = chunk  # at offset 1: a view that does not start the buffer
            out += decoder.feed(memoryview(receive)[1 : 1 + len(chunk)])
        else:
            receive = bytearray(chunk)
            out += decoder.feed(receive)
        receive[:] = b"\xee" * len(receive)
    assert out == payloads
    assert decoder.pending == 0
