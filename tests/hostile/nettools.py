"""Low-level tools for hostile peers: sockets made inside a test namespace, hand-built IP packets,
and the file descriptors of a daemon.

A socket belongs to the network namespace of the thread that created it, for its whole life. So
the attackers here enter the client namespace only for the ``socket()`` call (``setns`` on the
calling thread, then back), and use the socket from the test process as usual afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
ETH_P_ALL, ETH_P_IP, ETH_P_IPV6 = 0x0003, 0x0800, 0x86DD
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def inside(netns: str) -> Iterator[None]:
    """Run the block in ``netns`` (this thread only); always return to the original namespace."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def ns_socket(netns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    with inside(netns):
        return socket.socket(family, kind, proto)


def tcp_connect(netns: str, source: str, server: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    sock = ns_socket(netns, socket.AF_INET6 if ":" in server[0] else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect(server)
    except BaseException:
        sock.close()
        raise
    return sock


def tls_connect(
    netns: str, source: str, server: tuple[str, int], context: ssl.SSLContext, timeout: float = 5.0
) -> ssl.SSLSocket:
    """A TLS client connection with its handshake done from our side.

    In TLS 1.3 the client finishes first: a server that refuses our certificate says so only
    afterwards, with an alert or a close that the next read sees.
    """
    raw = tcp_connect(netns, source, server, timeout)
    try:
        return context.wrap_socket(raw, server_hostname=server[0])
    except BaseException:
        raw.close()
        raise


def client_context(
    ca: Path, cert: Path | None = None, key: Path | None = None, *, max_version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    if max_version is not None:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.maximum_version = max_version
    return context


def closed_by_peer(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the peer closed or reset the connection (reading and discarding what it
    sends meanwhile), or None if it was still open after ``timeout``."""
    started = time.monotonic()
    deadline = started + timeout
    while (left := deadline - time.monotonic()) > 0:
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending()
        if not pending and not select.select([sock], [], [], left)[0]:
            continue
        try:
            sock.settimeout(0.5)
            if not sock.recv(65536):
                return time.monotonic() - started
        except (TimeoutError, ssl.SSLWantReadError):
            continue
        except (OSError, ssl.SSLError):  # reset, or a TLS alert: closed either way
            return time.monotonic() - started
    return None


def send_message(sock: socket.socket, payload: bytes) -> None:
    """One u16-length-prefixed message (TCP mode's control messages and packet frames)."""
    sock.sendall(len(payload).to_bytes(2, "big") + payload)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def recv_message(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    return recv_exactly(sock, int.from_bytes(recv_exactly(sock, 2), "big"))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---------------------------------------------------------------------------------------------
# IPv4 / ICMP by hand: a hand-written peer pings the server's kernel through the tunnel.


def inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_echo(src: str, dst: str, ident: int, seq: int, payload: bytes) -> bytes:
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", inet_checksum(icmp)) + icmp[4:]
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), ident, 0, 64, 1, 0, socket.inet_aton(src), socket.inet_aton(dst)
    )
    header = header[:10] + struct.pack("!H", inet_checksum(header)) + header[12:]
    return header + icmp


def is_echo_reply(packet: bytes, ident: int, seq: int) -> bool:
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 1:
        return False
    icmp = packet[(packet[0] & 0x0F) * 4 :]
    return len(icmp) >= 8 and icmp[0] == 0 and struct.unpack("!HH", icmp[4:8]) == (ident, seq)
