"""rustvpn@NAME under real systemd on two booted hosts: readiness, the tunnel, the journal,
`rustvpn status`, clean stop, restart after kill -9, and the watchdog catching a hung loop."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from rustvpn import events
from rustvpn.pki import write_demo_set
from tests.systemd.hosts import Host, HostPair, write_tunnel_config

pytestmark = [pytest.mark.root, pytest.mark.systemd]

NAME = "wan"
UNIT = f"rustvpn@{NAME}.service"
DEVICE = "rvwan"
SERVER_TUN, CLIENT_TUN = "198.19.5.1/24", "198.19.5.2/24"
SERVER_TUN6, CLIENT_TUN6 = "fd00:55::1/64", "fd00:55::2/64"
ROUTE = "192.0.2.0/24"


def install_pki(hosts: HostPair, tmp_path: Path) -> None:
    paths = write_demo_set(tmp_path, [hosts.b.address4, hosts.b.address6])
    for host, role in ((hosts.b, "server"), (hosts.a, "client")):
        host.write_file(f"/etc/rustvpn/{NAME}/ca.pem", paths["ca"].read_text())
        host.write_file(f"/etc/rustvpn/{NAME}/{role}.pem", paths[f"{role}_cert"].read_text())
        host.write_file(f"/etc/rustvpn/{NAME}/{role}.key", paths[f"{role}_key"].read_text(), mode=0o600)


def configure(hosts: HostPair, tmp_path: Path, transport: str) -> None:
    install_pki(hosts, tmp_path)
    common = {"transport": transport, "device": DEVICE, "ca_bundle": f"{NAME}/ca.pem", "stream_count": 3,
              "routes": [ROUTE]}  # fmt: skip
    write_tunnel_config(hosts.b, NAME, {
        **common, "role": "server", "cert": f"{NAME}/server.pem", "key": f"{NAME}/server.key",
        "peer_cn": "rustvpn-client", "ipv4": SERVER_TUN, "ipv6": SERVER_TUN6,
    })  # fmt: skip
    write_tunnel_config(hosts.a, NAME, {
        **common, "role": "client", "server": hosts.b.address4, "cert": f"{NAME}/client.pem",
        "key": f"{NAME}/client.key", "peer_cn": "rustvpn-server", "ipv4": CLIENT_TUN, "ipv6": CLIENT_TUN6,
    })  # fmt: skip
    for host in hosts:
        assert "ok" in host.run("rustvpn", "check", "--config", f"/etc/rustvpn/{NAME}.yaml").stdout


def ping(host: Host, address: str) -> bool:
    return host.run("ping", "-c1", "-W2", address.split("/")[0], check=False).returncode == 0


def status_json(host: Host) -> dict[str, object]:
    return dict(json.loads(host.run("rustvpn", "status", NAME, "--json").stdout))


@pytest.fixture(params=["quic", "tcp"])
def tunnel(request: pytest.FixtureRequest, hosts: HostPair, tmp_path: Path) -> Iterator[HostPair]:
    configure(hosts, tmp_path, str(request.param))
    yield hosts


def start_both(hosts: HostPair) -> None:
    # Type=notify: `systemctl start` returns only once the daemon said READY=1.
    hosts.b.systemctl("start", UNIT)
    hosts.a.systemctl("start", UNIT)
    hosts.a.wait_until(lambda: ping(hosts.a, SERVER_TUN), timeout=30, what="ping across the tunnel")


def test_ready_tunnel_journal_status_and_stop(tunnel: HostPair) -> None:
    a, b = tunnel.a, tunnel.b
    b.systemctl("start", UNIT)
    # Active means READY was sent, and READY means device, addresses, routes and listener are up.
    assert b.is_active(UNIT)
    assert ROUTE in b.run("ip", "route", "show", "dev", DEVICE).stdout
    assert b.unit_property(UNIT, "StatusText") == "waiting for peer"
    assert "listening" in b.journal(UNIT)

    a.systemctl("start", UNIT)
    a.wait_until(lambda: ping(a, SERVER_TUN), timeout=30, what="IPv4 ping across the tunnel")
    a.wait_until(lambda: ping(a, SERVER_TUN6), timeout=10, what="IPv6 ping across the tunnel")
    b.wait_until(lambda: b.unit_property(UNIT, "StatusText").startswith("connected to"), what="STATUS=connected")
    assert "3 streams" in a.unit_property(UNIT, "StatusText")

    for host in (a, b):
        by_unit = host.journal(UNIT)
        assert "session up with" in by_unit, by_unit
        by_field = host.journal(None, f"RUSTVPN_INSTANCE={NAME}")
        assert "session up with" in by_field and "device rvwan up" in by_field, by_field
        assert "session up with" in host.journal(None, f"MESSAGE_ID={events.SESSION_UP}")
        fields = [
            json.loads(line)
            for line in host.journal(None, f"MESSAGE_ID={events.SESSION_UP}", "-o", "json").splitlines()
        ]
        assert fields and fields[-1]["RUSTVPN_TRANSPORT"] in ("quic", "tcp") and fields[-1]["RUSTVPN_PEER"]
        assert fields[-1]["RUSTVPN_SESSION"] and fields[-1]["_SYSTEMD_UNIT"] == UNIT
        # The unit grants no CAP_BPF and filters bpf() out: the device's side queue for pings falls
        # back on the kernel's per-flow choice, as the README says.
        assert "the kernel's choice per flow: no steering program (Operation not permitted)" in by_unit, by_unit

    assert b.run("stat", "-c", "%a", f"/run/rustvpn/{NAME}/status.sock").stdout.strip() == "660"
    human = b.run("rustvpn", "status", NAME).stdout
    assert f"rustvpn@{NAME}: connected" in human and "rustvpn-client" in human, human
    before = status_json(b)
    assert before["state"] == "connected" and len(before["streams"]) == 3  # type: ignore[arg-type]
    for _ in range(3):
        assert ping(a, SERVER_TUN)
    after = status_json(b)
    assert after["totals"]["packets_in"] > before["totals"]["packets_in"]  # type: ignore[index]
    assert "token" not in json.dumps(after)

    # Stop: clean exit, device gone, status socket gone; the server notices.
    a.systemctl("stop", UNIT)
    assert a.unit_property(UNIT, "Result") == "success"
    assert a.unit_property(UNIT, "ExecMainStatus") == "0"
    assert a.run("ip", "link", "show", DEVICE, check=False).returncode != 0
    not_running = a.run("rustvpn", "status", NAME, check=False)
    assert not_running.returncode == 3 and "not running" in not_running.stderr
    b.wait_until(
        lambda: b.unit_property(UNIT, "StatusText").startswith("waiting for peer"), what="server back to waiting"
    )


def test_kill_9_is_restarted_and_tunnel_returns(tunnel: HostPair) -> None:
    a, b = tunnel.a, tunnel.b
    start_both(tunnel)
    pid, restarts = b.unit_property(UNIT, "MainPID"), int(b.unit_property(UNIT, "NRestarts"))
    b.run("kill", "-9", pid)
    b.wait_until(
        lambda: int(b.unit_property(UNIT, "NRestarts")) > restarts and b.is_active(UNIT), what="restart after kill -9"
    )
    assert b.unit_property(UNIT, "MainPID") != pid
    a.wait_until(lambda: ping(a, SERVER_TUN), timeout=30, what="tunnel back after the server restarted")
    # The client kept its device and routes while the server was gone.
    assert "session with" in a.journal(UNIT) and "lost" in a.journal(UNIT)


def test_watchdog_restarts_a_hung_daemon(hosts: HostPair, tmp_path: Path) -> None:
    configure(hosts, tmp_path, "quic")
    a, b = hosts.a, hosts.b
    b.install_dropin(UNIT, "watchdog", "[Service]\nWatchdogSec=3s\nTimeoutStopSec=5s\n")
    start_both(hosts)
    restarts = int(b.unit_property(UNIT, "NRestarts"))
    b.run("kill", "-STOP", b.unit_property(UNIT, "MainPID"))  # the event loop stops: no more WATCHDOG=1
    b.wait_until(lambda: "watchdog timeout" in b.journal(UNIT).lower(), timeout=20, what="watchdog timeout")
    b.wait_until(
        lambda: int(b.unit_property(UNIT, "NRestarts")) > restarts and b.is_active(UNIT), timeout=30, what="restart"
    )
    a.wait_until(lambda: ping(a, SERVER_TUN), timeout=30, what="tunnel back after the watchdog restart")
