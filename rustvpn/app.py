"""Running one tunnel: TUN device and routes first, then the transport's session loop, until a
signal asks us to stop. The device (and with it its routes) is removed on the way out. A client
makes its first connection while the device is being configured, and uses it once it is.

Under systemd the same path reports readiness, status and watchdog pings, and serves the live
state on the status socket.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from rustvpn import __version__, events
from rustvpn.offload import GSO_MAX_SIZE
from rustvpn.pump import PacketPump
from rustvpn.sd_notify import Notifier
from rustvpn.session import Session, TunnelEngine, describe_state
from rustvpn.settings import TunnelConfig
from rustvpn.stats import TunnelState
from rustvpn.status import snapshot
from rustvpn.status_server import StatusServer
from rustvpn.tun import TunDevice

if TYPE_CHECKING:
    from rustvpn.quic_transport import QuicServer
    from rustvpn.tcp_transport import TcpServer

log = logging.getLogger("rustvpn")


def make_server(config: TunnelConfig) -> TcpServer | QuicServer:
    """The listening side of the configured transport; loads the certificates."""
    # Start-up time: each mode imports only its own transport (aioquic takes ~0.2 s to import).
    if config.transport == "tcp":
        from rustvpn.tcp_transport import TcpServer

        return TcpServer(config)
    from rustvpn.quic_transport import QuicServer

    return QuicServer(config)


def make_connect(config: TunnelConfig) -> Callable[[], Awaitable[Session]]:
    """The connecting side of the configured transport; loads the certificates."""
    # Start-up time: each mode imports only its own transport (aioquic takes ~0.2 s to import).
    if config.transport == "tcp":
        from rustvpn.tcp_transport import TcpClient

        return TcpClient(config).connect
    from rustvpn.quic_transport import QuicClient

    return QuicClient(config).connect


def configure(config: TunnelConfig, offload: bool) -> None:
    """Addresses, MTU, link state and routes of the device (blocking: run it in a worker thread)."""
    # Start-up time: pyroute2 takes ~0.15 s to import, so that happens here, in the worker thread.
    from rustvpn.netlink import configure_device

    configure_device(
        config.device,
        config.mtu,
        config.interfaces(),
        config.all_routes(),
        gso_max_size=GSO_MAX_SIZE if offload else None,
    )


async def run_tunnel(config: TunnelConfig, instance: str = "", notifier: Notifier | None = None) -> None:
    notifier = notifier or Notifier()
    log.info(
        "rustvpn %s starting: %s %s, build_id=%s, device=%s, mtu=%d, streams=%d",
        __version__,
        config.transport,
        config.role,
        config.build_id,
        config.device,
        config.mtu,
        config.stream_count,
        extra=events.event(events.STARTED),
    )
    # Certificates are loaded before the device exists, so a bad file changes nothing on the host.
    server: TcpServer | QuicServer | None = None
    connect: Callable[[], Awaitable[Session]] | None = None
    if config.is_server:
        server = make_server(config)
    else:
        connect = make_connect(config)

    # TCP mode offers segmentation offload: the device then carries virtio headers, and offloads
    # are switched on per session when the peer takes them too. QUIC mode has no offload to agree
    # on, but writes with virtio headers all the same: the packets of one TCP flow that arrive
    # together go to the kernel as one segment (gro.py).
    # Both modes give pings and other sparse traffic a queue of the device of their own (tun.py):
    # under a bulk transfer they waited behind it in the device's queue, or were dropped with it.
    offload = config.transport == "tcp" and config.offload
    quic = config.transport == "quic"
    tun = TunDevice.open(config.device, vnet_hdr=offload or quic, side_queue=True)
    state = TunnelState()
    pump = PacketPump(tun, state.totals)
    status: StatusServer | None = None
    # A client makes its first connection while the device is being configured. The pump reads the
    # device only once that attempt is over: packets sent meanwhile wait in the kernel's queue for
    # the first session rather than being dropped.
    first = FirstConnection(connect, pump.start) if connect is not None else None
    try:
        # pyroute2's synchronous API runs its own event loop, so it gets a thread of its own.
        await asyncio.to_thread(configure, config, offload)
        log.info(
            "device %s up: addresses %s, routes %s",
            config.device,
            ", ".join(str(i) for i in config.interfaces()) or "none",
            ", ".join(str(r) for r in config.all_routes()) or "none",
        )
        if tun.side_fd >= 0:
            log.info("device %s: pings and other packets that are neither TCP nor UDP take a queue of their own, %s",
                     config.device, tun.steering)  # fmt: skip
        engine = TunnelEngine(config, pump, state, on_change=lambda s: notifier.status(describe_state(s)))
        if config.status_socket:
            status = StatusServer(config.status_socket, lambda: snapshot(instance, config, state, engine.session))
            await status.start()
        if server is not None:
            pump.start()
            await server.start()
            main = engine.run_server(server.next_session)
        else:
            assert first is not None
            main = engine.run_client(first.connect)
        # Ready: device and routes are in place and the server listens / the client loop starts.
        notifier.ready("waiting for peer" if server is not None else f"connecting to {config.server}")
        notifier.start_watchdog()
        settle_heap()
        await _until_signalled(main)
    finally:
        if first is not None:
            await first.abandon()
        state.state = "stopping"
        notifier.stopping()
        pump.stop()
        if server is not None:
            await server.close()
        if status is not None:
            await status.close()
        tun.close()
        log.info("stopped; device %s removed", config.device, extra=events.event(events.STOPPED))


def settle_heap() -> None:
    """Put everything alive after start-up (modules, classes, certificates: most of the process's
    tens of thousands of objects) out of the cycle collector's reach, for good.

    Under load, packets in flight (aioquic's sent-packet records, batches) outlive the young
    generations, and every so often their promotion triggers a full collection. Walking the whole
    heap then stalled the tunnel for 25-40 ms each time (measured with gc.callbacks under iperf3,
    both modes). With the start-up objects frozen, a full collection walks only what came later:
    under 2 ms. Objects created from now on (sessions, packets) are collected as before. There is
    no collection first: it would cost one such stall while the first connection is being made,
    and what little garbage start-up leaves is then kept (with a client's first connection, if it
    is under way: its connections drop their read buffers when they close, so that is small).
    """
    gc.freeze()


class FirstConnection:
    """A client's connect function whose first attempt starts at once, so that connecting overlaps
    the device set-up. The engine gets that first session, and so attaches it to the device, only
    once the device is configured.

    ``on_first_done`` runs when the engine has had the first attempt's outcome, right before it
    attaches that session, if there is one.
    """

    def __init__(self, connect: Callable[[], Awaitable[Session]], on_first_done: Callable[[], None]) -> None:
        self._connect = connect
        self._on_first_done = on_first_done
        self._first: asyncio.Future[Session] | None = asyncio.ensure_future(connect())

    async def connect(self) -> Session:
        first, self._first = self._first, None
        if first is None:
            return await self._connect()
        try:
            return await first
        finally:
            self._on_first_done()

    async def abandon(self) -> None:
        """Stop the first attempt, and end its session, if the engine never took it."""
        first, self._first = self._first, None
        if first is not None:
            first.cancel()
            (result,) = await asyncio.gather(first, return_exceptions=True)
            if isinstance(result, Session):
                result.end("start-up failed")


async def _until_signalled(main: Awaitable[None]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    main_task = asyncio.ensure_future(main)
    stop_task = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({main_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            log.info("signal received, shutting down")
    finally:
        for task in (main_task, stop_task):
            task.cancel()
        await asyncio.gather(main_task, stop_task, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if main_task.done() and not main_task.cancelled() and main_task.exception() is not None:
        raise main_task.exception()  # type: ignore[misc]
