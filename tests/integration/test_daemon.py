"""`rustvpn run` with YAML files, outside systemd but speaking its protocols for real: a real
AF_UNIX datagram socket as $NOTIFY_SOCKET, the status socket queried by `rustvpn status`."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.netns import CLIENT_TUN4, SERVER_TUN4, SERVER_UNDERLAY4, NetnsPair

pytestmark = pytest.mark.root


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def server_yaml(workdir: Path, transport: str) -> str:
    return f"""\
transport: {transport}
role: server
device: rvd0
ca_bundle: {workdir}/ca.pem
cert: {workdir}/server.pem
key: {workdir}/server.key
peer_cn: rustvpn-client
stream_count: 3
ipv4: {SERVER_TUN4}
routes: [192.0.2.0/24]
status_socket: {workdir}/run/srv/status.sock
"""


def client_yaml(workdir: Path, transport: str) -> str:
    return f"""\
transport: {transport}
role: client
server: {SERVER_UNDERLAY4}
device: rvd0
ca_bundle: {workdir}/ca.pem
cert: {workdir}/client.pem
key: {workdir}/client.key
stream_count: 3
ipv4: {CLIENT_TUN4}
routes: [192.0.2.0/24]
status_socket: {workdir}/run/cli/status.sock
"""


class NotifyListener:
    """The systemd side of sd_notify: a datagram socket that collects what the daemon says."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, needle: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages:
                if needle in message:
                    return message
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(4096).decode())
        raise AssertionError(f"{needle!r} never sent; got {self.messages}")


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp_path / "notify.sock")
    yield listener
    listener.sock.close()


def status(name: str, runtime_dir: Path) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "rustvpn", "status", name, "--json", "--runtime-dir", str(runtime_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


@pytest.mark.parametrize("transport", ["quic", "tcp"])
def test_run_from_yaml_with_notify_and_status(
    hosts: NetnsPair, notify: NotifyListener, tmp_path: Path, transport: str
) -> None:
    srv_conf = write_yaml(tmp_path / "srv.yaml", server_yaml(tmp_path, transport))
    cli_conf = write_yaml(tmp_path / "cli.yaml", client_yaml(tmp_path, transport))
    assert subprocess.run([sys.executable, "-m", "rustvpn", "check", "--config", str(srv_conf)]).returncode == 0

    os.environ["NOTIFY_SOCKET"] = str(notify.path)
    try:
        srv = hosts.spawn(hosts.server, ["run", "--config", str(srv_conf)], "server")
    finally:
        del os.environ["NOTIFY_SOCKET"]
    ready = notify.wait_for("READY=1")
    # READY only once the device is up with its routes and the server listens.
    assert "STATUS=waiting for peer" in ready
    assert "192.0.2.0/24" in hosts.run(hosts.server, "ip", "route", "show", "dev", "rvd0").stdout
    assert "listening" in srv.log()

    cli = hosts.spawn(hosts.client, ["run", "--config", str(cli_conf)], "client")
    notify.wait_for("STATUS=connected to 198.18.0.1")
    cli.wait_for("session up with")
    assert hosts.ping(hosts.client, SERVER_TUN4.split("/")[0]).returncode == 0

    first = status("srv", tmp_path / "run")
    assert first["state"] == "connected"
    assert first["instance"] == "srv"
    assert len(first["streams"]) == 3  # type: ignore[arg-type]
    assert hosts.ping(hosts.client, SERVER_TUN4.split("/")[0], count=5).returncode == 0
    second = status("srv", tmp_path / "run")
    assert second["totals"]["packets_in"] > first["totals"]["packets_in"]  # type: ignore[index]

    assert srv.stop() == 0
    notify.wait_for("STOPPING=1")
    assert hosts.run(hosts.server, "ip", "link", "show", "rvd0", check=False).returncode != 0
    assert not (tmp_path / "run" / "srv" / "status.sock").exists()
    cli.wait_for("session with .* lost")


def test_bad_yaml_is_refused_before_touching_anything(hosts: NetnsPair, tmp_path: Path) -> None:
    conf = write_yaml(tmp_path / "bad.yaml", server_yaml(tmp_path, "quic").replace("stream_count: 3", "mtu: 9000"))
    proc = hosts.spawn(hosts.server, ["run", "--config", str(conf)], "bad")
    assert proc.proc.wait(20) == 2
    lines = proc.log().strip().splitlines()
    assert lines == [f"rustvpn: error: {conf}:8: mtu: 9000 is out of range 100..1500"]
    assert hosts.run(hosts.server, "ip", "link", "show", "rvd0", check=False).returncode != 0
