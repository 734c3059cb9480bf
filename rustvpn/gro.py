"""Receive-side coalescing for a TUN device with virtio headers (GRO in software), without I/O.

Every packet written to a TUN device goes once through the kernel's whole receive path: the
write itself, IP, TCP, a wake-up of the reader. For a bulk TCP download through the tunnel that
is most of the receiving end's time. A NIC driver avoids it with GRO: consecutive segments of one
TCP flow are merged into one large segment that the stack handles once. A TUN device opened with
IFF_VNET_HDR takes such a segment too: the virtio header says how it was built (gso_size = the
MSS, checksum left partial), exactly as the kernel hands a TSO segment to the reader (offload.py).

``coalesce`` merges what the Linux GRO engine would: IPv4 without options and with DF (so IP ids
do not matter) or IPv6 without extension headers; TCP with only ACK, or ACK+PSH on the last
packet; same addresses, ports, TOS/traffic class, TTL/hop limit, ACK number, window and options
(timestamps included); each sequence number where the previous payload ended; every payload of
the first one's size (at least 64 bytes) except maybe the last, which ends the group. Anything
else is written as it came, alone and in order. The merged segment's checksum is left to the
kernel (CHECKSUM_PARTIAL): the field holds the pseudo-header sum, as in the segments the kernel
itself hands over with offload.
The payloads' own checksums are not verified: they come from a peer that authenticated, out of
its own kernel, and through an AEAD that would have caught any change on the way.
"""

from __future__ import annotations

import struct

from rustvpn.offload import (
    _HDR,
    F_NEEDS_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    MIN_SEGMENT,
    ZERO_HDR,
    _pseudo_sum,
    ipv4_header_checksum,
)

# Largest merged packet: its IPv4 total length (or IPv6 payload length) is a u16, and it must stay
# under the device's GSO limit with room for the headers.
MAX_MERGED = 65535 - 160
MAX_SEGMENTS = 64  # as the kernel's GRO (MAX_GRO_SKBS); also bounds the writev's iovec list

_ACK, _PSH = 0x10, 0x08
_ACK_PSH = _ACK | _PSH

# Header layouts, by IP version and header length: the fields of a continuation check, in order:
# version.. (2 or 4 bytes), IPv4 total / IPv6 payload length, DF..protocol or next header and
# hop limit, addresses and ports, sequence number, ACK number to window, urgent pointer and
# options. The IP id and both checksums are skipped: they differ from packet to packet. At most
# 22 (two versions, eleven TCP header lengths).
_LAYOUTS: dict[tuple[int, int], struct.Struct] = {}


def _layout(version: int, hdr: int) -> struct.Struct:
    layout = _LAYOUTS.get((version, hdr))
    if layout is None:
        if version == 4:
            layout = struct.Struct(f"!2sH2x4s2x12sI8s2x{hdr - 38}s")
        else:
            layout = struct.Struct(f"!4sH2s36sI8s2x{hdr - 58}s")
        _LAYOUTS[version, hdr] = layout
    return layout


# One TUN write: the buffers to gather (virtio header, packet or headers and payloads), and how
# many of the peer's packets and bytes it carries.
Write = tuple[list[bytes | memoryview], int, int]


# The same for a UDP header behind the IP header: version.. (2 or 4 bytes), IPv4 total / IPv6
# payload length, DF..protocol or next header and hop limit, addresses and ports, UDP length. The
# IP id and both checksums are skipped.
_UDP_LAYOUTS = {4: struct.Struct("!2sH2x4s2x12sH2x"), 6: struct.Struct("!4sH2s36sH2x")}


def udp_mergeable(p: bytes) -> bool:
    """Whether a packet is UDP that a run of one flow could carry: IPv4 without options, with DF
    and not a fragment, or IPv6 without extension headers; a payload of at least MIN_SEGMENT."""
    n = len(p)
    if n >= 28 + MIN_SEGMENT and p[0] == 0x45:
        return p[9] == 17 and p[6] == 0x40 and p[7] == 0
    return n >= 48 + MIN_SEGMENT and p[0] >> 4 == 6 and p[6] == 17


def coalesce(packets: list[bytes], *, udp: bool = True) -> list[Write]:
    """The TUN writes for ``packets``, in order, with runs of one TCP flow merged, and with
    ``udp`` runs of one UDP flow too (UDP GSO: Linux 6.2 and later take it on a TUN write).

    A UDP run is what UDP GSO would have made of one large send: consecutive datagrams of one
    flow (same addresses, ports, TOS or traffic class, TTL or hop limit), each with the first one's
    payload size except maybe the last, which ends the run. The kernel cuts the write back into
    exactly those datagrams for a socket that does not take GSO batches itself.
    """
    writes: list[Write] = []
    # The open UDP run, if any: its first packet, IP header length, payload size, the header
    # fields every datagram must share, and its payloads and their bytes so far.
    ugrouping = False
    ufirst = b""
    ut = usize = utotal = uextra = 0
    ulayout = _UDP_LAYOUTS[4]
    ufixed: tuple[bytes, bytes, bytes] = (b"", b"", b"")
    upayloads: list[memoryview] = []
    # The open group, if any: its first packet, header length, MSS, the sequence number that
    # continues it, and its payloads and their bytes so far.
    grouping = False
    first = b""
    hl = mss = seq_next = size = 0
    payloads: list[memoryview] = []
    # The open group's header, read in one call (a struct per header layout) to continue it
    # without parsing each packet again, the common case in bulk: the fields every packet must
    # share (IP version to TOS/traffic class; DF, fragment offset, TTL/hop limit and protocol;
    # addresses and ports; urgent pointer and options), and those that change as they should
    # (length, sequence number, the ACK-to-window bytes with only ACK or with ACK+PSH set).
    layout = _layout(4, 40)  # the open group's
    fixed: tuple[bytes, bytes, bytes, bytes] = (b"", b"", b"", b"")
    mid_ack = mid_psh = b""
    extra = 0
    for p in packets:
        n = len(p)
        if ugrouping:
            if n > ut + 8:
                ua, total, ub, uc, ulen = ulayout.unpack_from(p)
                length = n - ut - 8
                if (
                    length <= usize
                    and (ua, ub, uc) == ufixed
                    and total + uextra == n
                    and ulen == n - ut
                    and len(upayloads) < MAX_SEGMENTS
                    and utotal + length <= MAX_MERGED
                ):
                    upayloads.append(memoryview(p)[ut + 8 :])
                    utotal += length
                    if length < usize:  # a shorter datagram ends the run
                        writes.append(_merged_udp(ufirst, ut, usize, upayloads, utotal))
                        ugrouping = False
                    continue
            writes.append(_merged_udp(ufirst, ut, usize, upayloads, utotal))
            ugrouping = False
        if grouping and n > hl:
            a, total, b, c, seq, mid, e = layout.unpack_from(p)
            length = n - hl
            if (
                length <= mss
                and seq == seq_next
                and total + extra == n
                and (a, b, c, e) == fixed
                and (mid in (mid_ack, mid_psh))
                and len(payloads) < MAX_SEGMENTS
                and size + length <= MAX_MERGED
            ):
                payloads.append(memoryview(p)[hl:])
                size += length
                seq_next = (seq + length) & 0xFFFFFFFF
                if length < mss or mid == mid_psh:
                    writes.append(_merged(first, mid[5], hl, mss, payloads, size))  # ends with its flags
                    grouping = False
                continue
        v = p[0] >> 4 if n else 0
        if udp and udp_mergeable(p):
            if grouping:
                writes.append(_merged(first, _ACK, hl, mss, payloads, size))
                grouping = False
            ut, uextra = (20, 0) if v == 4 else (40, 40)
            ulayout = _UDP_LAYOUTS[v]
            ua, total, ub, uc, ulen = ulayout.unpack_from(p)
            if total + uextra != n or ulen != n - ut:  # lengths that do not add up: alone
                writes.append(([ZERO_HDR, p], 1, n))
                continue
            ugrouping, ufirst, ufixed = True, p, (ua, ub, uc)
            usize = utotal = n - ut - 8
            upayloads = [memoryview(p)[ut + 8 :]]
            continue
        # Is this a TCP packet GRO would merge, and what must its group have in common?
        if v == 4 and n > 40 and p[0] == 0x45 and p[9] == 6 and p[6] == 0x40 and p[7] == 0:
            t, doff = 20, (p[32] >> 4) * 4
            hdr = 20 + doff
            flags = p[33]
            ok = doff >= 20 and n > hdr and flags in (_ACK, _ACK_PSH) and (p[2] << 8 | p[3]) == n
        elif v == 6 and n > 60 and p[6] == 6:
            t, doff = 40, (p[52] >> 4) * 4
            hdr = 40 + doff
            flags = p[53]
            ok = doff >= 20 and n > hdr and flags in (_ACK, _ACK_PSH) and (p[4] << 8 | p[5]) + 40 == n
        else:
            ok = False
        if not ok:
            if grouping:
                writes.append(_merged(first, _ACK, hl, mss, payloads, size))
                grouping = False
            writes.append(([ZERO_HDR, p], 1, n))
            continue
        seq = int.from_bytes(p[t + 4 : t + 8], "big")
        length = n - hdr
        if grouping:
            writes.append(_merged(first, _ACK, hl, mss, payloads, size))  # before a PSH, only ACKs
            grouping = False
        if flags & _PSH or length < MIN_SEGMENT:
            # A PUSH ends its run at once: nothing to merge it with. A tiny first segment would set
            # a tiny segment size (keystrokes, not bulk): not worth a merge.
            writes.append(([ZERO_HDR, p], 1, n))
            continue
        grouping, first, hl, mss = True, p, hdr, length
        layout = _layout(v, hdr)
        a, _total, b, c, _seq, mid, e = layout.unpack_from(p)
        fixed, extra = (a, b, c, e), 0 if v == 4 else 40
        mid_ack = mid[:5] + bytes([_ACK]) + mid[6:]
        mid_psh = mid[:5] + bytes([_ACK_PSH]) + mid[6:]
        seq_next = (seq + length) & 0xFFFFFFFF
        payloads = [memoryview(p)[hdr:]]
        size = length
    if grouping:
        writes.append(_merged(first, _ACK, hl, mss, payloads, size))
    if ugrouping:
        writes.append(_merged_udp(ufirst, ut, usize, upayloads, utotal))
    return writes


def is_udp_merge(write: Write) -> bool:
    """Whether a write is a merged UDP run (which a kernel before 6.2 refuses with EINVAL)."""
    return write[1] > 1 and write[0][0][1] == GSO_UDP_L4


def _merged(first: bytes, flags: int, hl: int, mss: int, payloads: list[memoryview], size: int) -> Write:
    """One write for a group: ``first``'s headers, adjusted, then all payloads."""
    count = len(payloads)
    if count == 1:
        return [ZERO_HDR, first], 1, len(first)
    v4 = first[0] >> 4 == 4
    t = 20 if v4 else 40
    total = hl + size
    head = bytearray(first[:hl])
    head[t + 13] = flags
    if v4:
        head[2:4] = total.to_bytes(2, "big")
        head[10:12] = b"\x00\x00"
        head[10:12] = ipv4_header_checksum(head[:20]).to_bytes(2, "big")
    else:
        head[4:6] = (total - 40).to_bytes(2, "big")
    # CHECKSUM_PARTIAL: the field holds the pseudo-header sum, and the kernel completes it.
    head[t + 16 : t + 18] = _pseudo_sum(head, 4 if v4 else 6, 6, total - t).to_bytes(2, "big")
    vnet = _HDR.pack(F_NEEDS_CSUM, GSO_TCPV4 if v4 else GSO_TCPV6, hl, mss, t, 16)
    # The peer's packets: count of them, and their bytes as they were (each with its own headers).
    return [vnet, bytes(head), *payloads], count, size + count * hl


def _merged_udp(first: bytes, t: int, size: int, payloads: list[memoryview], total_payload: int) -> Write:
    """One write for a UDP run: ``first``'s headers with the run's lengths, then all payloads."""
    count = len(payloads)
    if count == 1:
        return [ZERO_HDR, first], 1, len(first)
    hl = t + 8
    total = hl + total_payload
    head = bytearray(first[:hl])
    if t == 20:
        head[2:4] = total.to_bytes(2, "big")
        head[10:12] = b"\x00\x00"
        head[10:12] = ipv4_header_checksum(head[:20]).to_bytes(2, "big")
    else:
        head[4:6] = (total - 40).to_bytes(2, "big")
    udp_len = total - t
    head[t + 4 : t + 6] = udp_len.to_bytes(2, "big")
    # CHECKSUM_PARTIAL over the whole run's length: UDP GSO swaps in each datagram's own length.
    head[t + 6 : t + 8] = _pseudo_sum(head, 4 if t == 20 else 6, 17, udp_len).to_bytes(2, "big")
    vnet = _HDR.pack(F_NEEDS_CSUM, GSO_UDP_L4, hl, size, t, 6)
    return [vnet, bytes(head), *payloads], count, total_payload + count * hl
