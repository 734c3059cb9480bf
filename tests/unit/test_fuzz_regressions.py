"""Regression tests for what the fuzz targets (tests/fuzz/targets.py) caught, each with the exact input.

Every test replays its input through the fuzz target that checks it (the same invariants the fuzzer
applies) and also states the expected behaviour directly. Tests marked "fuzzer" hold an input a fuzzing
run produced (hex as tests/fuzz/run.py printed it); "review" ones are inputs that break the same
invariants, found while checking what the targets would need to reach.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rustvpn.cidr import normalize_cidr, parse_interface
from rustvpn.config_exchange import parse_exchange, validate_exchange
from rustvpn.config_file import load_config_file
from rustvpn.errors import ConfigError, ExchangeError, ExchangeMismatch
from tests.fuzz.targets import OURS, TARGETS, fuzz_config_file, fuzz_exchange

# --------------------------------------------------------------------------- harness sanity


@pytest.mark.parametrize("name", list(TARGETS))
def test_every_seed_passes_its_target(name: str) -> None:
    # A seed that trips its own target would make every fuzzing run "crash" at start-up.
    target = TARGETS[name]
    for seed in target.seeds:
        target.run(seed)


# --------------------------------------------------------------------------- config exchange

# Fuzzer (exchange target, first run): a 142-character build id was echoed whole into the mismatch
# message, so a peer could put 64 KiB into one log line. Fixed: peer text in messages is cut to 80.
EXCHANGE_LONG_BUILD_ID = bytes.fromhex(
    "216275696c645f69643d66757a7a2d31" + "00" * 120 + "3b6e756d6265725f6f665e7374726565343137386c6d"
)


def test_fuzzer_exchange_long_build_id_is_cut_in_the_message() -> None:
    fuzz_exchange(EXCHANGE_LONG_BUILD_ID)
    with pytest.raises(ExchangeMismatch) as info:
        validate_exchange(OURS, parse_exchange(EXCHANGE_LONG_BUILD_ID[1:]), need_token=True)
    assert info.value.key == "build_id"
    assert info.value.theirs == "fuzz-1" + "\x00" * 74 + "..."
    assert len(str(info.value)) < 400  # 80 characters shown, each at most 4 once escaped by repr()


def test_review_exchange_short_build_id_still_shown_whole() -> None:
    with pytest.raises(ExchangeMismatch) as info:
        validate_exchange(OURS, {"build_id": "0123456789abcdef0123456789abcdef01234567"}, need_token=True)
    assert info.value.theirs == "0123456789abcdef0123456789abcdef01234567"


def test_review_exchange_repeated_long_key_is_cut_in_the_message() -> None:
    data = b"\x01" + (b"k" * 5000 + b"=1;") * 2
    fuzz_exchange(data)
    with pytest.raises(ExchangeError, match="repeats key") as info:
        parse_exchange(data[1:])
    assert len(str(info.value)) < 200


# --------------------------------------------------------------------------- YAML config file

# Fuzzer (config_file target): YAML tags "---322" as !!int when told to; the old lstrip("+-").isdigit()
# test let it through to int(), which raised ValueError instead of a ConfigError.
CONFIG_SIGNS_UNDER_INT_TAG = bytes.fromhex(
    "7472616e73706f72743a2022746370220a726f6c653a20636c69656e740a7365727665723a20225b32306c69656e740a"
    "736572315d220a726f757465733a0a20202d2030352e312e322e332f31360a20202d207e0a6d74753a202121696e7420"
    "2d2d2d3332320a"
)


def load_error(tmp_path: Path, data: bytes, *, check_files: bool = False) -> str:
    """The one-line ConfigError for a file holding ``data``."""
    path = tmp_path / "tun0.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_config_file(str(path), check_files=check_files)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"{path}:"), message
    return message


def test_fuzzer_config_signs_under_int_tag(tmp_path: Path) -> None:
    fuzz_config_file(CONFIG_SIGNS_UNDER_INT_TAG)
    assert load_error(tmp_path, CONFIG_SIGNS_UNDER_INT_TAG).endswith(":8: mtu: '---322' is not a whole number")


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ('!!int "\u00b2"', "'\u00b2' is not a whole number"),  # isdigit() is true, int() refuses it
        ('!!int "+-5"', "'+-5' is not a whole number"),
        ("1" * 5000, "111111111111111111... is out of range"),  # past int()'s 4300-digit limit
    ],
    ids=["superscript-two", "two-signs", "5000-digits"],
)
def test_review_config_int_values_int_cannot_read(tmp_path: Path, value: str, error: str) -> None:
    data = f"transport: quic\nrole: server\nport: {value}\n".encode()
    fuzz_config_file(data)
    assert load_error(tmp_path, data).endswith(f":3: port: {error}")


def test_review_config_deep_nesting_is_a_config_error(tmp_path: Path) -> None:
    # PyYAML's composer recurses per level: this used to end in RecursionError.
    data = b"transport: quic\nrole: server\nroutes:\n  " + b"[" * 3000 + b"]" * 3000 + b"\n"
    fuzz_config_file(data)
    assert load_error(tmp_path, data).endswith(":4: not valid YAML: nested more than 20 levels deep")


def test_review_config_newline_in_path_keeps_the_error_on_one_line(tmp_path: Path) -> None:
    # The file check printed the path as is: "…/x<newline>y: no such file" was two lines.
    data = b'transport: quic\nrole: server\nca_bundle: "x\\ny"\n'
    fuzz_config_file(data)
    for check_files in (False, True):
        message = load_error(tmp_path, data, check_files=check_files)
        assert message.endswith(":3: ca_bundle: 'x\\ny' contains a non-printable character"), message


@pytest.mark.parametrize("key", ["server", "peer_cn", "device", "cert"])
def test_review_config_control_characters_refused_in_text(tmp_path: Path, key: str) -> None:
    data = f'transport: quic\nrole: client\n{key}: "a\\tb"\nserver: vpn\n'.encode()
    fuzz_config_file(data)
    assert f":3: {key}: 'a\\tb' contains a non-printable character" in load_error(tmp_path, data)


def test_review_config_bool_tag_on_other_text_is_refused(tmp_path: Path) -> None:
    # An explicit !!bool put any text under the bool tag, and anything but yes/true/on/y read as false.
    data = b'transport: quic\nrole: server\ndatagrams: !!bool "maybe"\n'
    fuzz_config_file(data)
    assert load_error(tmp_path, data).endswith(":3: datagrams: expected true or false, got 'maybe'")


@pytest.mark.parametrize("key", ["ipv6", "routes"])
def test_review_config_ipv6_zone_refused(tmp_path: Path, key: str) -> None:
    # ipaddress accepted "fe80::1%eth0/64" and kept the zone text (newlines too) in str(); the tunnel
    # address would have been shown with it, the route silently without it.
    value = "fe80::1%eth0/64" if key == "ipv6" else "[fe80::%eth0/64]"
    data = f"transport: quic\nrole: server\n{key}: {value}\n".encode()
    fuzz_config_file(data)
    assert "has a zone index" in load_error(tmp_path, data)
    with pytest.raises(ConfigError, match="zone index"):
        parse_interface("fe80::1%\n/64", 6)
    with pytest.raises(ConfigError, match="zone index"):
        normalize_cidr("fe80::%eth0/64")
