"""Unit tests for rustvpn.config_file: the daemon's YAML file -> TunnelConfig, and its errors.

Every error must be ONE line naming the file, the line and the key (README, "Run it as a service").
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

import rustvpn.cli
from rustvpn import DEFAULT_BUILD_ID
from rustvpn.config_file import instance_name, load_config_file, parse_config_text
from rustvpn.errors import ConfigError
from rustvpn.pki import write_demo_set
from rustvpn.settings import (
    DEFAULT_CONTROL_PORT,
    DEFAULT_DATA_PORT,
    DEFAULT_DEVICE,
    DEFAULT_MTU,
    DEFAULT_QUIC_PORT,
    DEFAULT_STREAMS,
    TunnelConfig,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real ca.pem, server.pem/.key and client.pem/.key, written once for the module."""
    return write_demo_set(tmp_path_factory.mktemp("pki"), ["198.18.0.2"])


def write(tmp_path: Path, text: str | bytes, name: str = "tun0.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, name: str = "tun0.yaml", *, check_files: bool = False) -> TunnelConfig:
    return load_config_file(str(write(tmp_path, text, name)), check_files=check_files).config


def error_of(tmp_path: Path, text: str | bytes, name: str = "tun0.yaml", *, check_files: bool = False) -> str:
    """The ConfigError message for a file with this text; it must be one line and name the file."""
    path = write(tmp_path, text, name)
    with pytest.raises(ConfigError) as info:
        load_config_file(str(path), check_files=check_files)
    message = str(info.value)
    assert "\n" not in message, f"error is not one line: {message!r}"
    assert message.startswith(str(path)), message
    return message


def where(tmp_path: Path, line: int, key: str, name: str = "tun0.yaml") -> str:
    """The prefix an error about KEY on LINE must start with: ``FILE:LINE: KEY: ``."""
    return f"{tmp_path / name}:{line}: {key}: "


QUIC_SERVER = "transport: quic\nrole: server\n"
TCP_SERVER = "transport: tcp\nrole: server\n"
QUIC_CLIENT = "transport: quic\nrole: client\nserver: vpn.example.com\n"


# --------------------------------------------------------------------------- valid files


def test_full_quic_server_file(tmp_path: Path, pki: dict[str, Path]) -> None:
    text = f"""\
# a full QUIC server, as in the README
transport: quic
role: server
device: rvpn-wan
bind_address: 198.18.0.2
port: 4433
ca_bundle: {pki["ca"]}
cert: {pki["server_cert"]}
key: {pki["server_key"]}
peer_cn: rustvpn-client
stream_count: 7
mtu: 1400
ipv4: 192.168.3.1/24
ipv6: 2001:db8::1/64
routes: [10.1.2.3/16, "2001:db8:5::17/48", 172.16.100.50/8]
build_id: abc123
log_level: debug
status_socket: /run/rustvpn/wan/status.sock
"""
    loaded = load_config_file(str(write(tmp_path, text, "wan.yaml")))
    assert loaded.instance == "wan"
    assert loaded.path == str(tmp_path / "wan.yaml")
    cfg = loaded.config
    assert cfg == TunnelConfig(
        transport="quic",
        role="server",
        device="rvpn-wan",
        mtu=1400,
        stream_count=7,
        ipv4=ipaddress.IPv4Interface("192.168.3.1/24"),
        ipv6=ipaddress.IPv6Interface("2001:db8::1/64"),
        routes=(
            ipaddress.IPv4Network("10.1.0.0/16"),
            ipaddress.IPv6Network("2001:db8:5::/48"),
            ipaddress.IPv4Network("172.0.0.0/8"),
        ),
        ca_bundle=str(pki["ca"]),
        cert=str(pki["server_cert"]),
        key=str(pki["server_key"]),
        peer_cn="rustvpn-client",
        build_id="abc123",
        log_level="debug",
        bind_address="198.18.0.2",
        port=4433,
        server=None,
        status_socket="/run/rustvpn/wan/status.sock",
    )
    assert cfg.is_server
    assert cfg.all_routes()[:2] == [
        ipaddress.IPv4Network("192.168.3.0/24"),
        ipaddress.IPv6Network("2001:db8::/64"),
    ]


def test_full_tcp_server_file(tmp_path: Path, pki: dict[str, Path]) -> None:
    text = f"""\
transport: tcp
role: server
control_bind_address: 127.0.0.1
control_port: 2107
data_bind_address: "::"
data_port: 2108
ca_bundle: {pki["ca"]}
cert: {pki["server_cert"]}
key: {pki["server_key"]}
stream_count: 100
mtu: 100
ipv4: 10.9.8.7/30
routes:
  - 192.0.2.77/24
  - 198.51.100.0/25
"""
    cfg = load_config_file(str(write(tmp_path, text))).config
    assert (cfg.transport, cfg.role) == ("tcp", "server")
    assert (cfg.control_bind_address, cfg.control_port) == ("127.0.0.1", 2107)
    assert (cfg.data_bind_address, cfg.data_port) == ("::", 2108)
    assert (cfg.stream_count, cfg.mtu) == (100, 100)
    assert cfg.ipv4 == ipaddress.IPv4Interface("10.9.8.7/30")
    assert cfg.ipv6 is None
    assert cfg.routes == (ipaddress.IPv4Network("192.0.2.0/24"), ipaddress.IPv4Network("198.51.100.0/25"))
    # Unset keys have the command line's defaults.
    assert cfg.device == DEFAULT_DEVICE
    assert cfg.bind_address == "0.0.0.0"
    assert cfg.port == DEFAULT_QUIC_PORT
    assert cfg.build_id == DEFAULT_BUILD_ID
    assert cfg.log_level == "info"
    assert cfg.peer_cn is None
    assert cfg.status_socket is None


def test_full_tcp_client_file(tmp_path: Path, pki: dict[str, Path]) -> None:
    text = f"""\
transport: tcp
role: client
server: "[2001:db8::2]"
control_port: 3107
data_port: 3108
ca_bundle: {pki["ca"]}
cert: {pki["client_cert"]}
key: {pki["client_key"]}
peer_cn: rustvpn-server
ipv4: 192.168.3.2/24
ipv6: fd00::2/64
routes: [10.0.0.5/8]
"""
    cfg = load_config_file(str(write(tmp_path, text, "office.yml"))).config
    assert (cfg.transport, cfg.role, cfg.is_server) == ("tcp", "client", False)
    assert cfg.server == "2001:db8::2"  # brackets dropped
    assert (cfg.control_port, cfg.data_port) == (3107, 3108)
    assert (cfg.cert, cfg.key) == (str(pki["client_cert"]), str(pki["client_key"]))
    assert cfg.peer_cn == "rustvpn-server"
    assert cfg.interfaces() == [ipaddress.IPv4Interface("192.168.3.2/24"), ipaddress.IPv6Interface("fd00::2/64")]
    assert cfg.routes == (ipaddress.IPv4Network("10.0.0.0/8"),)


def test_minimal_quic_client_file_has_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, QUIC_CLIENT)
    assert cfg == TunnelConfig(
        transport="quic", role="client", server="vpn.example.com", cert="client.pem", key="client.key"
    )
    assert (cfg.mtu, cfg.stream_count, cfg.port) == (DEFAULT_MTU, DEFAULT_STREAMS, DEFAULT_QUIC_PORT)
    assert (cfg.control_port, cfg.data_port) == (DEFAULT_CONTROL_PORT, DEFAULT_DATA_PORT)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/etc/rustvpn/wan.yaml", "wan"),
        ("/etc/rustvpn/office.yml", "office"),
        ("relative/dir/lab-1.yaml", "lab-1"),
        ("noext", "noext"),
    ],
)
def test_instance_name_from_file_name(path: str, expected: str) -> None:
    assert instance_name(path) == expected


def test_instance_defaults_from_file_name_and_can_be_given(tmp_path: Path) -> None:
    path = str(write(tmp_path, QUIC_CLIENT, "branch-7.yaml"))
    assert load_config_file(path, check_files=False).instance == "branch-7"
    assert load_config_file(path, "other", check_files=False).instance == "other"


def test_null_values_mean_the_default(tmp_path: Path) -> None:
    text = QUIC_SERVER + "device:\nmtu: ~\nport: null\nroutes:\nipv4:\nbuild_id:\nstatus_socket:\nserver:\n"
    cfg = load(tmp_path, text)
    assert cfg == TunnelConfig(transport="quic", role="server", cert="server.pem", key="server.key")


def test_build_id_keeps_leading_zeros(tmp_path: Path) -> None:
    # Unquoted 0012345 is an (octal) int to YAML 1.1; the scalar's text must be kept as written.
    assert load(tmp_path, QUIC_SERVER + "build_id: 0012345\n").build_id == "0012345"
    assert load(tmp_path, QUIC_SERVER + "build_id: '0012345'\n").build_id == "0012345"
    assert load(tmp_path, QUIC_SERVER + "build_id: 4f2a9c1\n").build_id == "4f2a9c1"


def test_numbers_are_decimal(tmp_path: Path) -> None:
    # YAML 1.1 would read 01400 as octal; the setting is read as the decimal number written.
    assert load(tmp_path, QUIC_SERVER + "mtu: 01400\n").mtu == 1400


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + QUIC_SERVER.encode() + b"mtu: 1400\n")
    assert load_config_file(str(path), check_files=False).config.mtu == 1400


def test_files_are_checked_by_default(tmp_path: Path, pki: dict[str, Path]) -> None:
    text = f"{QUIC_SERVER}ca_bundle: {pki['ca']}\ncert: {pki['server_cert']}\nkey: {pki['server_key']}\n"
    assert load(tmp_path, text, check_files=True).ca_bundle == str(pki["ca"])


# --------------------------------------------------------------------------- errors: keys


def test_unknown_key_names_its_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, QUIC_SERVER + "mtu: 1400\ncolour: blue\n")
    assert message.startswith(f"{tmp_path / 'tun0.yaml'}:4: unknown key 'colour'")


def test_repeated_key_names_both_lines(tmp_path: Path) -> None:
    message = error_of(tmp_path, QUIC_SERVER + "mtu: 1400\ndevice: a\nmtu: 1300\n")
    assert message.startswith(where(tmp_path, 5, "mtu"))
    assert "repeated" in message
    assert "line 3" in message


# --------------------------------------------------------------------------- errors: types

WRONG_TYPES = [
    ("mtu", 'mtu: "abc"', "abc"),
    ("mtu", "mtu: abc", "abc"),
    ("mtu", "mtu: 1.5", "1.5"),
    ("mtu", "mtu: [1500]", "sequence"),
    ("port", "port: yes", "yes"),
    ("port", "port: 0x1bb", "0x1bb"),
    ("stream_count", "stream_count: {a: 1}", "mapping"),
    ("routes", 'routes: "192.0.2.0/24"', "list"),
    ("routes", "routes: 192.0.2.0/24", "list"),
    ("routes", "routes: [[1]]", "list"),
    ("routes", "routes: {a: 1}", "list"),
    ("device", "device: [a]", "sequence"),
    ("device", "device: yes", "yes"),
    ("peer_cn", "peer_cn: 1.5", "1.5"),
    ("build_id", "build_id: [x]", "sequence"),
]


def assert_one_bad_line(tmp_path: Path, key: str, line: str, mention: str) -> None:
    """The file's line 3 or 4 holds the bad value; the error names that line, the key and the value."""
    message = error_of(tmp_path, QUIC_SERVER + "device: tun9\n" * (key != "device") + line + "\n")
    expected_line = 3 if key == "device" else 4
    assert message.startswith(where(tmp_path, expected_line, key)), message
    assert mention in message


@pytest.mark.parametrize(("key", "line", "mention"), WRONG_TYPES, ids=[t[1] for t in WRONG_TYPES])
def test_wrong_type(tmp_path: Path, key: str, line: str, mention: str) -> None:
    assert_one_bad_line(tmp_path, key, line, mention)


def test_wrong_type_in_a_block_value_names_the_key_line(tmp_path: Path) -> None:
    # The value starts on the line after the key; either line is fine, but it must be one of them.
    message = error_of(tmp_path, QUIC_SERVER + "routes:\n  - [10.0.0.0/8]\n")
    assert message.startswith((where(tmp_path, 3, "routes"), where(tmp_path, 4, "routes"))), message


# --------------------------------------------------------------------------- errors: values

BAD_VALUES = [
    ("mtu", "mtu: 9000", "9000 is out of range 100..1500"),
    ("mtu", "mtu: 99", "out of range"),
    ("mtu", "mtu: -1500", "out of range"),
    ("stream_count", "stream_count: 0", "0 is out of range 1..100"),
    ("stream_count", "stream_count: 101", "101 is out of range 1..100"),
    ("port", "port: 70000", "70000 is out of range 1..65535"),
    ("port", "port: 0", "out of range"),
    ("control_port", "control_port: 65536", "out of range"),
    ("ipv4", "ipv4: 10.0.0.300/24", "10.0.0.300/24"),
    ("ipv4", "ipv4: 10.0.0.1", "CIDR"),
    ("ipv4", "ipv4: fd00::1/64", "not an IPv4 address"),
    ("ipv6", "ipv6: 10.0.0.1/24", "not an IPv6 address"),
    ("ipv6", "ipv6: fd00::1/129", "fd00::1/129"),
    ("routes", "routes: [nonsense]", "nonsense"),
    ("routes", "routes: [10.0.0.0/8, 10.0.0.0/33]", "10.0.0.0/33"),
    ("device", "device: a-very-long-device-name", "interface name"),
    ("device", "device: a/b", "interface name"),
    ("device", "device: ''", "interface name"),
    ("bind_address", "bind_address: not-an-ip", "not an IPv4 or IPv6 address"),
    ("build_id", "build_id: a;b", "build id"),
    ("build_id", "build_id: a=b", "build id"),
    ("build_id", "build_id: ''", "build id"),
    ("log_level", "log_level: loud", "loud"),
    ("status_socket", "status_socket: run/status.sock", "absolute path"),
    ("status_socket", "status_socket: ''", "absolute path"),
]


@pytest.mark.parametrize(("key", "line", "mention"), BAD_VALUES, ids=[t[1] for t in BAD_VALUES])
def test_bad_value(tmp_path: Path, key: str, line: str, mention: str) -> None:
    assert_one_bad_line(tmp_path, key, line, mention)


def test_tcp_server_ports_must_differ(tmp_path: Path) -> None:
    message = error_of(tmp_path, TCP_SERVER + "control_port: 2000\ndata_port: 2000\n")
    assert message.startswith(where(tmp_path, 4, "data_port")), message
    assert "control_port" in message
    # Different bind addresses make the same port fine.
    text = TCP_SERVER + "control_port: 2000\ndata_port: 2000\ncontrol_bind_address: 127.0.0.1\n"
    assert load(tmp_path, text).data_port == 2000


# --------------------------------------------------------------------------- errors: transport, role


def test_missing_transport(tmp_path: Path) -> None:
    message = error_of(tmp_path, "role: server\nmtu: 1400\n")
    assert message.startswith(f"{tmp_path / 'tun0.yaml'}: transport: required"), message


def test_missing_role(tmp_path: Path) -> None:
    message = error_of(tmp_path, "transport: quic\nmtu: 1400\n")
    assert message.startswith(f"{tmp_path / 'tun0.yaml'}: role: required"), message


def test_null_transport_is_missing(tmp_path: Path) -> None:
    message = error_of(tmp_path, "transport:\nrole: server\n")
    assert message.startswith(where(tmp_path, 1, "transport")), message
    assert "required" in message


@pytest.mark.parametrize(
    ("text", "line", "key", "mention"),
    [
        ("transport: udp\nrole: server\n", 1, "transport", "'udp'"),
        ("transport: QUIC\nrole: server\n", 1, "transport", "'QUIC'"),
        ("role: server\ntransport: [quic]\n", 2, "transport", "sequence"),
        ("transport: quic\nrole: peer\n", 2, "role", "'peer'"),
        ("transport: quic\nrole: yes\n", 2, "role", "yes"),
    ],
)
def test_bad_transport_or_role(tmp_path: Path, text: str, line: int, key: str, mention: str) -> None:
    message = error_of(tmp_path, text)
    assert message.startswith(where(tmp_path, line, key)), message
    assert mention in message


def test_server_only_key_in_client_file(tmp_path: Path) -> None:
    message = error_of(tmp_path, QUIC_CLIENT + "mtu: 1400\nbind_address: 0.0.0.0\n")
    assert message.startswith(where(tmp_path, 5, "bind_address")), message
    assert "client" in message


def test_tcp_server_only_key_in_client_file(tmp_path: Path) -> None:
    text = "transport: tcp\nrole: client\nserver: 192.0.2.1\ndata_bind_address: 0.0.0.0\n"
    assert error_of(tmp_path, text).startswith(where(tmp_path, 4, "data_bind_address"))


def test_client_only_key_in_server_file(tmp_path: Path) -> None:
    message = error_of(tmp_path, QUIC_SERVER + "server: vpn.example.com\n")
    assert message.startswith(where(tmp_path, 3, "server")), message
    assert "not a setting of a server" in message


def test_client_needs_server(tmp_path: Path) -> None:
    message = error_of(tmp_path, "transport: tcp\nrole: client\n")
    assert message.startswith(f"{tmp_path / 'tun0.yaml'}: server: required"), message
    message = error_of(tmp_path, "transport: tcp\nrole: client\nserver: '  '\n")
    assert message.startswith(where(tmp_path, 3, "server")), message


# --------------------------------------------------------------------------- errors: files


def test_missing_ca_bundle_names_key_and_path(tmp_path: Path, pki: dict[str, Path]) -> None:
    text = f"{QUIC_SERVER}cert: {pki['server_cert']}\nkey: {pki['server_key']}\nca_bundle: /nonexistent\n"
    message = error_of(tmp_path, text, check_files=True)
    assert message.startswith(where(tmp_path, 5, "ca_bundle")), message
    assert "/nonexistent" in message


def test_missing_key_file_names_key_and_path(tmp_path: Path, pki: dict[str, Path]) -> None:
    text = f"{QUIC_SERVER}ca_bundle: {pki['ca']}\ncert: {pki['server_cert']}\nkey: {tmp_path / 'nope.key'}\n"
    message = error_of(tmp_path, text, check_files=True)
    assert message.startswith(where(tmp_path, 5, "key")), message
    assert str(tmp_path / "nope.key") in message


def test_directory_is_not_a_certificate_file(tmp_path: Path, pki: dict[str, Path]) -> None:
    text = f"{QUIC_SERVER}ca_bundle: {tmp_path}\ncert: {pki['server_cert']}\nkey: {pki['server_key']}\n"
    assert error_of(tmp_path, text, check_files=True).startswith(where(tmp_path, 3, "ca_bundle"))


def test_default_certificate_file_missing_names_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Not in the file: no line to name, but still the file and the key.
    monkeypatch.chdir(tmp_path)
    message = error_of(tmp_path, QUIC_SERVER, check_files=True)
    assert message.startswith(f"{tmp_path / 'tun0.yaml'}: ca_bundle: ca.pem: no such file"), message


# --------------------------------------------------------------------------- errors: the file itself


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, QUIC_SERVER + "device: tun9\nmtu: 1400: 1500\nport: 1\n")
    assert message.startswith(f"{tmp_path / 'tun0.yaml'}:4: not valid YAML"), message


def test_invalid_yaml_unclosed_bracket(tmp_path: Path) -> None:
    message = error_of(tmp_path, QUIC_SERVER + "routes: [10.0.0.0/8\nmtu: 1400\n")
    assert message.startswith(f"{tmp_path / 'tun0.yaml'}:"), message
    assert "not valid YAML" in message
    line = int(message[len(str(tmp_path / "tun0.yaml")) + 1 :].split(":", 1)[0])
    assert 3 <= line <= 5


def test_two_documents_are_invalid(tmp_path: Path) -> None:
    message = error_of(tmp_path, QUIC_SERVER + "---\nmtu: 1400\n")
    assert message.startswith(f"{tmp_path / 'tun0.yaml'}:3: not valid YAML"), message


@pytest.mark.parametrize("char", ["\x07", "\x00", "\x1b"])
def test_control_character_is_one_line_with_line_number(tmp_path: Path, char: str) -> None:
    message = error_of(tmp_path, QUIC_SERVER + f"device: tun{char}9\n")
    assert message.startswith(f"{tmp_path / 'tun0.yaml'}:3: "), message


@pytest.mark.parametrize(
    ("text", "line"),
    [("- transport: quic\n- role: server\n", 1), ("# settings\n\njust text\n", 3), ("# c\n[quic, server]\n", 2)],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, line: int) -> None:
    message = error_of(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'tun0.yaml'}:{line}: "), message
    assert "mapping" in message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    assert "empty" in error_of(tmp_path, text)


def test_non_utf8_file(tmp_path: Path) -> None:
    message = error_of(tmp_path, QUIC_SERVER.encode() + b"device: caf\xe9\n")
    assert "UTF-8" in message


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config_file(str(path))
    assert str(info.value) == f"{path}: no such file"


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_file(str(tmp_path))
    message = str(info.value)
    assert message.startswith(f"{tmp_path}: ")
    assert "\n" not in message


def test_parse_config_text_directly() -> None:
    loaded = parse_config_text(QUIC_CLIENT, "inline.yaml", "inline", check_files=False)
    assert (loaded.path, loaded.instance, loaded.config.server) == ("inline.yaml", "inline", "vpn.example.com")
    with pytest.raises(ConfigError, match=r"^inline\.yaml:3: mtu: "):
        parse_config_text(QUIC_SERVER + "mtu: 1\n", "inline.yaml", "inline", check_files=False)


# --------------------------------------------------------------------------- YAML keys == CLI flags


def _tcpserver_pair(tmp_path: Path, pki: dict[str, Path]) -> tuple[list[str], str]:
    flags = [
        "tcpserver",
        "--control-bind-address", "127.0.0.1",
        "--control-port", "2107",
        "--data-bind-address", "::1",
        "--data-port", "2108",
        "-d", "rvpn-test",
        "--ca-bundle", str(pki["ca"]),
        "--server-cert", str(pki["server_cert"]),
        "--server-key", str(pki["server_key"]),
        "--peer-cn", "rustvpn-client",
        "--stream-count", "9",
        "--mtu", "1400",
        "--ipv4", "192.168.3.1/24",
        "--ipv6", "2001:db8::1/64",
        "--route", "10.1.2.3/16",
        "--route", "2001:db8:5::1/48",
        "--build-id", "0042",
    ]  # fmt: skip
    text = f"""\
transport: tcp
role: server
control_bind_address: 127.0.0.1
control_port: 2107
data_bind_address: ::1
data_port: 2108
device: rvpn-test
ca_bundle: {pki["ca"]}
cert: {pki["server_cert"]}
key: {pki["server_key"]}
peer_cn: rustvpn-client
stream_count: 9
mtu: 1400
ipv4: 192.168.3.1/24
ipv6: 2001:db8::1/64
routes: [10.1.2.3/16, 2001:db8:5::1/48]
build_id: 0042
"""
    return flags, text


def test_yaml_keys_and_cli_flags_build_the_same_config(
    tmp_path: Path, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUST_LOG", raising=False)
    flags, text = _tcpserver_pair(tmp_path, pki)
    from_flags = rustvpn.cli.config_from_args(rustvpn.cli.build_parser().parse_args([*flags, "--log-level", "debug"]))
    from_file = load_config_file(str(write(tmp_path, text + "log_level: debug\n"))).config
    assert from_flags.status_socket is None
    assert from_file.status_socket is None
    assert from_flags == from_file
    assert from_file.build_id == "0042"


def test_rust_log_default_is_the_same_for_yaml_and_cli(
    tmp_path: Path, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUST_LOG", "debug")
    flags, text = _tcpserver_pair(tmp_path, pki)
    from_flags = rustvpn.cli.config_from_args(rustvpn.cli.build_parser().parse_args(flags))
    from_file = load_config_file(str(write(tmp_path, text))).config
    assert from_flags.log_level == "debug"
    assert from_file == from_flags


# --------------------------------------------------------------------------- rustvpn check


def test_cli_check_good_file(tmp_path: Path, pki: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    text = f"{QUIC_SERVER}ca_bundle: {pki['ca']}\ncert: {pki['server_cert']}\nkey: {pki['server_key']}\n"
    path = write(tmp_path, text, "good.yaml")
    assert rustvpn.cli.main(["check", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{path}: ok (")
    assert "quic server" in out
    assert err == ""


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (QUIC_SERVER + "device: tun9\nmtu: 9000\n", 4),
        (QUIC_SERVER + "mtu: [1500]\n", 3),
        (QUIC_SERVER + "colour: blue\n", 3),
        (QUIC_SERVER + "mtu: 1400: 1\n", 3),
    ],
)
def test_cli_check_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, line: int) -> None:
    path = write(tmp_path, text, "bad.yaml")
    assert rustvpn.cli.main(["check", "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("\n")
    assert err.count("\n") == 1, err
    assert err.startswith(f"rustvpn: error: {path}:{line}: "), err
    assert "Traceback" not in err


def test_cli_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.yaml"
    assert rustvpn.cli.main(["check", "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"rustvpn: error: {path}: no such file\n")


def test_cli_check_missing_certificate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, QUIC_SERVER + "ca_bundle: /nonexistent\n", "nocert.yaml")
    assert rustvpn.cli.main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rustvpn: error: {path}:3: ca_bundle: /nonexistent"), err
    assert err.count("\n") == 1


def test_cli_check_control_character_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, QUIC_SERVER + "device: tun\x079\n", "ctrl.yaml")
    assert rustvpn.cli.main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"rustvpn: error: {path}:3: "), err
