#!/usr/bin/env python3
"""Benchmark harness: rustvpn (TCP and QUIC mode) against OpenVPN (UDP and TCP), bare aioquic and bare veth.

Builds two network namespaces joined by a veth pair (198.18.0.1 client, 198.18.0.2 server), makes
throwaway certificates with `rustvpn certs`, then for each variant brings a tunnel up between the
namespaces (each on its own 198.19.X.0/24) and measures over it: the time from starting the client to
the first ping reply, iperf3 TCP throughput (one stream each way, four streams forward), UDP at fixed
offered rates (received rate and loss), ping RTT idle and under load (p50/p99), CPU seconds per GB of
both tunnel endpoints, and their peak RSS. Two baselines without a tunnel: bare veth, and a bare aioquic
pump (bench/quic_pump.py, DATAGRAM frames or one stream). Writes DIR/results.md, DIR/results.json and
DIR/results.png and prints the tables. Absolute numbers drift on a shared machine: compare the ratios
from one run, not numbers from different runs.

Run as root from the repository: .venv/bin/python bench/run.py [--short] [--only KEY,...] [--out DIR]
Standard library only, apart from matplotlib for the chart (skipped if missing). Traffic stays inside
the namespaces it creates.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PYTHON = REPO / ".venv" / "bin" / "python"
RUSTVPN = REPO / ".venv" / "bin" / "rustvpn"
QUIC_PUMP = Path(__file__).resolve().parent / "quic_pump.py"
PY_RELAY = Path(__file__).resolve().parent / "py_relay.py"
PROBE = Path(__file__).resolve().parent / "probe.py"
CLIENT_ADDR, SERVER_ADDR = "198.18.0.1", "198.18.0.2"
TAG = os.getpid()
CLIENT_NS, SERVER_NS = f"rvb-c-{TAG}", f"rvb-s-{TAG}"
VETH_C, VETH_S = f"rvbc{TAG}", f"rvbs{TAG}"
TUN_DEV = "rvbtun"
RELAY_KEY = "relay.key"  # in the work directory, beside the certificates: py_relay.py's throwaway key
UP_TIMEOUT = 30.0  # seconds from client start to the first ping reply
CLK_TCK = os.sysconf("SC_CLK_TCK")

UDP_RATES = (100, 300, 1000)  # offered Mbit/s
# The shared bottleneck: a token bucket on both veth ends, with this much of a queue, which the
# tunnel's flow shares with a TCP flow outside it, once with each congestion control: CUBIC, loss-
# based (Linux's default, most servers'), and BBR, which paces at the rate it measures.
SHARED_RATE_MBIT = 200
SHARED_QUEUE = "50ms"
SHARED_AGAINST = ("cubic", "bbr")
UDP_LEN = 1200  # UDP payload: 1228-byte IP packets fit every tunnel's MTU (1400 for rustvpn QUIC) unfragmented
LOAD_PING_INTERVAL = 0.01  # s between pings under load (below 0.2 s needs root)
# Under load the pings come from probe.py, which sleeps between requests; iputils ping at 10 ms spins
# between them (see probe.py) and takes a CPU from the tunnel it measures. Its p99 is kept beside, in
# a run of its own.


class Skip(Exception):
    """The variant cannot run here (its program is missing)."""


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    kind: str  # veth, rustvpn-tcp, rustvpn-quic, openvpn-udp, openvpn-tcp, relay, pump
    slot: int  # tunnel subnet 198.19.SLOT.0/24 and port block 20000 + 10 * SLOT; unique per variant
    flags: tuple[str, ...] = ()  # extra rustvpn flags, for both ends
    mtu: int = 1500
    needs: str = ""  # program that must be installed, "" for none
    pump_mode: str = ""  # quic_pump.py --mode

    @property
    def tunnel(self) -> bool:
        return self.kind not in ("veth", "pump")

    @property
    def server_ip(self) -> str:
        return f"198.19.{self.slot}.1" if self.tunnel else SERVER_ADDR

    @property
    def port(self) -> int:
        return 20000 + 10 * self.slot


VARIANTS = [
    Variant("veth", "bare veth", "veth", 0),
    Variant("rustvpn-tcp", "rustvpn TCP", "rustvpn-tcp", 1),
    Variant("rustvpn-tcp-nooffload", "rustvpn TCP --no-offload", "rustvpn-tcp", 5, flags=("--no-offload",)),
    # MTU 1400: a tunnel packet plus QUIC and UDP/IP overhead fits one 1500-byte datagram on the veth
    Variant("rustvpn-quic", "rustvpn QUIC", "rustvpn-quic", 2, mtu=1400),
    Variant(
        "rustvpn-quic-nodgram", "rustvpn QUIC --no-datagrams", "rustvpn-quic", 6, mtu=1400, flags=("--no-datagrams",)
    ),
    Variant("openvpn-udp", "OpenVPN UDP", "openvpn-udp", 3, needs="openvpn"),
    Variant("openvpn-tcp", "OpenVPN TCP", "openvpn-tcp", 4, needs="openvpn"),
    # The floor for any Python tunnel: a plain asyncio TUN/UDP relay with AES-GCM (bench/py_relay.py)
    Variant("py-relay", "plain Python relay", "relay", 9, mtu=1400),
    Variant("pump-dgram", "aioquic DATAGRAM pump", "pump", 7, pump_mode="datagram"),
    Variant("pump-stream", "aioquic stream pump", "pump", 8, pump_mode="stream"),
]
SHORT_VARIANTS = {"veth", "rustvpn-tcp", "rustvpn-quic", "openvpn-udp", "py-relay", "pump-dgram"}


@dataclass
class Timing:
    """How long each measurement runs; short mode only checks that the code paths work."""

    short: bool
    tcp_s: int = 5  # each iperf3 TCP run
    udp_s: int = 2  # each UDP rate
    pump_s: int = 5
    idle_pings: int = 50
    udp_rates: tuple[int, ...] = UDP_RATES
    extras_everywhere: bool = True  # short mode: 4 streams, ping under load and UDP on bare veth only

    def __post_init__(self) -> None:
        if self.short:
            self.tcp_s = self.udp_s = self.pump_s = 1
            self.idle_pings = 10
            self.udp_rates = (UDP_RATES[0],)
            self.extras_everywhere = False


@dataclass
class UdpRate:
    offered_mbit: int
    sent_mbit: float
    recv_mbit: float
    loss_pct: float


@dataclass
class Result:
    key: str
    label: str
    status: str = "ok"  # ok, skipped, failed
    note: str = ""
    mbit_fwd: float | None = None
    mbit_rev: float | None = None
    mbit_p4: float | None = None
    rtt_p50_ms: float | None = None  # idle, median: the figure shown (robust to a stray slow reply)
    rtt_avg_ms: float | None = None  # idle, average
    # CPU time (on-CPU, from schedstat, kernel work included) each endpoint spent per idle ping
    idle_cpu_us_client: float | None = None
    idle_cpu_us_server: float | None = None
    load_rtt_p50_ms: float | None = None
    load_rtt_p99_ms: float | None = None
    load_rtt_p99_iputils_ms: float | None = None  # the same measured with iputils ping, which spins (probe.py)
    load_ping_loss_pct: float | None = None
    load_mbit: float | None = None  # iperf3's rate during the ping-under-load run
    load_pings: int | None = None  # replies the load percentiles are taken over
    udp: list[UdpRate] = field(default_factory=list)
    # Pings every 10 ms alongside the highest UDP rate (a flood): what share is answered, how fast
    flood_pings_answered_pct: float | None = None
    flood_rtt_p50_ms: float | None = None
    # Through a SHARED_RATE_MBIT bottleneck beside a TCP flow outside the tunnel, by that flow's
    # congestion control (SHARED_AGAINST): each one's rate
    shared_tunnel_mbit: dict[str, float] = field(default_factory=dict)
    shared_bare_mbit: dict[str, float] = field(default_factory=dict)
    cpu_s_per_gb: float | None = None
    cpu_s_per_gb_client: float | None = None
    cpu_s_per_gb_server: float | None = None
    rss_mb: float | None = None  # after all runs, larger endpoint
    rss_mb_client: float | None = None
    rss_mb_server: float | None = None
    rss_mb_before_udp: float | None = None  # after the TCP runs, before the UDP floods
    start_to_ping_s: float | None = None
    steps: dict[str, float] = field(default_factory=dict)  # seconds each measurement took (harness tuning)
    pump_sent_mbit: float | None = None  # pump: what left the sender, for the DATAGRAM loss
    ratio_openvpn_udp: float | None = None
    ratio_openvpn_tcp: float | None = None
    ratio_pump_dgram: float | None = None

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text


@dataclass
class Harness:
    work: Path
    logs: Path
    timing: Timing
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # -- processes -------------------------------------------------------------------------------

    def spawn(self, ns: str, argv: list[str], log: Path, capture: bool = False) -> subprocess.Popen[bytes]:
        """Start argv in namespace ns (`ip netns exec` execs, so the pid is the program's own).

        Output goes to log; with capture, stdout is a pipe instead (stderr still to log)."""
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdout=subprocess.PIPE if capture else out,
                stderr=out if capture else subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.work,
                start_new_session=True,  # Ctrl-C at the terminal reaches only us; we stop them
            )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs.clear()

    # -- waiting ---------------------------------------------------------------------------------

    def wait_listening(self, port: int, proto: str, proc: subprocess.Popen[bytes], what: str) -> None:
        flag = "-Hltn" if proto == "tcp" else "-Hlun"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with status {proc.returncode} before listening")
            out = run(["ip", "netns", "exec", SERVER_NS, "ss", flag, f"sport = :{port}"]).stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{what} is not listening on {proto} port {port} after 20 s")

    def wait_first_ping(self, addr: str, t0: float, procs: list[subprocess.Popen[bytes]]) -> float:
        while True:
            elapsed = time.monotonic() - t0
            if elapsed > UP_TIMEOUT:
                raise RuntimeError(f"no ping reply from {addr} within {UP_TIMEOUT:.0f} s of client start")
            for proc in procs:
                if proc.poll() is not None:
                    name = proc.args[4] if isinstance(proc.args, list) else proc.args  # after ip netns exec NS
                    raise RuntimeError(f"tunnel process {name!r} exited with status {proc.returncode}")
            r = run(["ip", "netns", "exec", CLIENT_NS, "ping", "-n", "-c", "1", "-W", "0.2", addr])
            if r.returncode == 0:
                return time.monotonic() - t0
            if "unreachable" in (r.stdout + r.stderr).lower():  # no route yet: fails at once
                time.sleep(0.02)

    # -- iperf3 ----------------------------------------------------------------------------------

    def iperf(self, addr: str, port: int, extra: list[str], secs: int, res: Result, step: str) -> dict[str, Any]:
        """One iperf3 client run from the client namespace; tried a second time (noted in res) if the
        first attempt fails to run at all (a stray refusal from the iperf3 server between tests)."""
        t0 = time.monotonic()
        try:
            return self.iperf_once(addr, port, extra, secs)
        except RuntimeError as e:
            res.add_note(f"iperf3 {' '.join(extra)} retried after: {e}")
            time.sleep(1)
            return self.iperf_once(addr, port, extra, secs)
        finally:
            res.steps[step] = round(time.monotonic() - t0, 2)

    def iperf_once(self, addr: str, port: int, extra: list[str], secs: int) -> dict[str, Any]:
        self.wait_iperf_idle(port)
        argv = ["ip", "netns", "exec", CLIENT_NS, "iperf3", "-c", addr, "-p", str(port), "-t", str(secs), "-J"]
        r = run([*argv, *extra], timeout=secs + 30)
        return iperf_result(r.stdout, r.returncode, r.stderr)

    def wait_iperf_idle(self, port: int) -> None:
        """Until the iperf3 server has closed the previous test's connections (through a slow tunnel
        that takes a while, and a new client arriving meanwhile is refused) and listens again."""
        deadline = time.monotonic() + 10
        ss = ["ip", "netns", "exec", SERVER_NS, "ss", "-Htn"]
        while time.monotonic() < deadline:
            busy = run([*ss, "state", "connected", "exclude", "time-wait", "sport", "=", f":{port}"]).stdout.strip()
            if not busy and run([*ss, "-l", "sport", "=", f":{port}"]).stdout.strip():
                return
            time.sleep(0.05)
        # carry on: the retry in iperf() copes if it is still busy

    def with_pings(
        self, addr: str, port: int, extra: list[str], secs: int, res: Result, step: str, iputils: bool = False
    ) -> tuple[dict[str, Any], list[tuple[int, float]], int]:
        """An iperf3 client run with pings every 10 ms alongside (probe.py's, or iputils ping's), from
        a short ramp-up on: iperf3's result, each reply's (icmp_seq, RTT ms), and the number sent."""
        ramp = 0.2 if self.timing.short else 0.5  # let the load fill the path before the first ping
        log = self.logs / f"{res.key}-{step}-iperf3.log"
        ping_log = self.logs / f"{res.key}-{step}-ping.log"
        t0 = time.monotonic()
        self.wait_iperf_idle(port)
        argv = ["iperf3", "-c", addr, "-p", str(port), "-t", str(secs), "-J", *extra]
        load = self.spawn(CLIENT_NS, argv, log, capture=True)
        time.sleep(ramp)
        # Stopped by time, not by count: on a busy VM the 10 ms interval stretches, and ping -c would run on
        # after iperf3 ends; -w takes whole seconds only. SIGINT makes either print what it has and exit.
        length = max(0.3, secs - ramp - 0.3)
        if iputils:
            argv = ["ping", "-n", "-i", str(LOAD_PING_INTERVAL), addr]
        else:
            argv = [str(PYTHON), str(PROBE), addr, "--interval", str(LOAD_PING_INTERVAL), "--seconds", str(length)]
        ping = self.spawn(CLIENT_NS, argv, ping_log)
        time.sleep(length)
        ping.send_signal(signal.SIGINT)
        try:
            ping.wait(timeout=5)
            out, _ = load.communicate(timeout=secs + 30)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"ping or iperf3 {' '.join(extra)} did not finish") from e
        data = iperf_result(out.decode(errors="replace"), load.returncode, log.read_text())
        text = ping_log.read_text(errors="replace")
        res.steps[step] = round(time.monotonic() - t0, 2)
        return data, load_ping_replies(text), ping_times(text)[1]

    def loaded_rtt(self, addr: str, port: int, res: Result) -> None:
        """Pings every 10 ms during a single-stream forward iperf3 run (its own run, not the CPU one),
        from probe.py; then the same with iputils ping, for its p99 beside."""
        _, by_ping, _ = self.with_pings(addr, port, [], self.timing.tcp_s, res, "load-iputils", iputils=True)
        if by_ping:
            res.load_rtt_p99_iputils_ms = percentile([rtt for _, rtt in by_ping], 99)
        data, replies, _ = self.with_pings(addr, port, [], self.timing.tcp_s, res, "load")
        res.load_mbit, _ = tcp_rate(data)
        if not replies:
            raise RuntimeError(f"no ping reply under load (see {res.key}-load-ping.log)")
        times = [rtt for _, rtt in replies]
        res.load_rtt_p50_ms = percentile(times, 50)
        res.load_rtt_p99_ms = percentile(times, 99)
        # lost: pings up to the last answered one without a reply; later ones may have been in flight
        last = max(seq for seq, _ in replies)
        res.load_ping_loss_pct = 100 * (1 - len({seq for seq, _ in replies}) / last)
        res.load_pings = len(replies)

    def flood_with_pings(self, addr: str, port: int, rate: int, res: Result) -> UdpRate:
        """The UDP run at ``rate`` with pings alongside: how much of other traffic a flood lets through."""
        extra = ["-u", "-b", f"{rate}M", "-l", str(UDP_LEN)]
        data, replies, sent = self.with_pings(addr, port, extra, self.timing.udp_s, res, f"udp{rate}")
        if sent:
            res.flood_pings_answered_pct = 100 * len({seq for seq, _ in replies}) / sent
        if replies:
            res.flood_rtt_p50_ms = percentile([rtt for _, rtt in replies], 50)
        return udp_rate(rate, data)

    def shared_bottleneck(self, addr: str, port: int, v: Variant, res: Result, against: str) -> None:
        """A single-stream forward run through the tunnel while a TCP flow outside it (veth to veth)
        runs through the same bottleneck: a token bucket of SHARED_RATE_MBIT on both veth ends. Both
        flows use congestion control ``against``, so that the share is the tunnel's doing, not the
        namespace default's (BBR inside against CUBIC outside, on these machines). Each flow's rate
        over the tunnel run's seconds: a fair tunnel gets about half."""
        t0 = time.monotonic()
        bare_port = port + 100
        bare_srv = self.spawn(SERVER_NS, ["iperf3", "-s", "-B", SERVER_ADDR, "-p", str(bare_port)],
                              self.logs / f"{v.key}-shared-{against}-iperf3-server.log")  # fmt: skip
        self.wait_listening(bare_port, "tcp", bare_srv, "iperf3 server (shared bottleneck)")
        shaped = [(CLIENT_NS, VETH_C), (SERVER_NS, VETH_S)]
        lead, secs = 2, 2 * self.timing.tcp_s  # (a newcomer takes seconds to find its share)
        try:
            for ns, dev in shaped:
                must(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                      "rate", f"{SHARED_RATE_MBIT}mbit", "burst", "32k", "latency", SHARED_QUEUE])  # fmt: skip
            bare_log = self.logs / f"{v.key}-shared-{against}-iperf3.log"
            argv = ["iperf3", "-c", SERVER_ADDR, "-p", str(bare_port), "-t", str(secs + 2 * lead), "-J", "-C", against]
            bare = self.spawn(CLIENT_NS, argv, bare_log, capture=True)
            time.sleep(lead)  # the outside flow has its share when the tunnel's starts
            inner = self.iperf(addr, port, ["-C", against], secs, res, f"shared-{against}")
            res.shared_tunnel_mbit[against], _ = tcp_rate(inner)
            out, _ = bare.communicate(timeout=secs + 2 * lead + 30)
            data = iperf_result(out.decode(errors="replace"), bare.returncode, bare_log.read_text())
            # Its rate over the seconds the tunnel's run had: intervals lead .. lead + secs.
            during = [i["sum"] for i in data["intervals"] if lead - 0.5 <= i["sum"]["start"] < lead + secs - 0.5]
            if during:
                bits = sum(i["bytes"] for i in during) * 8
                res.shared_bare_mbit[against] = bits / sum(i["seconds"] for i in during) / 1e6
        finally:
            for ns, dev in shaped:
                run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"])
            bare_srv.terminate()
        res.steps[f"shared-{against}"] = round(time.monotonic() - t0, 2)

    def ping_idle(self, addr: str, res: Result) -> None:
        count = self.timing.idle_pings
        r = run(["ip", "netns", "exec", CLIENT_NS, "ping", "-n", "-c", str(count), "-i", "0.02", addr])
        m = re.search(r"= [\d.]+/([\d.]+)/", r.stdout)
        times, _ = ping_times(r.stdout)
        if r.returncode != 0 or not m or not times:
            raise RuntimeError(f"idle ping failed: {r.stdout.strip()[-200:]} {r.stderr.strip()[-200:]}")
        res.rtt_avg_ms = float(m.group(1))
        res.rtt_p50_ms = percentile(times, 50)

    # -- tunnels ---------------------------------------------------------------------------------

    def start_tunnel(self, v: Variant) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], float]:
        """Start server then client of variant v; returns (server, client, seconds to first ping)."""
        if v.kind.startswith("rustvpn"):
            server_argv, client_argv, proto = self.rustvpn_argv(v)
        elif v.kind == "relay":
            server_argv, client_argv, proto = self.relay_argv(v)
        else:
            server_argv, client_argv, proto = self.openvpn_argv(v)
        server = self.spawn(SERVER_NS, server_argv, self.logs / f"{v.key}-server.log")
        self.wait_listening(v.port, proto, server, f"{v.label} server")
        t0 = time.monotonic()
        client = self.spawn(CLIENT_NS, client_argv, self.logs / f"{v.key}-client.log")
        up = self.wait_first_ping(v.server_ip, t0, [server, client])
        if v.kind.startswith("openvpn"):
            for end in ("server", "client"):
                wait_log(self.logs / f"{v.key}-{end}.log", "Initialization Sequence Completed", 10)
        return server, client, up

    def rustvpn_argv(self, v: Variant) -> tuple[list[str], list[str], str]:
        common = ["--device", TUN_DEV, "--ca-bundle", "ca.pem", "--stream-count", "5", "--mtu", str(v.mtu)]
        common += ["--log-level", "info", *v.flags]
        srv_id = ["--server-cert", "server.pem", "--server-key", "server.key", "--ipv4", f"198.19.{v.slot}.1/24"]
        cli_id = ["--client-cert", "client.pem", "--client-key", "client.key", "--ipv4", f"198.19.{v.slot}.2/24"]
        if v.kind == "rustvpn-tcp":
            ports = ["--control-port", str(v.port), "--data-port", str(v.port + 1)]
            server = [str(RUSTVPN), "tcpserver", "--control-bind-address", SERVER_ADDR]
            server += ["--data-bind-address", SERVER_ADDR, *ports, *common, *srv_id]
            client = [str(RUSTVPN), "tcpclient", "--server", SERVER_ADDR, *ports, *common, *cli_id]
            return server, client, "tcp"
        server = [str(RUSTVPN), "server", "--bind-address", SERVER_ADDR, "--port", str(v.port), *common, *srv_id]
        client = [str(RUSTVPN), "client", "--server", SERVER_ADDR, "--port", str(v.port), *common, *cli_id]
        return server, client, "udp"

    def relay_argv(self, v: Variant) -> tuple[list[str], list[str], str]:
        common = ["--port", str(v.port), "--dev", TUN_DEV, "--mtu", str(v.mtu), "--key-file", RELAY_KEY]
        server = [
            str(PYTHON),
            str(PY_RELAY),
            "server",
            "--bind",
            SERVER_ADDR,
            *common,
            "--addr",
            f"198.19.{v.slot}.1/24",
        ]
        client = [
            str(PYTHON),
            str(PY_RELAY),
            "client",
            "--server",
            SERVER_ADDR,
            *common,
            "--addr",
            f"198.19.{v.slot}.2/24",
        ]
        return server, client, "udp"

    def openvpn_argv(self, v: Variant) -> tuple[list[str], list[str], str]:
        openvpn = shutil.which("openvpn") or "openvpn"
        udp = v.kind == "openvpn-udp"
        common = [openvpn, "--dev-type", "tun", "--dev", TUN_DEV, "--ca", "ca.pem", "--dh", "none"]
        common += ["--cipher", "AES-256-GCM", "--data-ciphers", "AES-256-GCM", "--tls-version-min", "1.2"]
        common += ["--disable-dco", "--verb", "3", "--port", str(v.port)]
        # Tuned as its manual advises for speed, as rustvpn is by its defaults: in UDP mode, writes
        # without a poll() before each (about 40% more throughput here); in TCP mode, no Nagle
        # (rustvpn sets TCP_NODELAY, as the Rust reference does; without it OpenVPN carried a
        # quarter less, and an idle ping now and then settled at 24 ms).
        common += ["--fast-io"] if udp else ["--socket-flags", "TCP_NODELAY"]
        a, b = f"198.19.{v.slot}.1", f"198.19.{v.slot}.2"
        server = [*common, "--tls-server", "--cert", "server.pem", "--key", "server.key", "--ifconfig", a, b]
        server += ["--local", SERVER_ADDR, "--proto", "udp" if udp else "tcp-server"]
        client = [*common, "--tls-client", "--cert", "client.pem", "--key", "client.key", "--ifconfig", b, a]
        client += ["--remote", SERVER_ADDR, "--nobind", "--proto", "udp" if udp else "tcp-client"]
        return server, client, "udp" if udp else "tcp"

    # -- one variant -----------------------------------------------------------------------------

    def run_variant(self, v: Variant, res: Result) -> None:
        """Measure v into res; on an exception res keeps whatever was measured before it."""
        if v.needs and not shutil.which(v.needs):
            raise Skip(f"{v.needs} not installed")
        try:
            if v.kind == "pump":
                self.run_pump(v, res)
            else:
                self.run_network(v, res)
        finally:
            self.stop_all()

    def run_network(self, v: Variant, res: Result) -> None:
        t = self.timing
        ends: dict[str, subprocess.Popen[bytes]] = {}
        t0 = time.monotonic()
        if v.tunnel:
            server, client, res.start_to_ping_s = self.start_tunnel(v)
            ends = {"client": client, "server": server}
        res.steps["start"] = round(time.monotonic() - t0, 2)

        def check_alive() -> None:
            for end, p in ends.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{end} exited with status {p.returncode} during the measurements")

        iperf_port = 5201 + v.slot
        iperf_argv = ["iperf3", "-s", "-B", v.server_ip, "-p", str(iperf_port)]
        iperf_srv = self.spawn(SERVER_NS, iperf_argv, self.logs / f"{v.key}-iperf3.log")
        self.wait_listening(iperf_port, "tcp", iperf_srv, "iperf3 server")
        addr = v.server_ip
        on_cpu = {end: cpu_ns(p.pid) for end, p in ends.items()}
        self.ping_idle(addr, res)
        if ends:
            per_ping = {end: (cpu_ns(p.pid) - on_cpu[end]) / 1000 / self.timing.idle_pings for end, p in ends.items()}
            res.idle_cpu_us_client, res.idle_cpu_us_server = per_ping["client"], per_ping["server"]

        before = {end: cpu_seconds(p.pid) for end, p in ends.items()}
        res.mbit_fwd, nbytes = tcp_rate(self.iperf(addr, iperf_port, [], t.tcp_s, res, "fwd"))
        after = {end: cpu_seconds(p.pid) for end, p in ends.items()}
        if ends:
            gb = nbytes / 1e9
            res.cpu_s_per_gb_client = (after["client"] - before["client"]) / gb
            res.cpu_s_per_gb_server = (after["server"] - before["server"]) / gb
            res.cpu_s_per_gb = res.cpu_s_per_gb_client + res.cpu_s_per_gb_server

        res.mbit_rev, _ = tcp_rate(self.iperf(addr, iperf_port, ["-R"], t.tcp_s, res, "rev"))
        extras = t.extras_everywhere or not v.tunnel
        if extras:
            res.mbit_p4, _ = tcp_rate(self.iperf(addr, iperf_port, ["-P", "4"], t.tcp_s, res, "p4"))
            self.loaded_rtt(addr, iperf_port, res)
        check_alive()
        if ends:
            res.rss_mb_before_udp = max(peak_rss_mb(p.pid) for p in ends.values())

        if extras:
            for rate in t.udp_rates:
                if rate == max(t.udp_rates):
                    res.udp.append(self.flood_with_pings(addr, iperf_port, rate, res))
                    continue
                extra = ["-u", "-b", f"{rate}M", "-l", str(UDP_LEN)]
                res.udp.append(udp_rate(rate, self.iperf(addr, iperf_port, extra, t.udp_s, res, f"udp{rate}")))
        check_alive()
        if extras and v.tunnel:
            for against in SHARED_AGAINST:
                self.shared_bottleneck(addr, iperf_port, v, res, against)
                check_alive()
        if ends:
            res.rss_mb_client = peak_rss_mb(ends["client"].pid)
            res.rss_mb_server = peak_rss_mb(ends["server"].pid)
            res.rss_mb = max(res.rss_mb_client, res.rss_mb_server)

    def run_pump(self, v: Variant, res: Result) -> None:
        """quic_pump.py server in the server namespace, client in the client one, over the bare veth."""
        secs = self.timing.pump_s
        common = ["--mode", v.pump_mode, "--port", str(v.port)]
        srv_json, cli_json = self.work / f"{v.key}-server.json", self.work / f"{v.key}-client.json"
        server_argv = [str(PYTHON), str(QUIC_PUMP), "server", *common, "--bind", SERVER_ADDR]
        server_argv += ["--cert", "server.pem", "--key", "server.key", "--result", str(srv_json)]
        client_argv = [str(PYTHON), str(QUIC_PUMP), "client", *common, "--server", SERVER_ADDR, "--ca", "ca.pem"]
        client_argv += ["--seconds", str(secs), "--result", str(cli_json)]
        server = self.spawn(SERVER_NS, server_argv, self.logs / f"{v.key}-server.log")
        self.wait_listening(v.port, "udp", server, f"{v.label} server")
        client = self.spawn(CLIENT_NS, client_argv, self.logs / f"{v.key}-client.log")
        for end, proc in (("client", client), ("server", server)):
            try:
                status = proc.wait(timeout=secs + 40)
            except subprocess.TimeoutExpired as e:
                raise RuntimeError(f"pump {end} did not finish") from e
            if status != 0:
                text = (self.logs / f"{v.key}-{end}.log").read_text(errors="replace").strip()
                raise RuntimeError(f"pump {end} exited with status {status}: {text[-300:]}")
        srv, cli = json.loads(srv_json.read_text()), json.loads(cli_json.read_text())
        res.mbit_fwd = srv["mbit_s"]
        gb = srv["bytes"] / 1e9
        res.cpu_s_per_gb_client, res.cpu_s_per_gb_server = cli["cpu_s"] / gb, srv["cpu_s"] / gb
        res.cpu_s_per_gb = res.cpu_s_per_gb_client + res.cpu_s_per_gb_server
        res.pump_sent_mbit = cli["sent_bytes"] * 8 / srv["seconds"] / 1e6
        if v.pump_mode == "datagram":
            lost = 100 * (1 - srv["bytes"] / cli["sent_bytes"]) if cli["sent_bytes"] else 0.0
            res.add_note(f"{cli['datagram_payload']}-byte DATAGRAMs, {lost:.1f}% lost")
        else:
            res.add_note("one stream, 64 KiB writes")


# -- helpers ---------------------------------------------------------------------------------------


def run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def must(argv: list[str]) -> None:
    r = run(argv)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")


def wait_log(path: Path, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{path.name}: no {needle!r} within {timeout:.0f} s")


def iperf_result(stdout: str, status: int | None, stderr: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(stdout)
    except json.JSONDecodeError as e:
        raise RuntimeError(f"iperf3 gave no JSON (status {status}): {stderr.strip()[:300]}") from e
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    return data


def tcp_rate(data: dict[str, Any]) -> tuple[float, int]:
    """(receiver's Mbit/s, bytes received) of a TCP iperf3 run, all streams together."""
    received = data["end"]["sum_received"]
    if received["bytes"] <= 0:
        raise RuntimeError("iperf3 moved no data")
    return received["bits_per_second"] / 1e6, int(received["bytes"])


def udp_rate(offered: int, data: dict[str, Any]) -> UdpRate:
    end = data["end"]
    sent = end.get("sum_sent", end["sum"])
    received = end.get("sum_received", end["sum"])  # iperf3 before 3.13 may have only "sum"
    return UdpRate(
        offered_mbit=offered,
        sent_mbit=sent["bits_per_second"] / 1e6,
        recv_mbit=received["bits_per_second"] / 1e6,
        loss_pct=float(received.get("lost_percent", 0.0)),
    )


def load_ping_replies(stdout: str) -> list[tuple[int, float]]:
    """(icmp_seq, RTT in ms) of each reply (ping numbers from 1)."""
    return [(int(seq), float(t)) for seq, t in re.findall(r"icmp_seq=(\d+) .*?time=([\d.]+) ms", stdout)]


def ping_times(stdout: str) -> tuple[list[float], int]:
    """(each reply's RTT in ms, number of pings sent) from ping's output."""
    times = [float(m) for m in re.findall(r"time=([\d.]+) ms", stdout)]
    m = re.search(r"(\d+) packets transmitted", stdout)
    return times, int(m.group(1)) if m else len(times)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p% of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (so a tunnel program's helpers count too)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime+stime (all threads) of pid and its descendants, in seconds."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLK_TCK


def cpu_ns(pid: int) -> int:
    """Time on a CPU (all threads) of pid and its descendants, in nanoseconds: schedstat's first
    field, which unlike stat's clock ticks resolves the fraction of a millisecond a ping costs."""
    total = 0
    for p in process_tree(pid):
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total


def peak_rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmHWM:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) / 1024 if m else 0.0


def setup_namespaces() -> None:
    must(["ip", "netns", "add", CLIENT_NS])
    must(["ip", "netns", "add", SERVER_NS])
    must(["ip", "link", "add", VETH_C, "netns", CLIENT_NS, "type", "veth", "peer", "name", VETH_S, "netns", SERVER_NS])
    for ns, dev, addr in ((CLIENT_NS, VETH_C, CLIENT_ADDR), (SERVER_NS, VETH_S, SERVER_ADDR)):
        must(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
        must(["ip", "-n", ns, "link", "set", "lo", "up"])
        must(["ip", "-n", ns, "link", "set", dev, "up"])


def teardown_namespaces() -> None:
    for ns in (CLIENT_NS, SERVER_NS):
        # anything still running inside (it should not be) goes first, then the namespace
        r = run(["ip", "netns", "pids", ns])
        for pid in r.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        run(["ip", "netns", "del", ns])


def machine() -> dict[str, str]:
    ovpn = shutil.which("openvpn")
    ovpn_version = run([ovpn, "--version"]).stdout.splitlines()[0] if ovpn else "not installed"
    iperf = run(["iperf3", "--version"]).stdout.splitlines()
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "rustvpn": venv_version("rustvpn"),
        "aioquic": venv_version("aioquic"),
        "openvpn": ovpn_version,
        "iperf3": iperf[0] if iperf else "?",
    }


def venv_version(dist: str) -> str:
    """A package's version from its dist-info directory in .venv (no Python start-up: short mode is timed)."""
    found = sorted(REPO.glob(f".venv/lib/python3*/site-packages/{dist}-*.dist-info"))
    return found[-1].name.removesuffix(".dist-info").split("-", 1)[1] if found else "?"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


# -- report ----------------------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def compute_ratios(results: list[Result]) -> None:
    """Each row's forward rate over the baselines' from this same run."""
    by_key = {r.key: r for r in results}
    refs = (
        ("openvpn-udp", "ratio_openvpn_udp"),
        ("openvpn-tcp", "ratio_openvpn_tcp"),
        ("pump-dgram", "ratio_pump_dgram"),
    )
    for r in results:
        for ref, attr in refs:
            base = by_key.get(ref)
            if r.mbit_fwd is not None and base is not None and base.mbit_fwd:
                setattr(r, attr, r.mbit_fwd / base.mbit_fwd)


@dataclass
class Target:
    goal: str
    measured: str
    passed: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "**FAIL**", None: "n/a"}[self.passed]


def targets(results: list[Result]) -> list[Target]:
    """The issue's targets, for rustvpn's default variants (the flag variants are diagnostics)."""
    by_key = {r.key: r for r in results if r.status != "skipped"}
    out: list[Target] = []

    def check(goal: str, value: float | None, ok: bool | None, shown: str) -> None:
        out.append(Target(goal, shown if value is not None else "-", ok if value is not None else None))

    tcp, quic = by_key.get("rustvpn-tcp"), by_key.get("rustvpn-quic")
    ovpn = {"tcp": by_key.get("openvpn-tcp"), "quic": by_key.get("openvpn-udp")}
    r = tcp.ratio_openvpn_tcp if tcp else None
    check("rustvpn TCP fwd >= 2.5x OpenVPN TCP", r, r is not None and r >= 2.5, ratio(r))
    r = tcp.ratio_openvpn_udp if tcp else None
    check("rustvpn TCP fwd >= 1.5x OpenVPN UDP", r, r is not None and r >= 1.5, ratio(r))
    r = quic.ratio_pump_dgram if quic else None
    check("rustvpn QUIC fwd >= 1.0x aioquic DATAGRAM pump", r, r is not None and r >= 1.0, ratio(r))
    for mode, res, ref_label in (("tcp", tcp, "OpenVPN TCP"), ("quic", quic, "OpenVPN UDP")):
        label = "rustvpn TCP" if mode == "tcp" else "rustvpn QUIC"
        ref = ovpn[mode]
        ours, theirs = res.rtt_p50_ms if res else None, ref.rtt_p50_ms if ref else None
        diff = ours - theirs if ours is not None and theirs is not None else None
        shown = f"{fmt(ours, 3)} vs {fmt(theirs, 3)} ms (idle p50)"
        check(f"{label} idle RTT <= {ref_label}'s + 0.15 ms", diff, diff is not None and diff <= 0.15, shown)
    for label, res in (("rustvpn TCP", tcp), ("rustvpn QUIC", quic)):
        v = res.load_rtt_p99_ms if res else None
        check(f"{label} RTT p99 under load < 10 ms", v, v is not None and v < 10, f"{fmt(v, 2)} ms")
        v = res.rss_mb if res else None
        shown = f"{fmt(res.rss_mb_client)} / {fmt(res.rss_mb_server)} MB (client / server)" if res else ""
        check(f"{label} peak RSS per endpoint < 80 MB", v, v is not None and v < 80, shown)
        v = res.start_to_ping_s if res else None
        check(f"{label} client start to first ping < 1 s", v, v is not None and v < 1, f"{fmt(v, 2)} s")
    return out


def markdown(mach: dict[str, str], results: list[Result], timing: Timing, goals: list[Target], chart: str) -> str:
    short = timing.short
    lines = ["# rustvpn benchmark" + (" (short mode: a smoke test, not a measurement)" if short else ""), ""]
    lines += [f"- {k}: {v}" for k, v in mach.items()]
    lines += [
        f"- iperf3 TCP: {timing.tcp_s} s per run; UDP: {timing.udp_s} s per offered rate, {UDP_LEN}-byte datagrams; "
        f"aioquic pumps: {timing.pump_s} s; idle RTT: median of {timing.idle_pings} pings at 0.02 s",
        "- compare ratios within this run only: absolute numbers drift on a shared machine",
        "",
        "## Throughput and cost",
        "",
        "| variant | Mbit/s fwd | Mbit/s rev | Mbit/s fwd 4 streams | fwd / OpenVPN UDP | fwd / OpenVPN TCP "
        "| fwd / aioquic DATAGRAM pump | CPU s/GB | peak RSS MB | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        note = r.note if r.status == "ok" else f"**{r.status}**: {r.note}"
        lines.append(
            f"| {r.label} | {fmt(r.mbit_fwd)} | {fmt(r.mbit_rev)} | {fmt(r.mbit_p4)} | {ratio(r.ratio_openvpn_udp)} "
            f"| {ratio(r.ratio_openvpn_tcp)} | {ratio(r.ratio_pump_dgram)} | {fmt(r.cpu_s_per_gb, 2)} "
            f"| {fmt(r.rss_mb)} | {note.replace('|', '/')} |"
        )
    lines += [
        "",
        "## Latency and start-up",
        "",
        "| variant | idle RTT p50 ms | CPU us per idle ping (client / server) | RTT p50 under load ms "
        "| RTT p99 under load ms | p99 with iputils ping ms | ping loss under load % | Mbit/s during load "
        "| start to first ping s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        idle_cpu = (
            f"{r.idle_cpu_us_client:.0f} / {r.idle_cpu_us_server:.0f}"
            if r.idle_cpu_us_client is not None and r.idle_cpu_us_server is not None
            else "-"
        )
        lines.append(
            f"| {r.label} | {fmt(r.rtt_p50_ms, 3)} | {idle_cpu} | {fmt(r.load_rtt_p50_ms, 3)} "
            f"| {fmt(r.load_rtt_p99_ms, 3)} | {fmt(r.load_rtt_p99_iputils_ms, 3)} | {fmt(r.load_ping_loss_pct)} "
            f"| {fmt(r.load_mbit)} "
            f"| {fmt(r.start_to_ping_s, 2)} |"
        )
    lines += [
        "",
        f"## UDP at fixed offered rates ({UDP_LEN}-byte datagrams)",
        "",
        "| variant | "
        + " | ".join(f"{rate} Mbit/s offered: received, loss" for rate in timing.udp_rates)
        + f" | pings alongside {max(timing.udp_rates)} Mbit/s: answered, p50 ms |",
        "|---|" + "---:|" * (len(timing.udp_rates) + 1),
    ]
    for r in results:
        got = {u.offered_mbit: u for u in r.udp}
        cells = [f"{got[x].recv_mbit:.1f}, {got[x].loss_pct:.1f}%" if x in got else "-" for x in timing.udp_rates]
        answered = r.flood_pings_answered_pct
        cells.append("-" if answered is None else f"{answered:.0f}%, {fmt(r.flood_rtt_p50_ms, 2)}")
        lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Sharing a {SHARED_RATE_MBIT} Mbit/s bottleneck with a TCP flow outside the tunnel",
        "",
        "| variant | "
        + " | ".join(f"beside {cc.upper()}: tunnel / other flow Mbit/s | tunnel's share" for cc in SHARED_AGAINST)
        + " |",
        "|---|" + "---:|---:|" * len(SHARED_AGAINST),
    ]
    for r in results:
        if not r.shared_tunnel_mbit:
            continue
        cells = []
        for cc in SHARED_AGAINST:
            tunnel, other = r.shared_tunnel_mbit.get(cc), r.shared_bare_mbit.get(cc)
            share = "-"
            if tunnel is not None and other is not None and tunnel + other:
                share = f"{100 * tunnel / (tunnel + other):.0f}%"
            cells += [f"{fmt(tunnel)} / {fmt(other)}", share]
        lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    lines += ["", "## Targets" + (" (short mode: not meaningful)" if short else ""), ""]
    lines += ["| target | measured | result |", "|---|---|---|"]
    lines += [f"| {g.goal} | {g.measured} | {g.verdict} |" for g in goals]
    lines += [
        "",
        "## Notes",
        "",
        "- fwd: client to server; rev: server to client (iperf3 -R); 4 streams: iperf3 -P 4, forward. Mbit/s is "
        "the receiver's. The aioquic pumps send forward only, with no tunnel, over the veth.",
        "- rustvpn QUIC rows run with --mtu 1400 (so a tunnel packet fits one QUIC datagram on the 1500-byte veth); "
        "rustvpn TCP and OpenVPN with MTU 1500. All rustvpn rows use 5 streams/connections.",
        "- plain Python relay (bench/py_relay.py, MTU 1400): not a VPN but the floor for one written in Python: "
        "an asyncio loop that seals each packet from the TUN device with AES-256-GCM into one UDP datagram and "
        "back, with no handshake, queues or congestion control. What it costs is what Python and asyncio cost.",
        "- CPU s/GB: utime+stime of both endpoints (client + server) during the forward run, per 10^9 bytes "
        "received. Peak RSS: VmHWM after all runs (including the UDP floods), the larger of the two endpoints.",
        f"- RTT under load: ICMP echoes every {LOAD_PING_INTERVAL * 1000:.0f} ms from bench/probe.py during a "
        "separate single-stream forward iperf3 run; p50/p99 are nearest-rank over the replies; lost pings count "
        "only in the loss column. probe.py sleeps between requests and times them as ping does (send time "
        "before the send, the kernel's receive timestamp); iputils ping at this interval spins between a reply "
        "and the next request, taking a CPU from the tunnel it measures: its p99 (a run of its own) is shown "
        "beside, not used for the targets. Idle RTT is iputils ping's (at 20 ms the two agree).",
        f"- UDP: iperf3 -u -b RATE -l {UDP_LEN}: the receiver's rate and loss; 1228-byte IP packets fit every "
        "tunnel's MTU without fragmentation. The sender may fall short of the offered rate on a busy machine "
        "(sent rates are in results.json). Pings every "
        f"{LOAD_PING_INTERVAL * 1000:.0f} ms (probe.py) run alongside the highest rate: the share answered "
        "(of those sent) and the median RTT show how much a flood leaves for other traffic.",
        f"- Sharing: both veth ends get a token bucket of {SHARED_RATE_MBIT} Mbit/s with {SHARED_QUEUE} of queue; "
        "an iperf3 TCP flow from veth to veth (outside the tunnel; CUBIC in one run, BBR in the other) starts "
        "2 s before a single-stream forward run through the tunnel (twice the other runs' length) and outlasts "
        "it. Rates are each flow's receiver's over the tunnel run's seconds. A tunnel whose congestion control "
        "yields to a queue it did not make starves here.",
        "- Start to first ping: from starting the tunnel client (server already listening) to the first ping "
        "reply through the tunnel.",
        "- CPU per idle ping: each endpoint's time on a CPU (/proc/PID/task/*/schedstat, kernel work in its "
        "context included) over the idle pings, divided by their number: what one round trip costs each end "
        "when the machine is otherwise idle.",
    ]
    if chart:
        lines += ["", f"![results]({chart})"]
    return "\n".join(lines) + "\n"


def value_label(x: float, unit: str) -> str:
    if unit == "%":
        return f"{x:.1f}%"
    return f"{x:.0f}{unit}" if x >= 100 else f"{x:.3g}{unit}"


def draw_chart(results: list[Result], timing: Timing, path: Path) -> str:
    """Throughput, RTT and UDP loss per variant as horizontal grouped bars; "" if matplotlib is missing."""
    try:
        import matplotlib  # lazily: everything else works without it

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ""
    rows = [r for r in results if r.status != "skipped"][::-1]  # first variant at the top
    labels = [r.label + ("" if r.status == "ok" else f" ({r.status})") for r in rows]
    fig, axes = plt.subplots(1, 3, sharey=True, figsize=(17, 1.0 + 0.62 * len(rows)))

    def bars(ax: Any, series: list[tuple[str, list[float | None]]], log: bool, unit: str = "") -> None:
        height = 0.8 / len(series)
        for i, (name, values) in enumerate(series):
            ys = [y + 0.4 - height * (i + 0.5) for y in range(len(rows))]  # first series on top, as in the legend
            xs = [v if v is not None and (v > 0 or not log) else float("nan") for v in values]
            drawn = ax.barh(ys, xs, height=height, label=name)
            # the value at each bar's end: a log axis makes lengths hard to read
            texts = ["" if math.isnan(x) else value_label(x, unit) for x in xs]
            ax.bar_label(drawn, labels=texts, padding=2, fontsize=7)
        if log:
            ax.set_xscale("log")
            top = max((v for _, values in series for v in values if v), default=1.0)
            ax.set_xlim(right=top * 6)  # room for the value labels
        ax.grid(axis="x", which="both", alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=len(series), fontsize=8, frameon=False)

    ax = axes[0]
    bars(
        ax,
        [
            ("fwd", [r.mbit_fwd for r in rows]),
            ("rev", [r.mbit_rev for r in rows]),
            ("fwd 4 streams", [r.mbit_p4 for r in rows]),
        ],
        log=True,
    )
    ax.set_title("TCP throughput (Mbit/s, log)")
    ax.set_yticks(range(len(rows)), labels)
    ax = axes[1]
    bars(
        ax,
        [
            ("idle p50", [r.rtt_p50_ms for r in rows]),
            ("p50 under load", [r.load_rtt_p50_ms for r in rows]),
            ("p99 under load", [r.load_rtt_p99_ms for r in rows]),
        ],
        log=True,
    )
    ax.set_title("ping RTT (ms, log)")
    ax = axes[2]
    loss = [
        (f"{rate} Mbit/s", [next((u.loss_pct for u in r.udp if u.offered_mbit == rate), None) for r in rows])
        for rate in timing.udp_rates
    ]
    bars(ax, loss, log=False, unit="%")
    ax.set_xlim(0, 110)  # room for the labels of 100% bars
    ax.set_title(f"UDP loss at offered rate (%, {UDP_LEN}-byte datagrams)")
    fig.suptitle(
        "rustvpn benchmark" + (" (short mode: smoke test)" if timing.short else "") + " - compare within this run only"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--short", action="store_true", help="smoke test: fewer variants and measurements, 1 s runs")
    ap.add_argument("--out", type=Path, default=Path("bench-results"), help="directory for results.md/.json/.png")
    keys = ",".join(v.key for v in VARIANTS)
    ap.add_argument("--only", metavar="KEY[,KEY]", help=f"run only these variants, of: {keys}")
    args = ap.parse_args()
    variants = [v for v in VARIANTS if not args.short or v.key in SHORT_VARIANTS]
    if args.only:
        wanted = {k.strip() for k in args.only.split(",") if k.strip()}
        unknown = wanted - {v.key for v in VARIANTS}
        if unknown or not wanted:
            ap.error(f"--only: unknown variant {', '.join(sorted(unknown)) or '(none given)'}; known: {keys}")
        variants = [v for v in VARIANTS if v.key in wanted]
    if os.geteuid() != 0:
        print("bench/run.py: run as root (it creates network namespaces and TUN devices)", file=sys.stderr)
        return 2
    for prog in ("ip", "ping", "ss", "iperf3"):
        if not shutil.which(prog):
            print(f"bench/run.py: {prog} is missing (bash tests/bootstrap.sh installs it)", file=sys.stderr)
            return 2
    for path in (RUSTVPN, PYTHON):
        if not path.exists():
            print(f"bench/run.py: {path} is missing (bash tests/bootstrap.sh makes it)", file=sys.stderr)
            return 2

    # SIGTERM/SIGHUP take the same way out as Ctrl-C, through the finally blocks
    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    started = time.monotonic()
    timing = Timing(args.short)
    results: list[Result] = []
    work = Path(tempfile.mkdtemp(prefix="rustvpn-bench."))
    harness = Harness(work, logs, timing)
    try:
        mach = machine()
        certs = run([str(RUSTVPN), "certs", "--out", str(work), "--server-name", SERVER_ADDR])
        if certs.returncode != 0:
            raise RuntimeError(f"rustvpn certs: {certs.stderr.strip()}")
        (work / RELAY_KEY).write_bytes(os.urandom(32))
        setup_namespaces()
        for v in variants:
            print(f"== {v.label}", file=sys.stderr, flush=True)
            res = Result(v.key, v.label, note="no tunnel: the ceiling" if v.kind == "veth" else "")
            t0 = time.monotonic()
            try:
                harness.run_variant(v, res)
            except Skip as e:
                res = Result(v.key, v.label, status="skipped", note=str(e))
            except Exception as e:  # one variant failing must not lose the others
                res.status = "failed"
                res.add_note(str(e))
                print(f"   failed: {e} (logs in {logs})", file=sys.stderr)
            print(f"   {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
            results.append(res)
    finally:
        harness.stop_all()
        teardown_namespaces()
        shutil.rmtree(work, ignore_errors=True)

    compute_ratios(results)
    goals = targets(results)
    chart = draw_chart(results, timing, out / "results.png")
    if not chart:
        print("bench/run.py: matplotlib is missing: no chart", file=sys.stderr)
    md = markdown(mach, results, timing, goals, chart)
    (out / "results.md").write_text(md)
    report = {
        "machine": mach,
        "short": args.short,
        "timing": asdict(timing),
        "udp_datagram_bytes": UDP_LEN,
        "load_ping_interval_s": LOAD_PING_INTERVAL,
        "results": [asdict(r) for r in results],
        "targets": [{"goal": g.goal, "measured": g.measured, "passed": g.passed} for g in goals],
        "chart": chart or None,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(md)
    written = ", ".join(str(out / n) for n in ("results.md", "results.json", chart) if n)
    print(f"results: {written} ({report['elapsed_s']} s)", file=sys.stderr)
    failed = [r.label for r in results if r.status == "failed"]
    if failed:
        print(f"bench/run.py: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench/run.py: interrupted; cleaned up", file=sys.stderr)
        sys.exit(130)
