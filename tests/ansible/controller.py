"""An Ansible controller for the role tests, and the bare host pair it deploys onto.

The hosts are the systemd-nspawn pair of ``tests/systemd/hosts.py`` booted *bare*
(``booted_hosts(preinstall=False, authorized_keys=...)``): Debian bookworm with python3,
python3-venv, systemd and sshd, but no rustvpn.  Root logs in with an ed25519 key made for this
test session.  The controller is ``ansible-playbook`` from the project's virtual environment, run
inside host a's network namespace (``ip netns exec``), from where 198.18.0.1 (host a itself) and
198.18.0.2 (host b) are both reachable.  It starts "fresh": its own HOME, ANSIBLE_HOME and local
temp directory, all inside the controller's work directory::

    with ansible_testbed() as bed:
        inventory = bed.controller.write_inventory("site", tunnels)      # the YAML inventory
        run = bed.controller.playbook(inventory)                         # ansible/site.yml
        assert run.rc == 0, run.describe()
        assert run.recap["alpha"]["changed"] == 0, run.describe()
        bed.host("beta").systemctl("is-active", "rustvpn@wanq.service")  # nsenter, not ssh

Everything the controller writes (key pair, inventories, wheelhouse, PKI directory, Ansible's
home and temp files, a log of every run) lives under ``Controller.workdir``, removed on exit
unless ``RUSTVPN_TEST_KEEP=1``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.systemd.hosts import REPO_ROOT, Host, HostPair, booted_hosts, missing_prerequisites

PLAYBOOK = REPO_ROOT / "ansible" / "site.yml"
ANSIBLE_DIR = REPO_ROOT / "ansible"
VENV_BIN = Path(sys.executable).parent  # .venv/bin when the tests run from the project venv
CONTROLLER_PATH = f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Inventory name -> which host of the pair it is.  alpha is the client, beta the server.
INVENTORY_HOSTS = {"alpha": "a", "beta": "b"}

SSH_OPTIONS = (
    "-F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -o LogLevel=ERROR"
)


class ControllerError(RuntimeError):
    """Setting up the controller or reaching the hosts from it failed; the message has the evidence."""


def missing_controller_tools() -> str | None:
    """Why the controller can't run here (a skip reason), or None."""
    missing = [str(VENV_BIN / tool) for tool in ("ansible-playbook", "ansible") if not (VENV_BIN / tool).exists()]
    missing += [tool for tool in ("ssh", "ssh-keygen") if shutil.which(tool) is None]
    if missing:
        return f"Ansible tests need {', '.join(missing)} (run: bash tests/bootstrap.sh --test)"
    return None


# ---------------------------------------------------------------------------------------------
# Results of controller commands


_RECAP_LINE = re.compile(r"^(?P<host>\S+)\s+:\s+(?P<counts>(?:\w+=\d+\s*)+)$")


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP of a default-callback run: host -> {"ok": n, "changed": n, "failed": n, ...}."""
    recap: dict[str, dict[str, int]] = {}
    _, marker, tail = output.rpartition("PLAY RECAP")
    if not marker:
        return recap
    for line in tail.splitlines()[1:]:
        match = _RECAP_LINE.match(line.strip())
        if match:
            counts = dict(item.split("=") for item in match.group("counts").split())
            recap[match.group("host")] = {key: int(value) for key, value in counts.items()}
    return recap


@dataclass
class ToolRun:
    """One controller command (ansible-playbook, ansible, ansible-lint, ...): exit code, output, time."""

    argv: list[str]
    rc: int
    output: str  # stdout then stderr
    seconds: float
    log_path: Path | None = None

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        return parse_recap(self.output)

    def count(self, key: str) -> dict[str, int]:
        """One recap column for every host, e.g. ``run.count("changed") == {"alpha": 0, "beta": 0}``."""
        return {host: counts.get(key, 0) for host, counts in self.recap.items()}

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.output.rstrip().splitlines()[-lines:])

    def describe(self, lines: int = 80) -> str:
        """For assertion messages: the command, exit code, time and the last lines of output."""
        where = f" (full log: {self.log_path})" if self.log_path else ""
        return (
            f"\n$ {shlex.join(self.argv)}\nexit {self.rc} after {self.seconds:.1f} s{where}; "
            f"last {lines} lines:\n{self.tail(lines)}"
        )


# ---------------------------------------------------------------------------------------------
# Inventory


def inventory_document(
    tunnels: Sequence[Mapping[str, Any]],
    private_key: Path | str,
    addresses: Mapping[str, str] | None = None,
    extra_vars: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The YAML inventory of the role's contract: group ``rustvpn`` with alpha and beta, and
    ``rustvpn_tunnels`` plus the connection settings under ``all.vars``."""
    addresses = addresses or {"alpha": "198.18.0.1", "beta": "198.18.0.2"}
    return {
        "all": {
            "children": {
                "rustvpn": {"hosts": {name: {"ansible_host": address} for name, address in addresses.items()}},
            },
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(private_key),
                "ansible_ssh_common_args": SSH_OPTIONS,
                "ansible_python_interpreter": "/usr/bin/python3",
                **dict(extra_vars or {}),
                "rustvpn_tunnels": [dict(tunnel) for tunnel in tunnels],
            },
        }
    }


# ---------------------------------------------------------------------------------------------
# The controller


@dataclass
class Controller:
    """ansible-playbook and friends from the project venv, with a fresh home under ``workdir``.

    ``netns`` is the network namespace commands run in (None: the outer machine, enough for the
    static checks).  ``private_key`` is the SSH key the inventories name.  ``wheelhouse`` and
    ``pki_dir`` are passed to every playbook run as ``rustvpn_wheelhouse`` / ``rustvpn_pki_dir``.
    """

    workdir: Path
    netns: str | None = None
    private_key: Path | None = None
    wheelhouse: Path | None = None
    log: Callable[[str], None] = print
    runs: list[ToolRun] = field(default_factory=list)

    @property
    def pki_dir(self) -> Path:
        return self.workdir / "pki"

    @property
    def home(self) -> Path:
        return self.workdir / "home"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    def env(self) -> dict[str, str]:
        """A clean environment: nothing inherited from the outer ANSIBLE_* settings or ~/.ansible."""
        for directory in (self.home, self.home / "ansible", self.home / "tmp", self.logs):
            directory.mkdir(parents=True, exist_ok=True)
        return {
            "PATH": CONTROLLER_PATH,
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TERM": "dumb",
            "TMPDIR": str(self.home / "tmp"),
            "ANSIBLE_HOME": str(self.home / "ansible"),
            "ANSIBLE_LOCAL_TEMP": str(self.home / "ansible" / "tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_CALLBACK_RESULT_FORMAT": "yaml",
            "XDG_CACHE_HOME": str(self.home / "cache"),
            "XDG_CONFIG_HOME": str(self.home / "config"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def run(self, argv: Sequence[str | Path], label: str, timeout: float = 900, netns: bool = True) -> ToolRun:
        """Run a controller command from the repository root (in ``self.netns`` when ``netns``)."""
        args = [str(arg) for arg in argv]
        full = ["ip", "netns", "exec", self.netns, *args] if netns and self.netns else args
        started = time.monotonic()
        try:
            proc = subprocess.run(
                full, cwd=REPO_ROOT, env=self.env(), capture_output=True, text=True, timeout=timeout,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
            rc, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
            rc, output = -1, f"{out}{err}\n[timed out after {timeout:.0f} s]"
        seconds = time.monotonic() - started
        log_path = self.logs / f"{len(self.runs) + 1:02d}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', label)}.log"
        log_path.write_text(f"$ {shlex.join(full)}\n# exit {rc} after {seconds:.1f} s\n{output}")
        result = ToolRun(args, rc, output, seconds, log_path)
        self.runs.append(result)
        self.log(f"controller: {label}: exit {rc} in {seconds:.1f} s")
        return result

    def write_inventory(
        self, name: str, tunnels: Sequence[Mapping[str, Any]], extra_vars: Mapping[str, Any] | None = None
    ) -> Path:
        """Write ``inventories/NAME.yml`` for ``tunnels``; returns its path."""
        path = self.workdir / "inventories" / f"{name}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        key = self.private_key or self.workdir / "no-key"
        path.write_text(yaml.safe_dump(inventory_document(tunnels, key, extra_vars=extra_vars), sort_keys=False))
        return path

    def playbook_extra_vars(self) -> list[str]:
        args = ["-e", f"rustvpn_pki_dir={self.pki_dir}"]
        if self.wheelhouse is not None:
            args[:0] = ["-e", f"rustvpn_wheelhouse={self.wheelhouse}"]
        return args

    def playbook(
        self, inventory: Path, *args: str, label: str = "playbook", playbook: Path = PLAYBOOK, timeout: float = 900
    ) -> ToolRun:
        """``ansible-playbook -i INVENTORY PLAYBOOK -e rustvpn_wheelhouse=.. -e rustvpn_pki_dir=.. ARGS``."""
        argv: list[str | Path] = [
            VENV_BIN / "ansible-playbook",
            "-i",
            inventory,
            playbook,
            *self.playbook_extra_vars(),
            *args,
        ]
        return self.run(argv, label, timeout=timeout)

    def adhoc(self, inventory: Path, pattern: str, module: str, module_args: str | None = None) -> ToolRun:
        """``ansible -i INVENTORY PATTERN -m MODULE [-a ARGS]``."""
        argv: list[str | Path] = [VENV_BIN / "ansible", "-i", inventory, pattern, "-m", module]
        if module_args is not None:
            argv += ["-a", module_args]
        return self.run(argv, f"ansible-{module}", timeout=120)

    def ssh(self, address: str, command: str, timeout: float = 30) -> ToolRun:
        """Plain ``ssh -i KEY root@ADDRESS COMMAND`` from the controller's namespace."""
        if self.private_key is None:
            raise ControllerError("this controller has no SSH key")
        argv = ["ssh", *shlex.split(SSH_OPTIONS), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                "-i", str(self.private_key), f"root@{address}", command]  # fmt: skip
        return self.run(argv, f"ssh-{address}", timeout=timeout)

    def close(self) -> None:
        """Stop the SSH connection masters Ansible left behind (ControlPersist), by their sockets."""
        control_dir = self.home / "ansible" / "cp"
        if not control_dir.is_dir():
            return
        for socket in control_dir.iterdir():
            subprocess.run(
                ["ssh", "-F", "/dev/null", "-o", f"ControlPath={socket}", "-O", "exit", "controller-cleanup"],
                capture_output=True, timeout=10, check=False, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def produced_files(self) -> Iterator[Path]:
        """Every regular file under the work directory (key pair, inventories, wheelhouse, PKI,
        Ansible's home and temp, run logs): where secrets must not show up."""
        for path in sorted(self.workdir.rglob("*")):
            if path.is_file() and not path.is_symlink():
                yield path


# ---------------------------------------------------------------------------------------------
# The test bed: bare host pair + controller


@dataclass
class AnsibleTestbed:
    """The booted bare pair and the controller that reaches it.  ``host("alpha")`` is host a."""

    hosts: HostPair
    controller: Controller
    public_key: str

    def host(self, inventory_name: str) -> Host:
        return self.hosts.a if INVENTORY_HOSTS[inventory_name] == "a" else self.hosts.b

    def inventory_hosts(self) -> Iterator[tuple[str, Host]]:
        for name in INVENTORY_HOSTS:
            yield name, self.host(name)


def missing_testbed_prerequisites() -> str | None:
    return missing_prerequisites() or missing_controller_tools()


def make_key_pair(directory: Path) -> tuple[Path, str]:
    """An ed25519 key pair without passphrase in ``directory``; returns (private key, public key line)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = directory / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rustvpn-ansible-test", "-f", str(key)],
        check=True, capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return key, key.with_suffix(".pub").read_text().strip()


def _wait_for_ssh(bed: AnsibleTestbed, timeout: float = 60) -> None:
    """sshd active on both hosts, and ``ssh root@ADDRESS true`` works from the controller's namespace."""
    for _, host in bed.inventory_hosts():
        host.wait_until(lambda h=host: h.is_active("ssh.service"), timeout=timeout, what="ssh.service active")  # type: ignore[misc]
    deadline = time.monotonic() + timeout
    for _, host in bed.inventory_hosts():
        while True:
            result = bed.controller.ssh(host.address4, "true", timeout=20)
            if result.rc == 0:
                break
            if time.monotonic() > deadline:
                raise ControllerError(
                    f"cannot ssh to root@{host.address4} from netns {bed.controller.netns}:{result.describe()}\n"
                    f"--- sshd journal on host {host.name}:\n{host.journal('ssh.service')[-3000:]}"
                )
            time.sleep(0.5)


@contextlib.contextmanager
def ansible_testbed(log: Callable[[str], None] = print) -> Iterator[AnsibleTestbed]:
    """Key pair, wheelhouse and a bare booted pair with that key authorized; yields the test bed.

    The wheelhouse (``pip wheel`` of the working tree, as an operator would build it on the
    controller) is built while the hosts boot.  Everything is torn down on exit, also on failure.
    """
    reason = missing_testbed_prerequisites()
    if reason:
        raise ControllerError(reason)
    workdir = Path(tempfile.mkdtemp(prefix="rustvpn-ansible-", dir="/var/tmp"))
    wheel_build: subprocess.Popen[str] | None = None
    try:
        started = time.monotonic()
        key, public_key = make_key_pair(workdir / "ssh")
        wheelhouse = workdir / "wheelhouse"
        wheel_log = workdir / "wheelhouse.log"
        with open(wheel_log, "w") as wheel_out:
            wheel_build = subprocess.Popen(
                [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheelhouse), str(REPO_ROOT)],
                stdout=wheel_out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            )  # fmt: skip
        with booted_hosts(log=log, preinstall=False, authorized_keys=public_key, kind="an") as pair:
            try:
                rc = wheel_build.wait(timeout=900)
            except subprocess.TimeoutExpired:
                raise ControllerError("pip wheel took more than 900 s") from None
            if rc != 0:
                raise ControllerError(f"pip wheel exited {rc}:\n{wheel_log.read_text()[-4000:]}")
            controller = Controller(workdir, netns=pair.a.netns, private_key=key, wheelhouse=wheelhouse, log=log)
            try:
                bed = AnsibleTestbed(pair, controller, public_key)
                _wait_for_ssh(bed)
                log(f"ansible testbed: ready in {time.monotonic() - started:.1f} s (controller in {pair.a.netns})")
                yield bed
            finally:
                controller.close()  # before the hosts go away
    finally:
        if wheel_build is not None and wheel_build.poll() is None:
            wheel_build.kill()
            wheel_build.wait()
        if os.environ.get("RUSTVPN_TEST_KEEP") == "1":
            log(f"ansible testbed: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
