"""Fault-test helpers on top of tests/integration's namespaces: a host pair whose underlay runs through
an impairing box, and watchers that observe the tunnel from outside while a fault is on.

Everything here observes real things: the `ip` view of the client's device and routes, ping replies
through the tunnel, the daemons' status sockets and their /proc entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rustvpn.status_client import query
from tests.integration.netns import (
    CLIENT_TUN4,
    CLIENT_TUN6,
    CLIENT_UNDERLAY4,
    CLIENT_UNDERLAY6,
    EXTRA_ROUTE4,
    EXTRA_ROUTE6,
    SERVER_TUN4,
    NetnsPair,
    RustvpnProcess,
    sh,
)
from tests.integration.test_tunnel import LISTENING, SESSION_UP, TRANSFER, client_args, server_args, tun_ip

LINKBOX = str(Path(__file__).with_name("linkbox.py"))
DEVICE = "rustvpn"  # the device name test_tunnel's command lines use
SERVER_TUN_IP = tun_ip(SERVER_TUN4)
# What the client's device must show at every moment of its life, whatever the underlay does.
CLIENT_ADDRESSES = {CLIENT_TUN4, CLIENT_TUN6}
CLIENT_ROUTES4 = {EXTRA_ROUTE4, "198.19.1.0/24"}
CLIENT_ROUTES6 = {EXTRA_ROUTE6, "fd00:19::/64"}


def _read_line(fd: int, timeout: float) -> str:
    """One line from a pipe, byte by byte so nothing is left in a buffer select() cannot see."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no answer within {timeout} s (got {data!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            raise AssertionError(f"pipe closed (got {data!r})")
        data += chunk
    return data.decode().strip()


class LinkBox:
    """The linkbox.py bridge between two interfaces of one namespace, driven line by line."""

    def __init__(self, netns: str, if_a: str, if_b: str, seed: int, log_path: Path) -> None:
        self._log = open(log_path, "ab")  # noqa: SIM115 - kept for the process's life
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, LINKBOX, "bridge", if_a, if_b, str(seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        assert self.proc.stdout is not None
        self._out = self.proc.stdout.fileno()
        try:
            assert _read_line(self._out, 20) == "ready"
        except BaseException:
            self.close()
            raise

    def command(self, line: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        answer = _read_line(self._out, 10)
        if answer.startswith("error"):
            raise AssertionError(f"linkbox: {line!r}: {answer}")
        return answer

    def impair(self, *, loss: float = 0.0, delay_ms: float = 0.0) -> None:
        self.command(f"loss {loss}")
        self.command(f"delay {delay_ms}")

    def down(self) -> None:
        self.command("down")

    def up(self) -> None:
        self.command("up")

    def stats(self) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = json.loads(self.command("stats"))
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()  # the box exits when its control pipe closes
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class BoxedHosts(NetnsPair):
    """The harness's host pair with a box in the middle: client -- box namespace -- server.

    The pair is built as usual, then the client's end of the veth link moves into a third namespace
    and the client gets a fresh link to it, with the same addresses; a LinkBox copies frames between
    the two links there. Checksum offload is off on both hosts' underlay links (see linkbox.py).
    """

    def __init__(self, workdir: Path, seed: int = 7) -> None:
        super().__init__(workdir)
        tag = self.client[3:]
        self.middle = f"rvm{tag}"
        self.box: LinkBox | None = None
        moved, new_client, box_port = f"rvvc{tag}"[:15], f"rvic{tag}"[:15], f"rvbc{tag}"[:15]
        self.client_link = new_client  # the client's underlay interface
        server_link = f"rvvs{tag}"[:15]
        try:
            sh("ip", "netns", "add", self.middle)
            sh("ip", "-n", self.client, "link", "set", moved, "netns", self.middle)
            sh("ip", "link", "add", new_client, "type", "veth", "peer", "name", box_port)
            sh("ip", "link", "set", new_client, "netns", self.client)
            sh("ip", "link", "set", box_port, "netns", self.middle)
            sh("ip", "-n", self.client, "addr", "add", f"{CLIENT_UNDERLAY4}/24", "dev", new_client)
            sh("ip", "-n", self.client, "addr", "add", f"{CLIENT_UNDERLAY6}/64", "dev", new_client, "nodad")
            for ns, dev in (
                (self.client, new_client),
                (self.middle, "lo"),
                (self.middle, moved),
                (self.middle, box_port),
            ):
                sh("ip", "-n", ns, "link", "set", dev, "up")
            self.run(self.client, sys.executable, LINKBOX, "nocsum", new_client)
            self.run(self.server, sys.executable, LINKBOX, "nocsum", server_link)
            self.box = LinkBox(self.middle, box_port, moved, seed, workdir / "linkbox.log")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        # Also called by NetnsPair.__init__ when it fails, before this class has set anything.
        box, middle = getattr(self, "box", None), getattr(self, "middle", None)
        if box is not None:
            box.close()
        super().close()
        if middle is None:
            return
        for pid in sh("ip", "netns", "pids", middle, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        sh("ip", "netns", "del", middle, check=False)


# ---------------------------------------------------------------------------------------------
# Starting a tunnel with status sockets


@dataclass
class Tunnel:
    hosts: NetnsPair
    mode: str
    server: RustvpnProcess
    client: RustvpnProcess
    server_socket: Path
    client_socket: Path

    def server_status(self) -> dict[str, Any]:
        return status(self.server_socket)

    def client_status(self) -> dict[str, Any]:
        return status(self.client_socket)

    def restart_server(self, name: str) -> RustvpnProcess:
        self.server = self.hosts.spawn(self.hosts.server, self.server_command(), name)
        return self.server

    def server_command(self) -> list[str]:
        return server_args(self.mode, "--status-socket", str(self.server_socket))


def start_tunnel(hosts: NetnsPair, mode: str, *client_extra: str) -> Tunnel:
    """Server and client with test_tunnel's command lines plus status sockets (and ``client_extra``
    on the client's), up and connected."""
    server_socket = hosts.workdir / "server" / "status.sock"
    client_socket = hosts.workdir / "client" / "status.sock"
    srv = hosts.spawn(hosts.server, server_args(mode, "--status-socket", str(server_socket)), "server")
    srv.wait_for(LISTENING[mode])
    cli = hosts.spawn(hosts.client, client_args(mode, "--status-socket", str(client_socket), *client_extra), "client")
    cli.wait_for(SESSION_UP, timeout=30)
    srv.wait_for(SESSION_UP, timeout=30)
    tunnel = Tunnel(hosts, mode, srv, cli, server_socket, client_socket)
    assert wait_until(lambda: tunnel.client_status()["state"] == "connected", 10)
    return tunnel


def status(path: Path) -> dict[str, Any]:
    return asyncio.run(query(str(path), timeout=10))


def wait_until(check: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``check()`` until it is true or ``timeout`` passes; exceptions count as false."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return True
        except Exception:  # e.g. a status socket that is not there yet, or a daemon mid-restart
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def proc_figures(pid: int) -> dict[str, int]:
    """What /proc says a process holds: open fds, OS threads and resident memory."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        fields = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    return {
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(fields["Threads"]),
        "rss_bytes": int(fields["VmRSS"].split()[0]) * 1024,
    }


# ---------------------------------------------------------------------------------------------
# Watching the client's device and routes


@dataclass
class DeviceWatch:
    """Polls the client's device, addresses and routes in a thread; remembers every moment one was
    missing. ``polls`` holds the times of the checks, so a test can show the watch ran during its fault."""

    hosts: NetnsPair
    netns: str
    interval: float = 0.5
    polls: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def check_once(self) -> str | None:
        def ip_json(*args: str) -> Any:
            result = self.hosts.run(self.netns, "ip", "-j", *args, check=False, timeout=20)
            if result.returncode != 0:
                return None
            return json.loads(result.stdout or "[]")

        links = ip_json("addr", "show", "dev", DEVICE)
        if not links:
            return f"device {DEVICE} missing"
        link = links[0]
        if "UP" not in link.get("flags", []):
            return f"device {DEVICE} not up: {link.get('flags')}"
        addresses = {f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])}
        if not addresses >= CLIENT_ADDRESSES:
            return f"addresses {sorted(CLIENT_ADDRESSES - addresses)} missing from {sorted(addresses)}"
        for family, wanted in (("-4", CLIENT_ROUTES4), ("-6", CLIENT_ROUTES6)):
            routes = {r.get("dst") for r in ip_json(family, "route", "show", "dev", DEVICE) or []}
            if not wanted <= routes:
                return f"routes {sorted(wanted - routes)} missing from {sorted(str(r) for r in routes)}"
        return None

    def start(self) -> DeviceWatch:
        self._thread = threading.Thread(target=self._run, name="device-watch", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            problem = self.check_once()
            now = time.monotonic()
            self.polls.append(now)
            if problem is not None:
                self.failures.append(f"{now:.1f}: {problem}")
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def polls_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.polls if start <= t <= end)


class StateLog:
    """Polls a daemon's status socket in a thread and keeps (monotonic time, state) at each poll."""

    def __init__(self, socket: Path, interval: float = 0.25) -> None:
        self.socket = socket
        self.interval = interval
        self.states: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                state = str(status(self.socket)["state"])
            except Exception:  # a daemon that cannot answer right now: note it, keep polling
                state = "unreachable"
            self.states.append((time.monotonic(), state))
            self._stop.wait(self.interval)

    def first_not(self, state: str, after: float) -> float | None:
        """When the daemon was first seen in another state than ``state`` after ``after``."""
        return next((t for t, s in list(self.states) if t > after and s != state), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


# ---------------------------------------------------------------------------------------------
# Traffic through the tunnel


_PING_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)")


class PingLog:
    """ping -D through the tunnel in the background: the wall-clock time of every reply."""

    def __init__(self, hosts: NetnsPair, netns: str, target: str, interval: float = 0.2) -> None:
        self.replies: list[tuple[float, int]] = []
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "ping", "-D", "-n", "-i", str(interval), "-W", "1", target],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, name="ping-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            match = _PING_REPLY.match(line)
            if match:
                self.replies.append((float(match.group(1)), int(match.group(2))))

    def first_reply_after(self, wall_time: float) -> float | None:
        return next((t for t, _ in list(self.replies) if t > wall_time), None)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)


@dataclass
class TransferResult:
    sent: list[str]
    received: list[str]
    seconds: float
    sender_rc: int
    receiver_rc: int

    @property
    def intact(self) -> bool:
        return self.sender_rc == 0 and self.receiver_rc == 0 and len(self.sent) == 2 and self.received == self.sent


class Transfer:
    """tests/integration/transfer.py: receiver in the server namespace on the server's tunnel
    address, sender in the client namespace; both ends print size and SHA-256."""

    def __init__(self, hosts: NetnsPair, size: int, seed: int = 7, port: int = 5201) -> None:
        self.size = size
        self.receiver = subprocess.Popen(
            ["ip", "netns", "exec", hosts.server, sys.executable, TRANSFER, "recv", SERVER_TUN_IP, str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.receiver.stdout is not None
        assert _read_line(self.receiver.stdout.fileno(), 30) == "listening"
        self.started = time.monotonic()
        self.sender = subprocess.Popen(
            ["ip", "netns", "exec", hosts.client, sys.executable, TRANSFER, "send", SERVER_TUN_IP, str(port),
             str(size), str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    def running(self) -> bool:
        return self.sender.poll() is None

    def finish(self, timeout: float) -> TransferResult:
        try:
            sent_out, sent_err = self.sender.communicate(timeout=timeout)
            seconds = time.monotonic() - self.started
            received_out, received_err = self.receiver.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"transfer of {self.size} bytes did not finish within {timeout} s") from None
        if self.sender.returncode or self.receiver.returncode:
            print(f"transfer failed: sender {sent_err.strip()!r} receiver {received_err.strip()!r}")
        return TransferResult(
            sent_out.split(), received_out.split(), seconds, self.sender.returncode, self.receiver.returncode
        )

    def kill(self) -> None:
        for proc in (self.sender, self.receiver):
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
