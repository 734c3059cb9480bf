"""Unit tests for rustvpn.flow_hash: port extraction and per-packet stream selection."""

from __future__ import annotations

import ipaddress
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rustvpn.flow_hash import StreamSelector, flow_ports

PROPERTY = settings(database=None, deadline=None, max_examples=300)

# IP protocol / IPv6 next-header numbers.
HOPOPT, ICMP, TCP, UDP, DCCP = 0, 1, 6, 17, 33
ROUTING, FRAGMENT, ESP, AH = 43, 44, 50, 51
ICMPV6, NO_NEXT, DSTOPTS, SCTP, UDPLITE = 58, 59, 60, 132, 136
IPV4_DF, IPV4_MF = 0x4000, 0x2000


# --------------------------------------------------------------------------- packet builders


def tcp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    # ports, seq, ack, data offset 5 words, SYN, window, checksum, urgent pointer
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp_echo(ident: int = 1, seq: int = 1) -> bytes:
    # Type 8 echo request; identifier/sequence sit where ports would be: must not be read as ports.
    return struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"ping"


def ipv4(
    proto: int,
    body: bytes,
    *,
    options: bytes = b"",
    frag: int = 0,
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
) -> bytes:
    """IPv4 packet; ``options`` (multiple of 4 bytes) raise IHL above 5; ``frag`` is flags|offset."""
    assert len(options) % 4 == 0 and len(options) <= 40
    ihl = 5 + len(options) // 4
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        ihl * 4 + len(body),
        0x1234,
        frag,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return header + options + body


def ipv6(next_header: int, body: bytes, *, src: str = "fd00::1", dst: str = "fd00::2") -> bytes:
    header = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(body),
        next_header,
        64,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )
    return header + body


def options_header(next_header: int, units: int = 0) -> bytes:
    """Hop-by-hop or destination-options header, (units + 1) * 8 bytes of Pad1 options."""
    return bytes([next_header, units]) + bytes(6 + 8 * units)


def routing_header(next_header: int, segments: int = 1) -> bytes:
    """Type 0 routing header with ``segments`` addresses: 8 + 16 * segments bytes."""
    addresses = b"".join(ipaddress.IPv6Address(f"fd00::{i + 10}").packed for i in range(segments))
    return struct.pack("!BBBBI", next_header, 2 * segments, 0, segments, 0) + addresses


def ah_header(next_header: int, icv_len: int = 12) -> bytes:
    """Authentication header: its length field counts 4-octet units, minus 2."""
    total = 12 + icv_len
    assert total % 8 == 0
    return struct.pack("!BBHII", next_header, total // 4 - 2, 0, 0x100, 7) + b"\xaa" * icv_len


def fragment_header(next_header: int, offset: int = 0, more: bool = False) -> bytes:
    return struct.pack("!BBHI", next_header, 0, offset << 3 | int(more), 0xCAFE)


# Hop-by-hop (16 bytes) -> routing with 2 addresses (40 bytes) -> destination options (8 bytes) -> TCP.
V6_CHAIN = options_header(ROUTING, 1) + routing_header(DSTOPTS, 2) + options_header(TCP, 0)
assert len(V6_CHAIN) == 16 + 40 + 8

# Packets with ports, with the offset of their transport header (where the ports start).
PORTED_PACKETS = {
    "v4-tcp": (ipv4(TCP, tcp(40000, 443, b"GET /")), 20),
    "v4-udp": (ipv4(UDP, udp(5353, 53, b"query")), 20),
    "v4-tcp-df": (ipv4(TCP, tcp(40000, 443), frag=IPV4_DF), 20),
    "v4-udp-options-ihl6": (ipv4(UDP, udp(5353, 53), options=b"\x94\x04\x00\x00"), 24),
    "v4-tcp-options-ihl15": (ipv4(TCP, tcp(40000, 443), options=b"\x01" * 40), 60),
    "v6-tcp": (ipv6(TCP, tcp(40000, 443, b"data")), 40),
    "v6-udp": (ipv6(UDP, udp(5353, 53)), 40),
    "v6-hop-routing-dst-tcp": (ipv6(HOPOPT, V6_CHAIN + tcp(40000, 443)), 40 + len(V6_CHAIN)),
    "v6-ah-udp": (ipv6(AH, ah_header(UDP) + udp(5353, 53)), 40 + 24),
    "v6-dst-ah-tcp": (ipv6(DSTOPTS, options_header(AH) + ah_header(TCP, 20) + tcp(40000, 443)), 40 + 8 + 32),
}
EXPECTED_PORTS = {
    "v4-tcp": (40000, 443),
    "v4-udp": (5353, 53),
    "v4-tcp-df": (40000, 443),
    "v4-udp-options-ihl6": (5353, 53),
    "v4-tcp-options-ihl15": (40000, 443),
    "v6-tcp": (40000, 443),
    "v6-udp": (5353, 53),
    "v6-hop-routing-dst-tcp": (40000, 443),
    "v6-ah-udp": (5353, 53),
    "v6-dst-ah-tcp": (40000, 443),
}

PORTLESS_PACKETS = {
    "v4-icmp": ipv4(ICMP, icmp_echo()),
    "v4-gre": ipv4(47, b"\x00\x00\x08\x00" + bytes(20)),
    "v4-esp": ipv4(ESP, bytes(32)),
    "v4-tcp-first-fragment-mf": ipv4(TCP, tcp(40000, 443), frag=IPV4_MF),
    "v4-tcp-mf-and-df": ipv4(TCP, tcp(40000, 443), frag=IPV4_MF | IPV4_DF),
    "v4-udp-later-fragment": ipv4(UDP, udp(5353, 53), frag=185),
    "v4-udp-last-fragment-offset-1": ipv4(UDP, udp(5353, 53), frag=1),
    "v4-udp-max-offset": ipv4(UDP, udp(5353, 53), frag=0x1FFF),
    "v4-ihl-below-5": bytes([0x44]) + ipv4(TCP, tcp(1, 2))[1:],
    "v6-icmpv6": ipv6(ICMPV6, icmp_echo()),
    "v6-no-next-header": ipv6(NO_NEXT, tcp(40000, 443)),
    "v6-esp": ipv6(ESP, bytes(32)),
    "v6-fragment-udp": ipv6(FRAGMENT, fragment_header(UDP, 0, more=True) + udp(5353, 53)),
    "v6-fragment-later": ipv6(FRAGMENT, fragment_header(UDP, 100) + bytes(16)),
    "v6-hop-fragment-tcp": ipv6(HOPOPT, options_header(FRAGMENT) + fragment_header(TCP, 0, True) + tcp(1, 2)),
    "v6-hop-icmpv6": ipv6(HOPOPT, options_header(ICMPV6) + icmp_echo()),
    "version-0": bytes(40),
    "version-5": b"\x50" + bytes(39),
    "version-15": b"\xff" * 60,
    "empty": b"",
}


# --------------------------------------------------------------------------- flow_ports


@pytest.mark.parametrize("name", sorted(PORTED_PACKETS))
def test_ports_found(name: str) -> None:
    packet, _ = PORTED_PACKETS[name]
    assert flow_ports(packet) == EXPECTED_PORTS[name]


@pytest.mark.parametrize("name", sorted(PORTED_PACKETS))
def test_ports_found_in_bytearray_and_memoryview(name: str) -> None:
    packet, _ = PORTED_PACKETS[name]
    assert flow_ports(bytearray(packet)) == EXPECTED_PORTS[name]
    assert flow_ports(memoryview(packet)) == EXPECTED_PORTS[name]


@pytest.mark.parametrize("name", sorted(PORTLESS_PACKETS))
def test_no_ports(name: str) -> None:
    assert flow_ports(PORTLESS_PACKETS[name]) is None


@pytest.mark.parametrize("proto", [SCTP, UDPLITE, DCCP])
def test_other_port_protocols(proto: int) -> None:
    assert flow_ports(ipv4(proto, struct.pack("!HH", 2905, 36412) + bytes(8))) == (2905, 36412)
    assert flow_ports(ipv6(proto, struct.pack("!HH", 2905, 36412) + bytes(8))) == (2905, 36412)


def test_ipv4_options_are_skipped_not_read_as_ports() -> None:
    # Options bytes 0x0102 0x0304 would be mistaken for ports by a parser that assumes IHL 5.
    packet = ipv4(UDP, udp(1111, 2222), options=b"\x01\x02\x03\x04" * 3)
    assert flow_ports(packet) == (1111, 2222)


def test_ipv6_extension_lengths_are_honoured() -> None:
    # Each header's length byte decides where the next begins; a wrong unit size lands mid-header.
    for units in (0, 1, 3, 10):
        packet = ipv6(DSTOPTS, options_header(UDP, units) + udp(7000, 8000))
        assert flow_ports(packet) == (7000, 8000), units
    for segments in (1, 2, 5):
        packet = ipv6(ROUTING, routing_header(TCP, segments) + tcp(7000, 8000))
        assert flow_ports(packet) == (7000, 8000), segments
    for icv in (4, 12, 20, 28):
        packet = ipv6(AH, ah_header(UDP, icv) + udp(7000, 8000))
        assert flow_ports(packet) == (7000, 8000), icv


def test_ipv6_absurdly_long_extension_chain_does_not_hang() -> None:
    chain = b"".join(options_header(DSTOPTS) for _ in range(200)) + options_header(TCP)
    assert flow_ports(ipv6(DSTOPTS, chain + tcp(1, 2))) is None


def test_ipv6_extension_length_running_past_end() -> None:
    assert flow_ports(ipv6(HOPOPT, bytes([TCP, 255]) + bytes(14) + tcp(1, 2))) is None


@pytest.mark.parametrize("name", sorted(PORTED_PACKETS))
def test_truncated_at_every_length(name: str) -> None:
    packet, transport_offset = PORTED_PACKETS[name]
    expected = EXPECTED_PORTS[name]
    for n in range(len(packet) + 1):
        result = flow_ports(packet[:n])
        if n < transport_offset + 4:
            assert result is None, n
        else:
            assert result == expected, n


@pytest.mark.parametrize("name", sorted(PORTLESS_PACKETS))
def test_portless_truncated_at_every_length(name: str) -> None:
    packet = PORTLESS_PACKETS[name]
    for n in range(len(packet) + 1):
        assert flow_ports(packet[:n]) is None, n


# --------------------------------------------------------------------------- StreamSelector


@pytest.mark.parametrize("count", [0, -1, -100])
def test_selector_rejects_non_positive_count(count: int) -> None:
    with pytest.raises(ValueError):
        StreamSelector(count)


def test_single_stream_always_zero() -> None:
    selector = StreamSelector(1)
    packets = [p for p, _ in PORTED_PACKETS.values()] + list(PORTLESS_PACKETS.values())
    assert [selector.select(p) for p in packets * 3] == [0] * (3 * len(packets))


@pytest.mark.parametrize("count", [2, 3, 4, 7, 100])
def test_same_flow_same_stream(count: int) -> None:
    selector = StreamSelector(count)
    first = selector.select(ipv4(TCP, tcp(40001, 443)))
    for size in range(0, 1400, 97):
        assert selector.select(ipv4(TCP, tcp(40001, 443, b"x" * size))) == first
        # Port-less traffic in between must not move the flow.
        selector.select(ipv4(ICMP, icmp_echo()))


@pytest.mark.parametrize("count", [2, 3, 4, 8, 13])
def test_swapped_ports_pick_same_stream(count: int) -> None:
    selector = StreamSelector(count)
    for sport, dport in [(40000, 443), (1, 65535), (5353, 53), (12345, 54321), (80, 80), (0, 7)]:
        assert selector.select(ipv4(TCP, tcp(sport, dport))) == selector.select(ipv4(TCP, tcp(dport, sport)))
        assert selector.select(ipv6(UDP, udp(sport, dport))) == selector.select(ipv6(UDP, udp(dport, sport)))


@pytest.mark.parametrize("count", [2, 4, 5, 16])
def test_flows_spread_over_all_streams(count: int) -> None:
    selector = StreamSelector(count)
    picks = [selector.select(ipv4(TCP, tcp(sport, 443))) for sport in range(40000, 40400)]
    assert set(picks) == set(range(count))
    assert max(picks.count(i) for i in range(count)) < 400 * 0.6


@pytest.mark.parametrize("count", [2, 3, 4, 7, 10])
def test_round_robin_cycles_through_all_indices(count: int) -> None:
    selector = StreamSelector(count)
    portless = list(PORTLESS_PACKETS.values())
    picks = [selector.select(portless[i % len(portless)]) for i in range(4 * count)]
    for block in range(4):
        assert sorted(picks[block * count : (block + 1) * count]) == list(range(count))
    # Consecutive port-less packets never land on the same stream.
    assert all(a != b for a, b in itertools.pairwise(picks))


def test_round_robin_unaffected_by_hashed_packets() -> None:
    selector = StreamSelector(3)
    picks = []
    for _ in range(9):
        picks.append(selector.select(ipv4(ICMP, icmp_echo())))
        selector.select(ipv4(TCP, tcp(40000, 443)))
        selector.select(ipv6(UDP, udp(5353, 53)))
    for block in range(3):
        assert sorted(picks[block * 3 : (block + 1) * 3]) == [0, 1, 2]


def test_fragments_of_one_flow_go_round_robin() -> None:
    selector = StreamSelector(4)
    fragments = [ipv4(UDP, udp(5353, 53), frag=IPV4_MF)] + [ipv4(UDP, bytes(16), frag=o) for o in (2, 4, 6)]
    assert sorted(selector.select(f) for f in fragments) == [0, 1, 2, 3]


def test_icmp_ident_not_used_as_ports() -> None:
    # Echo requests with the same identifier/sequence still rotate.
    selector = StreamSelector(2)
    assert {selector.select(ipv4(ICMP, icmp_echo(7, 7))) for _ in range(2)} == {0, 1}


def test_selector_accepts_buffer_types() -> None:
    selector = StreamSelector(5)
    packet = ipv6(TCP, tcp(40000, 443))
    expected = selector.select(packet)
    assert selector.select(bytearray(packet)) == expected
    assert selector.select(memoryview(packet)) == expected


# --------------------------------------------------------------------------- properties

any_bytes = st.binary(max_size=200)
ipv4_like = st.builds(
    lambda first, rest: bytes([0x40 | first]) + rest,
    st.integers(0, 15),
    st.binary(max_size=120),
)
ipv6_like = st.builds(
    lambda first, nh, rest: bytes([0x60 | first]) + bytes(5) + bytes([nh]) + rest,
    st.integers(0, 15),
    st.sampled_from([HOPOPT, TCP, UDP, ROUTING, FRAGMENT, AH, DSTOPTS, ICMPV6, 135, 139, 140, 255]),
    st.binary(max_size=200),
)
garbage = any_bytes | ipv4_like | ipv6_like


@PROPERTY
@given(packet=garbage)
def test_flow_ports_never_raises_and_returns_u16_pair(packet: bytes) -> None:
    result = flow_ports(packet)
    if result is not None:
        sport, dport = result
        assert 0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF


@PROPERTY
@given(packets=st.lists(garbage, max_size=20), count=st.integers(1, 100))
def test_select_never_raises_and_is_in_range(packets: list[bytes], count: int) -> None:
    selector = StreamSelector(count)
    for packet in packets:
        assert 0 <= selector.select(packet) < count


@PROPERTY
@given(
    sport=st.integers(0, 0xFFFF),
    dport=st.integers(0, 0xFFFF),
    count=st.integers(1, 100),
    v6=st.booleans(),
    use_udp=st.booleans(),
)
def test_symmetry_property(sport: int, dport: int, count: int, v6: bool, use_udp: bool) -> None:
    def build(a: int, b: int) -> bytes:
        body = udp(a, b) if use_udp else tcp(a, b)
        proto = UDP if use_udp else TCP
        return ipv6(proto, body) if v6 else ipv4(proto, body)

    selector = StreamSelector(count)
    forward = selector.select(build(sport, dport))
    assert 0 <= forward < count
    assert selector.select(build(dport, sport)) == forward
    assert selector.select(build(sport, dport)) == forward
    assert flow_ports(build(sport, dport)) == (sport, dport)
