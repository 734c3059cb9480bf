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


def echo_id(packet: bytes | bytearray | memoryview, start: int = 0) -> int:
    """The identifier of an ICMP or ICMPv6 echo request or reply (a ping) that begins at
    ``packet[start]``, or -1 for any other packet.

    A ping has no ports but is a flow all the same: a request and its reply carry the same
    identifier, so both can take the same stream (IPv6 only without extension headers).
    """
    size = len(packet) - start
    if size < 28:
        return -1
    first = packet[start]
    if first >> 4 == 4:
        header = (first & 0x0F) * 4
        if (
            packet[start + 9] != 1
            or header < 20
            or size < header + 8
            or (packet[start + 6] << 8 | packet[start + 7]) & 0x3FFF
        ):
            return -1
        at = start + header
        return packet[at + 4] << 8 | packet[at + 5] if packet[at] in (0, 8) else -1
    if first >> 4 == 6 and size >= 48 and packet[start + 6] == 58:
        at = start + 40
        return packet[at + 4] << 8 | packet[at + 5] if packet[at] in (128, 129) else -1
    return -1


def _echo_kind(packet: bytes | bytearray | memoryview) -> int:
    """8 for an ICMP or ICMPv6 echo request, 0 for an echo reply (ICMP's type numbers), -1 for any
    other packet (IPv4: the first fragment counts; IPv6 only without extension headers)."""
    size = len(packet)
    if size < 28:
        return -1
    first = packet[0]
    if first >> 4 == 4:
        header = (first & 0x0F) * 4
        if packet[9] != 1 or not 20 <= header <= size - 8 or (packet[6] << 8 | packet[7]) & 0x1FFF:
            return -1
        kind = packet[header]
        return kind if kind in (0, 8) else -1
    if first >> 4 == 6 and size >= 48 and packet[6] == 58:
        kind = packet[40]
        return 8 if kind == 128 else 0 if kind == 129 else -1
    return -1


def is_echo_request(packet: bytes | bytearray | memoryview) -> bool:
    """Whether a packet is a ping's request, which the receiving kernel answers at once, inside
    the write that delivers it."""
    return _echo_kind(packet) == 8


def is_echo_reply(packet: bytes | bytearray | memoryview) -> bool:
    """Whether a packet is a ping's reply, which nothing answers."""
    return _echo_kind(packet) == 0


class StreamSelector:
    """Picks the stream index for each packet: port hash, else round-robin."""

    __slots__ = ("_next", "count")

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError("stream count must be at least 1")
        self.count = count
        self._next = 0

    def select(self, packet: bytes | bytearray | memoryview, start: int = 0) -> int:
        """The stream of the packet that begins at ``packet[start]``."""
        index = self.flow(packet, start)
        if index >= 0:
            return index
        index = self._next
        self._next = (index + 1) % self.count
        return index

    def flow(self, packet: bytes | bytearray | memoryview, start: int = 0) -> int:
        """The stream of the packet's flow (its ports), or -1 for a packet without ports.

        On every packet's path, so the IPv4 case of flow_ports is written out here: one call less.
        """
        count = self.count
        if count == 1:
            return 0
        size = len(packet) - start
        if size < 1:
            return -1
        version = packet[start] >> 4
        if version == 4:
            if size < 20:
                return -1
            ihl = (packet[start] & 0x0F) * 4
            if ihl < 20 or (packet[start + 6] << 8 | packet[start + 7]) & 0x3FFF:
                return -1  # a bad header, or a fragment
            if packet[start + 9] not in _PORT_PROTOCOLS or size < ihl + 4:
                return -1
            at = start + ihl
            return ((packet[at] << 8 | packet[at + 1]) ^ (packet[at + 2] << 8 | packet[at + 3])) % count
        if version == 6:
            ports = _ipv6_ports(memoryview(packet)[start:] if start else packet)
            if ports is not None:
                return (ports[0] ^ ports[1]) % count
        return -1
