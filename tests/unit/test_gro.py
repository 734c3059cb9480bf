"""gro.coalesce: runs of one TCP flow become one offloaded segment per TUN write, everything else
is written alone, in order; cut up again as the kernel would (offload.plain_packets, checked
against the kernel in tests/integration/test_offload.py) every write gives back exactly the
packets that went in."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rustvpn.gro import MAX_MERGED, MAX_SEGMENTS, Write, coalesce, is_udp_merge
from rustvpn.offload import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    VNET_HDR_LEN,
    ZERO_HDR,
    VnetHeader,
    ones_sum,
    plain_packets,
)
from tests.unit.test_offload import pseudo, slow_sum, tcp_checksum_ok

SRC4, DST4 = ipaddress.IPv4Address("198.19.7.2").packed, ipaddress.IPv4Address("198.19.7.1").packed
SRC6, DST6 = ipaddress.IPv6Address("fd00:77::2").packed, ipaddress.IPv6Address("fd00:77::1").packed
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
TIMESTAMPS = bytes([1, 1, 8, 10]) + struct.pack("!II", 1000, 2000)
MSS = 1348


def packet(
    version: int,
    seq: int,
    payload: bytes,
    *,
    flags: int = ACK,
    ip_id: int = 1,
    sport: int = 40000,
    ack: int = 77,
    window: int = 501,
    tos: int = 0,
    ttl: int = 64,
    options: bytes = TIMESTAMPS,
    frag: int = 0x4000,
    ip_options: bytes = b"",
    proto: int = 6,
) -> bytes:
    """A TCP/IP packet with valid checksums (IPv4 with DF unless ``frag`` says otherwise)."""
    tcp = struct.pack("!HHIIBBHHH", sport, 5201, seq, ack, (5 + len(options) // 4) << 4, flags, window, 0, 0)
    tcp += options
    if version == 4:
        ihl = 5 + len(ip_options) // 4
        total = ihl * 4 + len(tcp) + len(payload)
        ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, total, ip_id, frag, ttl, proto, 0, SRC4, DST4)
        ip += ip_options
        ip = ip[:10] + (~slow_sum(ip) & 0xFFFF).to_bytes(2, "big") + ip[12:]
    else:
        first_word = 0x60000000 | tos << 20
        ip = struct.pack("!IHBB16s16s", first_word, len(tcp) + len(payload), proto, ttl, SRC6, DST6)
    data = bytearray(ip + tcp + payload)
    csum = ~slow_sum(pseudo(bytes(data), len(tcp) + len(payload)) + bytes(data[len(ip) :])) & 0xFFFF
    data[len(ip) + 16 : len(ip) + 18] = csum.to_bytes(2, "big")
    return bytes(data)


def udp(
    version: int,
    payload: bytes,
    *,
    ip_id: int = 1,
    sport: int = 40000,
    tos: int = 0,
    ttl: int = 64,
    frag: int = 0x4000,
    ip_options: bytes = b"",
) -> bytes:
    """A UDP/IP packet with valid checksums (IPv4 with DF unless ``frag`` says otherwise)."""
    header = struct.pack("!HHHH", sport, 5201, 8 + len(payload), 0)
    if version == 4:
        ihl = 5 + len(ip_options) // 4
        total = ihl * 4 + 8 + len(payload)
        ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, total, ip_id, frag, ttl, 17, 0, SRC4, DST4) + ip_options
        ip = ip[:10] + (~slow_sum(ip) & 0xFFFF).to_bytes(2, "big") + ip[12:]
    else:
        ip = struct.pack("!IHBB16s16s", 0x60000000 | tos << 20, 8 + len(payload), 17, ttl, SRC6, DST6)
    data = bytearray(ip + header + payload)
    csum = ~slow_sum(pseudo(bytes(data), 8 + len(payload), 17) + bytes(data[len(ip) :])) & 0xFFFF
    data[len(ip) + 6 : len(ip) + 8] = (csum or 0xFFFF).to_bytes(2, "big")
    return bytes(data)


def udp_run(version: int, count: int, size: int = 1200, first_id: int = 1, **kw: int) -> list[bytes]:
    """``count`` datagrams of one flow, with consecutive IP ids."""
    return [udp(version, bytes([i % 251]) * size, ip_id=first_id + i, **kw) for i in range(count)]  # type: ignore[arg-type]


def run(version: int, count: int, *, start: int = 1000, size: int = MSS, first_id: int = 1, **kw: int) -> list[bytes]:
    """``count`` consecutive segments of one flow, with consecutive IP ids."""
    return [
        packet(version, start + i * size, bytes([i % 251]) * size, ip_id=first_id + i, **kw)  # type: ignore[arg-type]
        for i in range(count)
    ]


def joined(write: Write) -> bytes:
    return b"".join(bytes(b) for b in write[0])


def unpacked(writes: list[Write]) -> list[bytes]:
    """What the kernel makes of the writes: each cut into its packets (a plain one passes as is)."""
    return [p for w in writes for p in plain_packets(joined(w))]


@pytest.mark.parametrize("version", [4, 6])
def test_a_run_of_one_flow_becomes_one_segment_that_cuts_back_into_the_same_packets(version: int) -> None:
    packets = run(version, 6)
    packets.append(packet(version, 1000 + 6 * MSS, b"end", flags=ACK | PSH, ip_id=7))
    writes = coalesce(packets)
    assert [(count, size) for _, count, size in writes] == [(7, sum(map(len, packets)))]
    data = joined(writes[0])
    hdr = VnetHeader.parse(data)
    ip_len = 20 if version == 4 else 40
    hdr_len = ip_len + 20 + len(TIMESTAMPS)
    gso = GSO_TCPV4 if version == 4 else GSO_TCPV6
    assert hdr == VnetHeader(F_NEEDS_CSUM, gso, hdr_len, MSS, ip_len, 16)
    merged = data[VNET_HDR_LEN:]
    assert merged[hdr_len:] == b"".join(p[hdr_len:] for p in packets)
    if version == 4:
        assert int.from_bytes(merged[2:4], "big") == len(merged)
        assert slow_sum(merged[:20]) == 0xFFFF  # the IP header checksum holds
    else:
        assert int.from_bytes(merged[4:6], "big") == len(merged) - 40
    assert merged[ip_len + 13] == ACK | PSH  # the last packet's flags
    # CHECKSUM_PARTIAL: the field holds the pseudo-header sum, which the payload then completes.
    assert merged[ip_len + 16 : ip_len + 18] == slow_sum(pseudo(merged, len(merged) - ip_len)).to_bytes(2, "big")
    assert unpacked(writes) == packets
    assert all(tcp_checksum_ok(p) for p in unpacked(writes))


def test_one_packet_alone_and_non_tcp_pass_as_they_are() -> None:
    single = packet(4, 1000, b"x" * 100)
    udp = packet(4, 1000, b"u" * 100, proto=17)
    assert coalesce([single]) == [([ZERO_HDR, single], 1, len(single))]
    writes = coalesce([udp, single, udp])
    assert [w[0] for w in writes] == [[ZERO_HDR, udp], [ZERO_HDR, single], [ZERO_HDR, udp]]
    assert coalesce([]) == []
    assert coalesce([b""]) == [([ZERO_HDR, b""], 1, 0)]


# What breaks a run: the second of three packets changed in one way each. The expected counts per
# write follow Linux GRO: a packet that cannot join goes alone or starts a group of its own.
BREAKERS = {
    "syn": ({"flags": ACK | SYN}, [1, 1, 1]),
    "fin": ({"flags": ACK | FIN}, [1, 1, 1]),
    "rst": ({"flags": ACK | RST}, [1, 1, 1]),
    "urg": ({"flags": ACK | URG}, [1, 1, 1]),
    "ece": ({"flags": ACK | ECE}, [1, 1, 1]),
    "cwr": ({"flags": ACK | CWR}, [1, 1, 1]),
    "no ack": ({"flags": PSH}, [1, 1, 1]),
    "other ack number": ({"ack": 78}, [1, 1, 1]),
    "other window": ({"window": 502}, [1, 1, 1]),
    "other tos (ECN mark)": ({"tos": 3}, [1, 1, 1]),
    "other ttl": ({"ttl": 63}, [1, 1, 1]),
    "other timestamps": ({"options": bytes([1, 1, 8, 10]) + struct.pack("!II", 1001, 2000)}, [1, 1, 1]),
    "other port": ({"sport": 40001}, [1, 1, 1]),
    "no DF": ({"frag": 0}, [1, 1, 1]),
    "a fragment": ({"frag": 0x2000}, [1, 1, 1]),
    "IP options": ({"ip_options": bytes([1, 1, 1, 0])}, [1, 1, 1]),
    "sequence gap": ({"seq_shift": 1}, [1, 1, 1]),
}


@pytest.mark.parametrize("name", list(BREAKERS))
def test_what_gro_would_not_merge_breaks_the_run(name: str) -> None:
    change, counts = BREAKERS[name]
    change = dict(change)
    shift = int(change.pop("seq_shift", 0))  # type: ignore[call-overload]
    version = 4
    one = packet(version, 1000, b"a" * MSS, ip_id=1)
    two = packet(version, 1000 + MSS + shift, b"b" * MSS, ip_id=2, **change)  # type: ignore[arg-type]
    three = packet(version, 1000 + 2 * MSS, b"c" * MSS, ip_id=3)
    packets = [one, two, three]
    writes = coalesce(packets)
    assert [count for _, count, _ in writes] == counts
    assert unpacked(writes) == packets


def test_the_first_packet_sets_the_segment_size() -> None:
    # Equal ones join; a shorter one joins and ends the run; a longer one starts a run of its own.
    packets = [*run(6, 3, size=500), packet(6, 2500, b"s" * 200, ip_id=4), *run(6, 2, start=2700, first_id=5)]
    writes = coalesce(packets)
    assert [c for _, c, _ in writes] == [4, 2]
    assert VnetHeader.parse(joined(writes[0])).gso_size == 500
    assert unpacked(writes) == packets
    bigger = [*run(4, 2), packet(4, 1000 + 2 * MSS, b"y" * (MSS + 1), ip_id=3)]
    writes = coalesce(bigger)
    assert [c for _, c, _ in writes] == [2, 1]
    assert unpacked(writes) == bigger


def test_interleaved_flows_are_not_merged_across_each_other() -> None:
    a = run(4, 2, sport=40000)
    b = run(4, 2, sport=40001, first_id=50)
    packets = [a[0], b[0], a[1], b[1]]
    assert [c for _, c, _ in coalesce(packets)] == [1, 1, 1, 1]


def test_runs_are_cut_at_the_segment_and_size_limits() -> None:
    small = run(4, MAX_SEGMENTS + 6, size=100)
    writes = coalesce(small)
    assert [c for _, c, _ in writes] == [MAX_SEGMENTS, 6]
    assert unpacked(writes) == small
    big = run(6, 60, size=1400)
    writes = coalesce(big)
    per_write = MAX_MERGED // 1400
    assert [c for _, c, _ in writes] == [per_write, 60 - per_write]
    assert all(len(joined(w)) - VNET_HDR_LEN <= 65535 for w in writes)
    assert unpacked(writes) == big


def test_sequence_numbers_wrap() -> None:
    packets = [packet(4, (1 << 32) - 2 * MSS + i * MSS & 0xFFFFFFFF, bytes([i]) * MSS, ip_id=1 + i) for i in range(4)]
    writes = coalesce(packets)
    assert [c for _, c, _ in writes] == [4]
    assert unpacked(writes) == packets


@st.composite
def traffic(draw: st.DrawFn) -> list[bytes]:
    """Packets of two TCP flows, two UDP flows and some odd ones in any order, with gaps, PSH and
    odd sizes."""
    packets: list[bytes] = []
    seqs = {40000: 5000, 40001: (1 << 32) - 3000}
    ip_id = 0
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(["a", "a", "a", "b", "odd", "u4", "u4", "u6"]))
        ip_id += 1
        version = draw(st.sampled_from([4, 6])) if kind == "odd" else 4 if kind in ("a", "u4") else 6
        size = draw(st.sampled_from([MSS, MSS, MSS, 1, 700, MSS + 10]))
        if kind == "odd":  # a TCP-shaped header with the UDP protocol number: lengths that lie
            packets.append(packet(version, 0, b"u" * size, proto=17, ip_id=ip_id))
            continue
        if kind in ("u4", "u6"):
            packets.append(udp(version, bytes([ip_id % 256]) * size, ip_id=ip_id, sport=50000))
            continue
        sport = 40000 if kind == "a" else 40001
        seqs[sport] = (seqs[sport] + draw(st.sampled_from([0, 0, 0, 0, 7]))) & 0xFFFFFFFF
        flags = draw(st.sampled_from([ACK, ACK, ACK, ACK | PSH, ACK | FIN]))
        packets.append(packet(version, seqs[sport], bytes([ip_id % 256]) * size, sport=sport, flags=flags, ip_id=ip_id))
        seqs[sport] = (seqs[sport] + size) & 0xFFFFFFFF
    return packets


@given(traffic())
def test_whatever_comes_in_goes_out_in_order_and_is_counted(packets: list[bytes]) -> None:
    writes = coalesce(packets)
    assert unpacked(writes) == packets
    assert sum(c for _, c, _ in writes) == len(packets)
    assert sum(s for _, _, s in writes) == sum(map(len, packets))
    assert all(len(joined(w)) - VNET_HDR_LEN <= 65535 for w in writes)


@given(st.lists(st.binary(max_size=120), max_size=12), st.lists(st.integers(0, 119), max_size=12))
def test_any_bytes_are_written_whole_and_counted(blobs: list[bytes], tweaks: list[int]) -> None:
    """Whatever the peer sends (short, truncated, lying length fields): no exception, every packet
    counted once, and what is not merged is written exactly as it came."""
    base = run(4, 2, size=64) + run(6, 2, size=64)
    packets = [*blobs, *base]
    for i, at in enumerate(tweaks):  # damage the well-formed ones a byte at a time
        target = len(blobs) + i % len(base)
        p = bytearray(packets[target])
        p[at % len(p)] ^= 0xFF
        packets[target] = bytes(p)
    writes = coalesce(packets)
    assert sum(c for _, c, _ in writes) == len(packets)
    assert sum(s for _, _, s in writes) == sum(map(len, packets))
    alone = [bytes(w[0][1]) for w in writes if w[1] == 1]
    assert all(w[0][0] == ZERO_HDR for w in writes if w[1] == 1)
    merged = sum(c for _, c, _ in writes if c > 1)
    assert len(alone) + merged == len(packets)


# -- UDP runs -------------------------------------------------------------------------------------


def _csum16_replace(check: int, old: int, new: int) -> int:
    """Ones' complement 16-bit ``check - old + new``, as the kernel's csum16_sub/csum16_add."""
    total = check + (~old & 0xFFFF) + new
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@pytest.mark.parametrize("version", [4, 6])
def test_a_udp_run_becomes_one_gso_write_that_cuts_back_into_the_same_datagrams(version: int) -> None:
    packets = [*udp_run(version, 6), udp(version, b"end" * 100, ip_id=7)]
    writes = coalesce(packets)
    assert [(count, size) for _, count, size in writes] == [(7, sum(map(len, packets)))]
    assert is_udp_merge(writes[0])
    data = joined(writes[0])
    ip_len = 20 if version == 4 else 40
    assert VnetHeader.parse(data) == VnetHeader(F_NEEDS_CSUM, GSO_UDP_L4, ip_len + 8, 1200, ip_len, 6)
    merged = data[VNET_HDR_LEN:]
    assert merged[ip_len + 8 :] == b"".join(p[ip_len + 8 :] for p in packets)
    udp_len = len(merged) - ip_len
    assert int.from_bytes(merged[ip_len + 4 : ip_len + 6], "big") == udp_len
    if version == 4:
        assert int.from_bytes(merged[2:4], "big") == len(merged)
        assert slow_sum(merged[:20]) == 0xFFFF
    else:
        assert int.from_bytes(merged[4:6], "big") == udp_len
    assert unpacked(writes) == packets  # lengths, ids, checksums: as each datagram was
    # The kernel's UDP GSO gives each datagram the run's checksum field with its own length
    # swapped in, and the device (or the stack) completes it over the datagram: that must come
    # out as the checksum the peer's datagram carried.
    field = int.from_bytes(merged[ip_len + 6 : ip_len + 8], "big")
    for original in packets:
        own_len = len(original) - ip_len
        seg = bytearray(original)
        seg[ip_len + 6 : ip_len + 8] = _csum16_replace(field, udp_len, own_len).to_bytes(2, "big")
        completed = ~ones_sum(bytes(seg[ip_len:])) & 0xFFFF
        assert completed == int.from_bytes(original[ip_len + 6 : ip_len + 8], "big")


UDP_BREAKERS = {
    "other port": {"sport": 40001},
    "other tos (ECN mark)": {"tos": 3},
    "other ttl": {"ttl": 63},
    "no DF": {"frag": 0},
    "a fragment": {"frag": 0x2000},
    "IP options": {"ip_options": bytes([1, 1, 1, 0])},
}


@pytest.mark.parametrize("name", list(UDP_BREAKERS))
def test_what_breaks_a_udp_run(name: str) -> None:
    one, three = udp(4, b"a" * 1200, ip_id=1), udp(4, b"c" * 1200, ip_id=3)
    two = udp(4, b"b" * 1200, ip_id=2, **UDP_BREAKERS[name])  # type: ignore[arg-type]
    writes = coalesce([one, two, three])
    assert [count for _, count, _ in writes] == [1, 1, 1]
    assert unpacked(writes) == [one, two, three]


def test_udp_runs_take_the_first_datagrams_size_and_small_ones_go_alone() -> None:
    bigger = [*udp_run(4, 2, 500), udp(4, b"y" * 501, ip_id=3), udp(4, b"z" * 501, ip_id=4)]
    assert [c for _, c, _ in coalesce(bigger)] == [2, 2]
    assert unpacked(coalesce(bigger)) == bigger
    tiny = udp_run(6, 4, size=40)  # DNS, VoIP frames: not worth a merge
    assert [c for _, c, _ in coalesce(tiny)] == [1, 1, 1, 1]
    lying = bytearray(udp(4, b"q" * 1200, ip_id=2))
    lying[24:26] = (1000).to_bytes(2, "big")  # a UDP length that disagrees with the IP length
    packets = [udp(4, b"p" * 1200), bytes(lying), udp(4, b"r" * 1200, ip_id=3)]
    assert [c for _, c, _ in coalesce(packets)] == [1, 1, 1]


def test_udp_and_tcp_runs_each_merge_and_keep_the_order() -> None:
    packets = [*udp_run(4, 3), *run(4, 3), *udp_run(6, 2, first_id=9), *udp_run(4, MAX_SEGMENTS + 2, size=300)]
    writes = coalesce(packets)
    assert [c for _, c, _ in writes] == [3, 3, 2, MAX_SEGMENTS, 2]
    assert unpacked(writes) == packets
    assert [is_udp_merge(w) for w in writes] == [True, False, True, True, True]
    assert [c for _, c, _ in coalesce(packets, udp=False)] == [1, 1, 1, 3] + [1] * (4 + MAX_SEGMENTS)


def test_a_udp_run_stays_within_one_ip_packet() -> None:
    packets = udp_run(4, 60, size=1400)
    writes = coalesce(packets)
    per_write = MAX_MERGED // 1400
    assert [c for _, c, _ in writes] == [per_write, 60 - per_write]
    assert all(len(joined(w)) - VNET_HDR_LEN <= 65535 for w in writes)
    assert unpacked(writes) == packets
