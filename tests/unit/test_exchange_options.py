"""Capability options in the config exchange (``datagram=1``, ``offload=1``): offered by default,
switched off per tunnel, sent only as extra ``key=1`` items, and used only when both sides offer."""

from __future__ import annotations

import pytest

import rustvpn.cli
from rustvpn.config_exchange import (
    OPTION_DATAGRAM,
    OPTION_OFFLOAD,
    ExchangeParams,
    format_exchange,
    parse_exchange,
    validate_exchange,
)
from rustvpn.config_file import parse_config_text
from rustvpn.errors import ConfigError
from rustvpn.session import check_peer_exchange, exchange_text
from rustvpn.settings import TunnelConfig

TOKEN = "A" * 32
BASE = b"build_id=b1;number_of_streams=5;mtu=1500;token=" + TOKEN.encode()


def config(transport: str, **over: bool) -> TunnelConfig:
    return TunnelConfig(transport=transport, role="client", build_id="b1", server="192.0.2.1", **over)  # type: ignore[arg-type]


def test_options_are_appended_as_key_equals_one_after_the_reference_keys() -> None:
    params = ExchangeParams("b1", 5, 1500, TOKEN, frozenset({OPTION_OFFLOAD, OPTION_DATAGRAM}))
    assert format_exchange(params) == BASE + b";datagram=1;offload=1"
    assert format_exchange(ExchangeParams("b1", 5, 1500, TOKEN)) == BASE


def test_unknown_option_is_never_sent() -> None:
    with pytest.raises(ValueError, match="unknown exchange option"):
        format_exchange(ExchangeParams("b1", 5, 1500, TOKEN, frozenset({"turbo"})))


@pytest.mark.parametrize(
    ("extra", "offered"),
    [
        (b"", set()),
        (b";offload=1", {OPTION_OFFLOAD}),
        (b";offload=0", set()),
        (b";offload=yes", set()),
        (b";offload=", set()),
        (b";datagram=1;offload=1;future=1", {OPTION_DATAGRAM, OPTION_OFFLOAD}),
    ],
)
def test_an_option_counts_only_as_exactly_one(extra: bytes, offered: set[str]) -> None:
    ours = ExchangeParams("b1", 5, 1500, TOKEN)
    assert validate_exchange(ours, parse_exchange(BASE + extra), need_token=True).options == offered


def test_repr_and_describe_show_options_but_never_the_token() -> None:
    params = ExchangeParams("b1", 5, 1500, TOKEN, frozenset({OPTION_OFFLOAD}))
    assert TOKEN not in repr(params) and "offload" in repr(params)
    assert params.describe() == "build_id=b1 number_of_streams=5 mtu=1500 offload=1"


@pytest.mark.parametrize(
    ("transport", "over", "offered"),
    [
        ("tcp", {}, {OPTION_OFFLOAD}),
        ("tcp", {"offload": False}, set()),
        ("quic", {}, {OPTION_DATAGRAM}),
        ("quic", {"datagrams": False}, set()),
    ],
)
def test_each_transport_offers_its_own_option(transport: str, over: dict[str, bool], offered: set[str]) -> None:
    cfg = config(transport, **over)
    assert cfg.offered_options() == offered
    text = exchange_text(cfg, TOKEN)
    assert text.startswith(BASE[: BASE.index(b";token=")])
    assert {k for k, v in parse_exchange(text).items() if v == "1"} == offered


@pytest.mark.parametrize(
    ("ours", "peer_extra", "used"),
    [
        ({}, b";offload=1", {OPTION_OFFLOAD}),
        ({}, b"", set()),  # the reference peer: never offers anything
        ({"offload": False}, b";offload=1", set()),
        ({}, b";datagram=1", set()),  # the other transport's option is not ours to use
    ],
)
def test_a_session_uses_only_what_both_sides_offer(ours: dict[str, bool], peer_extra: bytes, used: set[str]) -> None:
    params = check_peer_exchange(config("tcp", **ours), TOKEN, BASE + peer_extra, "peer", need_token=True)
    assert params.options == used


def test_cli_flags_switch_the_options_off() -> None:
    parser = rustvpn.cli.build_parser()
    common = ["--ca-bundle", "ca", "--client-cert", "c", "--client-key", "k", "--server", "192.0.2.1"]
    for argv, key, default_on in (
        (["client", *common], "datagrams", True),
        (["client", *common, "--no-datagrams"], "datagrams", False),
        (["tcpclient", *common], "offload", True),
        (["tcpclient", *common, "--no-offload"], "offload", False),
    ):
        value = getattr(parser.parse_args(argv), key)
        # Unset (None) means the default: offered. The flag sets False.
        assert value is (None if default_on else False)
    with pytest.raises(SystemExit):
        parser.parse_args(["tcpclient", *common, "--no-datagrams"])


YAML = "transport: {transport}\nrole: client\nserver: 192.0.2.1\n"


@pytest.mark.parametrize(
    ("transport", "line", "attr", "value"),
    [
        ("tcp", "offload: false", "offload", False),
        ("tcp", "offload: true", "offload", True),
        ("quic", "datagrams: false", "datagrams", False),
        ("quic", "datagrams: null", "datagrams", True),
    ],
)
def test_yaml_switches(transport: str, line: str, attr: str, value: bool) -> None:
    text = YAML.format(transport=transport) + line + "\n"
    loaded = parse_config_text(text, "t.yaml", "t", check_files=False).config
    assert getattr(loaded, attr) is value


@pytest.mark.parametrize(
    ("transport", "line", "message"),
    [
        ("tcp", 'offload: "no"', "t.yaml:4: offload: expected true or false, got 'no'"),
        ("tcp", "offload: 0", "t.yaml:4: offload: expected true or false, got '0'"),
        ("tcp", "datagrams: false", "t.yaml:4: datagrams: only a setting of quic mode"),
        ("quic", "offload: false", "t.yaml:4: offload: only a setting of tcp mode"),
    ],
)
def test_yaml_switch_errors_name_file_line_and_key(transport: str, line: str, message: str) -> None:
    text = YAML.format(transport=transport) + line + "\n"
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, "t.yaml", "t", check_files=False)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)
