"""Two hosts as network namespaces joined by a veth pair, and rustvpn processes inside them.

Names carry the test process id and a counter, so parallel or leftover runs never collide;
everything made here is removed on teardown, also when the test failed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

# Underlay (the "physical" link between the hosts) and tunnel addresses, all on test ranges.
CLIENT_UNDERLAY4, SERVER_UNDERLAY4 = "198.18.0.1", "198.18.0.2"
CLIENT_UNDERLAY6, SERVER_UNDERLAY6 = "fd00:18::1", "fd00:18::2"
SERVER_TUN4, CLIENT_TUN4 = "198.19.1.1/24", "198.19.1.2/24"
SERVER_TUN6, CLIENT_TUN6 = "fd00:19::1/64", "fd00:19::2/64"
EXTRA_ROUTE4, EXTRA_ROUTE6 = "192.0.2.0/24", "fd00:99::/64"

_counter = itertools.count()


def sh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=timeout)


class RustvpnProcess:
    """A rustvpn command running inside a namespace, its output in a log file."""

    def __init__(self, netns: str, args: list[str], log_path: Path, cwd: Path) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("RUST_LOG", None)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "rustvpn", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 20, count: int = 1) -> re.Match[str]:
        """Wait until ``pattern`` has appeared ``count`` times in the log; fail with the log if not."""
        deadline = time.monotonic() + timeout
        while True:
            matches = list(re.finditer(pattern, self.log()))
            if len(matches) >= count:
                return matches[count - 1]
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} x{count} not in log after {timeout}s:\n{self.log()}")
            if self.proc.poll() is not None and len(matches) < count:
                raise AssertionError(f"process exited ({self.proc.returncode}) before {pattern!r}:\n{self.log()}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class NetnsPair:
    """A client namespace and a server namespace, linked by veth, with IPv4 and IPv6."""

    def __init__(self, workdir: Path) -> None:
        tag = f"{os.getpid()}x{next(_counter)}"
        self.client = f"rvc{tag}"
        self.server = f"rvs{tag}"
        self.workdir = workdir
        self.processes: list[RustvpnProcess] = []
        veth_c, veth_s = f"rvvc{tag}"[:15], f"rvvs{tag}"[:15]
        try:
            sh("ip", "netns", "add", self.client)
            sh("ip", "netns", "add", self.server)
            sh("ip", "link", "add", veth_c, "type", "veth", "peer", "name", veth_s)
            sh("ip", "link", "set", veth_c, "netns", self.client)
            sh("ip", "link", "set", veth_s, "netns", self.server)
            for ns, dev, a4, a6 in (
                (self.client, veth_c, CLIENT_UNDERLAY4, CLIENT_UNDERLAY6),
                (self.server, veth_s, SERVER_UNDERLAY4, SERVER_UNDERLAY6),
            ):
                sh("ip", "-n", ns, "addr", "add", f"{a4}/24", "dev", dev)
                sh("ip", "-n", ns, "addr", "add", f"{a6}/64", "dev", dev, "nodad")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
                sh("ip", "-n", ns, "link", "set", dev, "up")
        except BaseException:
            self.close()
            raise

    def spawn(self, netns: str, args: list[str], name: str) -> RustvpnProcess:
        proc = RustvpnProcess(netns, args, self.workdir / f"{name}.log", self.workdir)
        self.processes.append(proc)
        return proc

    def run(self, netns: str, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", netns, *cmd, check=check, timeout=timeout)

    def ping(self, netns: str, address: str, count: int = 3) -> subprocess.CompletedProcess[str]:
        return self.run(netns, "ping", "-c", str(count), "-i", "0.2", "-W", "2", address, check=False)

    def close(self) -> None:
        for proc in self.processes:
            proc.stop()
        for ns in (self.client, self.server):
            # Anything else a test started in the namespace goes too.
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)
