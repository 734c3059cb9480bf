"""Start-up imports: each command path loads only what it needs, so a regression that pulls aioquic
(or pyroute2, or YAML) back into a path that does not use it fails here. Each check runs in a fresh
interpreter and looks at sys.modules; nothing here measures time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rustvpn.pki import write_demo_set

SERVER = "198.18.0.2"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_demo_set(tmp_path_factory.mktemp("pki"), [SERVER])


def loaded_modules(code: str) -> set[str]:
    """sys.modules after running ``code`` in a new interpreter."""
    script = textwrap.dedent(code) + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def loaded_packages(code: str) -> set[str]:
    """The top-level packages of loaded_modules(code)."""
    return {name.split(".")[0] for name in loaded_modules(code)}


def seed_args(mode: str, certs: dict[str, Path]) -> list[str]:
    """A seed command line (server, client, tcpserver, tcpclient) with the test certificates."""
    role = "server" if mode.endswith("server") else "client"
    args = [mode, "--ca-bundle", str(certs["ca"])]
    args += [f"--{role}-cert", str(certs[f"{role}_cert"]), f"--{role}-key", str(certs[f"{role}_key"])]
    return args if role == "server" else [*args, "--server", SERVER]


def transport_setup(args: list[str]) -> str:
    """What `rustvpn ARGS` does before the device is configured: parse, validate, load the
    certificates into the transport (make_server / make_connect)."""
    return f"""
        from rustvpn.app import make_connect, make_server
        from rustvpn.cli import build_parser, config_from_args
        config = config_from_args(build_parser().parse_args({args!r}))
        if config.is_server:
            make_server(config)
        else:
            make_connect(config)
    """


@pytest.mark.parametrize("mode", ["tcpclient", "tcpserver"])
def test_tcp_mode_never_imports_aioquic(mode: str, certs: dict[str, Path]) -> None:
    packages = loaded_packages(transport_setup(seed_args(mode, certs)))
    assert "ssl" in packages  # the TLS contexts were made: the path really ran
    # pyroute2 is imported by the device set-up, in its worker thread; YAML only for a config file.
    assert packages & {"aioquic", "pyroute2", "yaml"} == set()


@pytest.mark.parametrize("mode", ["client", "server"])
def test_quic_mode_never_imports_the_tcp_transport(mode: str, certs: dict[str, Path]) -> None:
    modules = loaded_modules(transport_setup(seed_args(mode, certs)))
    assert "aioquic.quic.connection" in modules  # the QUIC configuration was made
    assert modules & {"rustvpn.tcp_transport", "rustvpn.tcp_channel"} == set()
    assert {name.split(".")[0] for name in modules} & {"pyroute2", "yaml"} == set()


def test_device_setup_imports_pyroute2_only_when_it_runs() -> None:
    packages = loaded_packages("import rustvpn.app, rustvpn.cli")
    assert packages & {"pyroute2", "aioquic", "yaml"} == set()
    assert "pyroute2" in loaded_packages("import rustvpn.netlink")  # the module configure() imports


def test_help_loads_no_transport_yaml_or_crypto() -> None:
    packages = loaded_packages("""
        from rustvpn.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
    """)
    assert "argparse" in packages
    assert packages & {"aioquic", "pyroute2", "yaml", "cryptography", "jinja2"} == set()


def test_check_loads_yaml_but_no_transport(tmp_path: Path, certs: dict[str, Path]) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        f"transport: quic\nrole: client\nserver: {SERVER}\nca_bundle: {certs['ca']}\n"
        f"cert: {certs['client_cert']}\nkey: {certs['client_key']}\n"
    )
    packages = loaded_packages(f"""
        from rustvpn.cli import main
        assert main(["check", "--config", {str(path)!r}]) == 0
    """)
    assert "yaml" in packages
    assert packages & {"aioquic", "pyroute2", "cryptography"} == set()
