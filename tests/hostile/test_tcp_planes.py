"""TCP mode past TLS: hostile config exchanges on the control plane and hostile data connections,
from a client with a valid certificate, against the idle server B (a server with a live session
would refuse them before reading a byte: see test_tcp_tls). After each attack B must be back to
listening with no session made, and a correct hand-written client must get a working session.

The parser and the transport are unit-tested in tests/unit (test_config_exchange, test_tcp_transport);
this is the daemon: the log line names the sender and the fault, and the process serves on.
"""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from rustvpn.framing import encode_frame
from rustvpn.token import new_token
from tests.hostile.cases import EXCHANGE_CASES
from tests.hostile.certs import FORGED_LINE
from tests.hostile.nettools import closed_by_peer, recv_message
from tests.hostile.tcp_peer import TcpHandPeer, check_b_serves
from tests.hostile.world import B_MTU, B_STREAMS, CLIENT, INTRUDER, World

pytestmark = [pytest.mark.root, pytest.mark.hostile]

DROP_WITHIN = 5.0


def who(sock: ssl.SSLSocket) -> str:
    host, port = sock.getsockname()[:2]
    return re.escape(f"{host}:{port}")


@pytest.fixture
def b_peer(tcp_world: World) -> Iterator[TcpHandPeer]:
    """A hand-written client for server B; afterwards B must be idle and serve a correct client."""
    server = tcp_world.b_server
    before = server.wait_state("listening")["sessions"]
    peer = TcpHandPeer(tcp_world)
    try:
        yield peer
    finally:
        peer.close()
    assert server.alive(), server.log()[-4000:]
    made = server.wait_state("listening", timeout=10)["sessions"] - before
    assert made == peer.sessions_made, f"{made} sessions made, {peer.sessions_made} expected"
    check_b_serves(tcp_world)


# ---------------------------------------------------------------------------------------------
# Control plane: the config exchange


@pytest.mark.parametrize("case", list(EXCHANGE_CASES))
def test_hostile_exchange_text(tcp_world: World, b_peer: TcpHandPeer, case: str) -> None:
    text, expected = EXCHANGE_CASES[case]
    server = tcp_world.b_server
    mark = server.mark()
    sock = b_peer.connect("control")
    sender = who(sock)
    b_peer.control = sock
    sock.sendall(encode_frame(text, 4096))
    # The server answers with its own text before validating (so a real client can name the
    # mismatch too), then closes.
    reply = recv_message(sock)
    assert reply.startswith(b"build_id="), reply
    assert closed_by_peer(sock, DROP_WITHIN) is not None, "the server kept the connection"
    line = server.wait_log(rf"control connection from {sender} refused: [^\n]*", mark)[0].group(0)
    assert re.search(expected, line), line
    assert len(line) < 400, f"a peer can write long log lines: {len(line)} chars"
    assert "\x1b" not in server.since(mark), "a raw escape character reached the log"


@pytest.mark.parametrize("length", [0, 4097, 0xFFFF], ids=["zero", "above-4096", "max"])
def test_oversized_or_empty_control_message(tcp_world: World, b_peer: TcpHandPeer, length: int) -> None:
    server = tcp_world.b_server
    mark = server.mark()
    sock = b_peer.connect("control")
    sock.sendall(length.to_bytes(2, "big") + b"x" * min(length, 8000))
    assert closed_by_peer(sock, DROP_WITHIN) is not None
    server.wait_log(
        rf"control connection from {who(sock)} refused: protocol error from peer: "
        rf"invalid frame length {length} \(allowed 1\.\.4096\)",
        mark,
    )


def test_newline_in_a_certificate_cn_cannot_forge_a_log_line(tcp_world: World) -> None:
    """A client certificate (from the trusted CA) whose CN holds a newline and a whole log line:
    every line of the log must still be one the logger wrote."""
    server = tcp_world.b_server
    mark = server.mark()
    peer = TcpHandPeer(tcp_world, cert="newline-cn")
    try:
        peer.establish()
        server.wait_log(r"session up with", mark)
    finally:
        peer.close()
    server.wait_log(r"session with \S+ lost", mark)
    server.wait_state("listening", timeout=10)
    text = server.since(mark)
    assert "mallory\\n" in text, "the CN is not in the log at all"
    forged = [line for line in text.splitlines() if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line)]
    assert not forged, f"lines the logger did not write: {forged}"
    assert FORGED_LINE not in text.replace("\\n", "\n").splitlines()


# ---------------------------------------------------------------------------------------------
# Data plane


def test_wrong_token_fails_the_set_up_and_names_the_sender(tcp_world: World, b_peer: TcpHandPeer) -> None:
    server = tcp_world.b_server
    mark = server.mark()
    b_peer.exchange()
    wrong = new_token()
    sock = b_peer.present(token=wrong)
    assert closed_by_peer(sock, DROP_WITHIN) is not None, "the server answered a wrong token"
    assert b_peer.control is not None and closed_by_peer(b_peer.control, DROP_WITHIN) is not None
    server.wait_log(rf"data connection from {who(sock)} presented a wrong token", mark)
    server.wait_log(r"session set-up with 198\.18\.0\.1 failed: a data connection presented a wrong token", mark)
    assert wrong not in server.log() and b_peer.token not in server.log()


def test_right_token_from_another_source_ip_is_refused(tcp_world: World, b_peer: TcpHandPeer) -> None:
    """The intruder knows the token (here: it is the client's own, sent from a second address):
    the server takes data connections only from the control connection's address."""
    server = tcp_world.b_server
    mark = server.mark()
    b_peer.exchange()
    sock = b_peer.present(source=INTRUDER)
    assert closed_by_peer(sock, DROP_WITHIN) is not None, "the server answered a data connection from another IP"
    server.wait_log(rf"refusing data connection from {who(sock)}: not the control peer {re.escape(CLIENT)}", mark)
    # The set-up is still pending for the real client, which completes it from its own address.
    for _ in range(B_STREAMS):
        b_peer.accept_data(b_peer.present())
    server.wait_log(r"session up with 198\.18\.0\.1:", mark)
    assert b_peer.ping(7)
    b_peer.close()


def test_more_data_connections_than_negotiated(tcp_world: World, b_peer: TcpHandPeer) -> None:
    """One connection more than negotiated, all presenting the right token at once: exactly the
    negotiated number make the session, the extra one is refused with a log line, and the session
    works; one more after the session is up is refused too."""
    server = tcp_world.b_server
    mark = server.mark()
    b_peer.exchange()
    socks = [b_peer.connect("data") for _ in range(B_STREAMS + 1)]
    for sock in socks:  # tokens last, back to back, so all are read during the set-up
        sock.sendall(encode_frame(b_peer.server_token.encode()))

    def outcome(sock: ssl.SSLSocket) -> bool:
        try:
            return recv_message(sock) == b_peer.token.encode()
        except (OSError, ssl.SSLError, ConnectionError):
            return False

    with ThreadPoolExecutor(len(socks)) as pool:
        answered = list(pool.map(outcome, socks))
    assert answered.count(True) == B_STREAMS, answered
    extra = socks[answered.index(False)]
    server.wait_log(
        rf"refusing data connection from {who(extra)}: all {B_STREAMS} data connections are already up", mark
    )
    b_peer.data = [s for s, ok in zip(socks, answered, strict=True) if ok]
    b_peer.sessions_made = 1
    server.wait_log(r"session up with 198\.18\.0\.1:", mark)
    assert b_peer.ping(11)

    late = b_peer.present()
    assert closed_by_peer(late, DROP_WITHIN) is not None
    server.wait_log(rf"refusing data connection from {who(late)}: a session is already active", mark)
    assert b_peer.ping(12), "the session broke after a late extra data connection"
    b_peer.close()


def test_data_connection_for_no_session(tcp_world: World, b_peer: TcpHandPeer) -> None:
    server = tcp_world.b_server
    mark = server.mark()
    sock = b_peer.present(token=new_token())
    assert closed_by_peer(sock, DROP_WITHIN) is not None
    server.wait_log(rf"refusing data connection from {who(sock)}: no session is being set up", mark)


@pytest.mark.parametrize("length", [0, B_MTU + 1], ids=["zero", "above-mtu"])
def test_invalid_frame_length_ends_that_session_only(tcp_world: World, b_peer: TcpHandPeer, length: int) -> None:
    """Its own peer may end its session with a bad frame (the reference does the same); the
    daemon logs it naming the peer and takes the next client (b_peer's check)."""
    server = tcp_world.b_server
    mark = server.mark()
    b_peer.establish()
    server.wait_log(r"session up with", mark)
    assert b_peer.ping(1)
    b_peer.data[1].sendall(length.to_bytes(2, "big") + b"\x45" * 40)
    server.wait_log(
        rf"session with 198\.18\.0\.1:\d+ lost after \d+ s: protocol error from peer: invalid frame length {length}",
        mark,
    )
    assert all(closed_by_peer(s, DROP_WITHIN) is not None for s in b_peer.data)


def test_truncated_frame_then_close(tcp_world: World, b_peer: TcpHandPeer) -> None:
    server = tcp_world.b_server
    mark = server.mark()
    b_peer.establish()
    server.wait_log(r"session up with", mark)
    b_peer.data[0].sendall((200).to_bytes(2, "big") + b"\x45" * 50)
    time.sleep(0.2)  # let the half frame arrive before the close (52 bytes held: header and 50)
    b_peer.data[0].close()
    server.wait_log(r"session with 198\.18\.0\.1:\d+ lost after \d+ s: .*inside a frame, 52 bytes left over", mark)
