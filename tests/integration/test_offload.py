"""TUN segmentation offload against the real kernel (needs root).

1. What the kernel hands a TUN reader with offload on: a local TCP socket talks through a TUN device
   whose far end is played here (a hand-made SYN-ACK), so the kernel sends offloaded segments;
   offload.plain_packets must cut them into packets whose checksums and byte stream are right.
2. Tunnels between two rustvpn peers: offload agreed (segments cross whole) and offered by one side
   only (each side sends finished packets), each with a checksummed transfer both ways.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from rustvpn.gro import coalesce
from rustvpn.offload import GSO_MAX_SIZE, GSO_TCPV4, GSO_TCPV6, VnetHeader, plain_packets
from rustvpn.tun import TunDevice
from tests.integration.netns import CLIENT_TUN4, SERVER_TUN4, NetnsPair, sh
from tests.integration.test_tunnel import checksummed_transfer, client_args, server_args, start_pair, tun_ip
from tests.unit.test_offload import ip_header_len, slow_sum, tcp_checksum_ok

pytestmark = pytest.mark.root

MSS = 1400
CLONE_NEWNET = 0x40000000


def _in_namespace(name: str) -> None:
    """Move the calling thread into a network namespace (os.setns is Python 3.12+)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns failed")
    finally:
        os.close(fd)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"rvoff-{os.getpid()}-{time.monotonic_ns() % 100000}"
    sh("ip", "netns", "add", name)
    try:
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def _answer(got: bytes, version: int, ack: int | None = None) -> bytes:
    """The far end's answer to a packet from the kernel: to its SYN a SYN-ACK with an MSS option,
    to data a cumulative ACK of ``ack``; a 64 KB window, no scaling."""
    ip_len = ip_header_len(got)
    sport, dport, seq = struct.unpack_from("!HHI", got, ip_len)
    if ack is None:
        tcp = bytearray(struct.pack("!HHIIBBHHH", dport, sport, 5000, seq + 1, 6 << 4, 0x12, 65535, 0, 0))
        tcp += struct.pack("!BBH", 2, 4, MSS)
    else:
        tcp = bytearray(struct.pack("!HHIIBBHHH", dport, sport, 5001, ack, 5 << 4, 0x10, 65535, 0, 0))
    src, dst = (got[16:20], got[12:16]) if version == 4 else (got[24:40], got[8:24])
    return _with_ip(version, src, dst, tcp, 1)


def _with_ip(version: int, src: bytes, dst: bytes, tcp: bytearray, ip_id: int) -> bytes:
    """The TCP segment behind an IP header (DF set), both checksums filled in."""
    if version == 4:
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ip_id, 0x4000, 64, 6, 0, src, dst))
        ip[10:12] = (~slow_sum(bytes(ip)) & 0xFFFF).to_bytes(2, "big")
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    else:
        ip = bytearray(struct.pack("!IHBB16s16s", 0x60000000, len(tcp), 6, 64, src, dst))
        pseudo = src + dst + struct.pack("!IxxxB", len(tcp), 6)
    tcp[16:18] = (~slow_sum(pseudo + bytes(tcp)) & 0xFFFF).to_bytes(2, "big")
    return bytes(ip + tcp)


def _is_tcp(packet: bytes) -> bool:
    return (packet[9] if packet[0] >> 4 == 4 else packet[6]) == 6


def _tcp_payload(packet: bytes) -> bytes:
    ip_len = ip_header_len(packet)
    return packet[ip_len + (packet[ip_len + 12] >> 4) * 4 :]


def _read(tun: TunDevice, timeout: float = 5.0) -> bytes:
    ready, _, _ = select.select([tun.fd], [], [], timeout)
    assert ready, "nothing came out of the TUN device"
    data = tun.read()
    assert data is not None
    return data


def _handshake_answer(tun: TunDevice, syn: bytes, tries: int = 5) -> bytes:
    """Send the far end's SYN and return the kernel's SYN-ACK, skipping router solicitations and the
    like. Like a real peer the far end sends its SYN again after a second without an answer: CI once
    saw a lone IPv6 SYN go unanswered in a namespace a moment old, which is not what these tests test."""
    for _ in range(tries):
        assert os.write(tun.fd, syn)
        deadline = time.monotonic() + 1.0
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([tun.fd], [], [], left)
            if not ready:
                break
            packet = tun.read()
            if packet is not None and _is_tcp(packet[10:]):
                return packet[10:]
    raise AssertionError(f"no SYN-ACK from the kernel to {tries} SYNs; drop counters: {_drop_counters()}")


def _drop_counters() -> str:
    """The namespace's non-zero SNMP counters that count drops or errors, for a failure message."""
    rows = (ln.split() for ln in subprocess.run(["nstat", "-az"], capture_output=True, text=True).stdout.splitlines())
    words = ("Drop", "Discard", "Err", "Fail", "Overflow")
    return " ".join(f"{r[0]}={r[1]}" for r in rows if len(r) >= 2 and r[1] != "0" and any(w in r[0] for w in words))


def _in_thread_in(netns: str, probe: Callable[[], None]) -> None:
    """Run probe in a thread inside the namespace (setns applies to one thread); its error is ours."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _in_namespace(netns)
            probe()
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(30)
    assert not worker.is_alive()
    if errors:
        raise errors[0]


def _device_up(name: str, address: str, version: int, *link: str) -> None:
    """The device up with MTU 1500 (and any other link settings) and ``address`` on it."""
    prefix = 24 if version == 4 else 64
    for cmd in (
        ["ip", "link", "set", name, "mtu", "1500", *link, "up"],
        ["ip", "addr", "add", f"{address}/{prefix}", "dev", name] + (["nodad"] if version == 6 else []),
    ):
        subprocess.run(cmd, check=True)


@pytest.mark.parametrize("version", [4, 6])
def test_kernel_offloaded_segments_are_cut_into_valid_packets(netns: str, version: int) -> None:
    payload = bytes(i % 253 for i in range(60000))
    local, far = ("198.19.9.1", "198.19.9.2") if version == 4 else ("fd00:99:9::1", "fd00:99:9::2")
    received: list[bytes] = []
    streamed: list[bytes] = []
    kinds: set[int] = set()

    def probe() -> None:
        tun = TunDevice.open("rvoff0", vnet_hdr=True)
        try:
            tun.set_offload(True)
            _device_up("rvoff0", local, version, "gso_max_size", str(GSO_MAX_SIZE))
            sock = socket.socket(socket.AF_INET if version == 4 else socket.AF_INET6, socket.SOCK_STREAM)
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.connect((far, 5201))
            while True:  # skip router solicitations and the like until the SYN
                syn = _read(tun)[10:]
                if _is_tcp(syn):
                    break
            assert os.write(tun.fd, bytes(10) + _answer(syn, version))
            isn = struct.unpack_from("!I", syn, ip_header_len(syn) + 4)[0] + 1
            select.select([], [sock], [], 5)
            sock.setblocking(True)
            sock.sendall(payload)  # fits the socket buffer: sent as our ACKs open the window
            got = b""
            deadline = time.monotonic() + 10
            while len(got) < len(payload) and time.monotonic() < deadline:
                data = _read(tun)
                kinds.add(VnetHeader.parse(data).gso_type)
                for packet in plain_packets(data):
                    if not _is_tcp(packet):  # router solicitations and other chatter
                        continue
                    received.append(packet)
                    seq = struct.unpack_from("!I", packet, ip_header_len(packet) + 4)[0]
                    if seq - isn == len(got):  # in order (a retransmission would repeat bytes)
                        got += _tcp_payload(packet)
                assert os.write(tun.fd, bytes(10) + _answer(received[-1], version, isn + len(got)))
            streamed.append(got)
            sock.close()
        finally:
            tun.close()

    _in_thread_in(netns, probe)
    assert (GSO_TCPV4 if version == 4 else GSO_TCPV6) in kinds, f"the kernel sent no offloaded segment: {kinds}"
    data_packets = [p for p in received if len(p) > ip_header_len(p) + 32]
    assert data_packets and all(len(p) <= 1500 for p in received)
    assert all(tcp_checksum_ok(p) for p in received)
    if version == 4:
        assert all(slow_sum(p[:20]) == 0xFFFF for p in received)
    assert streamed == [payload]


def _session_options(log: str) -> str:
    line = next(ln for ln in log.splitlines() if "session up" in ln)
    return line.rsplit("options ", 1)[1].strip()


@pytest.mark.parametrize(
    ("server_flags", "client_flags", "expected"),
    [((), (), "offload"), (("--no-offload",), (), "none"), ((), ("--no-offload",), "none")],
    ids=["both-offer", "server-declines", "client-declines"],
)
def test_tunnel_transfer_with_and_without_agreed_offload(
    hosts: NetnsPair, server_flags: tuple[str, ...], client_flags: tuple[str, ...], expected: str
) -> None:
    server, client = start_pair(hosts, "tcp", server_args("tcp", *server_flags), client_args("tcp", *client_flags))
    client.wait_for("session up")
    server.wait_for("session up")
    assert _session_options(client.log()) == expected == _session_options(server.log())
    # Segments whole or cut, the byte stream must arrive intact both ways, and pings of any size.
    checksummed_transfer(hosts, hosts.client, hosts.server, tun_ip(SERVER_TUN4), 8 << 20, port="5202", seed="11")
    checksummed_transfer(hosts, hosts.server, hosts.client, tun_ip(CLIENT_TUN4), 8 << 20, port="5202", seed="11")
    ping = hosts.run(hosts.client, "ping", "-c", "3", "-i", "0.2", "-s", "4000", "-W", "2", tun_ip(SERVER_TUN4))
    assert " 0% packet loss" in ping.stdout
    assert "Traceback" not in server.log() + client.log()


def _far_packet(
    version: int, src: bytes, dst: bytes, seq: int, ack: int, flags: int, payload: bytes, ip_id: int
) -> bytes:
    """A TCP packet from the far end (port 40000) to the local listener (port 5201), checksums valid."""
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, seq, ack, 5 << 4, flags, 65535, 0, 0)) + payload
    return _with_ip(version, src, dst, tcp, ip_id)


@pytest.mark.parametrize("version", [4, 6])
def test_merged_segments_written_to_the_device_reach_a_local_socket_intact(netns: str, version: int) -> None:
    """gro.coalesce's writes against the real kernel: a far end played here opens a connection to
    a local listener, then sends its data as merged segments (virtio header, partial checksum).
    The kernel must take each write whole and hand the listener the byte stream unchanged."""
    payload = bytes((i * 7) % 251 for i in range(30 * 1360))
    local, far = ("198.19.9.1", "198.19.9.2") if version == 4 else ("fd00:99:9::1", "fd00:99:9::2")
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    src, dst = socket.inet_pton(family, far), socket.inet_pton(family, local)
    results: list[bytes] = []
    counts: list[int] = []

    def probe() -> None:
        tun = TunDevice.open("rvgro0", vnet_hdr=True)
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            _device_up("rvgro0", local, version)
            listener.bind((local, 5201))
            listener.listen(1)
            listener.settimeout(5)
            synack = _handshake_answer(tun, bytes(10) + _far_packet(version, src, dst, 9000, 0, 0x02, b"", 1))
            ack = struct.unpack_from("!I", synack, ip_header_len(synack) + 4)[0] + 1
            assert os.write(tun.fd, bytes(10) + _far_packet(version, src, dst, 9001, ack, 0x10, b"", 2))
            conn, _ = listener.accept()
            segments = [
                _far_packet(version, src, dst, 9001 + i, ack, 0x18 if i + 1360 >= len(payload) else 0x10, chunk, 3 + n)
                for n, (i, chunk) in enumerate((i, payload[i : i + 1360]) for i in range(0, len(payload), 1360))
            ]
            for buffers, count, _size in coalesce(segments):
                counts.append(count)
                os.writev(tun.fd, buffers)
            conn.settimeout(5)
            got = b""
            while len(got) < len(payload):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                got += chunk
            results.append(got)
            conn.close()
        finally:
            listener.close()
            tun.close()

    _in_thread_in(netns, probe)
    assert counts == [30], "the 30 segments should have gone as one write"
    assert results == [payload]
