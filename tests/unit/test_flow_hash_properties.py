"""Properties of the flow hash beyond tests/unit/test_flow_hash.py, as the flow_hash fuzz target checks them:
on packets built with random IPv4 options and random IPv6 extension-header chains (so where the ports
sit is known by construction), the ports are found exactly there, the two directions of a flow share a
stream, and a packet cut anywhere before its ports has none."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from rustvpn.flow_hash import StreamSelector, flow_ports

PROPERTY = settings(database=None, deadline=None, max_examples=300)

PORTED = [6, 17, 33, 132, 136]  # TCP, UDP, DCCP, SCTP, UDP-Lite
GENERIC_EXT = [0, 43, 60, 135, 139, 140]  # length byte counts 8-octet units beyond the first
AH = 51  # length byte counts 4-octet units, minus 2
MAX_EXT = 15  # flow_hash gives up after 16 headers: 15 extensions and the transport


@st.composite
def extension(draw: st.DrawFn) -> tuple[int, int]:
    """(next-header value announcing it, its length in bytes), with a length byte of any size."""
    kind = draw(st.sampled_from([*GENERIC_EXT, AH]))
    units = draw(st.integers(0, 12))
    return kind, (units + 1) * 8 if kind != AH else (units + 2) * 4


def ipv6_packet(chain: list[tuple[int, int]], transport: int, ports: bytes, filler: int) -> tuple[bytes, int]:
    """A packet with this extension chain then ``ports``; returns it and where the ports start."""
    kinds = [kind for kind, _ in chain] + [transport]
    body = b""
    for (kind, length), following in zip(chain, kinds[1:], strict=True):
        field = length // 8 - 1 if kind != AH else length // 4 - 2
        body += bytes([following, field]) + bytes([filler]) * (length - 2)
    header = struct.pack("!IHBB16s16s", 6 << 28, len(body) + 8, kinds[0], 64, bytes(16), bytes(16))
    return header + body + ports + bytes(4), 40 + len(body)


ports_st = st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))


@PROPERTY
@given(
    chain=st.lists(extension(), max_size=MAX_EXT),
    transport=st.sampled_from(PORTED),
    ports=ports_st,
    filler=st.integers(0, 255),
    count=st.integers(1, 64),
    cut=st.integers(0, 1 << 16),
)
def test_ipv6_chain_ports_found_where_built_and_symmetric(
    chain: list[tuple[int, int]], transport: int, ports: tuple[int, int], filler: int, count: int, cut: int
) -> None:
    packet, offset = ipv6_packet(chain, transport, struct.pack("!HH", *ports), filler)
    assert flow_ports(packet) == ports
    swapped, _ = ipv6_packet(chain, transport, struct.pack("!HH", ports[1], ports[0]), filler)
    assert flow_ports(swapped) == (ports[1], ports[0])
    assert StreamSelector(count).select(packet) == StreamSelector(count).select(swapped)
    assert flow_ports(packet[: offset + 3]) is None
    assert flow_ports(packet[: cut % (offset + 4)]) is None


@settings(database=None, deadline=None, max_examples=50)
@given(chain=st.lists(extension(), min_size=MAX_EXT + 1, max_size=MAX_EXT + 4), ports=ports_st)
def test_ipv6_chain_longer_than_the_walk_has_no_ports(chain: list[tuple[int, int]], ports: tuple[int, int]) -> None:
    packet, _ = ipv6_packet(chain, 6, struct.pack("!HH", *ports), 0)
    assert flow_ports(packet) is None


@PROPERTY
@given(
    ihl=st.integers(5, 15),
    proto=st.sampled_from(PORTED),
    ports=ports_st,
    option_byte=st.integers(0, 255),
    fragment=st.integers(0, 0xFFFF),
    count=st.integers(1, 64),
)
def test_ipv4_options_and_fragments(
    ihl: int, proto: int, ports: tuple[int, int], option_byte: int, fragment: int, count: int
) -> None:
    def build(a: int, b: int) -> bytes:
        header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 0, 0, fragment, 64, proto, 0, bytes(4), bytes(4))
        return header + bytes([option_byte]) * (4 * ihl - 20) + struct.pack("!HH", a, b) + bytes(8)

    packet, swapped = build(*ports), build(ports[1], ports[0])
    if fragment & 0x3FFF:  # more-fragments or an offset: no trustworthy ports; DF alone is fine
        assert flow_ports(packet) is None
        return
    assert flow_ports(packet) == ports
    assert StreamSelector(count).select(packet) == StreamSelector(count).select(swapped)
    assert flow_ports(packet[: 4 * ihl + 3]) is None
