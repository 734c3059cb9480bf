"""TCP mode, TLS layer: whoever is not the live peer is refused at the control port and at the
data port, with a log line naming the sender and the reason, while the live tunnel carries on.

Every attacker connects from 198.18.0.3 (not the live client's address) to server A, whose live
session with the client daemon must not notice (World.unaffected).
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import time

import pytest

from tests.hostile.nettools import client_context, closed_by_peer, fd_count, ns_socket, tcp_connect
from tests.hostile.world import CLIENT, INTRUDER, INTRUDER2, SERVER, World

pytestmark = [pytest.mark.root, pytest.mark.hostile]

DROP_WITHIN = 5.0
MAX_HANDSHAKES, MAX_PER_SOURCE = 256, 128  # tcp_transport's bounds under test
# (client certificate, or "tls1.2" / "garbage" / "none") -> what the server must log after "from ADDR:PORT"
TLS_CASES = {
    "no-cert": r" failed: TLS error: PEER_DID_NOT_RETURN_A_CERTIFICATE",
    "other-ca": r" failed: certificate rejected: unable to get local issuer certificate",
    "expired": r" failed: certificate rejected: certificate has expired",
    "not-yet-valid": r" failed: certificate rejected: certificate is not yet valid",
    "tls1.2": r" failed: TLS error: UNSUPPORTED_PROTOCOL",
    "garbage": r" failed: TLS error: \w+",
    "wrong-cn": r": peer certificate CN 'mallory' does not match expected --peer-cn 'rustvpn-client'",
}


def context_for(world: World, case: str) -> ssl.SSLContext:
    pki = world.pki
    if case == "no-cert":
        return client_context(pki.ca)
    if case == "tls1.2":
        return client_context(pki.ca, pki.client_cert, pki.client_key, max_version=ssl.TLSVersion.TLSv1_2)
    return client_context(pki.ca, *pki.client(case))


def attack(world: World, port: int, case: str) -> str:
    """One hostile connection from the intruder's address; returns its 'addr:port' as the server
    names it, after checking that the server dropped it."""
    raw = tcp_connect(world.client_ns, INTRUDER, (SERVER, port))
    who = f"{INTRUDER}:{raw.getsockname()[1]}"
    if case == "garbage":
        with raw:
            raw.sendall(b"\x16\x03\x01\x00\x10" + os.urandom(16) + b"GET / HTTP/1.1\r\n\r\n" + os.urandom(400))
            assert closed_by_peer(raw, DROP_WITHIN) is not None, f"{case}: the server kept the connection"
        return who
    try:
        sock = context_for(world, case).wrap_socket(raw, server_hostname=SERVER)
    except (ssl.SSLError, OSError):
        raw.close()  # refused inside the handshake: dropped
        return who
    with sock:
        assert closed_by_peer(sock, DROP_WITHIN) is not None, f"{case}: the server kept the connection"
    return who


@pytest.mark.parametrize("case", list(TLS_CASES))
def test_tls_refusals_on_both_planes(tcp_world: World, case: str) -> None:
    server = tcp_world.a_server
    mark = server.mark()
    with tcp_world.unaffected():
        for plane, port in zip(("control", "data"), tcp_world.ports("A"), strict=True):
            who = re.escape(attack(tcp_world, port, case))
            if case == "wrong-cn":
                expected = rf"refusing {plane} connection from {who}{TLS_CASES[case]}"
            else:
                expected = rf"TLS handshake from {who}{TLS_CASES[case]}"
            server.wait_log(expected, mark)


def test_authenticated_stranger_is_refused_while_a_session_is_live(tcp_world: World) -> None:
    """A valid client certificate from another address: the control plane says busy, the data
    plane has no session set-up to join; neither touches the live session."""
    server, pki = tcp_world.a_server, tcp_world.pki
    mark = server.mark()
    context = client_context(pki.ca, pki.client_cert, pki.client_key)
    with tcp_world.unaffected():
        control_port, data_port = tcp_world.ports("A")
        for port, expected in (
            (
                control_port,
                r"refusing control connection from {who} \(CN rustvpn-client\): a session is already active",
            ),
            (data_port, r"refusing data connection from {who}: a session is already active"),
        ):
            raw = tcp_connect(tcp_world.client_ns, INTRUDER, (SERVER, port))
            who = re.escape(f"{INTRUDER}:{raw.getsockname()[1]}")
            with context.wrap_socket(raw, server_hostname=SERVER) as sock:
                sock.sendall(len(b"x" * 32).to_bytes(2, "big") + b"x" * 32)
                assert closed_by_peer(sock, DROP_WITHIN) is not None
            server.wait_log(expected.format(who=who), mark)


def test_half_open_flood_is_bounded(tcp_world: World) -> None:
    """Hundreds of TCP connections that never say a word, to both ports: one address may hold at
    most MAX_PER_SOURCE handshake slots, so a legitimate client elsewhere still gets through; all
    addresses together at most MAX_HANDSHAKES, so file descriptors stay bounded. The excess is shed
    with a log line naming its sender, the slots come back as soon as the flood goes, and the live
    session never notices."""
    server = tcp_world.a_server
    mark = server.mark()
    base = fd_count(server.pid)
    flood: list[socket.socket] = []

    def open_flood(source: str, count: int) -> None:
        for i in range(count):
            sock = ns_socket(tcp_world.client_ns, socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.bind((source, 0))
            sock.connect_ex((SERVER, tcp_world.ports("A")[i % 2]))
            flood.append(sock)

    def held_after_settling() -> int:
        time.sleep(1.0)  # accepted sockets wait a loop turn before being shed: count what stays
        return fd_count(server.pid) - base

    try:
        with tcp_world.unaffected():
            open_flood(INTRUDER, MAX_PER_SOURCE + 72)
            server.wait_log(rf"too many TLS handshakes in progress from {INTRUDER}; dropping a new connection "
                            rf"from {INTRUDER}:\d+", mark)  # fmt: skip
            held = held_after_settling()
            assert MAX_PER_SOURCE - 8 <= held <= MAX_PER_SOURCE + 16, f"{held} descriptors held for one address"
            legit_handshake(tcp_world, CLIENT)  # another address: served during the flood

            open_flood(INTRUDER2, MAX_PER_SOURCE + 72)
            # Both addresses at their own bound make the global one: either may say so first.
            shed = (
                rf"too many TLS handshakes in progress( from {INTRUDER2})?; dropping a new connection from {INTRUDER2}:"
            )
            server.wait_log(shed, mark)
            held = held_after_settling()
            assert held <= MAX_HANDSHAKES + 16, f"{held} descriptors held for half-open connections"

            for sock in flood:
                sock.close()
            flood.clear()
            legit_handshake(tcp_world, INTRUDER, timeout=5.0)  # the slots come back at once
        time.sleep(1.0)
        assert fd_count(server.pid) <= base + 8, "descriptors of the flood were not released"
    finally:
        for sock in flood:
            sock.close()


def legit_handshake(world: World, source: str, timeout: float = 3.0) -> None:
    """A client with a valid certificate completes TLS with server A (and is told it is busy)."""
    pki = world.pki
    context = client_context(pki.ca, pki.client_cert, pki.client_key)
    deadline = time.monotonic() + timeout
    while True:
        mark = world.a_server.mark()
        try:
            raw = tcp_connect(world.client_ns, source, (SERVER, world.ports("A")[0]))
            who = re.escape(f"{source}:{raw.getsockname()[1]}")
            with context.wrap_socket(raw, server_hostname=SERVER) as sock:
                closed_by_peer(sock, DROP_WITHIN)
            world.a_server.wait_log(rf"refusing control connection from {who} \(CN rustvpn-client\)", mark, 2.0)
            return
        except (OSError, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
