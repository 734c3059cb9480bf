"""UDP sockets for QUIC mode: packet size from the route MTU, no fragmentation, and batched I/O.

* **Packet size**: aioquic has no path MTU discovery and sends ``max_datagram_size`` bytes of UDP
  payload at most. :func:`path_datagram_size` takes it from the kernel's MTU for the route to the
  peer (``IP_MTU`` of a connected socket) minus the IP and UDP headers (28 bytes over IPv4, 48 over
  IPv6), never below QUIC's 1200 floor nor above 1472, what a 1500-byte IPv4 path carries: aioquic
  neither announces nor honours ``max_udp_payload_size``, and the reference peer (quinn) accepts
  1472 by default. Sockets are set to never fragment (``IP_PMTUDISC_DO``, ``IPV6_DONTFRAG``), so
  a packet too big for the path fails to send (``EMSGSIZE``, reported to ``on_too_big``) instead
  of travelling in fragments.
* **Batched I/O**: :class:`UdpEndpoint` reads every datagram waiting (up to ``MAX_READ_BATCH``)
  before handing them over in one call, so a QUIC connection builds its answer (an ACK) once per
  batch, not per packet; and it sends runs of equal-sized datagrams to one address with one
  ``sendmsg`` using UDP GSO (``UDP_SEGMENT``), receiving with UDP GRO (``UDP_GRO``) likewise.
  Either falls back to one datagram per call where the kernel refuses it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Sequence

from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from aioquic.quic.connection import NetworkAddress

from rustvpn.event_loop import add_data_reader

log = logging.getLogger("rustvpn.quic")

__all__ = [
    "MAX_DATAGRAM_SIZE",
    "UdpEndpoint",
    "connected_mtu",
    "gso_batches",
    "open_udp_socket",
    "path_datagram_size",
    "udp_payload_for_mtu",
]

# Linux socket options the socket module does not name (linux/in.h, in6.h, udp.h, socket.h).
IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_MTU = 10, 2, 14
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO, IPV6_MTU, IPV6_DONTFRAG = 23, 2, 24, 62
UDP_SEGMENT, UDP_GRO = 103, 104
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33

IPV4_UDP_OVERHEAD, IPV6_UDP_OVERHEAD = 20 + 8, 40 + 8
MAX_DATAGRAM_SIZE = 1500 - IPV4_UDP_OVERHEAD
# GSO: at most 64 segments per call (UDP_MAX_SEGMENTS) and 64 KiB in all.
MAX_GSO_SEGMENTS = 64
MAX_GSO_BYTES = 65535 - IPV6_UDP_OVERHEAD
RECV_SIZE = 65535  # a GRO batch can fill a whole IP datagram
# Datagrams (GRO segments counted one by one) read per wake-up before the loop serves others: at
# least one GRO batch (up to 64). More would delay everything else the loop does, a ping's reply
# waiting in the TUN device, by the time aioquic takes for them (tens of microseconds each); under
# load 16 measured the same throughput as 64 with a third less delay.
MAX_READ_BATCH = 16
# Datagrams read ahead from the socket while the batch before them is handled. Under load the
# socket holds the queue the congestion controller allows in front of this end (a few ms). Read
# ahead, the short datagrams in it (a ping's packet may be one) are shown to ``on_early`` at once,
# which may deliver what they carry ahead of the bulk that came before them; every datagram is
# still handed to ``on_datagrams`` in arrival order, so QUIC acknowledges in order. Reordered
# acknowledgements would have the peer declare the packets overtaken lost (packet threshold 3):
# tried, that cost a third of the throughput. The kernel keeps whatever is beyond READ_AHEAD:
# enough to cover that queue at several hundred Mbit/s (4 ms at 50 000 packets/s is 200). At 128,
# one ping in ten under load was beyond it and waited for the queue (2.5 ms, 6.5 at p99).
READ_AHEAD = 512
# A datagram this short carries no bulk: a QUIC ACK, or a tunnel packet of at most about 130 bytes
# (a ping of the default size, a TCP ACK with SACK blocks). Bulk packets are near the MTU.
SHORT_DATAGRAM = 160
# Socket buffers: room for bursts (a GSO batch is 64 packets) while the event loop is busy; the
# congestion controller (quic_congestion), not the buffer size, keeps a standing queue short.
UDP_BUFFER_SIZE = 4 * 1024 * 1024

DatagramHandler = Callable[[list[tuple[bytes, NetworkAddress]]], None]
Datagrams = list[tuple[bytes, NetworkAddress]]


def udp_payload_for_mtu(mtu: int, family: int) -> int:
    """The QUIC packet size for a route of ``mtu`` bytes, within 1200..1472."""
    overhead = IPV6_UDP_OVERHEAD if family == socket.AF_INET6 else IPV4_UDP_OVERHEAD
    return max(SMALLEST_MAX_DATAGRAM_SIZE, min(MAX_DATAGRAM_SIZE, mtu - overhead))


def _plain_family_and_address(addr: NetworkAddress) -> tuple[int, NetworkAddress]:
    """A dual-stack socket's IPv4-mapped peer as the IPv4 address its packets really go to."""
    host = str(addr[0]).split("%", 1)[0]
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(host)
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                return socket.AF_INET, (str(ip.ipv4_mapped), addr[1])
            return socket.AF_INET6, addr
        return socket.AF_INET, addr
    return socket.AF_INET6 if ":" in host else socket.AF_INET, addr


def connected_mtu(sock: socket.socket) -> int | None:
    """The kernel's MTU for the route (or known path) of a connected UDP socket."""
    option = (socket.IPPROTO_IPV6, IPV6_MTU) if sock.family == socket.AF_INET6 else (socket.IPPROTO_IP, IP_MTU)
    try:
        return int(sock.getsockopt(*option))
    except OSError:
        return None


def path_datagram_size(addr: NetworkAddress) -> int:
    """The QUIC packet size towards ``addr``, from its route MTU (1200 when it cannot be known).

    Connecting a UDP socket sends nothing: it only looks the route up.
    """
    family, target = _plain_family_and_address(addr)
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(target)
            mtu = connected_mtu(probe)
    except OSError:
        mtu = None
    return SMALLEST_MAX_DATAGRAM_SIZE if mtu is None else udp_payload_for_mtu(mtu, family)


def open_udp_socket(family: int, bind: tuple[str, int], *, dual_stack: bool = False) -> socket.socket:
    """A non-blocking UDP socket, bound, with large buffers, no fragmentation and GRO if available."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
            try:  # past net.core.[rw]mem_max with CAP_NET_ADMIN, which a tunnel has anyway
                sock.setsockopt(socket.SOL_SOCKET, force, UDP_BUFFER_SIZE)
            except OSError:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, plain, UDP_BUFFER_SIZE)
        if family == socket.AF_INET6:
            if dual_stack:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1)
        # Also on an IPv6 socket: it governs the IPv4-mapped peers of a dual-stack one.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_UDP, UDP_GRO, 1)
        sock.bind(bind)
    except BaseException:
        sock.close()
        raise
    return sock


def _gro_segment_size(ancdata: Sequence[tuple[int, int, bytes]]) -> int:
    """The segment size of a GRO batch (an int in host byte order), 0 if the read is one datagram."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_UDP and kind == UDP_GRO and len(data) >= 4:
            return int(struct.unpack("=i", data[:4])[0])
    return 0


def gso_batches(datagrams: Sequence[tuple[bytes, NetworkAddress]]) -> list[tuple[list[bytes], NetworkAddress]]:
    """Group datagrams into GSO sends: consecutive, to one address, all of the first one's size
    except a shorter last one, at most 64 of them and 64 KiB in all. Order is kept."""
    batches: list[tuple[list[bytes], NetworkAddress]] = []
    group: list[bytes] = []
    addr: NetworkAddress | None = None
    size = total = 0
    for data, target in datagrams:
        n = len(data)
        if (
            group
            and target == addr
            and n <= size
            and len(group) < MAX_GSO_SEGMENTS
            and total + n <= MAX_GSO_BYTES
            and len(group[-1]) == size  # nothing may follow a shorter segment
        ):
            group.append(data)
            total += n
            continue
        group, addr, size, total = [data], target, n, n
        batches.append((group, target))
    return batches


class UdpEndpoint:
    """One UDP socket on the event loop: batched reads, GSO sends, a queue while the socket is full.

    ``on_datagrams`` gets the datagrams of one batch (GRO batches split into their packets), each
    with its source address, in arrival order; ``on_early`` (optional) is first shown the short
    datagrams read ahead behind that batch, each once (see READ_AHEAD); ``on_too_big`` is told
    when a send failed with EMSGSIZE (the path's MTU fell below the packet size); ``connected``
    sockets send without an address.
    """

    def __init__(
        self,
        sock: socket.socket,
        on_datagrams: DatagramHandler,
        *,
        connected: bool = False,
        on_too_big: Callable[[NetworkAddress], None] | None = None,
        on_early: DatagramHandler | None = None,
    ) -> None:
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._on_datagrams = on_datagrams
        self._on_early = on_early
        self._on_too_big = on_too_big
        self._connected = connected
        self._gso = True
        self._backlog: collections.deque[tuple[list[bytes], NetworkAddress]] = collections.deque()
        self._writing = False
        self._closed = False
        self._ancbufsize = socket.CMSG_SPACE(4)
        # Read ahead and not handed over yet: one list per read (a GRO batch or one datagram).
        self._ahead: collections.deque[Datagrams] = collections.deque()
        self._ahead_count = 0
        self._again: asyncio.Handle | None = None  # the turn of the loop booked for what is read ahead
        add_data_reader(self._loop, sock.fileno(), self._readable)

    @property
    def address(self) -> NetworkAddress:
        sockname: NetworkAddress = self.sock.getsockname()
        return sockname

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self.sock.fileno())
        if self._writing:
            self._loop.remove_writer(self.sock.fileno())
        self._backlog.clear()
        self._ahead.clear()
        if self._again is not None:
            self._again.cancel()
        self.sock.close()

    # -- receiving ----------------------------------------------------------------------------
    def _readable(self) -> None:
        """Read ahead what the socket holds (up to READ_AHEAD datagrams), show on_early the short
        ones that will not be in this batch, then hand over one batch: whole reads, oldest
        first, until MAX_READ_BATCH datagrams. What is left goes in later turns of the loop,
        each reading ahead first."""
        if self._closed:
            return
        ahead, early_seen = self._ahead, self._on_early is not None
        early: Datagrams = []
        recvmsg, ancbufsize = self.sock.recvmsg, self._ancbufsize
        for _ in range(READ_AHEAD):  # bounded also when every read fails
            if self._ahead_count >= READ_AHEAD:
                break
            try:
                data, ancdata, _flags, addr = recvmsg(RECV_SIZE, ancbufsize)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # An ICMP error from an earlier send (port unreachable, ...), reported once: the
                # peer's silence is what the session notices.
                log.debug("UDP receive error: %s", exc)
                continue
            segment = _gro_segment_size(ancdata) if ancdata else 0
            if segment and len(data) > segment:
                read = [(data[i : i + segment], addr) for i in range(0, len(data), segment)]
                # Equal segments, of which only the last may be shorter.
                short = [read[-1]] if len(read[-1][0]) <= SHORT_DATAGRAM else []
            else:
                read = [(data, addr)]
                short = read if len(data) <= SHORT_DATAGRAM else []
            if short and early_seen and self._ahead_count >= MAX_READ_BATCH:
                early += short  # behind this batch: shown early
            ahead.append(read)
            self._ahead_count += len(read)
        if early and self._on_early is not None:
            self._on_early(early)
            if self._closed:
                return
        received: Datagrams = []
        while ahead and len(received) < MAX_READ_BATCH:
            received += ahead.popleft()
        self._ahead_count -= len(received)
        if ahead and self._again is None:
            self._again = self._loop.call_soon(self._continue)
        if received:
            self._on_datagrams(received)

    def _continue(self) -> None:
        self._again = None
        self._readable()

    # -- sending ------------------------------------------------------------------------------
    def send(self, datagrams: Sequence[tuple[bytes, NetworkAddress]]) -> None:
        if self._closed or not datagrams:
            return
        if self._gso and len(datagrams) > 1:
            batches = gso_batches(datagrams)
        else:  # (one datagram, as an idle tunnel sends them, needs no grouping)
            batches = [([data], addr) for data, addr in datagrams]
        if self._backlog:
            self._backlog.extend(batches)  # keep the order behind what waits already
            return
        for index, (segments, addr) in enumerate(batches):
            if not self._send_batch(segments, addr):
                self._backlog.extend(batches[index:])
                self._wait_writable()
                return

    def _send_batch(self, segments: list[bytes], addr: NetworkAddress) -> bool:
        """Send one batch; False when the socket is full (nothing was sent)."""
        ancdata: list[tuple[int, int, bytes]] = []
        if len(segments) > 1:
            ancdata.append((socket.IPPROTO_UDP, UDP_SEGMENT, struct.pack("=H", len(segments[0]))))
        try:
            if self._connected:
                self.sock.sendmsg(segments, ancdata)
            else:
                self.sock.sendmsg(segments, ancdata, 0, addr)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                if self._on_too_big is not None:
                    self._on_too_big(addr)
            elif len(segments) > 1 and exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                log.info("UDP GSO refused here (%s): sending one datagram per call", exc.strerror or exc)
                self._gso = False
                for segment in segments:
                    self._send_batch([segment], addr)
            else:
                # Lost like any datagram (unreachable, no buffer space): QUIC recovers or times out.
                log.debug("UDP send to %s failed: %s", addr, exc)
        return True

    def _wait_writable(self) -> None:
        if not self._writing:
            self._loop.add_writer(self.sock.fileno(), self._writable)
            self._writing = True

    def _writable(self) -> None:
        backlog = self._backlog
        while backlog:
            segments, addr = backlog[0]
            if not self._send_batch(segments, addr):
                return
            backlog.popleft()
        self._loop.remove_writer(self.sock.fileno())
        self._writing = False
