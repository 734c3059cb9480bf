"""The virtio-net header and the software fallback for TUN offload (rustvpn/offload.py).

Checksums are verified with a plain word-by-word sum written here, independent of the module's
integer trick.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rustvpn.offload import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    VNET_HDR_LEN,
    ZERO_HDR,
    OffloadError,
    VnetHeader,
    is_plain,
    ones_sum,
    plain_packets,
    segment_tcp,
)

SRC4, DST4 = ipaddress.IPv4Address("198.19.7.2"), ipaddress.IPv4Address("198.19.7.1")
SRC6, DST6 = ipaddress.IPv6Address("fd00:77::2"), ipaddress.IPv6Address("fd00:77::1")
FIN, SYN, PSH, ACK, CWR = 0x01, 0x02, 0x08, 0x10, 0x80


def slow_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo(packet: bytes, tcp_len: int, proto: int = 6) -> bytes:
    if packet[0] >> 4 == 4:
        return packet[12:20] + struct.pack("!BBH", 0, proto, tcp_len)
    return packet[8:40] + struct.pack("!IxxxB", tcp_len, proto)


def ip_header_len(packet: bytes) -> int:
    return (packet[0] & 0x0F) * 4 if packet[0] >> 4 == 4 else 40


def tcp_checksum_ok(packet: bytes) -> bool:
    ip_len = ip_header_len(packet)
    segment = packet[ip_len:]
    return slow_sum(pseudo(packet, len(segment)) + segment) == 0xFFFF


def tcp_packet(version: int, payload: bytes, *, flags: int = ACK | PSH, seq: int = 1000, options: bytes = b"") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, (5 + len(options) // 4) << 4, flags, 65535, 0, 0) + options
    if version == 4:
        total = 20 + len(tcp) + len(payload)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 4242, 0x4000, 64, 6, 0, SRC4.packed, DST4.packed)
        ip = ip[:10] + (~slow_sum(ip) & 0xFFFF).to_bytes(2, "big") + ip[12:]
    else:
        ip = struct.pack("!IHBB16s16s", 0x60000000, len(tcp) + len(payload), 6, 64, SRC6.packed, DST6.packed)
    packet = bytearray(ip + tcp + payload)
    ip_len = len(ip)
    csum = ~slow_sum(pseudo(bytes(packet), len(tcp) + len(payload)) + bytes(packet[ip_len:])) & 0xFFFF
    packet[ip_len + 16 : ip_len + 18] = csum.to_bytes(2, "big")
    return bytes(packet)


def partial(packet: bytes) -> bytes:
    """The packet as the kernel hands it with checksum offload: the pseudo-header sum, not complemented."""
    ip_len = ip_header_len(packet)
    p = bytearray(packet)
    p[ip_len + 16 : ip_len + 18] = slow_sum(pseudo(packet, len(packet) - ip_len)).to_bytes(2, "big")
    return bytes(p)


def header(flags: int, gso_type: int, hdr_len: int, gso_size: int, csum_start: int, csum_offset: int = 16) -> bytes:
    return VnetHeader(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset).pack()


# ------------------------------------------------------------------------------------ ones' sum


@given(st.binary(max_size=3000))
def test_ones_sum_equals_the_word_by_word_sum(data: bytes) -> None:
    expected = slow_sum(data)
    got = ones_sum(data)
    # 0 and 0xFFFF are the same number in ones' complement; only all-zero data sums to +0.
    assert got == expected or ({got, expected} == {0, 0xFFFF} and any(data))


def test_ones_sum_of_nonzero_data_that_cancels_is_negative_zero() -> None:
    assert ones_sum(b"\xff\xff") == 0xFFFF
    assert ones_sum(b"\x00\x00") == 0


# ------------------------------------------------------------------------------------ header


def test_header_round_trip_and_plain_zero_header() -> None:
    raw = header(F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 52, 1448, 20, 16)
    assert len(raw) == VNET_HDR_LEN
    assert VnetHeader.parse(raw) == VnetHeader(F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 52, 1448, 20, 16)
    assert is_plain(ZERO_HDR + b"\x45")
    assert not is_plain(raw + b"\x45")


def test_short_header_is_refused() -> None:
    with pytest.raises(OffloadError, match="virtio header"):
        VnetHeader.parse(b"\x00" * 9)
    with pytest.raises(OffloadError, match="virtio header"):
        plain_packets(b"\x00" * 9)


def test_plain_packet_passes_unchanged() -> None:
    packet = tcp_packet(4, b"hello")
    assert plain_packets(ZERO_HDR + packet) == [packet]


@pytest.mark.parametrize("version", [4, 6])
def test_partial_checksum_is_completed(version: int) -> None:
    packet = tcp_packet(version, b"x" * 999)
    ip_len = ip_header_len(packet)
    (out,) = plain_packets(header(F_NEEDS_CSUM, GSO_NONE, 0, 0, ip_len, 16) + partial(packet))
    assert out == packet
    assert tcp_checksum_ok(out)


def test_checksum_position_outside_the_packet_is_refused() -> None:
    packet = tcp_packet(4, b"abc")
    with pytest.raises(OffloadError, match="outside"):
        plain_packets(header(F_NEEDS_CSUM, GSO_NONE, 0, 0, len(packet) - 1, 16) + packet)


def test_unsupported_gso_type_is_refused() -> None:
    with pytest.raises(OffloadError, match="GSO type"):
        plain_packets(header(F_NEEDS_CSUM, GSO_UDP, 28, 1000, 20, 6) + tcp_packet(4, b"u" * 3000))  # (UFO)


def test_udp_segmentation_of_a_packet_that_is_not_udp_is_refused() -> None:
    with pytest.raises(OffloadError, match="not plain UDP"):
        plain_packets(header(F_NEEDS_CSUM, GSO_UDP_L4, 28, 1000, 20, 6) + tcp_packet(4, b"u" * 3000))


# ------------------------------------------------------------------------------------ segmentation


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize(
    ("size", "mss"), [(10000, 1448), (1448, 1448), (1449, 1448), (65000, 1428), (1, 536), (300, 64)]
)
def test_segments_carry_the_payload_in_order_with_valid_checksums(version: int, size: int, mss: int) -> None:
    payload = bytes(i * 7 % 251 for i in range(size))
    big = tcp_packet(version, payload, flags=ACK | PSH | FIN | CWR, seq=0xFFFFF000)
    gso = GSO_TCPV4 if version == 4 else GSO_TCPV6
    ip_len = ip_header_len(big)
    segments = plain_packets(header(F_NEEDS_CSUM, gso, ip_len + 20, mss, ip_len) + partial(big))
    assert len(segments) == -(-size // mss)
    joined = b""
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        data = seg[ip_len + 20 :]
        assert 0 < len(data) <= mss
        joined += data
        assert tcp_checksum_ok(seg), f"segment {i}: bad TCP checksum"
        if version == 4:
            assert int.from_bytes(seg[2:4], "big") == len(seg)
            assert slow_sum(seg[:20]) == 0xFFFF, f"segment {i}: bad IPv4 header checksum"
            assert int.from_bytes(seg[4:6], "big") == (4242 + i) & 0xFFFF
        else:
            assert int.from_bytes(seg[4:6], "big") == len(seg) - 40
        assert int.from_bytes(seg[ip_len + 4 : ip_len + 8], "big") == (0xFFFFF000 + i * mss) & 0xFFFFFFFF
        seg_flags = seg[ip_len + 13]
        assert seg_flags & ACK
        assert bool(seg_flags & (FIN | PSH)) == last
        assert bool(seg_flags & CWR) == (i == 0)
    assert joined == payload


def test_tcp_options_are_copied_into_every_segment() -> None:
    options = b"\x01\x01\x08\x0a" + b"\x00\x00\x00\x01\x00\x00\x00\x02"  # NOP NOP timestamps
    big = tcp_packet(4, b"o" * 3000, options=options)
    segments = segment_tcp(big, 1000)
    assert len(segments) == 3
    for seg in segments:
        assert seg[40:52] == options and tcp_checksum_ok(seg)


@pytest.mark.parametrize(
    ("packet", "match"),
    [
        (tcp_packet(4, b"x")[:30], "truncated TCP header|shorter than its TCP header"),
        (b"\x45" + bytes(8) + b"\x11" + bytes(30), "not TCP"),
        (b"\x60" + bytes(5) + b"\x3a" + bytes(60), "without a plain TCP header"),
        (b"\x20" + bytes(60), "IP version 2"),
        (b"", "IP version 0"),
    ],
)
def test_segmentation_refuses_what_it_cannot_cut(packet: bytes, match: str) -> None:
    with pytest.raises(OffloadError, match=match):
        segment_tcp(packet, 1000)


@pytest.mark.parametrize("mss", [0, 1, 63])
def test_tiny_segment_sizes_are_refused(mss: int) -> None:
    with pytest.raises(OffloadError, match="below 64"):
        segment_tcp(tcp_packet(4, b"x" * 10), mss)


@given(st.binary(max_size=200), st.integers(0, 0xFF), st.integers(0, 0xFF), st.integers(0, 0xFFFF))
def test_any_bytes_either_give_packets_or_offload_error(body: bytes, flags: int, gso: int, size: int) -> None:
    data = header(flags, gso, 0, size, 0, 0) + body
    try:
        packets = plain_packets(data)
    except OffloadError:
        return
    assert all(isinstance(p, bytes) for p in packets)
