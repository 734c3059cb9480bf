"""The server is killed with SIGKILL in the middle of a transfer through the tunnel and started again:
the client must be back within 10 s of the restart, with its device and routes in place all along
(polled throughout the outage), in each transport mode.

A SIGKILLed server takes its device with it; the restarted one makes it anew with the same
addresses, so the inner TCP connection of the transfer can carry on once the tunnel is back (TCP
retransmits what was lost). That it does, with the checksum intact, is asserted too.

The 10 s bound is measured from the moment the new server process is started (so it includes its
start-up) to the client's status reporting a new session; the time from the new server listening
is reported as well.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import FigureLog
from tests.faults.harness import DeviceWatch, StateLog, Transfer, start_tunnel, wait_until
from tests.integration.netns import SERVER_TUN4, SERVER_TUN6, NetnsPair
from tests.integration.test_tunnel import LISTENING, SESSION_UP, assert_pings

pytestmark = [pytest.mark.root, pytest.mark.faults]

MB = 1024 * 1024
BACK_WITHIN = 10.0
# Large enough to be still running when the kill comes (TCP mode moves tens of MB/s here); transfer.py
# makes its data with random.randbytes, which stops short of 256 MiB.
TRANSFER_SIZE = {"tcp": 200 * MB, "quic": 24 * MB}
KILL_AFTER = 2 * MB  # bytes the server has taken from the tunnel before it is killed


def test_server_killed_mid_transfer(hosts: NetnsPair, mode: str, figures: FigureLog) -> None:
    tunnel = start_tunnel(hosts, mode)
    watch = DeviceWatch(hosts, hosts.client, interval=0.2).start()
    states = StateLog(tunnel.client_socket)
    transfer = Transfer(hosts, TRANSFER_SIZE[mode])
    try:
        assert wait_until(
            lambda: tunnel.server_status()["totals"]["bytes_in"] >= KILL_AFTER or not transfer.running(), 60, 0.05
        )
        assert transfer.running(), f"the transfer ended before the kill: {transfer.finish(5)}"
        killed_at = time.monotonic()
        tunnel.server.kill()
        # The kill really took the server's end away: its device is gone with it.
        assert hosts.run(hosts.server, "ip", "link", "show", "rustvpn", check=False).returncode != 0
        time.sleep(1.0)  # a crashed server comes back after a moment (systemd: RestartSec), not at once

        restarted_at = time.monotonic()
        server2 = tunnel.restart_server("server2")
        server2.wait_for(LISTENING[mode], timeout=BACK_WITHIN + 20)
        listening_at = time.monotonic()
        back = wait_until(
            lambda: (s := tunnel.client_status())["sessions"] == 2 and s["state"] == "connected", BACK_WITHIN + 30
        )
        back_at = time.monotonic()
        assert back, f"client not back:\n{tunnel.client.log()[-3000:]}"
        result = transfer.finish(180)
        transfer_done = time.monotonic()
    finally:
        transfer.kill()
        watch.stop()
        states.stop()

    client_log = tunnel.client.log()
    noticed = states.first_not("connected", killed_at)
    if noticed is not None:
        figures.add("client noticed the kill after", noticed - killed_at, "s")
    figures.add("client back after the restart", back_at - restarted_at, "s")
    figures.add("client back after the new server listened", back_at - listening_at, "s")
    figures.add("tunnel outage (kill to client back)", back_at - killed_at, "s")
    figures.add(
        "inner transfer survived",
        f"{'yes' if result.intact else 'NO'} ({TRANSFER_SIZE[mode] // MB} MiB, done "
        f"{transfer_done - back_at:.1f} s after the tunnel was back)",
    )
    assert back_at - restarted_at <= BACK_WITHIN, f"client back {back_at - restarted_at:.1f} s after the restart"
    server2.wait_for(SESSION_UP)
    assert client_log.count("session up with") == 2
    assert_pings(hosts, hosts.client, SERVER_TUN4, SERVER_TUN6)

    # Device, addresses and routes were there at every poll, and the polls covered the outage.
    assert watch.failures == [], watch.failures
    assert watch.polls_between(killed_at, back_at) >= 3, "device watch did not run during the outage"

    assert result.intact, f"transfer broken: sent {result.sent} (rc {result.sender_rc}), received {result.received}"
