#!/usr/bin/env python3
"""Benchmark harness: rustvpn (TCP and QUIC mode) against OpenVPN (UDP and TCP) and bare veth.

Builds two network namespaces joined by a veth pair (198.18.0.1 client, 198.18.0.2 server), makes
throwaway certificates with `rustvpn certs`, then for each variant brings a tunnel up between the
namespaces (each on its own 198.19.X.0/24), and measures over it: the time from starting the client
to the first ping reply, single-stream iperf3 TCP throughput both ways, idle ping RTT, CPU seconds per
GB of both tunnel endpoints during the forward run, and their peak RSS. Writes DIR/results.md and
DIR/results.json and prints the table. Absolute numbers drift on a shared machine: compare the ratios
from one run, not numbers from different runs.

Run as root from the repository: .venv/bin/python bench/run.py [--short] [--out DIR]
Python 3.11 standard library only. Traffic stays inside the namespaces it creates.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RUSTVPN = REPO / ".venv" / "bin" / "rustvpn"
CLIENT_ADDR, SERVER_ADDR = "198.18.0.1", "198.18.0.2"
TAG = os.getpid()
CLIENT_NS, SERVER_NS = f"rvb-c-{TAG}", f"rvb-s-{TAG}"
VETH_C, VETH_S = f"rvbc{TAG}", f"rvbs{TAG}"
TUN_DEV = "rvbtun"
UP_TIMEOUT = 30.0  # seconds from client start to the first ping reply
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Skip(Exception):
    """The variant cannot run here (its program is missing)."""


@dataclass
class Variant:
    key: str
    label: str
    subnet: int  # X in 198.19.X.0/24; 0 for bare veth (no tunnel)
    needs: str = ""  # program that must be installed, "" for none

    @property
    def server_ip(self) -> str:
        return f"198.19.{self.subnet}.1" if self.subnet else SERVER_ADDR

    @property
    def port(self) -> int:
        return 20000 + 10 * self.subnet


VARIANTS = [
    Variant("veth", "bare veth", 0),
    Variant("rustvpn-tcp", "rustvpn TCP", 1),
    Variant("rustvpn-quic", "rustvpn QUIC", 2),
    Variant("openvpn-udp", "OpenVPN UDP", 3, needs="openvpn"),
    Variant("openvpn-tcp", "OpenVPN TCP", 4, needs="openvpn"),
]
SHORT_VARIANTS = {"veth", "rustvpn-tcp", "rustvpn-quic", "openvpn-udp"}


@dataclass
class Result:
    key: str
    label: str
    status: str = "ok"  # ok, skipped, failed
    note: str = ""
    mbit_fwd: float | None = None
    mbit_rev: float | None = None
    rtt_ms: float | None = None
    cpu_s_per_gb: float | None = None
    cpu_s_per_gb_client: float | None = None
    cpu_s_per_gb_server: float | None = None
    rss_mb: float | None = None
    rss_mb_client: float | None = None
    rss_mb_server: float | None = None
    start_to_ping_s: float | None = None
    ratio_openvpn_udp: float | None = None
    ratio_openvpn_tcp: float | None = None


@dataclass
class Harness:
    work: Path
    logs: Path
    short: bool
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    # -- processes -------------------------------------------------------------------------------

    def spawn(self, ns: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Start argv in namespace ns (`ip netns exec` execs, so the pid is the program's own)."""
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
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
        self.procs.clear()

    # -- measurements ----------------------------------------------------------------------------

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
                    raise RuntimeError(f"tunnel process {proc.args[4]!r} exited with status {proc.returncode}")
            r = run(["ip", "netns", "exec", CLIENT_NS, "ping", "-n", "-c", "1", "-W", "0.2", addr])
            if r.returncode == 0:
                return time.monotonic() - t0
            if "unreachable" in (r.stdout + r.stderr).lower():  # no route yet: fails at once
                time.sleep(0.02)

    def iperf(self, addr: str, port: int, reverse: bool, res: Result) -> tuple[float, int]:
        """iperf3_once, tried a second time (noted in res) if the first attempt fails to run at all."""
        try:
            return self.iperf_once(addr, port, reverse)
        except RuntimeError as e:
            res.note = f"{res.note}; " if res.note else ""
            res.note += f"iperf3{' -R' if reverse else ''} retried after: {e}"
            time.sleep(1)
            return self.iperf_once(addr, port, reverse)

    def iperf_once(self, addr: str, port: int, reverse: bool) -> tuple[float, int]:
        """One single-stream iperf3 TCP run from the client namespace; returns (Mbit/s, bytes received)."""
        secs = 1 if self.short else 5
        argv = ["ip", "netns", "exec", CLIENT_NS, "iperf3", "-c", addr, "-p", str(port), "-t", str(secs), "-J"]
        if reverse:
            argv.append("-R")
        r = run(argv, timeout=secs + 30)
        try:
            data = json.loads(r.stdout)
        except json.JSONDecodeError as e:
            raise RuntimeError(f"iperf3 gave no JSON (status {r.returncode}): {r.stderr.strip()[:300]}") from e
        if "error" in data:
            raise RuntimeError(f"iperf3: {data['error']}")
        received = data["end"]["sum_received"]
        if received["bytes"] <= 0:
            raise RuntimeError("iperf3 moved no data")
        return received["bits_per_second"] / 1e6, int(received["bytes"])

    def ping_rtt(self, addr: str) -> float:
        count = 5 if self.short else 20
        r = run(["ip", "netns", "exec", CLIENT_NS, "ping", "-n", "-q", "-c", str(count), "-i", "0.05", addr])
        m = re.search(r"= [\d.]+/([\d.]+)/", r.stdout)
        if r.returncode != 0 or not m:
            raise RuntimeError(f"idle ping failed: {r.stdout.strip()[-200:]} {r.stderr.strip()[-200:]}")
        return float(m.group(1))

    # -- tunnels ---------------------------------------------------------------------------------

    def start_tunnel(self, v: Variant) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], float]:
        """Start server then client of variant v; returns (server, client, seconds to first ping)."""
        if v.key.startswith("rustvpn"):
            server_argv, client_argv, proto = self.rustvpn_argv(v)
        else:
            server_argv, client_argv, proto = self.openvpn_argv(v)
        server = self.spawn(SERVER_NS, server_argv, self.logs / f"{v.key}-server.log")
        self.wait_listening(v.port, proto, server, f"{v.label} server")
        t0 = time.monotonic()
        client = self.spawn(CLIENT_NS, client_argv, self.logs / f"{v.key}-client.log")
        up = self.wait_first_ping(v.server_ip, t0, [server, client])
        if v.key.startswith("openvpn"):
            for end in ("server", "client"):
                wait_log(self.logs / f"{v.key}-{end}.log", "Initialization Sequence Completed", 10)
        return server, client, up

    def rustvpn_argv(self, v: Variant) -> tuple[list[str], list[str], str]:
        common = ["--device", TUN_DEV, "--ca-bundle", "ca.pem", "--stream-count", "5", "--mtu", "1500"]
        common += ["--log-level", "info"]
        srv_id = ["--server-cert", "server.pem", "--server-key", "server.key", "--ipv4", f"198.19.{v.subnet}.1/24"]
        cli_id = ["--client-cert", "client.pem", "--client-key", "client.key", "--ipv4", f"198.19.{v.subnet}.2/24"]
        if v.key == "rustvpn-tcp":
            ports = ["--control-port", str(v.port), "--data-port", str(v.port + 1)]
            server = [str(RUSTVPN), "tcpserver", "--control-bind-address", SERVER_ADDR]
            server += ["--data-bind-address", SERVER_ADDR, *ports, *common, *srv_id]
            client = [str(RUSTVPN), "tcpclient", "--server", SERVER_ADDR, *ports, *common, *cli_id]
            return server, client, "tcp"
        server = [str(RUSTVPN), "server", "--bind-address", SERVER_ADDR, "--port", str(v.port), *common, *srv_id]
        client = [str(RUSTVPN), "client", "--server", SERVER_ADDR, "--port", str(v.port), *common, *cli_id]
        return server, client, "udp"

    def openvpn_argv(self, v: Variant) -> tuple[list[str], list[str], str]:
        openvpn = shutil.which("openvpn") or "openvpn"
        udp = v.key == "openvpn-udp"
        common = [openvpn, "--dev-type", "tun", "--dev", TUN_DEV, "--ca", "ca.pem", "--dh", "none"]
        common += ["--cipher", "AES-256-GCM", "--data-ciphers", "AES-256-GCM", "--tls-version-min", "1.2"]
        common += ["--disable-dco", "--verb", "3", "--port", str(v.port)]
        a, b = f"198.19.{v.subnet}.1", f"198.19.{v.subnet}.2"
        server = [*common, "--tls-server", "--cert", "server.pem", "--key", "server.key", "--ifconfig", a, b]
        server += ["--local", SERVER_ADDR, "--proto", "udp" if udp else "tcp-server"]
        client = [*common, "--tls-client", "--cert", "client.pem", "--key", "client.key", "--ifconfig", b, a]
        client += ["--remote", SERVER_ADDR, "--nobind", "--proto", "udp" if udp else "tcp-client"]
        return server, client, "udp" if udp else "tcp"

    # -- one variant -----------------------------------------------------------------------------

    def run_variant(self, v: Variant) -> Result:
        res = Result(v.key, v.label, note="" if v.subnet else "no tunnel: the ceiling")
        if v.needs and not shutil.which(v.needs):
            raise Skip(f"{v.needs} not installed")
        try:
            ends: dict[str, subprocess.Popen[bytes]] = {}
            if v.subnet:
                server, client, res.start_to_ping_s = self.start_tunnel(v)
                ends = {"client": client, "server": server}
            iperf_port = 5201 + v.subnet
            iperf_srv = self.spawn(
                SERVER_NS, ["iperf3", "-s", "-B", v.server_ip, "-p", str(iperf_port)], self.logs / f"{v.key}-iperf3.log"
            )
            self.wait_listening(iperf_port, "tcp", iperf_srv, "iperf3 server")
            res.rtt_ms = self.ping_rtt(v.server_ip)
            before = {end: cpu_seconds(p.pid) for end, p in ends.items()}
            res.mbit_fwd, nbytes = self.iperf(v.server_ip, iperf_port, False, res)
            after = {end: cpu_seconds(p.pid) for end, p in ends.items()}
            res.mbit_rev, _ = self.iperf(v.server_ip, iperf_port, True, res)
            if ends:
                gb = nbytes / 1e9
                res.cpu_s_per_gb_client = (after["client"] - before["client"]) / gb
                res.cpu_s_per_gb_server = (after["server"] - before["server"]) / gb
                res.cpu_s_per_gb = res.cpu_s_per_gb_client + res.cpu_s_per_gb_server
                res.rss_mb_client = peak_rss_mb(ends["client"].pid)
                res.rss_mb_server = peak_rss_mb(ends["server"].pid)
                res.rss_mb = max(res.rss_mb_client, res.rss_mb_server)
                for end, p in ends.items():
                    if p.poll() is not None:
                        raise RuntimeError(f"{end} exited with status {p.returncode} during the measurements")
        finally:
            self.stop_all()
        return res


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
        "rustvpn": run([str(RUSTVPN), "--version"]).stdout.strip(),
        "openvpn": ovpn_version,
        "iperf3": iperf[0] if iperf else "?",
    }


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


def markdown(mach: dict[str, str], results: list[Result], short: bool, secs: int) -> str:
    lines = ["# rustvpn benchmark" + (" (short mode: a smoke test, not a measurement)" if short else ""), ""]
    lines += [f"- {k}: {v}" for k, v in mach.items()]
    lines += [
        f"- iperf3: one TCP stream, {secs} s each way; idle RTT: {5 if short else 20} pings at 0.05 s",
        "- compare ratios within this run only: absolute numbers drift on a shared machine",
        "",
        "| variant | Mbit/s fwd | Mbit/s rev | fwd / OpenVPN UDP | fwd / OpenVPN TCP | idle RTT ms "
        "| CPU s/GB | peak RSS MB | start to first ping s | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        note = r.note if r.status == "ok" else f"**{r.status}**: {r.note}"
        lines.append(
            f"| {r.label} | {fmt(r.mbit_fwd)} | {fmt(r.mbit_rev)} | {ratio(r.ratio_openvpn_udp)} "
            f"| {ratio(r.ratio_openvpn_tcp)} | {fmt(r.rtt_ms, 3)} | {fmt(r.cpu_s_per_gb, 2)} | {fmt(r.rss_mb)} "
            f"| {fmt(r.start_to_ping_s, 2)} | {note.replace('|', '/')} |"
        )
    lines += [
        "",
        "fwd: client to server; rev: server to client (iperf3 -R). CPU s/GB: utime+stime of both tunnel "
        "endpoints (client + server) during the forward run, per 10^9 bytes received. Peak RSS: VmHWM, the "
        "larger of the two endpoints. Start to first ping: from starting the tunnel client (server already "
        "listening) to the first ping reply through the tunnel.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--short", action="store_true", help="smoke test: fewer variants, 1 s iperf, 5 pings")
    ap.add_argument("--out", type=Path, default=Path("bench-results"), help="directory for results.md/.json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/run.py: run as root (it creates network namespaces and TUN devices)", file=sys.stderr)
        return 2
    for prog in ("ip", "ping", "ss", "iperf3"):
        if not shutil.which(prog):
            print(f"bench/run.py: {prog} is missing (bash tests/bootstrap.sh installs it)", file=sys.stderr)
            return 2
    if not RUSTVPN.exists():
        print(f"bench/run.py: {RUSTVPN} is missing (bash tests/bootstrap.sh makes it)", file=sys.stderr)
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
    variants = [v for v in VARIANTS if not args.short or v.key in SHORT_VARIANTS]
    results: list[Result] = []
    work = Path(tempfile.mkdtemp(prefix="rustvpn-bench."))
    harness = Harness(work, logs, args.short)
    try:
        mach = machine()
        certs = run([str(RUSTVPN), "certs", "--out", str(work), "--server-name", SERVER_ADDR])
        if certs.returncode != 0:
            raise RuntimeError(f"rustvpn certs: {certs.stderr.strip()}")
        setup_namespaces()
        for v in variants:
            print(f"== {v.label}", file=sys.stderr, flush=True)
            try:
                res = harness.run_variant(v)
            except Skip as e:
                res = Result(v.key, v.label, status="skipped", note=str(e))
            except Exception as e:  # one variant failing must not lose the others
                res = Result(v.key, v.label, status="failed", note=str(e))
                print(f"   failed: {e} (logs in {logs})", file=sys.stderr)
            results.append(res)
    finally:
        harness.stop_all()
        teardown_namespaces()
        shutil.rmtree(work, ignore_errors=True)

    by_key = {r.key: r for r in results}
    for r in results:
        for ref, attr in (("openvpn-udp", "ratio_openvpn_udp"), ("openvpn-tcp", "ratio_openvpn_tcp")):
            base = by_key.get(ref)
            if r.mbit_fwd is not None and base is not None and base.mbit_fwd:
                setattr(r, attr, r.mbit_fwd / base.mbit_fwd)
    secs = 1 if args.short else 5
    md = markdown(mach, results, args.short, secs)
    (out / "results.md").write_text(md)
    report = {
        "machine": mach,
        "short": args.short,
        "iperf_seconds": secs,
        "results": [r.__dict__ for r in results],
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(md)
    print(f"results: {out / 'results.md'}, {out / 'results.json'} ({report['elapsed_s']} s)", file=sys.stderr)
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
