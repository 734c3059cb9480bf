"""The watchers the fault tests rely on must see what they claim to watch: a DeviceWatch that never
complained would make "device and routes intact throughout" an assertion that cannot fail."""

from __future__ import annotations

import pytest

from tests.faults.harness import DEVICE, DeviceWatch, start_tunnel
from tests.integration.netns import EXTRA_ROUTE4, EXTRA_ROUTE6, NetnsPair

pytestmark = [pytest.mark.root, pytest.mark.faults]


def test_device_watch_notices_missing_routes_and_device(hosts: NetnsPair) -> None:
    tunnel = start_tunnel(hosts, "tcp")
    watch = DeviceWatch(hosts, hosts.client)
    assert watch.check_once() is None

    for family, route in (("-4", EXTRA_ROUTE4), ("-6", EXTRA_ROUTE6)):
        hosts.run(hosts.client, "ip", family, "route", "del", route, "dev", DEVICE)
        problem = watch.check_once()
        assert problem is not None and route in problem, problem
        hosts.run(hosts.client, "ip", family, "route", "add", route, "dev", DEVICE)
        assert watch.check_once() is None

    hosts.run(hosts.client, "ip", "addr", "del", "198.19.1.2/24", "dev", DEVICE)
    problem = watch.check_once()
    assert problem is not None and "198.19.1.2/24" in problem, problem

    assert tunnel.client.stop() == 0  # a clean exit removes the device
    assert watch.check_once() == f"device {DEVICE} missing"
