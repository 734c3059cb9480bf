"""Length-prefixed frames: a u16 big-endian length, then that many bytes.

The same framing carries IP packets on data streams (limit: the negotiated MTU) and the
control-plane messages of TCP mode (limit: 4096 bytes). No I/O here: bytes in, bytes out.
"""

from __future__ import annotations

from collections.abc import Iterable

from rustvpn.errors import FrameError

HEADER_SIZE = 2
MAX_CONTROL_MESSAGE = 4096
MAX_FRAME_LENGTH = 0xFFFF


def encode_frame(payload: bytes, max_length: int = MAX_FRAME_LENGTH) -> bytes:
    """Frame one payload. A zero-length or oversized payload is refused: the peer would tear down."""
    length = len(payload)
    limit = min(max_length, MAX_FRAME_LENGTH)  # the u16 length field caps every frame
    if length == 0 or length > limit:
        raise FrameError(f"cannot frame a payload of {length} bytes (allowed 1..{limit})")
    return length.to_bytes(2, "big") + payload


def encode_frames(payloads: Iterable[bytes]) -> bytes:
    """Frame several payloads into one buffer, so a transport can send them in one write."""
    parts: list[bytes] = []
    for payload in payloads:
        length = len(payload)
        if length == 0 or length > MAX_FRAME_LENGTH:
            raise FrameError(f"cannot frame a payload of {length} bytes")
        parts.append(length.to_bytes(2, "big"))
        parts.append(payload)
    return b"".join(parts)


class FrameDecoder:
    """Incremental decoder: feed it any chunking of the byte stream, get whole payloads back.

    A frame of length 0 or above ``max_length`` is a protocol violation: ``feed`` raises
    :class:`FrameError` and the decoder refuses all further input (the session must end).
    """

    __slots__ = ("_buffer", "_failed", "max_length")

    def __init__(self, max_length: int) -> None:
        if not 1 <= max_length <= MAX_FRAME_LENGTH:
            raise ValueError(f"max_length must be 1..{MAX_FRAME_LENGTH}, not {max_length}")
        self.max_length = max_length
        self._buffer = bytearray()
        self._failed = False

    @property
    def pending(self) -> int:
        """Bytes held that do not yet make a whole frame (non-zero at close = a truncated frame)."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        if self._failed:
            raise FrameError("decoder already failed on an invalid frame")
        if not self._buffer:
            # Most reads of a quiet connection are one whole frame (a TLS record per write).
            total = len(data)
            if total > HEADER_SIZE:
                length = data[0] << 8 | data[1]
                if total == HEADER_SIZE + length and length <= self.max_length:
                    return [bytes(data[HEADER_SIZE:])]
        if self._buffer:
            self._buffer += data
            view: bytes | bytearray | memoryview = self._buffer
        else:
            view = data
        total = len(view)
        pos = 0
        out: list[bytes] = []
        limit = self.max_length
        while total - pos >= HEADER_SIZE:
            length = (view[pos] << 8) | view[pos + 1]
            if length == 0 or length > limit:
                self._failed = True
                self._buffer = bytearray()
                raise FrameError(f"invalid frame length {length} (allowed 1..{limit})")
            end = pos + HEADER_SIZE + length
            if end > total:
                break
            out.append(bytes(view[pos + HEADER_SIZE : end]))
            pos = end
        if pos < total:
            self._buffer = bytearray(view[pos:]) if view is not self._buffer else self._buffer[pos:]
        else:
            self._buffer = bytearray()
        return out

    def check_clean_end(self) -> None:
        """Call when the stream ends: raises if it ended inside a frame."""
        if self._buffer:
            raise FrameError(f"stream ended inside a frame ({len(self._buffer)} bytes left over)")
