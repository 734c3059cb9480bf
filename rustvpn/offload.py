"""TUN segmentation offload, without I/O: the virtio-net header in front of every packet read from or
written to a TUN device opened with IFF_VNET_HDR, and the software fallback for a peer that does not
take offloaded packets.

With offload on, the kernel hands the TUN reader TCP segments of up to 64 KB (one header says how
to cut them into MSS-sized packets) and leaves checksums to be completed. Between two rustvpn peers
that both offer it, such a packet crosses whole, header included, and the receiving kernel cuts it
(or hands it whole to its local TCP). For any other peer the sender does the device's job here:
complete the checksum, cut the segment into packets. The kernel validates every header we write.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VNET_HDR_LEN = 10
ZERO_HDR = bytes(VNET_HDR_LEN)  # "a plain, complete packet": what a non-offloaded packet carries

F_NEEDS_CSUM = 0x01
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4 = 0, 1, 3, 4, 5
GSO_ECN = 0x80

# Largest packet we let the kernel build (the TUN device's gso_max_size): header plus packet must
# stay within one u16-length frame.
GSO_MAX_SIZE = 65535 - VNET_HDR_LEN - 25
# Largest frame of an offload session: the virtio header plus a packet of up to GSO_MAX_SIZE.
MAX_OFFLOAD_FRAME = VNET_HDR_LEN + GSO_MAX_SIZE

MIN_SEGMENT = 64

_HDR = struct.Struct("<BBHHHH")  # little-endian: the x86/arm64 native order TUN uses by default
_TCP_FIN, _TCP_PSH, _TCP_CWR = 0x01, 0x08, 0x80


class OffloadError(ValueError):
    """A packet whose offload header cannot be honoured (it is dropped)."""


@dataclass(frozen=True, slots=True)
class VnetHeader:
    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int

    @classmethod
    def parse(cls, data: bytes | memoryview) -> VnetHeader:
        if len(data) < VNET_HDR_LEN:
            raise OffloadError(f"{len(data)} bytes: shorter than the {VNET_HDR_LEN}-byte virtio header")
        return cls(*_HDR.unpack_from(data))

    def pack(self) -> bytes:
        return _HDR.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset)


def is_plain(data: bytes) -> bool:
    """True when a header-prefixed packet needs nothing done: no segmentation, checksum complete."""
    return data[1] == GSO_NONE and not data[0] & F_NEEDS_CSUM


def plain_packets(data: bytes) -> list[bytes]:
    """The ready-to-send IP packets in one header-prefixed read: what a non-offload peer receives."""
    if len(data) < VNET_HDR_LEN:
        raise OffloadError(f"{len(data)} bytes: shorter than the {VNET_HDR_LEN}-byte virtio header")
    if is_plain(data):
        return [data[VNET_HDR_LEN:]]
    hdr = VnetHeader.parse(data)
    packet = bytearray(data[VNET_HDR_LEN:])
    gso = hdr.gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        _complete_checksum(packet, hdr.csum_start, hdr.csum_offset)
        return [bytes(packet)]
    if gso in (GSO_TCPV4, GSO_TCPV6):
        return segment_tcp(packet, hdr.gso_size)
    if gso == GSO_UDP_L4:
        return segment_udp(packet, hdr.gso_size)
    raise OffloadError(f"unsupported GSO type {hdr.gso_type}")


# -- checksums -------------------------------------------------------------------------------------


def ones_sum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """16-bit ones' complement sum of data (big-endian words, odd byte padded), folded.

    A number's residue mod 0xFFFF is the ones' complement sum of its 16-bit digits (2**16 = 1 mod
    0xFFFF), so one C-speed int conversion replaces a Python loop over words.
    """
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    n = int.from_bytes(data, "big") + start
    s = n % 0xFFFF
    return 0xFFFF if s == 0 and n else s


def _complete_checksum(packet: bytearray, csum_start: int, csum_offset: int) -> None:
    """The device's job for CHECKSUM_PARTIAL: the field holds the pseudo-header sum already."""
    field = csum_start + csum_offset
    if csum_start >= len(packet) or field + 2 > len(packet):
        raise OffloadError(f"checksum at {csum_start}+{csum_offset} lies outside a {len(packet)}-byte packet")
    csum = ~ones_sum(memoryview(packet)[csum_start:]) & 0xFFFF
    packet[field : field + 2] = csum.to_bytes(2, "big")


def _pseudo_sum(packet: bytes | bytearray, version: int, proto: int, length: int) -> int:
    if version == 4:
        return ones_sum(bytes(packet[12:20]) + struct.pack("!HH", proto, length))
    return ones_sum(bytes(packet[8:40]) + struct.pack("!IxxxB", length, proto))


def ipv4_header_checksum(header: bytes | bytearray) -> int:
    """Checksum of an IPv4 header whose checksum field is zero."""
    return ~ones_sum(header) & 0xFFFF


# -- TCP segmentation -------------------------------------------------------------------------------


def segment_tcp(packet: bytes | bytearray, mss: int) -> list[bytes]:
    """Cut one oversized TCP/IP packet into packets of at most ``mss`` payload bytes, as TSO does.

    Every segment gets the headers of the original with its own sequence number, IP length (and
    IPv4 id and header checksum) and a full TCP checksum; FIN and PSH stay on the last segment only,
    CWR on the first only.
    """
    if mss < MIN_SEGMENT:
        # The kernel's smallest MSS is far above this; a tiny one would only cut a segment into
        # thousands of packets and stall the event loop.
        raise OffloadError(f"segment size {mss} is below {MIN_SEGMENT}")
    version = packet[0] >> 4 if packet else 0
    if version == 4:
        ip_len = (packet[0] & 0x0F) * 4
        if ip_len < 20 or len(packet) < ip_len or packet[9] != 6:
            raise OffloadError("segmentation offload on an IPv4 packet that is not TCP")
    elif version == 6:
        ip_len = 40
        if len(packet) < 40 or packet[6] != 6:
            raise OffloadError("segmentation offload on an IPv6 packet without a plain TCP header")
    else:
        raise OffloadError(f"segmentation offload on a packet of IP version {version}")
    if len(packet) < ip_len + 20:
        raise OffloadError("segmentation offload on a packet shorter than its TCP header")
    tcp_len = (packet[ip_len + 12] >> 4) * 4
    headers = ip_len + tcp_len
    if tcp_len < 20 or len(packet) < headers:
        raise OffloadError("segmentation offload on a packet with a truncated TCP header")
    payload = memoryview(packet)[headers:]
    seq = int.from_bytes(packet[ip_len + 4 : ip_len + 8], "big")
    ip_id = int.from_bytes(packet[4:6], "big") if version == 4 else 0
    flags = packet[ip_len + 13]
    segments: list[bytes] = []
    count = max(1, -(-len(payload) // mss))
    for i in range(count):
        chunk = payload[i * mss : (i + 1) * mss]
        seg = bytearray(packet[:headers])
        seg += chunk
        last = i == count - 1
        seg_flags = flags if last else flags & ~(_TCP_FIN | _TCP_PSH)
        if i:
            seg_flags &= ~_TCP_CWR
        seg[ip_len + 13] = seg_flags
        seg[ip_len + 4 : ip_len + 8] = ((seq + i * mss) & 0xFFFFFFFF).to_bytes(4, "big")
        segment_tcp_len = len(seg) - ip_len
        if version == 4:
            seg[2:4] = len(seg).to_bytes(2, "big")
            seg[4:6] = ((ip_id + i) & 0xFFFF).to_bytes(2, "big")
            seg[10:12] = b"\x00\x00"
            seg[10:12] = ipv4_header_checksum(seg[:ip_len]).to_bytes(2, "big")
        else:
            seg[4:6] = segment_tcp_len.to_bytes(2, "big")
        seg[ip_len + 16 : ip_len + 18] = b"\x00\x00"
        csum = ~ones_sum(memoryview(seg)[ip_len:], _pseudo_sum(seg, version, 6, segment_tcp_len)) & 0xFFFF
        seg[ip_len + 16 : ip_len + 18] = csum.to_bytes(2, "big")
        segments.append(bytes(seg))
    return segments


# -- UDP segmentation -------------------------------------------------------------------------------


def segment_udp(packet: bytes | bytearray, size: int) -> list[bytes]:
    """Cut one oversized UDP/IP packet into datagrams of ``size`` payload bytes (the last may be
    shorter), as UDP GSO does: each with the original's headers, its own lengths (and IPv4 id and
    header checksum) and a full UDP checksum."""
    if size < MIN_SEGMENT:
        raise OffloadError(f"segment size {size} is below {MIN_SEGMENT}")
    version = packet[0] >> 4 if packet else 0
    if version == 4 and len(packet) >= 28 and packet[0] == 0x45 and packet[9] == 17:
        ip_len = 20
    elif version == 6 and len(packet) >= 48 and packet[6] == 17:
        ip_len = 40
    else:
        raise OffloadError("UDP segmentation offload on a packet that is not plain UDP over IPv4 or IPv6")
    headers = ip_len + 8
    payload = memoryview(packet)[headers:]
    ip_id = int.from_bytes(packet[4:6], "big") if version == 4 else 0
    segments: list[bytes] = []
    for i in range(max(1, -(-len(payload) // size))):
        seg = bytearray(packet[:headers])
        seg += payload[i * size : (i + 1) * size]
        udp_len = len(seg) - ip_len
        if version == 4:
            seg[2:4] = len(seg).to_bytes(2, "big")
            seg[4:6] = ((ip_id + i) & 0xFFFF).to_bytes(2, "big")
            seg[10:12] = b"\x00\x00"
            seg[10:12] = ipv4_header_checksum(seg[:ip_len]).to_bytes(2, "big")
        else:
            seg[4:6] = udp_len.to_bytes(2, "big")
        seg[ip_len + 4 : ip_len + 6] = udp_len.to_bytes(2, "big")
        seg[ip_len + 6 : ip_len + 8] = b"\x00\x00"
        csum = ~ones_sum(memoryview(seg)[ip_len:], _pseudo_sum(seg, version, 17, udp_len)) & 0xFFFF
        seg[ip_len + 6 : ip_len + 8] = (csum or 0xFFFF).to_bytes(2, "big")  # 0 means "no checksum"
        segments.append(bytes(seg))
    return segments
