"""The status protocol's shared parts: its version, limits and socket paths, the client's error, and
the snapshot of live state the daemon serves.

Protocol: the client sends one request line (``status`` or ``{"version": 1, "command": "status"}``)
and gets one JSON line back: ``{"version": 1, "ok": true, "status": {...}}`` or
``{"version": 1, "ok": false, "error": "..."}``. The server is rustvpn.status_server, the client
rustvpn.status_client. The status never carries the token or key material.

Within one version keys are only ever added, never removed or changed in meaning: readers ignore
keys they do not know and show a missing one as absent (rustvpn.status_format), so a client and a
daemon of different releases still understand each other. Anything else needs a new version.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from rustvpn import __version__
from rustvpn.errors import RustvpnError

if TYPE_CHECKING:
    # Type-only: `rustvpn status` imports this module and should not pull in the transports.
    from rustvpn.session import Session
    from rustvpn.settings import TunnelConfig
    from rustvpn.stats import TunnelState

STATUS_VERSION = 1
DEFAULT_RUNTIME_ROOT = "/run/rustvpn"
SOCKET_NAME = "status.sock"
MAX_REQUEST = 4096  # bytes in a request line, newline not counted
REQUEST_TIMEOUT = 5.0  # seconds for a whole exchange, from accept to reply written
MAX_CLIENTS = 16
MAX_REPLY = 1 << 20  # client side: a status with 100 streams is ~15 KiB


class StatusUnavailable(RustvpnError):
    """The status of an instance could not be read; the message is one line for people.

    ``not_running`` tells "no daemon there" (LSB status exit code 3) from "could not ask" (4).
    """

    def __init__(self, message: str, *, not_running: bool = False) -> None:
        super().__init__(message)
        self.not_running = not_running
        self.exit_code = 3 if not_running else 4


def socket_path(instance: str, root: str = DEFAULT_RUNTIME_ROOT) -> str:
    return os.path.join(root, instance, SOCKET_NAME)


def default_socket_path(instance: str) -> str:
    return socket_path(instance, DEFAULT_RUNTIME_ROOT)


# ---------------------------------------------------------------------------------------------
# The snapshot


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _endpoints(config: TunnelConfig) -> dict[str, str]:
    """Where the server listens, or where the client connects, keyed by what each port carries."""
    if config.is_server:
        if config.transport == "quic":
            return {"quic": _host_port(config.bind_address, config.port)}
        return {
            "control": _host_port(config.control_bind_address, config.control_port),
            "data": _host_port(config.data_bind_address, config.data_port),
        }
    host = config.server or ""
    if config.transport == "quic":
        return {"quic": _host_port(host, config.port)}
    return {"control": _host_port(host, config.control_port), "data": _host_port(host, config.data_port)}


def _count_entries(path: str, own: int = 0) -> int | None:
    """Entries of a /proc directory, less ``own`` that the listing itself adds; None without /proc."""
    try:
        return len(os.listdir(path)) - own
    except OSError:
        return None


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


_MALLINFO2_FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


@functools.cache
def _mallinfo2() -> Any:
    """glibc's mallinfo2 (2.33 and later) with its result type, looked up once; None where there is none."""
    import ctypes  # (only when a snapshot is taken)

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS.split()]

    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = MallInfo2
    mallinfo2.argtypes = []
    return mallinfo2


def _malloc_bytes() -> int | None:
    """Bytes the C allocator has handed out and not had back (glibc's mallinfo2: chunks in use in
    its arenas plus those it mapped alone); None without glibc 2.33. Unlike RSS it leaves out what
    the allocator keeps for reuse after a burst is freed, so it moves only with what is held."""
    mallinfo2 = _mallinfo2()
    if mallinfo2 is None:
        return None
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)


def process_figures() -> dict[str, int | None]:
    """What this process holds, for operators and soak tests to spot a leak: asyncio tasks, OS threads,
    open file descriptors, resident memory and live Python allocations. A figure that cannot be read
    is None.

    ``heap_blocks`` (``sys.getallocatedblocks``) counts what Python code holds now. RSS also counts
    what the C allocator keeps after a burst has been freed (a few MiB after a load peak, kept for
    reuse), so a leak of Python objects shows first and only in ``heap_blocks``, and one of C
    memory (OpenSSL's, or Python's larger objects) in ``malloc_bytes``.
    """
    # Start-up time: imported here, as `rustvpn --help`, `check` and `certs` need no asyncio (~40 ms).
    import asyncio

    try:
        tasks: int | None = len(asyncio.all_tasks())
    except RuntimeError:  # no running event loop: a snapshot taken outside the daemon
        tasks = None
    return {
        "asyncio_tasks": tasks,
        "threads": _count_entries("/proc/self/task"),
        # Listing /proc/self/fd opens one descriptor of its own, which the listing shows too.
        "open_fds": _count_entries("/proc/self/fd", own=1),
        "rss_bytes": _rss_bytes(),
        "heap_blocks": sys.getallocatedblocks(),
        "malloc_bytes": _malloc_bytes(),
    }


def snapshot(instance: str, config: TunnelConfig, state: TunnelState, session: Session | None) -> dict[str, Any]:
    """The JSON-able live state of one tunnel. Built field by field so no secret can ride along."""
    now = time.monotonic()  # the clock TunnelState's timestamps come from
    peer: dict[str, Any] | None = None
    streams: list[dict[str, Any]] = []
    datagrams: dict[str, Any] | None = None
    path: dict[str, Any] | None = None
    mtu, stream_count = config.mtu, config.stream_count
    options: list[str] = []
    if session is not None:
        options = sorted(session.params.options)  # what both sides offered: what this session uses
        # The negotiated values; validation makes them equal to ours, but report what is in use.
        mtu, stream_count = session.params.mtu, session.params.number_of_streams
        peer = {"address": session.peer, "cn": session.peer_cn, "build_id": session.params.build_id}
        whole, per_channel = session.path_report()
        path = None if whole is None else whole.as_dict()
        streams = [
            {"index": i, **channel.counters.as_dict(), "path": None if own is None else own.as_dict()}
            for i, (channel, own) in enumerate(zip(session.channels, per_channel, strict=True))
        ]
        # QUIC's DATAGRAM-frame path, when both peers agreed to it; not one of `channels`, and a TCP
        # session has no such attribute at all.
        datagram_channel = getattr(session, "datagram_channel", None)
        if datagram_channel is not None:
            datagrams = datagram_channel.counters.as_dict()
    endpoints = _endpoints(config)
    started = state.session_started_at
    return {
        "version": STATUS_VERSION,
        "instance": instance,
        "pid": os.getpid(),
        "rustvpn_version": __version__,
        "build_id": config.build_id,
        "transport": config.transport,
        "role": config.role,
        "state": state.state,
        "listen": endpoints if config.is_server else None,
        "server": None if config.is_server else endpoints,
        "device": config.device,
        "mtu": mtu,
        "stream_count": stream_count,
        "options": options,
        "addresses": [str(i) for i in config.interfaces()],
        "routes": [str(r) for r in config.all_routes()],
        "peer": peer,
        "uptime_s": round(max(0.0, now - state.started_at), 3),
        "session_age_s": None if started is None else round(max(0.0, now - started), 3),
        "sessions": state.sessions,
        "reconnects": state.reconnects,
        "last_error": state.last_error,
        "totals": state.totals.as_dict(),
        "streams": streams,
        "datagrams": datagrams,
        "path": path,
        "process": process_figures(),
    }
