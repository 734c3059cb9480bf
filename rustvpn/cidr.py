"""CIDR handling: interface addresses (address + prefix) and normalized routes."""

from __future__ import annotations

import ipaddress

from rustvpn.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def _check_form(text: str, value: str) -> None:
    if "/" not in value:
        raise ConfigError(f"{text!r} is not in CIDR form (address/prefix)")
    # ipaddress takes an IPv6 zone ("fe80::1%eth0/64") and keeps any text after the %, newlines
    # included, in the interface's str(); a zone means nothing for a tunnel address or route.
    if "%" in value:
        raise ConfigError(f"{text!r} has a zone index (%...), which a tunnel address or route cannot use")


def normalize_cidr(text: str) -> Network:
    """``192.168.55.12/24`` -> ``192.168.55.0/24``; host bits are dropped, not refused."""
    value = text.strip()
    _check_form(text, value)
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ConfigError(f"{text!r} is not a valid CIDR: {exc}") from None


def parse_interface(text: str, version: int) -> Interface:
    """An address for the TUN device with its prefix, e.g. ``192.168.3.1/24`` or ``fd00::1/64``."""
    value = text.strip()
    _check_form(text, value)
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError as exc:
        raise ConfigError(f"{text!r} is not a valid address/prefix: {exc}") from None
    if iface.version != version:
        raise ConfigError(f"{text!r} is not an IPv{version} address")
    return iface


def routes_for(interfaces: list[Interface], extra: list[Network]) -> list[Network]:
    """Routes to install: each address's own network, then the extra routes, without repeats."""
    seen: list[Network] = []
    for net in [i.network for i in interfaces] + list(extra):
        if net not in seen:
            seen.append(net)
    return seen
