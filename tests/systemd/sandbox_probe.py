"""Runs INSIDE a test host as ExecStart= of rustvpn@probe.service (a drop-in replaces only the
command, so the real unit's whole sandbox applies).  It does what the daemon must be able to do,
then prints one JSON line to the journal and exits 0 only if every essential step worked.

Essentials: import rustvpn and its dependencies (MemoryDenyWriteExecute, the system-call filter),
open /dev/net/tun and TUNSETIFF (DevicePolicy, CAP_NET_ADMIN), set MTU, addresses, link up and
routes over netlink with pyroute2 (AF_NETLINK), bind low UDP/TCP ports (CAP_NET_BIND_SERVICE),
a status socket in $RUNTIME_DIRECTORY, TLS and crypto, journald and sd_notify (READY, STATUS,
WATCHDOG).  Also records what the sandbox forbids, for the test to assert.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import pkgutil
import socket
import ssl
import struct
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
DEVICE = "rvprobe0"
OTHER_DEVICE = "/dev/rvtest-fuse"  # made by the test: char 10:229

results: dict[str, Any] = {"essential": {}, "forbidden": {}, "env": {}}


def essential(name: str, step: Callable[[], Any]) -> Any:
    try:
        value = step()
    except Exception as exc:
        results["essential"][name] = f"FAILED: {type(exc).__name__}: {exc}"
        traceback.print_exc()
        return None
    results["essential"][name] = "ok" if value is None else value
    return value


def forbidden(name: str, step: Callable[[], Any]) -> None:
    """Record 'blocked: ...' if the step raises (as the sandbox should make it), else 'ALLOWED'."""
    try:
        step()
    except Exception as exc:
        results["forbidden"][name] = f"blocked: {type(exc).__name__}: {exc}"
    else:
        results["forbidden"][name] = "ALLOWED"


def import_everything() -> str:
    import rustvpn

    # rustvpn.__main__ runs the CLI when imported: leave it out.
    names = [m.name for m in pkgutil.walk_packages(rustvpn.__path__, "rustvpn.") if m.name != "rustvpn.__main__"]
    for name in ["aioquic.quic.connection", "cryptography.hazmat.primitives.asymmetric.ec", "pyroute2", "yaml", *names]:
        importlib.import_module(name)
    return f"{len(names)} rustvpn modules"


def crypto() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    key.public_key().verify(key.sign(b"x", ec.ECDSA(hashes.SHA256())), b"x", ec.ECDSA(hashes.SHA256()))
    ssl.create_default_context(ssl.Purpose.SERVER_AUTH)


def tun_and_netlink() -> None:
    from pyroute2 import IPRoute

    tun = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", DEVICE.encode(), IFF_TUN | IFF_NO_PI))
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=DEVICE)[0]
        ipr.link("set", index=index, mtu=1400)
        ipr.addr("add", index=index, address="198.19.99.1", prefixlen=24)
        ipr.addr("add", index=index, address="fd00:99::1", prefixlen=64)
        ipr.link("set", index=index, state="up")
        ipr.route("add", dst="192.0.2.0/24", oif=index)
        ipr.route("add", dst="fd00:98::/64", oif=index)
        routes = {r.get_attr("RTA_DST") for r in ipr.get_routes(oif=index)}
        assert {"192.0.2.0", "fd00:98::"} <= routes, routes
        ipr.link("del", index=index)
    os.close(tun)


def low_ports() -> None:
    for family, kind, addr in (
        (socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1"),
        (socket.AF_INET6, socket.SOCK_DGRAM, "::1"),
        (socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1"),
    ):
        with socket.socket(family, kind) as s:
            s.bind((addr, 443))


def status_socket() -> str:
    path = os.path.join(os.environ["RUNTIME_DIRECTORY"], "status.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)
        s.listen()
        os.chmod(path, 0o660)
        os.unlink(path)
    return path


def journal_and_notify() -> None:
    from systemd import daemon, journal

    journal.send("rustvpn sandbox probe", RUSTVPN_INSTANCE="probe")
    daemon.notify("STATUS=probing")
    daemon.notify("WATCHDOG=1")


def main() -> int:
    results["env"] = {k: os.environ.get(k) for k in ("RUNTIME_DIRECTORY", "WATCHDOG_USEC", "NOTIFY_SOCKET")}
    results["env"]["argv"] = sys.argv[1:]
    with open("/proc/self/status") as f:
        status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    results["env"]["CapEff"] = status["CapEff"].strip()
    results["env"]["CapBnd"] = status["CapBnd"].strip()
    results["env"]["NoNewPrivs"] = status["NoNewPrivs"].strip()

    essential("imports", import_everything)
    essential("crypto_tls", crypto)
    essential("tun_netlink", tun_and_netlink)
    essential("bind_low_ports", low_ports)
    essential("status_socket", status_socket)
    essential("journal_notify", journal_and_notify)

    forbidden("write_etc", lambda: open("/etc/rustvpn/probe-write", "w").close())
    forbidden("write_proc_sys", lambda: os.close(os.open("/proc/sys/net/ipv4/ip_forward", os.O_WRONLY)))
    forbidden("read_home", lambda: os.listdir("/root"))
    # DevicePolicy=closed: only /dev/net/tun and the standard pseudo devices (null, zero, full,
    # random, urandom, tty, ptmx, pts) may be opened.  The test makes OTHER_DEVICE (/dev/fuse's
    # numbers, which needs no capability to open) so that the device cgroup alone decides.
    forbidden("open_other_device", lambda: os.close(os.open(OTHER_DEVICE, os.O_RDWR)))
    forbidden("packet_socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close())
    # (char 0:0 is a whiteout, which needs no capability: make a real /dev/null instead)
    forbidden(
        "mknod",
        lambda: os.mknod(os.path.join(os.environ["RUNTIME_DIRECTORY"], "n"), 0o600 | 0o020000, os.makedev(1, 3)),
    )
    forbidden("sethostname", lambda: socket.sethostname("probe"))

    ok = all(v == "ok" or not str(v).startswith("FAILED") for v in results["essential"].values())
    with contextlib.suppress(Exception):
        from systemd import daemon

        daemon.notify("READY=1")
    print("PROBE-RESULT " + json.dumps(results, sort_keys=True), flush=True)
    time.sleep(0.5)  # let systemd see READY=1 while this is still the main process
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
