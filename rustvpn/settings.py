"""The one validated, frozen description of a tunnel, built from CLI flags (and later YAML).

Every check names the setting it is about through ``name_of(key)``, so the same validation gives
``--mtu: ...`` for a flag and ``file:line: mtu: ...`` for a config file.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rustvpn import DEFAULT_BUILD_ID
from rustvpn.cidr import Network, normalize_cidr, parse_interface, routes_for
from rustvpn.config_exchange import MAX_STREAMS, MIN_STREAMS, OPTION_DATAGRAM, OPTION_OFFLOAD, check_build_id
from rustvpn.errors import ConfigError

Transport = Literal["quic", "tcp"]
Role = Literal["server", "client"]

DEFAULT_QUIC_PORT = 1105
DEFAULT_CONTROL_PORT = 1107
DEFAULT_DATA_PORT = 1108
DEFAULT_DEVICE = "rustvpn"
DEFAULT_STREAMS = 5
DEFAULT_MTU = 1500
CLI_MIN_MTU, CLI_MAX_MTU = 100, 1500
LOG_LEVELS = ("error", "warn", "warning", "info", "debug", "trace")


@dataclass(frozen=True)
class TunnelConfig:
    transport: Transport
    role: Role
    device: str = DEFAULT_DEVICE
    mtu: int = DEFAULT_MTU
    stream_count: int = DEFAULT_STREAMS
    ipv4: ipaddress.IPv4Interface | None = None
    ipv6: ipaddress.IPv6Interface | None = None
    routes: tuple[Network, ...] = ()
    ca_bundle: str = "ca.pem"
    cert: str = ""
    key: str = ""
    peer_cn: str | None = None
    build_id: str = DEFAULT_BUILD_ID
    log_level: str = "info"
    # Server side: where to listen. QUIC uses bind_address/port, TCP the control/data pairs.
    bind_address: str = "0.0.0.0"
    port: int = DEFAULT_QUIC_PORT
    control_bind_address: str = "0.0.0.0"
    control_port: int = DEFAULT_CONTROL_PORT
    data_bind_address: str = "0.0.0.0"
    data_port: int = DEFAULT_DATA_PORT
    # Client side: where to connect (hostname or IP; also the TLS SNI and name checked).
    server: str | None = None
    # Where the daemon serves its live state (rustvpn run); None = no status socket.
    status_socket: str | None = None
    # Offered to the peer, used when it offers them too (see config_exchange.KNOWN_OPTIONS):
    # QUIC DATAGRAM frames for packets, and TUN segmentation offload in TCP mode.
    datagrams: bool = True
    offload: bool = True

    def offered_options(self) -> frozenset[str]:
        if self.transport == "quic":
            return frozenset({OPTION_DATAGRAM}) if self.datagrams else frozenset()
        return frozenset({OPTION_OFFLOAD}) if self.offload else frozenset()

    @property
    def is_server(self) -> bool:
        return self.role == "server"

    def interfaces(self) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        return [i for i in (self.ipv4, self.ipv6) if i is not None]

    def all_routes(self) -> list[Network]:
        """The addresses' own networks plus every configured route, each once."""
        return routes_for(self.interfaces(), list(self.routes))


def _int_in(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value), 10)
        except ValueError:
            raise ConfigError(f"{name}: {value!r} is not a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value} is out of range {low}..{high}")
    return int(value)


def _device_name(name: str, value: Any) -> str:
    text = str(value)
    # Linux interface names: 1..15 bytes, no '/', no whitespace, not '.' or '..'.
    if not 0 < len(text.encode()) <= 15 or "/" in text or any(c.isspace() for c in text) or text in (".", ".."):
        raise ConfigError(f"{name}: {text!r} is not a valid interface name (1-15 characters, no '/' or spaces)")
    return text


def _address(name: str, value: Any) -> str:
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not an IPv4 or IPv6 address") from None
    return text


def _readable_file(name: str, value: Any) -> str:
    path = str(value)
    if not path:
        raise ConfigError(f"{name}: no file given")
    if not path.isprintable():
        raise ConfigError(f"{name}: {path!r} contains a non-printable character")
    if not os.path.isfile(path):
        raise ConfigError(f"{name}: {path}: no such file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{name}: {path}: not readable")
    return path


def _private_file(name: str, path: str) -> None:
    """A private key that other users can read is a leaked key: refuse it, as ssh does."""
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o004 or mode & 0o022:
        raise ConfigError(f"{name}: {path} is readable or writable by other users (mode {mode:04o}): chmod 600 {path}")


def build_config(
    transport: Transport,
    role: Role,
    values: Mapping[str, Any],
    name_of: Callable[[str], str],
    *,
    check_files: bool = True,
) -> TunnelConfig:
    """Validate raw settings (None = use the default) into a TunnelConfig; ConfigError names the key."""

    def get(key: str, default: Any) -> Any:
        value = values.get(key)
        return default if value is None else value

    kwargs: dict[str, Any] = {"transport": transport, "role": role}
    kwargs["device"] = _device_name(name_of("device"), get("device", DEFAULT_DEVICE))
    kwargs["mtu"] = _int_in(name_of("mtu"), get("mtu", DEFAULT_MTU), CLI_MIN_MTU, CLI_MAX_MTU)
    kwargs["stream_count"] = _int_in(
        name_of("stream_count"), get("stream_count", DEFAULT_STREAMS), MIN_STREAMS, MAX_STREAMS
    )
    for key, version in (("ipv4", 4), ("ipv6", 6)):
        raw = values.get(key)
        if raw is not None:
            try:
                kwargs[key] = parse_interface(str(raw), version)
            except ConfigError as exc:
                raise ConfigError(f"{name_of(key)}: {exc}") from None
    routes: list[Network] = []
    for raw in values.get("routes") or ():
        try:
            routes.append(normalize_cidr(str(raw)))
        except ConfigError as exc:
            raise ConfigError(f"{name_of('routes')}: {exc}") from None
    kwargs["routes"] = tuple(routes)

    build_id = str(get("build_id", DEFAULT_BUILD_ID))
    try:
        kwargs["build_id"] = check_build_id(build_id)
    except ValueError as exc:
        raise ConfigError(f"{name_of('build_id')}: {exc}") from None
    level = str(get("log_level", "info")).lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{name_of('log_level')}: {level!r} is not one of {', '.join(LOG_LEVELS)}")
    kwargs["log_level"] = level
    peer_cn = values.get("peer_cn")
    kwargs["peer_cn"] = None if peer_cn in (None, "") else str(peer_cn)
    if kwargs["peer_cn"] is not None and not kwargs["peer_cn"].isprintable():
        raise ConfigError(f"{name_of('peer_cn')}: {kwargs['peer_cn']!r} contains a non-printable character")

    file_check = _readable_file if check_files else (lambda _name, value: str(value))
    default_cert, default_key = ("server.pem", "server.key") if role == "server" else ("client.pem", "client.key")
    kwargs["ca_bundle"] = file_check(name_of("ca_bundle"), get("ca_bundle", "ca.pem"))
    kwargs["cert"] = file_check(name_of("cert"), get("cert", default_cert))
    kwargs["key"] = file_check(name_of("key"), get("key", default_key))
    if check_files:
        _private_file(name_of("key"), kwargs["key"])

    if role == "server":
        for key in ("bind_address", "control_bind_address", "data_bind_address"):
            kwargs[key] = _address(name_of(key), get(key, "0.0.0.0"))
    else:
        server = values.get("server")
        if server is None or not str(server).strip():
            raise ConfigError(f"{name_of('server')}: required for a client (hostname or IP of the server)")
        server = str(server).strip()
        if not server.isprintable():
            raise ConfigError(f"{name_of('server')}: {server!r} contains a non-printable character")
        kwargs["server"] = server[1:-1] if server.startswith("[") and server.endswith("]") else server
    status_socket = values.get("status_socket")
    if status_socket is not None:
        if not str(status_socket).startswith("/"):
            raise ConfigError(f"{name_of('status_socket')}: {status_socket!r} must be an absolute path")
        kwargs["status_socket"] = str(status_socket)
    for key, default in (
        ("port", DEFAULT_QUIC_PORT),
        ("control_port", DEFAULT_CONTROL_PORT),
        ("data_port", DEFAULT_DATA_PORT),
    ):
        kwargs[key] = _int_in(name_of(key), get(key, default), 1, 65535)
    if (
        transport == "tcp"
        and role == "server"
        and kwargs["control_port"] == kwargs["data_port"]
        and (kwargs["control_bind_address"] == kwargs["data_bind_address"])
    ):
        raise ConfigError(f"{name_of('data_port')}: must differ from {name_of('control_port')}")
    for key, mode in (("datagrams", "quic"), ("offload", "tcp")):
        raw = values.get(key)
        if raw is None:
            continue
        if not isinstance(raw, bool):
            raise ConfigError(f"{name_of(key)}: expected true or false, got {raw!r}")
        if transport != mode:
            raise ConfigError(f"{name_of(key)}: only a setting of {mode} mode (remove it or change transport)")
        kwargs[key] = raw
    return TunnelConfig(**kwargs)
