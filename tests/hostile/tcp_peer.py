"""A TCP-mode client written by hand from PROTOCOL.md, for attacks on server B that need to get
past TLS: it sends whatever exchange text or token a test chooses, and can prove a session works
by pinging the server's kernel through it.
"""

from __future__ import annotations

import select
import ssl
import time

from rustvpn import DEFAULT_BUILD_ID
from rustvpn.framing import FrameDecoder, encode_frame
from rustvpn.token import new_token
from tests.hostile.nettools import (
    client_context,
    icmp_echo,
    is_echo_reply,
    recv_message,
    send_message,
    tls_connect,
)
from tests.hostile.world import B_MTU, B_STREAMS, B_TUN_PEER, B_TUN_SERVER, CLIENT, SERVER, World


def exchange_text(token: str, *, streams: int = B_STREAMS, mtu: int = B_MTU, build_id: str = DEFAULT_BUILD_ID) -> bytes:
    return f"build_id={build_id};number_of_streams={streams};mtu={mtu};token={token}".encode()


def parse_text(data: bytes) -> dict[str, str]:
    return dict(item.split("=", 1) for item in data.decode().split(";") if "=" in item)


class TcpHandPeer:
    def __init__(self, world: World, source: str = CLIENT, cert: str = "good") -> None:
        self.world = world
        self.source = source
        self.context = client_context(world.pki.ca, *world.pki.client(cert))
        self.token = new_token()
        self.server_token = ""
        self.control: ssl.SSLSocket | None = None
        self.data: list[ssl.SSLSocket] = []
        self.sessions_made = 0  # sessions this peer completed with B
        self._opened: list[ssl.SSLSocket] = []
        self._decoders: dict[ssl.SSLSocket, FrameDecoder] = {}

    def connect(self, plane: str, source: str | None = None) -> ssl.SSLSocket:
        control, data = self.world.ports("B")
        port = control if plane == "control" else data
        sock = tls_connect(self.world.client_ns, source or self.source, (SERVER, port), self.context)
        self._opened.append(sock)
        return sock

    def exchange(self, text: bytes | None = None) -> dict[str, str]:
        """Step 1: our config text (or the test's) out, the server's back."""
        self.control = self.connect("control")
        send_message(self.control, exchange_text(self.token) if text is None else text)
        reply = parse_text(recv_message(self.control))
        self.server_token = reply["token"]
        return reply

    def present(self, token: str | None = None, source: str | None = None) -> ssl.SSLSocket:
        """Step 2 for one data connection: present a token (the server's unless told otherwise)."""
        sock = self.connect("data", source)
        send_message(sock, (self.server_token if token is None else token).encode())
        return sock

    def establish(self) -> None:
        """A whole session: exchange, then every data connection with the right tokens both ways."""
        self.exchange()
        for _ in range(B_STREAMS):
            self.accept_data(self.present())

    def accept_data(self, sock: ssl.SSLSocket) -> None:
        answer = recv_message(sock)
        assert answer == self.token.encode(), "server answered a wrong token"
        self.data.append(sock)
        self.sessions_made += len(self.data) == B_STREAMS

    def send_packets(self, packets: list[bytes], index: int = 0) -> None:
        self.data[index].sendall(b"".join(encode_frame(p) for p in packets))

    def ping(self, seq: int, payload: bytes = b"hostile-suite ping", timeout: float = 5.0) -> bool:
        """An ICMP echo to the server's TUN address through the session; True if the reply came back."""
        ident = 0x5256
        self.send_packets([icmp_echo(B_TUN_PEER, B_TUN_SERVER, ident, seq, payload)], seq % len(self.data))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(is_echo_reply(p, ident, seq) for p in self.receive(deadline - time.monotonic())):
                return True
        return False

    def receive(self, timeout: float) -> list[bytes]:
        """Packets that arrived on any data connection within ``timeout``."""
        ready = [s for s in self.data if s.pending()] or select.select(self.data, [], [], max(timeout, 0))[0]
        packets: list[bytes] = []
        for sock in ready:
            sock.settimeout(1.0)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed a data connection")
            packets += self._decoders.setdefault(sock, FrameDecoder(B_MTU)).feed(chunk)
        return packets

    def close(self) -> None:
        for sock in self._opened:
            sock.close()
        self._opened.clear()
        self.data.clear()


def check_b_serves(world: World) -> None:
    """B is idle, and a correct client gets a session through which the server's kernel answers a ping."""
    mark = world.b_server.mark()
    peer = TcpHandPeer(world)
    try:
        peer.establish()
        world.b_server.wait_log(r"session up with 198\.18\.0\.1:\d+", mark)
        assert peer.ping(1), "no echo reply through a fresh session with B"
    finally:
        peer.close()
    world.b_server.wait_log(r"session with \S+ lost", mark)
    world.b_server.wait_state("listening", timeout=10)
