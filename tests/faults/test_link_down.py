"""The underlay link is cut for 3 s, 30 s and 120 s, in each transport mode; the tunnel must come back
by itself, and the client's device, addresses and routes must stay in place the whole time.

``blackhole`` cuts are a LinkBox dropping every frame both ways (100% loss, what netem would do;
this machine's kernel has no sch_netem): no carrier change and no ICMP, so each side only learns of
it by its own timeouts. ``carrier`` is the client's underlay veth set down for 30 s (its sends fail
at once, its connected route goes away and comes back). A ping runs through the tunnel throughout;
the recovery time is from the moment the link is back to the first ping reply after it. Its bound,
RECOVERY_BOUND, is behaviour: a client retries every 5 s at most and gives up an attempt after
10 s at most, so it must be back within about 15 s of the link plus the handshake; 30 s leaves room
for a loaded machine. The figures also say when each side noticed the cut (its status left
"connected") and how many reconnects the client counted meanwhile.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.faults.conftest import FigureLog
from tests.faults.harness import (
    SERVER_TUN_IP,
    BoxedHosts,
    DeviceWatch,
    PingLog,
    StateLog,
    start_tunnel,
    wait_until,
)
from tests.integration.netns import SERVER_TUN4, SERVER_TUN6
from tests.integration.test_tunnel import assert_pings

pytestmark = [pytest.mark.root, pytest.mark.faults]

RECOVERY_BOUND = 30.0


def set_link(boxed: BoxedHosts, cut: str, *, up: bool) -> None:
    assert boxed.box is not None
    if cut == "blackhole":
        if up:
            boxed.box.up()
        else:
            boxed.box.down()
        return
    boxed.run(boxed.client, "ip", "link", "set", "dev", boxed.client_link, "up" if up else "down")
    flags = json.loads(boxed.run(boxed.client, "ip", "-j", "link", "show", "dev", boxed.client_link).stdout)[0]["flags"]
    assert ("UP" in flags) == up, flags


@pytest.mark.parametrize(
    ("cut", "outage"), [("blackhole", 3), ("blackhole", 30), ("blackhole", 120), ("carrier", 30)], ids=lambda v: str(v)
)
def test_link_down_recovers(boxed: BoxedHosts, mode: str, cut: str, outage: int, figures: FigureLog) -> None:
    assert boxed.box is not None
    tunnel = start_tunnel(boxed, mode)
    assert_pings(boxed, boxed.client, SERVER_TUN4, SERVER_TUN6)
    before = tunnel.client_status()
    server_before = tunnel.server_status()

    watch = DeviceWatch(boxed, boxed.client).start()
    states = {"client": StateLog(tunnel.client_socket), "server": StateLog(tunnel.server_socket)}
    pings = PingLog(boxed, boxed.client, SERVER_TUN_IP)
    try:
        assert wait_until(lambda: pings.first_reply_after(0) is not None, 10), "no ping through the tunnel"
        cut_at = time.monotonic()
        set_link(boxed, cut, up=False)
        time.sleep(outage)
        restored_wall, restored_at = time.time(), time.monotonic()
        set_link(boxed, cut, up=True)
        stats = boxed.box.stats()

        def recovered() -> bool:
            return (
                pings.first_reply_after(restored_wall) is not None
                and tunnel.client_status()["state"] == "connected"
                and tunnel.server_status()["state"] == "connected"
            )

        back = wait_until(recovered, RECOVERY_BOUND + 30)
        first_reply = pings.first_reply_after(restored_wall)
    finally:
        pings.stop()
        watch.stop()
        for log in states.values():
            log.stop()

    if cut == "blackhole":
        assert stats["a_to_b"]["down"] > 0, f"the cut dropped nothing: {stats}"
    assert back, f"tunnel not back {RECOVERY_BOUND + 30:.0f} s after the link:\n{tunnel.client.log()[-3000:]}"
    assert first_reply is not None
    recovery = first_reply - restored_wall
    after, server_after = tunnel.client_status(), tunnel.server_status()
    new_sessions = after["sessions"] - before["sessions"]
    figures.add("recovery after link up", recovery, "s")
    figures.add("session re-established", "yes" if new_sessions else "no (session survived)")
    for side, log in states.items():
        noticed = log.first_not("connected", cut_at)
        if noticed is not None and noticed < restored_at:
            figures.add(f"{side} noticed the cut after", noticed - cut_at, "s")
    figures.add("client reconnects during the outage", after["reconnects"] - before["reconnects"])
    if new_sessions:
        figures.add("server sessions", f"{server_before['sessions']} -> {server_after['sessions']}")

    # The tunnel works again in both families, and both ends agree there is one live session.
    assert_pings(boxed, boxed.client, SERVER_TUN4, SERVER_TUN6)
    assert after["state"] == server_after["state"] == "connected"
    assert recovery <= RECOVERY_BOUND, f"recovery took {recovery:.1f} s (bound {RECOVERY_BOUND} s)"

    # The device and routes never went away, and the watch really looked during the cut.
    assert watch.failures == [], watch.failures
    assert watch.polls_between(cut_at, restored_at) >= max(2, outage // 2), "device watch did not run"
