"""ansible/site.yml end to end: from a fresh controller onto two bare systemd hosts.

alpha (198.18.0.1) is the client and beta (198.18.0.2) the server of a QUIC tunnel ``wanq`` and a
TCP tunnel ``want``.  The tests run in file order and build on each other:

1. static checks (no hosts): --syntax-check, ansible-lint (production profile), yamllint;
2. the controller reaches both hosts (ssh, ``ansible -m ping``);
3. bad inventories (MTU 9000, a malformed CIDR) fail fast with a message naming tunnel and key,
   and leave the hosts untouched;
4. the first run brings both tunnels up (the verify play passes; ping, status, journal checked here);
5. private keys on the hosts are 0600 root and their bytes are nowhere on the controller;
6. a second run changes nothing;
7. changing wanq's MTU restarts rustvpn@wanq only;
8. stop/start of rustvpn@want on beta: the tunnel returns.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ansible.controller import ANSIBLE_DIR, PLAYBOOK, VENV_BIN, AnsibleTestbed, Controller, ToolRun
from tests.systemd.hosts import Host

pytestmark = [pytest.mark.ansible]

# The inventory of the role's contract (see the issue): beta serves, alpha connects.
TUNNELS: list[dict[str, Any]] = [
    {"name": "wanq", "transport": "quic", "server": "beta", "client": "alpha", "port": 1105,
     "server_ipv4": "198.19.10.1/24", "client_ipv4": "198.19.10.2/24",
     "server_ipv6": "fd00:10::1/64", "client_ipv6": "fd00:10::2/64",
     "client_routes": ["192.0.2.0/25"], "stream_count": 5, "mtu": 1500},
    {"name": "want", "transport": "tcp", "server": "beta", "client": "alpha", "control_port": 1107, "data_port": 1108,
     "server_ipv4": "198.19.11.1/24", "client_ipv4": "198.19.11.2/24", "stream_count": 3, "mtu": 1400},
]  # fmt: skip
NAMES = [tunnel["name"] for tunnel in TUNNELS]

# What earlier steps left for later ones (the tests share one deployment, in file order).
STATE: dict[str, Any] = {}


def tunnels_with(name: str, **changes: Any) -> list[dict[str, Any]]:
    tunnels = copy.deepcopy(TUNNELS)
    for tunnel in tunnels:
        if tunnel["name"] == name:
            tunnel.update(changes)
    return tunnels


def address(cidr: str) -> str:
    return cidr.split("/")[0]


def ping(host: Host, target: str) -> bool:
    return host.run("ping", "-c1", "-W2", target, check=False).returncode == 0


def unit(name: str) -> str:
    return f"rustvpn@{name}.service"


def rustvpn_binary(host: Host, name: str) -> str:
    """The rustvpn executable the unit runs (the role decides where the venv lives)."""
    exec_start = host.unit_property(unit(name), "ExecStart")
    match = re.search(r"path=(\S+)", exec_start)
    assert match, f"no ExecStart path for {unit(name)} on host {host.name}: {exec_start!r}"
    return match.group(1)


def status_json(host: Host, name: str) -> dict[str, Any]:
    proc = host.run(rustvpn_binary(host, name), "status", name, "--json", check=False)
    assert proc.returncode == 0, f"[{host.name}] rustvpn status {name} --json exited {proc.returncode}: {proc.stderr}"
    return dict(json.loads(proc.stdout))


def main_pids(bed: AnsibleTestbed) -> dict[tuple[str, str], str]:
    return {(host, name): bed.host(host).unit_property(unit(name), "MainPID") for host in ("alpha", "beta")
            for name in NAMES}  # fmt: skip


def host_footprint(host: Host) -> str:
    """What a deployment would have left on a host; empty on an untouched bare host."""
    proc = host.sh(
        "ls -d /opt/rustvpn /etc/rustvpn /etc/systemd/system/rustvpn@.service /usr/local/bin/rustvpn 2>/dev/null"
        " || true"
    )
    return proc.stdout.strip()


def wait_tunnels_up(bed: AnsibleTestbed, timeout: float = 30) -> None:
    """Pings across both tunnels from alpha (IPv4, and IPv6 for wanq) and back from beta."""
    alpha, beta = bed.host("alpha"), bed.host("beta")
    for tunnel in TUNNELS:
        checks = [(alpha, address(tunnel["server_ipv4"]), timeout), (beta, address(tunnel["client_ipv4"]), 10)]
        if "server_ipv6" in tunnel:
            checks.append((alpha, address(tunnel["server_ipv6"]), 10))
        for host, target, limit in checks:
            host.wait_until(
                lambda h=host, t=target: ping(h, t),  # type: ignore[misc]
                timeout=limit, what=f"ping {target} across {tunnel['name']}",
            )  # fmt: skip


def require(step: str) -> Any:
    if step not in STATE:
        pytest.skip(f"needs the earlier step {step!r}, which did not pass")
    return STATE[step]


def assert_ok(run: ToolRun, what: str) -> None:
    if run.rc != 0:
        pytest.fail(f"{what} failed:{run.describe()}")


def ssh_logins(host: Host) -> int:
    """How many SSH logins the host's sshd has accepted since boot."""
    return host.journal("ssh.service").count("Accepted publickey")


# ---------------------------------------------------------------------------------------------
# 1. Static checks: no hosts needed


def test_syntax_check_and_verify_tag(static_controller: Controller) -> None:
    assert PLAYBOOK.is_file(), f"{PLAYBOOK} does not exist"
    inventory = static_controller.write_inventory("syntax", TUNNELS)
    run = static_controller.playbook(inventory, "--syntax-check", label="syntax-check")
    assert_ok(run, "ansible-playbook --syntax-check")
    tags = static_controller.playbook(inventory, "--list-tags", label="list-tags")
    assert_ok(tags, "ansible-playbook --list-tags")
    assert re.search(r"\bverify\b", tags.output), f"site.yml has no `verify` tag:{tags.describe()}"


def test_ansible_lint_production(static_controller: Controller) -> None:
    # --offline: no galaxy downloads; the production profile whatever the repo's .ansible-lint says.
    run = static_controller.run(
        [VENV_BIN / "ansible-lint", "--offline", "--profile=production", "--nocolor", ANSIBLE_DIR.name],
        "ansible-lint", timeout=600,
    )  # fmt: skip
    assert_ok(run, "ansible-lint --profile=production ansible/")


def test_yamllint(static_controller: Controller) -> None:
    run = static_controller.run([VENV_BIN / "yamllint", "-f", "parsable", ANSIBLE_DIR.name], "yamllint", timeout=120)
    assert_ok(run, "yamllint ansible/")


# ---------------------------------------------------------------------------------------------
# 2. The controller reaches the bare hosts


@pytest.mark.root
@pytest.mark.systemd
def test_controller_reaches_bare_hosts(ansible_bed: AnsibleTestbed) -> None:
    controller = ansible_bed.controller
    for name, host in ansible_bed.inventory_hosts():
        assert host_footprint(host) == "", f"host {name} is not bare: {host_footprint(host)}"
        logins = ssh_logins(host)
        result = controller.ssh(host.address4, "hostname")
        assert_ok(result, f"ssh root@{host.address4}")
        assert result.output.strip() == f"rustvpn-{host.name}"
        # The login shows in sshd's journal (what the bad-inventory tests count).
        host.wait_until(lambda h=host, n=logins: ssh_logins(h) > n, timeout=10, what="sshd logging the login")  # type: ignore[misc]
    inventory = controller.write_inventory("smoke", TUNNELS)
    pong = controller.adhoc(inventory, "rustvpn", "ansible.builtin.ping")
    assert_ok(pong, "ansible -m ping")
    assert len(re.findall(r"^(alpha|beta) \| SUCCESS", pong.output, re.MULTILINE)) == 2, pong.describe()
    STATE["reachable"] = True


# ---------------------------------------------------------------------------------------------
# 3. Bad inventories are refused before any host is touched

BAD_INVENTORIES = {
    "mtu-9000": (tunnels_with("wanq", mtu=9000), "wanq", "mtu", "9000"),
    "malformed-cidr": (tunnels_with("wanq", server_ipv4="198.19.10.300/24"), "wanq", "server_ipv4", "198.19.10.300"),
}


@pytest.mark.root
@pytest.mark.systemd
@pytest.mark.parametrize("case", list(BAD_INVENTORIES))
def test_bad_inventory_fails_before_touching_hosts(ansible_bed: AnsibleTestbed, case: str) -> None:
    require("reachable")
    if "first_run" in STATE:
        pytest.skip("must run before the first deployment")
    tunnels, tunnel, key, value = BAD_INVENTORIES[case]
    controller = ansible_bed.controller
    inventory = controller.write_inventory(f"bad-{case}", tunnels)
    logins = {name: ssh_logins(host) for name, host in ansible_bed.inventory_hosts()}
    run = controller.playbook(inventory, label=f"bad-{case}")
    assert run.rc != 0, f"the playbook accepted a bad inventory ({key}: {value}):{run.describe()}"
    assert run.rc != -1, f"the playbook hung on a bad inventory:{run.describe()}"
    assert run.seconds < 120, f"rejecting a bad inventory took {run.seconds:.0f} s:{run.describe()}"
    # One line of the failure names the tunnel and the key, and shows the offending value.
    naming = [line for line in run.output.splitlines() if tunnel in line and key in line and value in line]
    assert naming, f"no line names tunnel {tunnel!r}, key {key!r} and value {value!r}:{run.describe()}"
    for counts in run.recap.values():
        assert counts.get("changed", 0) == 0, f"a rejected run changed something:{run.describe()}"
    for name, host in ansible_bed.inventory_hosts():
        assert host_footprint(host) == "", f"host {name} was touched by a rejected run: {host_footprint(host)}"
        # Not even connected to: the checks run on the controller.
        assert ssh_logins(host) == logins[name], f"a rejected run logged in to {name}:{run.describe()}"


# ---------------------------------------------------------------------------------------------
# 4. First run: both tunnels up


@pytest.mark.root
@pytest.mark.systemd
def test_first_run_brings_both_tunnels_up(ansible_bed: AnsibleTestbed) -> None:
    require("reachable")
    controller = ansible_bed.controller
    inventory = controller.write_inventory("site", TUNNELS)
    run = controller.playbook(inventory, label="first-run")
    assert_ok(run, "the first run")
    assert set(run.recap) >= {"alpha", "beta"}, f"no recap for alpha and beta:{run.describe()}"
    for host_name, counts in run.recap.items():
        assert counts.get("failed", 0) == 0 and counts.get("unreachable", 0) == 0, (
            f"{host_name}: {counts}" + run.describe()
        )
    assert all(run.count("changed")[name] > 0 for name in ("alpha", "beta")), f"nothing changed?{run.describe()}"
    STATE["inventory"] = inventory
    STATE["first_run"] = run

    # The verify play on its own passes, and verifying changes nothing.
    verify = controller.playbook(inventory, "--tags", "verify", label="verify-only")
    assert_ok(verify, "ansible-playbook --tags verify")
    assert set(verify.count("changed").values()) <= {0}, f"verify changed something:{verify.describe()}"

    # Our own look from inside the hosts.
    alpha, beta = ansible_bed.host("alpha"), ansible_bed.host("beta")
    for host in (alpha, beta):
        for name in NAMES:
            assert host.is_active(unit(name)), f"{unit(name)} not active on {host.name}:\n{host.journal(unit(name))}"
    wait_tunnels_up(ansible_bed)
    for name in NAMES:
        for host in (alpha, beta):
            status = status_json(host, name)
            assert status.get("state") == "connected", f"[{host.name}] {name}: {status}"
            journal = host.journal(unit(name))
            assert "session up" in journal, f"[{host.name}] journalctl -u {unit(name)}:\n{journal}"
    wanq_client = status_json(alpha, "wanq")
    assert len(wanq_client.get("streams", [])) == 5, wanq_client
    # The client route of wanq goes into the tunnel on alpha.
    routes = alpha.run("ip", "-4", "route", "show", "192.0.2.0/25").stdout
    assert "192.0.2.0/25" in routes, routes
    STATE["deployed"] = True


# ---------------------------------------------------------------------------------------------
# 5. Key hygiene


def pem_needles(pem: str) -> list[bytes]:
    """Byte strings that would betray a PEM private key: each base64 line of its body, the body
    joined into one line, and the DER bytes themselves."""
    body = [line.strip() for line in pem.splitlines() if line.strip() and not line.startswith("-----")]
    joined = "".join(body)
    needles = [line.encode() for line in body if len(line) >= 32] + [joined.encode()]
    with_der = [*needles, base64.b64decode(joined)]
    return [needle for needle in with_der if len(needle) >= 32]


def test_key_needles_find_a_key_in_any_form(tmp_path: Path) -> None:
    """The leak check below finds a PEM key as PEM, JSON-escaped, one-line base64 or DER, and
    nothing of an unrelated key."""
    from rustvpn.pki import write_demo_set

    paths = write_demo_set(tmp_path, ["192.0.2.1"])
    pem, other = paths["client_key"].read_text(), paths["server_key"].read_text()
    body = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
    forms = [pem.encode(), json.dumps({"content": pem}).encode(), body.encode(), base64.b64decode(body)]
    for form in forms:
        haystack = b"prefix " + form + b" suffix"
        assert any(needle in haystack for needle in pem_needles(pem)), form[:40]
        assert not any(needle in haystack for needle in pem_needles(other))


@pytest.mark.root
@pytest.mark.systemd
def test_private_keys_are_private_and_never_on_the_controller(
    ansible_bed: AnsibleTestbed, tmp_path_factory: pytest.TempPathFactory
) -> None:
    require("deployed")
    keys: dict[str, str] = {}
    for host_name, host in ansible_bed.inventory_hosts():
        for name in NAMES:
            listing = host.sh(f"find /etc/rustvpn/{name} -maxdepth 1 -name '*.key' -printf '%m %u %g %p\\n'").stdout
            lines = listing.split("\n")[:-1]
            assert lines, f"[{host_name}] no /etc/rustvpn/{name}/*.key:\n{host.sh('ls -lR /etc/rustvpn').stdout}"
            for line in lines:
                mode, user, group, key_path = line.split(" ", 3)
                assert (mode, user) == ("600", "root"), f"[{host_name}] {key_path}: mode {mode} owner {user}:{group}"
                keys[f"{host_name}:{key_path}"] = host.read_file(key_path)
    # None of these keys may appear in what the controller side holds after the runs.
    places = [ansible_bed.controller.workdir, ANSIBLE_DIR, tmp_path_factory.getbasetemp()]
    needles = {where: pem_needles(pem) for where, pem in keys.items()}
    leaks: list[str] = []
    scanned = 0
    for place in places:
        for path in sorted(Path(place).rglob("*")):
            if not path.is_file() or path.is_symlink():
                continue
            data = path.read_bytes()
            scanned += 1
            leaks += [
                f"{where} in {path}" for where, candidates in needles.items() if any(n in data for n in candidates)
            ]
    for run in ansible_bed.controller.runs:  # the output as it was captured, too
        leaks += [
            f"{where} in the output of {run.argv[0]}"
            for where, candidates in needles.items()
            if any(n in run.output.encode() for n in candidates)
        ]
    assert scanned > 0
    assert not leaks, "host private key material found on the controller:\n" + "\n".join(leaks)


# ---------------------------------------------------------------------------------------------
# 6. Idempotence


@pytest.mark.root
@pytest.mark.systemd
def test_second_run_changes_nothing(ansible_bed: AnsibleTestbed) -> None:
    require("deployed")
    run = ansible_bed.controller.playbook(STATE["inventory"], label="second-run")
    assert_ok(run, "the second run")
    assert set(run.recap) >= {"alpha", "beta"}, f"no recap for alpha and beta:{run.describe()}"
    changed = {host: counts.get("changed", 0) for host, counts in run.recap.items()}
    failed = {host: counts.get("failed", 0) for host, counts in run.recap.items()}
    changed_tasks = re.findall(r"^changed: \[.*$", run.output, re.MULTILINE)
    assert set(failed.values()) == {0}, f"failed: {failed}{run.describe()}"
    assert set(changed.values()) == {0}, f"changed: {changed}; {changed_tasks}{run.describe(120)}"


# ---------------------------------------------------------------------------------------------
# 7. One variable changes one instance


def tunnel_interface(host: Host, ipv4: str) -> dict[str, Any]:
    """The interface holding ``ipv4`` (no prefix), from ``ip -j addr``."""
    for link in json.loads(host.run("ip", "-j", "addr", "show").stdout):
        if any(info.get("local") == ipv4 for info in link.get("addr_info", [])):
            return dict(link)
    raise AssertionError(f"[{host.name}] no interface has {ipv4}:\n{host.run('ip', 'addr').stdout}")


@pytest.mark.root
@pytest.mark.systemd
def test_mtu_change_restarts_only_that_instance(ansible_bed: AnsibleTestbed) -> None:
    require("deployed")
    wait_tunnels_up(ansible_bed)
    before = main_pids(ansible_bed)
    assert "0" not in before.values(), f"some instance is not running: {before}"
    controller = ansible_bed.controller
    inventory = controller.write_inventory("mtu-1400", tunnels_with("wanq", mtu=1400))
    run = controller.playbook(inventory, label="mtu-change")
    assert_ok(run, "the run with wanq's mtu 1400")
    assert sum(run.count("changed").values()) > 0, f"changing the MTU changed nothing:{run.describe()}"
    after = main_pids(ansible_bed)
    for host_name in ("alpha", "beta"):
        host = ansible_bed.host(host_name)
        config = yaml.safe_load(host.read_file("/etc/rustvpn/wanq.yaml"))
        assert config.get("mtu") == 1400, f"[{host_name}] /etc/rustvpn/wanq.yaml: {config}"
        assert yaml.safe_load(host.read_file("/etc/rustvpn/want.yaml")).get("mtu") == 1400
        assert after[(host_name, "wanq")] != before[(host_name, "wanq")], (
            f"[{host_name}] rustvpn@wanq was not restarted (MainPID {before[(host_name, 'wanq')]})" + run.describe()
        )
        assert after[(host_name, "want")] == before[(host_name, "want")], (
            f"[{host_name}] rustvpn@want was restarted too (MainPID {before[(host_name, 'want')]} -> "
            f"{after[(host_name, 'want')]})" + run.describe()
        )
    wait_tunnels_up(ansible_bed)
    for host_name, tunnel_key in (("alpha", "client_ipv4"), ("beta", "server_ipv4")):
        host = ansible_bed.host(host_name)
        link = tunnel_interface(host, address(TUNNELS[0][tunnel_key]))
        assert link.get("mtu") == 1400, f"[{host_name}] {link.get('ifname')}: mtu {link.get('mtu')}"
    STATE["inventory"] = inventory


# ---------------------------------------------------------------------------------------------
# 8. The unit brings the tunnel back


@pytest.mark.root
@pytest.mark.systemd
def test_stop_start_on_server_and_the_tunnel_returns(ansible_bed: AnsibleTestbed) -> None:
    require("deployed")
    alpha, beta = ansible_bed.host("alpha"), ansible_bed.host("beta")
    server = address(TUNNELS[1]["server_ipv4"])
    wait_tunnels_up(ansible_bed)
    beta.systemctl("stop", unit("want"))
    assert not beta.is_active(unit("want"))
    assert not ping(alpha, server), "ping across want still answered with its server stopped"
    beta.systemctl("start", unit("want"))
    alpha.wait_until(lambda: ping(alpha, server), timeout=30, what="ping across want after stop/start on beta")
    assert status_json(alpha, "want").get("state") == "connected"
    for host in (alpha, beta):
        assert host.journal(unit("want")).count("session up") >= 2, host.journal(unit("want"))
