"""One live world per transport, shared by every attack of the suite.

Two namespaces joined by veth (tests.integration.netns). In the server namespace run two daemons:

* **A**, the live tunnel: a server with a connected client daemon, both at log level trace, with
  status sockets. Attacks from a third address (198.18.0.3, added to the client namespace) must
  leave it alone: ``World.unaffected()`` runs a ping loop through it and checks, afterwards, that
  replies kept coming, no session was lost, both daemons live and ``sessions`` did not move.
* **B**, an idle server (no client daemon) for the attacks that need a server with no session:
  config-exchange parsing, data-plane set-up and QUIC stream handling. Hand-written peers talk to
  it as clients, and ping its kernel through it to prove it still serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rustvpn.status import StatusUnavailable
from rustvpn.status_client import query
from tests.hostile.certs import CLIENT_CN, SERVER_CN, Pki
from tests.integration.netns import (
    CLIENT_UNDERLAY4,
    SERVER_UNDERLAY4,
    NetnsPair,
    RustvpnProcess,
    sh,
)

SERVER = SERVER_UNDERLAY4  # 198.18.0.2
CLIENT = CLIENT_UNDERLAY4  # 198.18.0.1: the live client daemon's address
INTRUDER = "198.18.0.3"  # a second address in the client namespace
INTRUDER2 = "198.18.0.4"  # and a third, for floods from two sources
A_TUN_SERVER, A_TUN_CLIENT = "198.19.1.1", "198.19.1.2"
B_TUN_SERVER, B_TUN_PEER = "198.19.2.1", "198.19.2.2"
A_STREAMS, A_MTU = 3, 1500
B_STREAMS, B_MTU = 2, 1400
PORTS: dict[str, dict[str, tuple[int, ...]]] = {
    "tcp": {"A": (1107, 1108), "B": (2107, 2108)},
    "quic": {"A": (1105,), "B": (2105,)},
}
LOST = r"session with \S+ lost"
STARTUP = 30.0


class Daemon:
    """A rustvpn process with its status socket, and reads of its log from a mark on."""

    def __init__(self, name: str, proc: RustvpnProcess, status_socket: Path) -> None:
        self.name = name
        self.proc = proc
        self.status_socket = status_socket

    @property
    def pid(self) -> int:
        return self.proc.proc.pid

    def alive(self) -> bool:
        return self.proc.proc.poll() is None

    def mark(self) -> int:
        return self.proc.log_path.stat().st_size

    def since(self, mark: int) -> str:
        return self.proc.log_path.read_bytes()[mark:].decode(errors="replace")

    def log(self) -> str:
        return self.since(0)

    def wait_log(self, pattern: str, mark: int = 0, timeout: float = 15.0, count: int = 1) -> list[re.Match[str]]:
        """The first ``count`` matches of ``pattern`` in the log after ``mark``; fails with the log."""
        deadline = time.monotonic() + timeout
        while True:
            matches = list(re.finditer(pattern, self.since(mark)))
            if len(matches) >= count:
                return matches[:count]
            if time.monotonic() > deadline or not self.alive():
                state = "running" if self.alive() else f"exited {self.proc.proc.returncode}"
                raise AssertionError(
                    f"{self.name} ({state}): {pattern!r} x{count} not logged within {timeout} s; "
                    f"got {len(matches)}. Log since mark:\n{self.since(mark)[-6000:]}"
                )
            time.sleep(0.05)

    def status(self) -> dict[str, Any]:
        return asyncio.run(query(str(self.status_socket)))

    def wait_state(self, state: str, timeout: float = STARTUP) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                current: dict[str, Any] = self.status()
            except StatusUnavailable as exc:  # still starting up: its socket is not there yet
                current = {"state": str(exc)}
            if current["state"] == state:
                return current
            if time.monotonic() > deadline or not self.alive():
                raise AssertionError(
                    f"{self.name} is {current['state']!r}, not {state!r}, after {timeout} s:\n{self.log()[-4000:]}"
                )
            time.sleep(0.1)


class PingLoop:
    """ping every 0.2 s through a tunnel; replies are read back with their arrival times."""

    REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from", re.MULTILINE)

    def __init__(self, netns: str, target: str, out: Path) -> None:
        self.out = out
        self._file = open(out, "wb")  # noqa: SIM115 - kept open for the process's life
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "ping", "-D", "-n", "-i", "0.2", "-W", "1", target],
            stdout=self._file,
            stderr=subprocess.STDOUT,
        )

    def replies(self) -> list[float]:
        return [float(ts) for ts in self.REPLY.findall(self.out.read_text(errors="replace"))]

    def wait_replies(self, count: int, after: float = 0.0, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while sum(1 for ts in self.replies() if ts > after) < count:
            if time.monotonic() > deadline:
                tail = self.out.read_text(errors="replace")[-2000:]
                raise AssertionError(f"fewer than {count} ping replies after {after:.1f} within {timeout} s:\n{tail}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._file.close()


class World:
    def __init__(self, mode: str, workdir: Path, pki: Pki) -> None:
        self.mode = mode
        self.workdir = workdir
        self.pki = pki
        self.pair = NetnsPair(workdir)
        self._pings = 0
        try:
            veth = sh("ip", "-n", self.pair.client, "-o", "link", "show", "type", "veth").stdout.split(":")[1]
            for address in (INTRUDER, INTRUDER2):
                sh("ip", "-n", self.pair.client, "addr", "add", f"{address}/24", "dev", veth.strip().split("@")[0])
            self.a_server = self._spawn("a-srv", self.pair.server, self._server_args("A"))
            self.b_server = self._spawn("b-srv", self.pair.server, self._server_args("B"))
            self.a_client = self._spawn("a-cli", self.pair.client, self._client_args())
            for daemon in (self.a_server, self.a_client):
                daemon.wait_state("connected")
            self.b_server.wait_state("listening")
        except BaseException:
            self.pair.close()
            raise

    @property
    def client_ns(self) -> str:
        return self.pair.client

    @property
    def server_ns(self) -> str:
        return self.pair.server

    def ports(self, server: str) -> tuple[int, ...]:
        return PORTS[self.mode][server]

    def _spawn(self, name: str, netns: str, args: list[str]) -> Daemon:
        status = self.workdir / "run" / name / "status.sock"
        proc = self.pair.spawn(netns, [*args, "--status-socket", str(status)], name)
        return Daemon(name, proc, status)

    def _server_args(self, which: str) -> list[str]:
        ports = self.ports(which)
        if self.mode == "tcp":
            head = ["tcpserver", "--control-port", str(ports[0]), "--data-port", str(ports[1])]
        else:
            head = ["server", "--port", str(ports[0])]
        pki = self.pki
        common = [
            "--ca-bundle",
            str(pki.ca),
            "--server-cert",
            str(pki.server_cert),
            "--server-key",
            str(pki.server_key),
        ]
        if which == "A":
            return [*head, *common, "--device", "rva", "--ipv4", f"{A_TUN_SERVER}/24", "--ipv6", "fd00:19::1/64",
                    "--stream-count", str(A_STREAMS), "--mtu", str(A_MTU), "--peer-cn", CLIENT_CN,
                    "--log-level", "trace"]  # fmt: skip
        return [*head, *common, "--device", "rvb", "--ipv4", f"{B_TUN_SERVER}/24",
                "--stream-count", str(B_STREAMS), "--mtu", str(B_MTU), "--log-level", "debug"]  # fmt: skip

    def _client_args(self) -> list[str]:
        port = self.ports("A")
        if self.mode == "tcp":
            head = ["tcpclient", "--control-port", str(port[0]), "--data-port", str(port[1])]
        else:
            head = ["client", "--port", str(port[0])]
        pki = self.pki
        return [*head, "--server", SERVER, "--device", "rva",
                "--ca-bundle", str(pki.ca), "--client-cert", str(pki.client_cert), "--client-key", str(pki.client_key),
                "--ipv4", f"{A_TUN_CLIENT}/24", "--ipv6", "fd00:19::2/64",
                "--stream-count", str(A_STREAMS), "--mtu", str(A_MTU), "--peer-cn", SERVER_CN,
                "--log-level", "trace"]  # fmt: skip

    @contextlib.contextmanager
    def unaffected(self) -> Iterator[None]:
        """The block (an attack) must not disturb the live tunnel A: a ping loop through it gets
        replies during (for attacks longer than 2 s) and after the block, no session is lost,
        both daemons live, and the session count each reports did not change."""
        live = (self.a_server, self.a_client)
        before = [d.wait_state("connected")["sessions"] for d in live]
        marks = [d.mark() for d in live]
        self._pings += 1
        ping = PingLoop(self.client_ns, A_TUN_SERVER, self.workdir / f"ping-{self._pings}.log")
        try:
            ping.wait_replies(1)
            started = time.time()
            yield
            ended = time.time()
            ping.wait_replies(3, after=ended)
        finally:
            ping.stop()
        if ended - started > 2.0:
            during = [ts for ts in ping.replies() if started < ts < ended]
            assert during, f"no ping reply through the live tunnel during the {ended - started:.1f} s attack"
        for daemon, mark, count in zip(live, marks, before, strict=True):
            assert daemon.alive(), f"{daemon.name} died:\n{daemon.log()[-4000:]}"
            assert not re.search(LOST, daemon.since(mark)), f"{daemon.name} lost its session:\n{daemon.since(mark)}"
            status = daemon.status()
            assert (status["state"], status["sessions"]) == ("connected", count), f"{daemon.name}: {status}"

    def close(self) -> None:
        self.pair.close()
