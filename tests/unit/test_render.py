"""`rustvpn render`: the template Ansible uses gives a config that loads back to what was meant."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rustvpn.cli import main
from rustvpn.config_file import SCHEMA, parse_config_text
from rustvpn.render import render_tunnel, template_text

FULL = {
    "name": "wan",
    "transport": "tcp",
    "role": "server",
    "device": "rvwan",
    "control_bind_address": "::",
    "control_port": 1107,
    "data_bind_address": "0.0.0.0",
    "data_port": 1108,
    "ca_bundle": "/etc/rustvpn/wan/ca.pem",
    "cert": "/etc/rustvpn/wan/server.pem",
    "key": "/etc/rustvpn/wan/server.key",
    "peer_cn": "wan-client",
    "stream_count": 7,
    "mtu": 1400,
    "ipv4": "198.19.5.1/24",
    "ipv6": "fd00:55::1/64",
    "routes": ["192.0.2.0/24", "fd00:99::/64"],
    "build_id": "0012345",
    "log_level": "debug",
    "status_socket": "/run/rustvpn/wan/status.sock",
    "offload": False,
}


def test_every_config_key_is_rendered() -> None:
    text = template_text()
    for key in SCHEMA:
        assert f"'{key}'" in text or f"tunnel.{key}" in text, f"template does not render {key}"


def test_rendered_config_loads_back_to_the_same_settings() -> None:
    text = render_tunnel(FULL)
    loaded = parse_config_text(text, "rendered.yaml", "wan", check_files=False).config
    assert loaded.transport == "tcp" and loaded.role == "server"
    assert loaded.control_bind_address == "::" and loaded.data_port == 1108
    assert loaded.stream_count == 7 and loaded.mtu == 1400
    assert loaded.offload is False and loaded.datagrams is True
    assert [str(r) for r in loaded.routes] == ["192.0.2.0/24", "fd00:99::/64"]
    assert loaded.build_id == "0012345"  # quoted, so not read back as a number
    assert loaded.peer_cn == "wan-client" and loaded.status_socket == "/run/rustvpn/wan/status.sock"
    assert str(loaded.ipv6) == "fd00:55::1/64"


def test_unset_and_null_keys_are_left_out() -> None:
    text = render_tunnel({"transport": "quic", "role": "client", "server": "198.18.0.2", "peer_cn": None})
    data = yaml.safe_load(text)
    assert data == {"transport": "quic", "role": "client", "server": "198.18.0.2"}


def test_hostile_text_stays_one_scalar() -> None:
    text = render_tunnel({"transport": "quic", "role": "client", "server": "x\nmtu: 9000 # ", "device": "a: b"})
    data = yaml.safe_load(text)
    assert data["server"] == "x\nmtu: 9000 # " and "mtu" not in data and data["device"] == "a: b"


def test_cli_render_with_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vars_file = tmp_path / "vars.yaml"
    vars_file.write_text(yaml.safe_dump({**FULL, "ca_bundle": None, "cert": None, "key": None}))
    # Defaults for the certificate files do not exist here: --check must say so, naming the key.
    assert main(["render", "--vars", str(vars_file), "--check"]) == 2
    assert "ca_bundle" in capsys.readouterr().err
    vars_file.write_text(yaml.safe_dump({**FULL, "mtu": 1400}))
    assert main(["render", "--vars", str(vars_file)]) == 0
    assert "mtu: 1400" in capsys.readouterr().out
