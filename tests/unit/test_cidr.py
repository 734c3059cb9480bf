"""Unit tests for rustvpn.cidr: CIDR normalization, interface addresses and route lists."""

from __future__ import annotations

import ipaddress
import re

import pytest

from rustvpn.cidr import normalize_cidr, parse_interface, routes_for
from rustvpn.errors import ConfigError


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def iface(text: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface(text)


# --------------------------------------------------------------------------- normalize_cidr


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        # The examples from the README.
        ("192.168.55.12/24", "192.168.55.0/24"),
        ("10.0.0.5/16", "10.0.0.0/16"),
        ("172.16.100.50/8", "172.0.0.0/8"),
        ("2001:db8::1234/64", "2001:db8::/64"),
        # Already normal, extremes, and odd prefixes.
        ("10.1.0.0/16", "10.1.0.0/16"),
        ("10.1.2.3/32", "10.1.2.3/32"),
        ("10.1.2.3/0", "0.0.0.0/0"),
        ("192.168.1.130/25", "192.168.1.128/25"),
        ("fd00::1/128", "fd00::1/128"),
        ("fd12:3456:789a::1/48", "fd12:3456:789a::/48"),
        ("::/0", "::/0"),
        ("  10.0.0.5/16\n", "10.0.0.0/16"),
    ],
)
def test_normalize(given: str, expected: str) -> None:
    result = normalize_cidr(given)
    assert str(result) == expected
    assert result == net(expected)


def test_normalize_returns_network_objects_of_right_version() -> None:
    assert isinstance(normalize_cidr("10.0.0.5/16"), ipaddress.IPv4Network)
    assert isinstance(normalize_cidr("2001:db8::1234/64"), ipaddress.IPv6Network)
    assert normalize_cidr("172.16.100.50/8").prefixlen == 8


@pytest.mark.parametrize(
    "bad",
    [
        "10.0.0.5",  # missing prefix
        "2001:db8::1",  # missing prefix
        "",
        "   ",
        "garbage",
        "garbage/24",
        "/24",
        "10.0.0.0/",
        "10.0.0.0/abc",
        "10.0.0.0/-1",
        "10.0.0.0/33",  # prefix too large
        "10.0.0.0/999",
        "2001:db8::/129",  # prefix too large
        "300.1.2.3/8",
        "10.0.0/8",
        "10.0.0.0/8/8",
        "2001:db8:::1/64",
    ],
)
def test_normalize_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        normalize_cidr(bad)


def test_normalize_error_names_the_input() -> None:
    with pytest.raises(ConfigError, match=re.escape("10.0.0.0/33")):
        normalize_cidr("10.0.0.0/33")
    with pytest.raises(ConfigError, match="nonsense"):
        normalize_cidr("nonsense")


def test_config_error_exit_code() -> None:
    with pytest.raises(ConfigError) as info:
        normalize_cidr("10.0.0.5")
    assert info.value.exit_code == 2


# --------------------------------------------------------------------------- parse_interface


def test_interface_keeps_host_address_v4() -> None:
    result = parse_interface("192.168.3.1/24", 4)
    assert isinstance(result, ipaddress.IPv4Interface)
    assert result.ip == ipaddress.ip_address("192.168.3.1")
    assert result.network == net("192.168.3.0/24")
    assert str(result) == "192.168.3.1/24"


def test_interface_keeps_host_address_v6() -> None:
    result = parse_interface("fd00::1/64", 6)
    assert isinstance(result, ipaddress.IPv6Interface)
    assert result.ip == ipaddress.ip_address("fd00::1")
    assert result.network == net("fd00::/64")


def test_interface_strips_whitespace() -> None:
    assert parse_interface(" 10.8.0.2/30 ", 4) == iface("10.8.0.2/30")


@pytest.mark.parametrize(("text", "version"), [("192.168.3.1/24", 6), ("fd00::1/64", 4)])
def test_interface_wrong_version(text: str, version: int) -> None:
    with pytest.raises(ConfigError, match=f"IPv{version}"):
        parse_interface(text, version)


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("192.168.3.1", 4),
        ("fd00::1", 6),
        ("garbage/24", 4),
        ("192.168.3.1/33", 4),
        ("fd00::1/129", 6),
        ("", 4),
        ("192.168.3.1/abc", 4),
    ],
)
def test_interface_errors(text: str, version: int) -> None:
    with pytest.raises(ConfigError):
        parse_interface(text, version)


# --------------------------------------------------------------------------- routes_for


def test_routes_for_interfaces_then_extra() -> None:
    routes = routes_for(
        [iface("192.168.3.1/24"), iface("fd00::1/64")],
        [net("10.0.0.0/8"), net("2001:db8::/32")],
    )
    assert routes == [net("192.168.3.0/24"), net("fd00::/64"), net("10.0.0.0/8"), net("2001:db8::/32")]


def test_routes_for_dedups_keeping_first_occurrence_order() -> None:
    routes = routes_for(
        [iface("192.168.3.1/24"), iface("192.168.3.7/24"), iface("fd00::1/64")],
        [net("10.0.0.0/8"), net("192.168.3.0/24"), net("fd00::/64"), net("172.16.0.0/12"), net("10.0.0.0/8")],
    )
    assert routes == [net("192.168.3.0/24"), net("fd00::/64"), net("10.0.0.0/8"), net("172.16.0.0/12")]


def test_routes_for_keeps_different_prefixes_of_same_address() -> None:
    routes = routes_for([], [net("10.0.0.0/8"), net("10.0.0.0/16"), net("10.0.0.0/8")])
    assert routes == [net("10.0.0.0/8"), net("10.0.0.0/16")]


def test_routes_for_extra_only_and_empty() -> None:
    assert routes_for([], []) == []
    assert routes_for([], [net("10.0.0.0/8")]) == [net("10.0.0.0/8")]
    assert routes_for([iface("10.8.0.2/30")], []) == [net("10.8.0.0/30")]


def test_routes_for_normalized_inputs_dedup_against_interface_network() -> None:
    routes = routes_for([parse_interface("192.168.55.1/24", 4)], [normalize_cidr("192.168.55.12/24")])
    assert routes == [net("192.168.55.0/24")]


def test_routes_for_does_not_mutate_inputs() -> None:
    interfaces = [iface("192.168.3.1/24")]
    extra = [net("192.168.3.0/24"), net("10.0.0.0/8")]
    routes_for(interfaces, extra)
    assert interfaces == [iface("192.168.3.1/24")]
    assert extra == [net("192.168.3.0/24"), net("10.0.0.0/8")]
