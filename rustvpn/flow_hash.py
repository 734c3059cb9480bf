"""Choosing a stream for each outgoing packet.

TCP/UDP-style packets are hashed on their ports (XOR: symmetric, so both directions of a flow
share one stream index and a flow is never reordered); everything else goes round-robin.
Packets come from the TUN device and may be garbage: every read is bounds-checked.
"""

from __future__ import annotations

# Transport protocols whose first four bytes are the source and destination ports.
_PORT_PROTOCOLS = frozenset({6, 17, 33, 132, 136})  # TCP, UDP, DCCP, SCTP, UDP-Lite
# IPv6 extension headers laid out as (next header, length in 8-octet units not counting the first).
_IPV6_GENERIC_EXT = frozenset({0, 43, 60, 135, 139, 140})
_IPV6_FRAGMENT = 44
_IPV6_AH = 51
_MAX_EXT_HEADERS = 16


def flow_ports(packet: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(source port, destination port) of an IPv4/IPv6 packet, or None when it has none."""
    if len(packet) < 1:
        return None
    version = packet[0] >> 4
    if version == 4:
        return _ipv4_ports(packet)
    if version == 6:
        return _ipv6_ports(packet)
    return None


def _ports_at(packet: bytes | bytearray | memoryview, offset: int) -> tuple[int, int] | None:
    if len(packet) < offset + 4:
        return None
    return (packet[offset] << 8 | packet[offset + 1], packet[offset + 2] << 8 | packet[offset + 3])


def _ipv4_ports(packet: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20:
        return None
    # Any fragment (more-fragments flag or a non-zero offset) has no reliable ports.
    if (packet[6] << 8 | packet[7]) & 0x3FFF:
        return None
    if packet[9] not in _PORT_PROTOCOLS:
        return None
    return _ports_at(packet, ihl)


def _ipv6_ports(packet: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    if len(packet) < 40:
        return None
    next_header = packet[6]
    offset = 40
    for _ in range(_MAX_EXT_HEADERS):
        if next_header in _PORT_PROTOCOLS:
            return _ports_at(packet, offset)
        if len(packet) < offset + 8:
            return None
        if next_header in _IPV6_GENERIC_EXT:
            next_header, offset = packet[offset], offset + (packet[offset + 1] + 1) * 8
        elif next_header == _IPV6_AH:
            next_header, offset = packet[offset], offset + (packet[offset + 1] + 2) * 4
        elif next_header == _IPV6_FRAGMENT:
            # Fragments go round-robin, as in IPv4.
            return None
        else:
            return None  # ICMPv6, ESP, no-next-header, unknown
    return None


class StreamSelector:
    """Picks the stream index for each packet: port hash, else round-robin."""

    __slots__ = ("_next", "count")

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError("stream count must be at least 1")
        self.count = count
        self._next = 0

    def select(self, packet: bytes | bytearray | memoryview) -> int:
        if self.count == 1:
            return 0
        ports = flow_ports(packet)
        if ports is not None:
            return (ports[0] ^ ports[1]) % self.count
        index = self._next
        self._next = (index + 1) % self.count
        return index
