"""QUIC mode at the UDP port of the live server A: clients that must be refused in the TLS
handshake, handshakes that never finish, and thousands of stray datagrams. The live session
with the client daemon must not notice any of it (World.unaffected).

A second authenticated client while the session is live is refused with "server busy":
tests/integration/test_tunnel.py::test_second_client_refused_while_first_works[quic] (ping and
session count checked there) and tests/unit/test_quic_session.py::test_loopback_second_client_refused_busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import socket
import struct
import threading
import time

import pytest

from tests.hostile.nettools import ETH_P_ALL, ETH_P_IP, fd_count, ns_socket
from tests.hostile.quic_peer import QuicPeer, client_quic
from tests.hostile.world import CLIENT, INTRUDER, INTRUDER2, SERVER, World

pytestmark = [pytest.mark.root, pytest.mark.hostile]

# client certificate -> what A must log after "set-up with ADDR failed: " (or the CN refusal)
TLS_CASES = {
    "none": r"TLS handshake failed: .*\(TLS alert certificate_required\)",
    "other-ca": r"TLS handshake failed: .*\(TLS alert bad_certificate\)",
    "expired": r"TLS handshake failed: .*\(TLS alert certificate_expired\)",
    "not-yet-valid": r"TLS handshake failed: .*\(TLS alert certificate_expired\)",
    "tls1.2": r"TLS handshake failed: .*\(TLS alert protocol_version\)",
    "wrong-cn": None,
}
QUIC_V1 = 1
INITIAL_SIZE = 1200  # RFC 9000: a client's Initial datagram is at least this long


@pytest.mark.parametrize("cert", list(TLS_CASES))
def test_tls_refusals(quic_world: World, cert: str) -> None:
    server = quic_world.a_server
    mark = server.mark()

    async def attack() -> str:
        peer = await QuicPeer.open(quic_world, client_quic(quic_world, cert), INTRUDER, "A")
        try:
            assert await peer.until(peer.terminated), "the server did not close the connection"
        finally:
            peer.close()
        return re.escape(peer.who)

    with quic_world.unaffected():
        who = asyncio.run(attack())
        if TLS_CASES[cert] is None:
            server.wait_log(
                rf"refusing QUIC peer {who}: peer certificate CN 'mallory' does not match expected "
                r"--peer-cn 'rustvpn-client'",
                mark,
            )
        else:
            server.wait_log(rf"QUIC session set-up with {who} failed: {TLS_CASES[cert]}", mark)


def long_header(version: int, size: int, packet_type: int = 0) -> bytes:
    """A long-header packet (type 0 = Initial) with random connection ids and a garbage payload."""
    dcid, scid = os.urandom(8), os.urandom(8)
    head = bytes([0xC0 | packet_type << 4 | 3]) + struct.pack("!I", version)
    head += bytes([8]) + dcid + bytes([8]) + scid + (b"\x00" if packet_type == 0 else b"")
    body_len = size - len(head) - 2
    return head + struct.pack("!H", 0x4000 | body_len) + os.urandom(body_len)


def sniff_server_cid(world: World, port: int, timeout: float = 5.0) -> bytes:
    """The connection id the live client addresses the server with, read off the client's veth:
    what anyone on the path sees."""
    # ETH_P_ALL: a socket for one protocol only sees incoming packets, not the client's own.
    sniffer = ns_socket(world.client_ns, socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sniffer.settimeout(0.5)
    deadline = time.monotonic() + timeout
    with sniffer:
        while time.monotonic() < deadline:
            try:
                packet, (_ifname, protocol, *_rest) = sniffer.recvfrom(65535)
            except TimeoutError:
                continue
            ihl = (packet[0] & 0x0F) * 4
            if protocol != ETH_P_IP or packet[9] != 17 or socket.inet_ntoa(packet[16:20]) != SERVER:
                continue
            dport = struct.unpack("!H", packet[ihl + 2 : ihl + 4])[0]
            quic = packet[ihl + 8 :]
            if dport == port and quic and not quic[0] & 0x80:  # a short header: DCID follows
                return quic[1:9]
    raise AssertionError("no QUIC packet of the live session seen on the client's link")


def test_thousands_of_stray_datagrams(quic_world: World) -> None:
    """Random bytes, Initial-shaped garbage (each one a would-be handshake), and short-header
    packets carrying the live session's own connection id (sniffed off the link, sent from another
    address and port): the live session must not notice, handshake slots held by garbage must come
    back, and a legitimate client must still get an answer afterwards."""
    server = quic_world.a_server
    port = quic_world.ports("A")[0]
    mark = server.mark()
    fds = fd_count(server.pid)
    rng = random.Random(7)
    with quic_world.unaffected():
        live_cid = sniff_server_cid(quic_world, port)
        senders = [ns_socket(quic_world.client_ns, socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
        spoof = ns_socket(quic_world.client_ns, socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for sock in senders:
                sock.bind((INTRUDER, 0))
                sock.setblocking(False)
            spoof.bind((CLIENT, 0))  # the live client's own address, another port
            for burst in range(10):
                for i in range(300):
                    sock = senders[i % len(senders)]
                    kind = i % 10
                    if kind < 6:
                        data = os.urandom(rng.randint(1, 1400))
                    elif kind < 8:
                        data = bytes([0x40 | rng.randint(0, 0x3F)]) + live_cid + os.urandom(rng.randint(20, 1200))
                    elif kind == 8 and burst < 2:
                        data = long_header(QUIC_V1, INITIAL_SIZE)  # a fresh would-be connection
                    else:
                        data = bytes([0x40]) + os.urandom(8) + os.urandom(rng.randint(20, 1200))
                    with contextlib.suppress(BlockingIOError):  # our own buffer is full: the next burst goes
                        (spoof if kind == 7 else sock).sendto(data, (SERVER, port))
                time.sleep(0.05)
        finally:
            for sock in [*senders, spoof]:
                sock.close()
        # Stray datagrams are dropped without a word each (a log line per datagram would be a flood of
        # its own); what is said about the would-be handshakes among them names their sender.
        said = [line for line in server.since(mark).splitlines() if "WARNING" in line]
        assert len(said) < 200, f"{len(said)} warnings for 3000 stray datagrams: a log flood"
        assert all(INTRUDER in line for line in said), [line for line in said if INTRUDER not in line][:3]
        # Garbage Initials hold handshake slots until their set-up deadline; then a real client is
        # answered again (here: refused as busy, which needs a completed handshake).
        asyncio.run(answered_within(quic_world, 20.0))
    assert fd_count(server.pid) <= fds + 2, "the stray datagrams cost the server file descriptors"


async def answered(world: World, source: str, timeout: float) -> bool:
    """Whether a client with a valid certificate from ``source`` completes a handshake with A (and
    is refused as busy) within ``timeout``."""
    mark = world.a_server.mark()
    peer = await QuicPeer.open(world, client_quic(world), source, "A")
    try:
        done = await peer.until(peer.terminated, timeout)
    finally:
        peer.close()
    busy = rf"refusing QUIC session from {re.escape(peer.who)} .*server busy"
    return done and re.search(busy, world.a_server.since(mark)) is not None


async def answered_within(world: World, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await answered(world, INTRUDER, 3.0):
        if time.monotonic() > deadline:
            raise AssertionError(f"no handshake answered within {timeout} s")
        await asyncio.sleep(0.5)


def test_a_garbage_trickle_from_one_address_does_not_lock_out_others(quic_world: World) -> None:
    port = quic_world.ports("A")[0]
    stop = threading.Event()

    def trickle() -> None:
        sock = ns_socket(quic_world.client_ns, socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.bind((INTRUDER, 0))
            while not stop.is_set():
                sock.sendto(long_header(QUIC_V1, INITIAL_SIZE), (SERVER, port))
                time.sleep(0.002)  # some 400 datagrams a second: under 0.5 MB/s

    async def attempts() -> list[bool]:
        return [await answered(quic_world, INTRUDER2, 1.5) for _ in range(4)]

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        time.sleep(1.0)
        with quic_world.unaffected():
            # A slot freed by garbage that idled out is only rarely free when a real Initial comes.
            results = asyncio.run(attempts())
    finally:
        stop.set()
        thread.join(5)
    assert results.count(True) >= 3, f"legitimate handshakes answered during the trickle: {results}"


def test_version_negotiation_only_for_full_size_datagrams(quic_world: World) -> None:
    port = quic_world.ports("A")[0]
    sock = ns_socket(quic_world.client_ns, socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.bind((INTRUDER, 0))
        sock.settimeout(1.0)
        sock.sendto(long_header(0x1A2A3A4A, INITIAL_SIZE), (SERVER, port))
        reply = sock.recv(2048)  # a full-size datagram may be answered (SHOULD): the server is there
        assert reply[1:5] == b"\0\0\0\0", "not a Version Negotiation packet"
        sock.sendto(long_header(0x1A2A3A4A, 60), (SERVER, port))
        with pytest.raises(TimeoutError):
            sock.recv(2048)
