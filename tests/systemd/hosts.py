"""Two real systemd hosts on one machine, for testing the unit file and the daemon under systemd.

Each host is a Debian bookworm root filesystem booted with ``systemd-nspawn -b`` inside its own
network namespace (the recipe in /work/shared/TESTBED.md): systemd is PID 1, journald runs, and
rustvpn is installed in a virtual environment at /opt/rustvpn (from wheels built on this machine
from the working tree) with ``systemd/rustvpn@.service`` in /etc/systemd/system/.

The two namespaces are joined by a veth pair, ``eth0`` on both sides::

    host a  198.18.0.1/24  fd00:18::1/64   <--- veth --->   host b  198.18.0.2/24  fd00:18::2/64

Use it through the pytest fixtures in ``tests/systemd/conftest.py`` (``systemd_hosts`` for the
booted pair, shared by the session; ``hosts`` for the same pair reset after each test)::

    def test_something(hosts: HostPair) -> None:
        write_tunnel_config(hosts.b, "t0", "transport: quic\\nrole: server\\n...")
        hosts.b.systemctl("start", "rustvpn@t0.service")
        assert hosts.b.is_active("rustvpn@t0.service")
        print(hosts.b.journal("rustvpn@t0.service"))
        hosts.a.run("ping", "-c1", "-W2", "198.18.0.2")

Commands run inside a host with ``nsenter`` into its PID 1's namespaces (no ssh). Everything made
here (namespaces, nspawn processes, temporary root filesystems) is removed on ``close()``, also
after a failure; only the debootstrap cache (``ROOTFS_CACHE``) survives between runs.

The image also has openssh-server (ssh.service enabled, host keys made once in the image), so
``booted_hosts(preinstall=False, authorized_keys=...)`` gives the bare pair an operator would get
for the Ansible tests (tests/ansible): no rustvpn, but python3, python3-venv, systemd and sshd, with
root reachable by that key.

Environment knobs: ``RUSTVPN_TEST_ROOTFS_CACHE`` (cache directory, default
/var/tmp/rustvpn-test-rootfs), ``RUSTVPN_TEST_MIRROR`` (Debian mirror for debootstrap),
``RUSTVPN_TEST_KEEP=1`` (keep the per-run directory with the host logs after teardown).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT_FILE = REPO_ROOT / "systemd" / "rustvpn@.service"

SUITE = "bookworm"
MIRROR = os.environ.get("RUSTVPN_TEST_MIRROR", "http://deb.debian.org/debian")
ROOTFS_CACHE = Path(os.environ.get("RUSTVPN_TEST_ROOTFS_CACHE", "/var/tmp/rustvpn-test-rootfs"))
PACKAGES = ",".join(
    ("systemd", "systemd-sysv", "dbus", "iproute2", "iputils-ping", "python3", "python3-venv", "libsystemd0", "procps",
     "kmod", "openssh-server")
)  # fmt: skip
# The stamp file records how the cached root filesystem was made; a different recipe rebuilds it.
STAMP_NAME = ".rustvpn-rootfs-complete"
STAMP_TEXT = f"debootstrap --variant=minbase --include={PACKAGES} {SUITE}\nprepared: v3 (slim, ssh host keys)\n"

VENV = "/opt/rustvpn"  # where the unit's ExecStart= expects the package
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# name, IPv4/prefix, IPv6/prefix of the two hosts on the veth link (interface eth0 in both).
HOST_ADDRESSES = (("a", "198.18.0.1/24", "fd00:18::1/64"), ("b", "198.18.0.2/24", "fd00:18::2/64"))

REQUIRED_TOOLS = ("debootstrap", "systemd-nspawn", "nsenter", "ip")


class HostError(RuntimeError):
    """Building, booting or reaching a test host failed; the message carries the evidence."""


def _sh(*args: str, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command on the outer machine; raise HostError with its output if it fails."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kwargs)
    if proc.returncode != 0:
        raise HostError(f"{shlex.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc


def missing_prerequisites() -> str | None:
    """Why these hosts can't be made on this machine (a skip reason), or None if they can."""
    if os.geteuid() != 0:
        return "systemd host tests need root (network namespaces, systemd-nspawn)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"systemd host tests need {', '.join(missing)} (run tests/bootstrap.sh: systemd-container, debootstrap)"
    if not os.path.exists("/dev/net/tun"):
        return "systemd host tests need /dev/net/tun"
    return None


# ---------------------------------------------------------------------------------------------
# Root filesystem and wheels


def ensure_rootfs(cache: Path = ROOTFS_CACHE, log: Callable[[str], None] = print) -> Path:
    """The cached debootstrap root filesystem, built first if its completion stamp is missing.

    Builds into ``bookworm.partial`` and renames when done, so an interrupted build is never used.
    A lock file serialises concurrent test runs.
    """
    cache.mkdir(parents=True, exist_ok=True)
    rootfs = cache / SUITE
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = rootfs / STAMP_NAME
        if stamp.is_file() and stamp.read_text() == STAMP_TEXT:
            return rootfs
        partial = cache / f"{SUITE}.partial"
        for stale in (partial, rootfs):
            if stale.exists():
                shutil.rmtree(stale)
        started = time.monotonic()
        log(f"hosts: debootstrap {SUITE} into {partial} (about 1-2 minutes, cached afterwards)")
        cmd = ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, str(partial), MIRROR]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            raise HostError(f"{shlex.join(cmd)} exited {proc.returncode}:\n{tail}")
        _prepare_image(partial)
        (partial / STAMP_NAME).write_text(STAMP_TEXT)
        partial.rename(rootfs)
        log(f"hosts: debootstrap took {time.monotonic() - started:.0f} s")
        return rootfs


def _prepare_image(root: Path) -> None:
    """One-time changes to the cached image that make every boot faster and quieter."""
    # Each copy gets its own machine id on first boot.
    (root / "etc" / "machine-id").write_text("")
    with contextlib.suppress(FileNotFoundError):
        (root / "var" / "lib" / "dbus" / "machine-id").unlink()
    # No getty on the (read-only) console: nothing logs in there, and it would respawn forever.
    for unit in ("console-getty.service", "getty@tty1.service"):
        mask = root / "etc" / "systemd" / "system" / unit
        mask.parent.mkdir(parents=True, exist_ok=True)
        if not mask.is_symlink():
            mask.symlink_to("/dev/null")
    # The hosts have no network: apt's lists and caches, docs and translations only slow the copy
    # of the image per host (about half of its 313 MB and a quarter of its files).
    for junk in ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale"):
        directory = root / junk
        if directory.is_dir():
            shutil.rmtree(directory)
            directory.mkdir()
    # Keep apt from trying the network on timers.
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        with contextlib.suppress(FileNotFoundError):
            (root / "etc" / "systemd" / "system" / "timers.target.wants" / timer).unlink()
    # sshd refuses to start without host keys; openssh-server's postinst normally made them. The
    # copies of the image share them, which is fine for throwaway hosts on a private link.
    if not list((root / "etc" / "ssh").glob("ssh_host_*_key")):
        _nspawn_command(root, "ssh-keygen -A")


def authorize_root_key(root: Path, public_key: str) -> None:
    """Let ``public_key`` (one authorized_keys line) log in as root: /root/.ssh 0700, the file 0600."""
    ssh_dir = root / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ssh_dir.chmod(0o700)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(public_key.strip() + "\n")
    keys.chmod(0o600)
    for path in (ssh_dir, keys):
        os.chown(path, 0, 0)


def build_wheels(dest: Path, repo: Path = REPO_ROOT) -> Path:
    """``pip wheel`` the working tree and its dependencies into ``dest`` (cp311, as bookworm)."""
    dest.mkdir(parents=True, exist_ok=True)
    _sh(sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(dest), str(repo), timeout=900)
    return dest


def _nspawn_command(root: Path, command: str, timeout: float = 300) -> None:
    """Run ``sh -c command`` in ``root`` as a plain (not booted) container without network."""
    _sh(
        "systemd-nspawn", "-q", "-D", str(root), "--register=no", "--keep-unit", "--private-network",
        "--pipe", "--", "/bin/sh", "-ec", command, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def install_rustvpn(root: Path, wheels: Path) -> None:
    """Put the venv at /opt/rustvpn (from ``wheels``), the rustvpn CLI on PATH, and the unit in a root fs."""
    inside = root / "var" / "tmp" / "rustvpn-wheels"
    shutil.copytree(wheels, inside)
    _nspawn_command(
        root,
        f"python3 -m venv {VENV}\n"
        f"{VENV}/bin/pip install -q --no-index --find-links /var/tmp/rustvpn-wheels rustvpn\n"
        f"ln -sf {VENV}/bin/rustvpn /usr/local/bin/rustvpn\n"
        "mkdir -p -m 0755 /etc/rustvpn\n",
    )
    shutil.rmtree(inside)
    shutil.copy2(UNIT_FILE, root / "etc" / "systemd" / "system" / UNIT_FILE.name)


# ---------------------------------------------------------------------------------------------
# Hosts


@dataclass
class Host:
    """One booted systemd host.  Attributes are the facts tests need; methods run things inside.

    ``name`` is ``a`` or ``b`` (also the hostname, prefixed ``rustvpn-``), ``netns`` the network
    namespace on the outer machine, ``address4``/``address6`` its address on ``eth0`` (no prefix),
    ``root`` its root directory on the outer machine, ``log_path`` the console log of its boot.
    """

    name: str
    netns: str
    address4: str
    address6: str
    root: Path
    log_path: Path
    nspawn: subprocess.Popen[bytes] | None = None
    leader: int | None = None  # the container's PID 1, as seen from the outer machine

    # -- running commands ---------------------------------------------------------------------

    def run(
        self,
        *cmd: str,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the host (all of its namespaces, its root, a clean environment).

        Returns the CompletedProcess with text stdout/stderr.  ``check=True`` raises HostError
        (message: command, exit code, stdout and stderr) when it exits non-zero.  The process is
        not part of any unit; use ``systemd-run`` through this when a unit's context matters.
        """
        if self.leader is None:
            raise HostError(f"host {self.name} is not running")
        environment = {"PATH": HOST_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb", "SYSTEMD_PAGER": ""}
        environment.update(env or {})
        argv = [
            "nsenter", "--target", str(self.leader), "--mount", "--uts", "--ipc", "--net", "--pid",
            "--cgroup", "--root", "--wd=/", "--", "/usr/bin/env", "-i",
            *(f"{k}={v}" for k, v in environment.items()), *cmd,
        ]  # fmt: skip
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise HostError(
                f"[host {self.name}] {shlex.join(cmd)} exited {proc.returncode}\n"
                f"--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
            )
        return proc

    def sh(self, script: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a shell script (``sh -ec``) inside the host."""
        return self.run("/bin/sh", "-ec", script, check=check, timeout=timeout)

    def write_file(self, path: str, text: str | bytes, mode: int = 0o644) -> None:
        """Create or replace ``path`` inside the host (parent directories made, mode 0755)."""
        data = text.decode() if isinstance(text, bytes) else text
        self.run(
            "/bin/sh", "-ec", 'mkdir -p "$(dirname "$1")"; cat > "$1.tmp"; chmod "$2" "$1.tmp"; mv -f "$1.tmp" "$1"',
            "write_file", path, f"{mode:o}", input=data,
        )  # fmt: skip

    def read_file(self, path: str) -> str:
        """The text of ``path`` inside the host."""
        return self.run("cat", "--", path).stdout

    def remove(self, *paths: str) -> None:
        """``rm -rf`` paths inside the host."""
        self.run("rm", "-rf", "--", *paths)

    # -- systemd ------------------------------------------------------------------------------

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``systemctl --no-pager ARGS`` inside the host."""
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def daemon_reload(self) -> None:
        self.systemctl("daemon-reload")

    def is_active(self, unit: str) -> bool:
        return self.systemctl("is-active", "--quiet", unit, check=False).returncode == 0

    def unit_property(self, unit: str, prop: str) -> str:
        """One property of a unit (``systemctl show -P``), e.g. ``MainPID``, ``NRestarts``, ``StatusText``."""
        return self.systemctl("show", "-P", prop, unit).stdout.strip()

    def journal(self, unit: str | None = None, *args: str) -> str:
        """The journal (all of it, or of ``unit``) as text, ``-o short-precise``; extra args for journalctl."""
        cmd = ["journalctl", "--no-pager", "-q", "-o", "short-precise", *args]
        if unit is not None:
            cmd += ["-u", unit]
        return self.run(*cmd).stdout

    def install_dropin(self, unit: str, name: str, text: str) -> str:
        """Write /etc/systemd/system/UNIT.d/NAME.conf and daemon-reload; returns its path."""
        path = f"/etc/systemd/system/{unit}.d/{name}.conf"
        self.write_file(path, text)
        self.daemon_reload()
        return path

    def wait_until(self, condition: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
        """Poll ``condition`` every 0.2 s until it is true; HostError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise HostError(f"[host {self.name}] timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.2)

    def wait_system_running(self, timeout: float = 60) -> str:
        """Wait until ``systemctl is-system-running`` says running or degraded; returns which."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            if self.nspawn is not None and self.nspawn.poll() is not None:
                raise HostError(f"host {self.name}: systemd-nspawn exited {self.nspawn.returncode}\n{self.console()}")
            if self.leader is None:
                self.leader = _find_leader(self.nspawn.pid) if self.nspawn else None
            if self.leader is not None:
                proc = self.run("systemctl", "is-system-running", check=False, timeout=10)
                state = proc.stdout.strip()
                if state in ("running", "degraded"):
                    return state
            time.sleep(0.2)
        failed = self.systemctl("--failed", check=False).stdout if self.leader else ""
        raise HostError(
            f"host {self.name} did not finish booting in {timeout:.0f} s (state {state!r})\n{failed}\n{self.console()}"
        )

    def console(self, lines: int = 40) -> str:
        """The last lines of the host's console log (systemd's boot messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def reset_rustvpn_units(self) -> None:
        """Stop every rustvpn@ instance, forget failures and drop per-instance drop-ins."""
        self.systemctl("stop", "rustvpn@*.service", check=False)
        self.systemctl("reset-failed", "rustvpn@*.service", check=False)
        self.sh("rm -rf /etc/systemd/system/rustvpn@?*.service.d")
        self.daemon_reload()


def write_tunnel_config(host: Host, name: str, config: str | Mapping[str, Any]) -> str:
    """Write /etc/rustvpn/NAME.yaml (mode 0600) on ``host`` for the unit ``rustvpn@NAME.service``.

    ``config`` is YAML text or a mapping dumped as YAML.  Keys the daemon reads: transport
    (quic|tcp), role (server|client), device, bind_address, port, control_bind_address,
    control_port, data_bind_address, data_port, server, ca_bundle, cert, key, peer_cn,
    stream_count, mtu, ipv4, ipv6, routes (list), build_id, log_level, status_socket.
    Returns the path inside the host.
    """
    if not isinstance(config, str):
        import yaml

        config = yaml.safe_dump(dict(config), sort_keys=False)
    path = f"/etc/rustvpn/{name}.yaml"
    host.write_file(path, config, mode=0o600)
    return path


def _find_leader(nspawn_pid: int) -> int | None:
    """The container's PID 1: a child of systemd-nspawn whose innermost PID is 1."""
    try:
        children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children").read_text().split()
    except FileNotFoundError:
        return None
    for child in children:
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except FileNotFoundError:
            continue
        match = re.search(r"^NSpid:\s+(.*)$", status, re.MULTILINE)
        if match and len(match.group(1).split()) > 1 and match.group(1).split()[-1] == "1":
            return int(child)
    return None


@dataclass
class HostPair:
    """The two booted hosts, joined by veth: ``a`` (198.18.0.1) and ``b`` (198.18.0.2)."""

    a: Host
    b: Host
    workdir: Path

    def __iter__(self) -> Iterator[Host]:
        return iter((self.a, self.b))


def _namespace_prefix(kind: str = "sd") -> str:
    """``rv`` + a two-letter kind (so two pairs can live in one test session) + this process's pid."""
    if not re.fullmatch(r"[a-z]{2}", kind):
        raise ValueError(f"kind must be two lowercase letters, not {kind!r}")
    return f"rv{kind}{os.getpid()}"


def _remove_stale_namespaces() -> None:
    """Delete namespaces left by earlier runs whose test process is gone."""
    names = _sh("ip", "netns", "list").stdout.split()
    for name in names:
        match = re.fullmatch(r"rv[a-z]{2}(\d+)[ab]", name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _setup_network(prefix: str) -> None:
    with contextlib.suppress(HostError):
        _remove_stale_namespaces()
    ns_a, ns_b = f"{prefix}a", f"{prefix}b"
    _sh("ip", "netns", "add", ns_a)
    _sh("ip", "netns", "add", ns_b)
    # Both ends are created directly in their namespaces, so no name is ever used outside.
    _sh("ip", "link", "add", "eth0", "netns", ns_a, "type", "veth", "peer", "name", "eth0", "netns", ns_b)
    for (_, addr4, addr6), ns in zip(HOST_ADDRESSES, (ns_a, ns_b), strict=True):
        _sh("ip", "-n", ns, "addr", "add", addr4, "dev", "eth0")
        _sh("ip", "-n", ns, "addr", "add", addr6, "dev", "eth0", "nodad")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh("ip", "-n", ns, "link", "set", "eth0", "up")


def _boot(host: Host) -> None:
    """Start systemd-nspawn -b for ``host`` (returns at once; see Host.wait_system_running).

    Beyond TESTBED.md's recipe: the container gets a pure cgroup v2 hierarchy
    (SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1) and the bpf() system call, so that its systemd can attach
    BPF device programs and DevicePolicy=/DeviceAllow= are really enforced.  With the outer
    machine's hybrid hierarchy the container's v1 devices controller is read-only and systemd
    silently skips device access control.
    """
    log = open(host.log_path, "wb")  # noqa: SIM115 - handed to the child, closed right after
    try:
        host.nspawn = subprocess.Popen(
            [
                "systemd-nspawn", "-D", str(host.root), "-M", f"rustvpn-{host.netns}", "-b",
                "--register=no", "--keep-unit", f"--network-namespace-path=/run/netns/{host.netns}",
                "--capability=CAP_NET_ADMIN", "--bind=/dev/net/tun", f"--hostname=rustvpn-{host.name}",
                "--system-call-filter=bpf",
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1"),
        )  # fmt: skip
    finally:
        log.close()


def _stop(host: Host, timeout: float = 30) -> None:
    """SIGTERM systemd-nspawn (a clean shutdown inside), SIGKILL it and its PID 1 if it hangs."""
    proc = host.nspawn
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    # Killing a PID namespace's init kills everything in it; normally it is already gone.
    if host.leader is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(host.leader, signal.SIGKILL)
    host.nspawn = None
    host.leader = None


@contextlib.contextmanager
def booted_hosts(
    log: Callable[[str], None] = print,
    *,
    preinstall: bool = True,
    authorized_keys: str | None = None,
    kind: str = "sd",
) -> Iterator[HostPair]:
    """Build (or reuse) the image, install rustvpn, boot hosts a and b; tear all down on exit.

    ``preinstall=False`` leaves rustvpn out (no wheels, no venv, no unit: a bare host for a
    deployment tool to install onto).  ``authorized_keys`` (a public key line) is put in
    /root/.ssh/authorized_keys of both hosts before boot.  ``kind`` (two letters) names the
    namespaces ``rv<kind><pid>a/b``, so pairs of different kinds can exist side by side.
    Timings of each step are reported through ``log``.
    """
    t0 = time.monotonic()
    image = ensure_rootfs(log=log)
    t_image = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix=f"rustvpn-systemd-{kind}-", dir="/var/tmp"))
    prefix = _namespace_prefix(kind)
    hosts: list[Host] = []
    try:
        wheels = build_wheels(workdir / "wheels") if preinstall else None
        t_wheels = time.monotonic()
        first = workdir / "root-a"
        _sh("cp", "-a", "--reflink=auto", str(image), str(first), timeout=300)
        if wheels is not None:
            install_rustvpn(first, wheels)
        if authorized_keys is not None:
            authorize_root_key(first, authorized_keys)
        _sh("cp", "-a", "--reflink=auto", str(first), str(workdir / "root-b"), timeout=300)
        t_install = time.monotonic()
        _setup_network(prefix)
        for name, addr4, addr6 in HOST_ADDRESSES:
            root = workdir / f"root-{name}"
            (root / "etc" / "hostname").write_text(f"rustvpn-{name}\n")
            hosts.append(
                Host(name, f"{prefix}{name}", addr4.split("/")[0], addr6.split("/")[0], root, workdir / f"{name}.log")
            )
        for host in hosts:
            _boot(host)
        states = [host.wait_system_running() for host in hosts]
        t_boot = time.monotonic()
        log(
            f"hosts: image {t_image - t0:.1f} s, wheels {t_wheels - t_image:.1f} s, "
            f"copy+install {t_install - t_wheels:.1f} s, boot {t_boot - t_install:.1f} s ({'/'.join(states)})"
        )
        yield HostPair(hosts[0], hosts[1], workdir)
    finally:
        for host in hosts:
            try:
                _stop(host)
            except Exception as exc:  # keep tearing the rest down
                log(f"hosts: stopping {host.name} failed: {exc}")
        for suffix in ("a", "b"):
            subprocess.run(["ip", "netns", "del", f"{prefix}{suffix}"], capture_output=True, check=False)
        if os.environ.get("RUSTVPN_TEST_KEEP") == "1":
            log(f"hosts: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
