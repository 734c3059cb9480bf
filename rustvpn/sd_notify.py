"""Telling systemd how we are: READY, STATUS, WATCHDOG, RELOADING and STOPPING, through
systemd-python. Silently off when there is no $NOTIFY_SOCKET (not run by systemd)."""

from __future__ import annotations

import asyncio
import logging
import os

import systemd.daemon as daemon

log = logging.getLogger("rustvpn.notify")


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._last_status: str | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    def _send(self, message: str) -> None:
        if self.enabled:
            try:
                daemon.notify(message)
            except OSError as exc:  # a gone socket must never take the tunnel down
                log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        self._last_status = status
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self._send(f"STATUS={status}")

    def stopping(self) -> None:
        self.stop_watchdog()
        self._send("STOPPING=1\nSTATUS=stopping")

    def start_watchdog(self) -> None:
        """Ping at half of $WATCHDOG_USEC from the event loop itself, so a hung loop stops the
        pings and systemd restarts us."""
        interval = watchdog_interval()
        if not self.enabled or interval is None:
            return
        loop = asyncio.get_running_loop()

        def ping() -> None:
            self._send("WATCHDOG=1")
            self._watchdog = loop.call_later(interval, ping)

        ping()

    def stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None


def watchdog_interval() -> float | None:
    """Half the watchdog period in seconds, if systemd enabled a watchdog for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None
