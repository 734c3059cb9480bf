"""Running one tunnel: TUN device and routes first, then the transport's session loop, until a
signal asks us to stop. The device (and with it its routes) is removed on the way out.

Under systemd the same path reports readiness, status and watchdog pings, and serves the live
state on the status socket.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from rustvpn import __version__, events
from rustvpn.netlink import configure_device
from rustvpn.offload import GSO_MAX_SIZE
from rustvpn.pump import PacketPump
from rustvpn.quic_transport import QuicClient, QuicServer
from rustvpn.sd_notify import Notifier
from rustvpn.session import Session, TunnelEngine, describe_state
from rustvpn.settings import TunnelConfig
from rustvpn.stats import TunnelState
from rustvpn.status import snapshot
from rustvpn.status_server import StatusServer
from rustvpn.tcp_transport import TcpClient, TcpServer
from rustvpn.tun import TunDevice

log = logging.getLogger("rustvpn")


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
        server = TcpServer(config) if config.transport == "tcp" else QuicServer(config)
    else:
        connect = (TcpClient(config) if config.transport == "tcp" else QuicClient(config)).connect

    # TCP mode offers segmentation offload: the device then carries virtio headers, and offloads
    # are switched on per session when the peer takes them too.
    offload = config.transport == "tcp" and config.offload
    tun = TunDevice.open(config.device, vnet_hdr=offload)
    state = TunnelState()
    pump = PacketPump(tun, state.totals)
    status: StatusServer | None = None
    try:
        # pyroute2's synchronous API runs its own event loop, so it gets a thread of its own.
        await asyncio.to_thread(
            configure_device,
            config.device,
            config.mtu,
            config.interfaces(),
            config.all_routes(),
            gso_max_size=GSO_MAX_SIZE if offload else None,
        )
        log.info(
            "device %s up: addresses %s, routes %s",
            config.device,
            ", ".join(str(i) for i in config.interfaces()) or "none",
            ", ".join(str(r) for r in config.all_routes()) or "none",
        )
        pump.start()
        engine = TunnelEngine(config, pump, state, on_change=lambda s: notifier.status(describe_state(s)))
        if config.status_socket:
            status = StatusServer(config.status_socket, lambda: snapshot(instance, config, state, engine.session))
            await status.start()
        if server is not None:
            await server.start()
            main = engine.run_server(server.next_session)
        else:
            assert connect is not None
            main = engine.run_client(connect)
        # Ready: device and routes are in place and the server listens / the client loop starts.
        notifier.ready("waiting for peer" if server is not None else f"connecting to {config.server}")
        notifier.start_watchdog()
        await _until_signalled(main)
    finally:
        state.state = "stopping"
        notifier.stopping()
        pump.stop()
        if server is not None:
            await server.close()
        if status is not None:
            await status.close()
        tun.close()
        log.info("stopped; device %s removed", config.device, extra=events.event(events.STOPPED))


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
