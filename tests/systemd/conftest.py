"""Fixtures for the systemd host tests: two booted Debian hosts with rustvpn installed.

* ``systemd_hosts`` (session): the booted HostPair, built once per test session (see hosts.py).
* ``hosts`` (function): the same pair; after the test every ``rustvpn@`` instance is stopped,
  its failures reset and per-instance drop-ins removed, so tests don't see each other's units.

All tests here are marked ``root`` and ``systemd``; they skip with the reason when the machine
lacks root, /dev/net/tun, debootstrap or systemd-nspawn.  Select or deselect them with
``-m systemd`` / ``-m "not systemd"``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.systemd.hosts import HostPair, booted_hosts, missing_prerequisites


@pytest.fixture(scope="session")
def systemd_hosts() -> Iterator[HostPair]:
    reason = missing_prerequisites()
    if reason:
        pytest.skip(reason)
    with booted_hosts(log=lambda line: print(line, flush=True)) as pair:
        yield pair


@pytest.fixture
def hosts(systemd_hosts: HostPair) -> Iterator[HostPair]:
    yield systemd_hosts
    for host in systemd_hosts:
        host.reset_rustvpn_units()
