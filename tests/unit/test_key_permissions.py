"""Private keys that other users can read or change are refused before anything starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rustvpn.cli import build_parser, config_from_args
from rustvpn.config_file import parse_config_text
from rustvpn.errors import ConfigError
from rustvpn.pki import write_demo_set


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    return write_demo_set(tmp_path, ["198.18.0.2"])


def server_yaml(pki: dict[str, Path]) -> str:
    return (
        f"transport: tcp\nrole: server\nca_bundle: {pki['ca']}\ncert: {pki['server_cert']}\nkey: {pki['server_key']}\n"
    )


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o620, 0o602, 0o666])
def test_key_open_to_others_is_refused_naming_file_line_and_key(pki: dict[str, Path], mode: int) -> None:
    os.chmod(pki["server_key"], mode)
    with pytest.raises(ConfigError) as err:
        parse_config_text(server_yaml(pki), "/etc/rustvpn/wan.yaml", "wan")
    message = str(err.value)
    assert message.startswith("/etc/rustvpn/wan.yaml:5: key: ")
    assert f"(mode {mode:04o})" in message and f"chmod 600 {pki['server_key']}" in message


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640])
def test_private_or_group_readable_key_is_accepted(pki: dict[str, Path], mode: int) -> None:
    os.chmod(pki["server_key"], mode)
    config = parse_config_text(server_yaml(pki), "/etc/rustvpn/wan.yaml", "wan").config
    assert config.key == str(pki["server_key"])


def test_flag_names_the_key_option(pki: dict[str, Path]) -> None:
    os.chmod(pki["client_key"], 0o644)
    args = build_parser().parse_args(
        ["tcpclient", "--server", "198.18.0.2", "--ca-bundle", str(pki["ca"]),
         "--client-cert", str(pki["client_cert"]), "--client-key", str(pki["client_key"])]
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"^--client-key: .* readable or writable by other users"):
        config_from_args(args)
