"""Filters of the rustvpn role: the inventory's tunnel list, checked and turned into instances.

The inventory describes tunnels as pairs (``rustvpn_tunnels``, see meta/argument_specs.yml). Two
filters work on that list on the controller, with nothing but the Python standard library (no
netaddr), so a bad inventory fails before any host is touched:

``rustvpn_tunnel_problems(tunnels, inventory_hosts)``
    every problem found, one line each, naming the tunnel and the key; an empty list when the list
    is good. The checks mirror what ``rustvpn check`` refuses on the host (rustvpn/settings.py),
    plus what only the whole list shows: duplicate names, hosts missing from the inventory,
    two tunnels on one host with the same device or listening port.

``rustvpn_host_instances(tunnels, host, hostvars, config_dir)``
    the instances (one per tunnel the host is in) with everything the tasks need: the role, the
    certificate's CN and SAN, file paths, and ``config``, the mapping that the shared template
    templates/tunnel.yaml.j2 renders into ``/etc/rustvpn/NAME.yaml`` (the same mapping that
    ``rustvpn render --vars FILE`` takes).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

NAME_RE = re.compile(r"^[a-z0-9_-]{1,15}$")
DNS_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
TRANSPORTS = ("quic", "tcp")
LOG_LEVELS = ("error", "warn", "warning", "info", "debug", "trace")
MTU_RANGE = (100, 1500)
STREAM_RANGE = (1, 100)
PORT_RANGE = (1, 65535)
DEFAULT_PORTS = {"port": 1105, "control_port": 1107, "data_port": 1108}
WILDCARDS = ("0.0.0.0", "::")

REQUIRED = ("name", "transport", "server", "client")
OPTIONAL = (
    "server_address",
    "bind_address",
    "port",
    "control_port",
    "data_port",
    "device",
    "server_ipv4",
    "client_ipv4",
    "server_ipv6",
    "client_ipv6",
    "server_routes",
    "client_routes",
    "stream_count",
    "mtu",
    "peer_cn_check",
    "build_id",
    "log_level",
    "offload",
    "datagrams",
)
# Switches that belong to one transport (the daemon refuses them in the other's config).
SWITCHES = {"offload": "tcp", "datagrams": "quic"}
KNOWN = REQUIRED + OPTIONAL


class _Problems:
    """Collects one message per problem, each naming the tunnel and the key."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, where: str, key: str | None, message: str) -> None:
        self.lines.append(f"{where}: {key}: {message}" if key else f"{where}: {message}")


def _where(index: int, tunnel: Any) -> str:
    name = tunnel.get("name") if isinstance(tunnel, dict) else None
    return f"rustvpn_tunnels[{index}] ({name})" if isinstance(name, str) and name else f"rustvpn_tunnels[{index}]"


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().lstrip("+").isdigit()


def _check_int(problems: _Problems, where: str, tunnel: dict[str, Any], key: str, low: int, high: int) -> None:
    if tunnel.get(key) is None:
        return
    value = tunnel[key]
    if not _is_int(value):
        problems.add(where, key, f"{value!r} is not a whole number")
    elif not low <= int(value) <= high:
        problems.add(where, key, f"{int(value)} is out of range {low}..{high}")


def _check_interface(problems: _Problems, where: str, tunnel: dict[str, Any], key: str, version: int) -> None:
    value = tunnel.get(key)
    if value is None:
        return
    example = "198.19.10.1/24" if version == 4 else "fd00:10::1/64"
    text = str(value).strip()
    if "/" not in text:
        problems.add(where, key, f"{value!r} is not address/prefix (CIDR), e.g. {example}")
        return
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError as exc:
        problems.add(where, key, f"{value!r} is not a valid address/prefix (CIDR): {exc}")
        return
    if iface.version != version:
        problems.add(where, key, f"{value!r} is not an IPv{version} address/prefix, e.g. {example}")


def _check_routes(problems: _Problems, where: str, tunnel: dict[str, Any], key: str) -> None:
    value = tunnel.get(key)
    if value is None:
        return
    if not isinstance(value, list):
        problems.add(where, key, f"expected a list of CIDRs, e.g. [192.0.2.0/24], not {value!r}")
        return
    for route in value:
        text = str(route).strip()
        try:
            if "/" not in text:
                raise ValueError("no /prefix")
            ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            problems.add(where, key, f"{route!r} is not a valid CIDR (network/prefix, e.g. 192.0.2.0/24): {exc}")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_dns_name(text: str) -> bool:
    name = text[:-1] if text.endswith(".") else text
    return 0 < len(name) <= 253 and all(DNS_LABEL_RE.match(label) for label in name.split("."))


def _server_address(tunnel: dict[str, Any], hostvars: Any) -> str:
    """What the client connects to (and the server certificate's SAN): the inventory's
    server_address, else the server's ansible_host, else its inventory name."""
    if tunnel.get("server_address"):
        return str(tunnel["server_address"]).strip()
    server = tunnel["server"]
    address = None
    if hostvars is not None and server in hostvars:
        address = hostvars[server].get("ansible_host")
    return str(address or server).strip()


def _unbracket(text: str) -> str:
    return text[1:-1] if text.startswith("[") and text.endswith("]") else text


def _listeners(tunnel: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(protocol, port, bind address) that the server side of a tunnel listens on."""
    bind = str(tunnel.get("bind_address") or "0.0.0.0")
    keys: tuple[str, ...] = ("port",) if tunnel.get("transport") == "quic" else ("control_port", "data_port")
    proto = "udp" if tunnel.get("transport") == "quic" else "tcp"
    result = []
    for key in keys:
        value = tunnel.get(key)
        port = int(str(value)) if _is_int(value) else DEFAULT_PORTS[key]
        result.append((proto, port, bind))
    return result


def tunnel_problems(tunnels: Any, inventory_hosts: Any = None) -> list[str]:
    """Everything wrong with the rustvpn_tunnels list, one line per problem (empty when good)."""
    problems = _Problems()
    if tunnels is None:
        return ["rustvpn_tunnels: not set (a list of tunnels; see ansible/inventory.example.yml)"]
    if not isinstance(tunnels, list):
        return [f"rustvpn_tunnels: expected a list of tunnels, not {type(tunnels).__name__}"]
    hosts = None if inventory_hosts is None else {str(h) for h in inventory_hosts}
    names: dict[str, int] = {}
    devices: dict[tuple[str, str], str] = {}  # (host, device) -> tunnel name
    listening: dict[tuple[str, str, int], list[tuple[str, str]]] = {}  # (host, proto, port) -> [(bind, tunnel)]

    for index, tunnel in enumerate(tunnels):
        where = _where(index, tunnel)
        if not isinstance(tunnel, dict):
            problems.add(where, None, f"expected a mapping of settings, not {tunnel!r}")
            continue
        for key in tunnel:
            if key not in KNOWN:
                problems.add(where, str(key), f"unknown key (known keys: {', '.join(KNOWN)})")
        for key in REQUIRED:
            if tunnel.get(key) in (None, ""):
                problems.add(where, key, "required")

        name = tunnel.get("name")
        if name not in (None, ""):
            if not isinstance(name, str) or not NAME_RE.match(name):
                problems.add(where, "name", f"{name!r} must be 1-15 of a-z, 0-9, '_' and '-' (it names rustvpn@NAME)")
            elif name in names:
                problems.add(where, "name", f"{name!r} is used twice (also rustvpn_tunnels[{names[name]}])")
            else:
                names[name] = index

        transport = tunnel.get("transport")
        if transport not in (None, "") and transport not in TRANSPORTS:
            problems.add(where, "transport", f"{transport!r} is not one of: {', '.join(TRANSPORTS)}")

        server, client = tunnel.get("server"), tunnel.get("client")
        for key, host in (("server", server), ("client", client)):
            if host in (None, ""):
                continue
            if not isinstance(host, str):
                problems.add(where, key, f"{host!r} must be an inventory host name")
            elif hosts is not None and host not in hosts:
                problems.add(where, key, f"{host!r} is not a host of the inventory group 'rustvpn'")
        if server not in (None, "") and server == client:
            problems.add(where, "client", f"{client!r} is also the server: a tunnel joins two different hosts")

        for key in ("port", "control_port", "data_port"):
            _check_int(problems, where, tunnel, key, *PORT_RANGE)
        if transport == "tcp" and tunnel.get("port") is not None:
            problems.add(where, "port", "is for quic tunnels; a tcp tunnel uses control_port and data_port")
        if transport == "quic":
            for key in ("control_port", "data_port"):
                if tunnel.get(key) is not None:
                    problems.add(where, key, "is for tcp tunnels; a quic tunnel uses port")
        if transport == "tcp":
            control = tunnel.get("control_port", DEFAULT_PORTS["control_port"])
            data = tunnel.get("data_port", DEFAULT_PORTS["data_port"])
            if _is_int(control) and _is_int(data) and int(control) == int(data):
                problems.add(where, "data_port", f"{int(data)} must differ from control_port")

        _check_int(problems, where, tunnel, "stream_count", *STREAM_RANGE)
        _check_int(problems, where, tunnel, "mtu", *MTU_RANGE)

        for side in ("server", "client"):
            _check_interface(problems, where, tunnel, f"{side}_ipv4", 4)
            _check_interface(problems, where, tunnel, f"{side}_ipv6", 6)
            _check_routes(problems, where, tunnel, f"{side}_routes")
        for family in ("ipv4", "ipv6"):
            has_server = tunnel.get(f"server_{family}") is not None
            has_client = tunnel.get(f"client_{family}") is not None
            if has_server != has_client:
                missing = f"client_{family}" if has_server else f"server_{family}"
                problems.add(where, missing, f"required when {'server' if has_server else 'client'}_{family} is set")
            elif (
                has_server
                and str(tunnel[f"server_{family}"]).split("/")[0] == str(tunnel[f"client_{family}"]).split("/")[0]
            ):
                problems.add(where, f"client_{family}", "must differ from the server's address")
        if all(tunnel.get(f"{side}_{family}") is None for side in ("server", "client") for family in ("ipv4", "ipv6")):
            problems.add(where, "server_ipv4", "a tunnel needs addresses: set server_ipv4/client_ipv4 and/or *_ipv6")

        device = tunnel.get("device")
        if device is not None:
            text = str(device)
            if not 0 < len(text.encode()) <= 15 or "/" in text or any(c.isspace() for c in text) or text in (".", ".."):
                problems.add(
                    where, "device", f"{device!r} is not a valid interface name (1-15 characters, no '/' or spaces)"
                )

        address = tunnel.get("server_address")
        if address is not None:
            text = _unbracket(str(address).strip())
            if not text or not (_is_ip(text) or _is_dns_name(text)):
                problems.add(where, "server_address", f"{address!r} is neither an IP address nor a DNS name")
        bind = tunnel.get("bind_address")
        if bind is not None and not _is_ip(_unbracket(str(bind).strip())):
            problems.add(where, "bind_address", f"{bind!r} is not an IPv4 or IPv6 address")

        if tunnel.get("peer_cn_check") is not None and not isinstance(tunnel["peer_cn_check"], bool):
            problems.add(where, "peer_cn_check", f"{tunnel['peer_cn_check']!r} is not true or false")
        for key, mode in SWITCHES.items():
            value = tunnel.get(key)
            if value is None:
                continue
            if not isinstance(value, bool):
                problems.add(where, key, f"{value!r} is not true or false")
            elif transport != mode:
                problems.add(where, key, f"only a setting of {mode} tunnels")
        level = tunnel.get("log_level")
        if level is not None and str(level).lower() not in LOG_LEVELS:
            problems.add(where, "log_level", f"{level!r} is not one of: {', '.join(LOG_LEVELS)}")
        build_id = tunnel.get("build_id")
        if build_id is not None and not str(build_id).strip():
            problems.add(where, "build_id", "must not be empty (leave it out for the package's default)")

        # What only the whole list shows: two instances on one host fighting over a device or a port.
        if not isinstance(name, str) or not NAME_RE.match(name) or transport not in TRANSPORTS:
            continue
        dev = str(device) if device is not None else name
        for host in (server, client):
            if not isinstance(host, str) or not host:
                continue
            other = devices.setdefault((host, dev), name)
            if other != name:
                problems.add(where, "device", f"{dev!r} is also the device of tunnel {other!r} on host {host!r}")
        if isinstance(server, str) and server:
            for proto, port, bind_addr in _listeners(tunnel):
                seen = listening.setdefault((server, proto, port), [])
                for other_bind, other in seen:
                    if other == name:
                        continue  # control_port == data_port is reported above
                    if bind_addr == other_bind or bind_addr in WILDCARDS or other_bind in WILDCARDS:
                        problems.add(
                            where,
                            None,
                            f"{proto} port {port} on host {server!r} is also used by tunnel {other!r}"
                            " (set port, or control_port/data_port, to a free one)",
                        )
                        break
                seen.append((bind_addr, name))
    return problems.lines


def _interface_address(value: Any) -> str | None:
    return None if value is None else str(ipaddress.ip_interface(str(value).strip()).ip)


def host_instances(
    tunnels: Any, host: str, hostvars: Any = None, config_dir: str = "/etc/rustvpn"
) -> list[dict[str, Any]]:
    """The rustvpn instances that `host` runs: one per tunnel it is the server or the client of."""
    result: list[dict[str, Any]] = []
    for tunnel in tunnels or []:
        if host not in (tunnel["server"], tunnel["client"]):
            continue
        role = "server" if tunnel["server"] == host else "client"
        peer_role = "client" if role == "server" else "server"
        name = str(tunnel["name"])
        transport = str(tunnel["transport"])
        directory = f"{config_dir}/{name}"
        address = _unbracket(_server_address(tunnel, hostvars))
        config: dict[str, Any] = {
            "name": name,
            "transport": transport,
            "role": role,
            "device": str(tunnel.get("device") or name),
            "ca_bundle": f"{directory}/ca.pem",
            "cert": f"{directory}/{role}.pem",
            "key": f"{directory}/{role}.key",
            "stream_count": int(tunnel.get("stream_count") if tunnel.get("stream_count") is not None else 5),
            "mtu": int(tunnel.get("mtu") if tunnel.get("mtu") is not None else 1500),
        }
        ports = ("port",) if transport == "quic" else ("control_port", "data_port")
        for key in ports:
            config[key] = int(tunnel[key]) if tunnel.get(key) is not None else DEFAULT_PORTS[key]
        if role == "server":
            # Listen where the client will come from; an IPv6 server address needs an IPv6 socket.
            bind = tunnel.get("bind_address")
            if bind is None:
                bind = "::" if _is_ip(address) and ipaddress.ip_address(address).version == 6 else "0.0.0.0"
            bind = _unbracket(str(bind).strip())
            for key in ("bind_address",) if transport == "quic" else ("control_bind_address", "data_bind_address"):
                config[key] = bind
        else:
            config["server"] = address
        if tunnel.get("peer_cn_check"):
            config["peer_cn"] = f"{name}-{peer_role}"
        for family in ("ipv4", "ipv6"):
            if tunnel.get(f"{role}_{family}") is not None:
                config[family] = str(tunnel[f"{role}_{family}"]).strip()
        config["routes"] = [str(route).strip() for route in tunnel.get(f"{role}_routes") or []]
        for key in ("build_id", "log_level"):
            if tunnel.get(key) is not None:
                config[key] = str(tunnel[key])
        for key in SWITCHES:
            if isinstance(tunnel.get(key), bool):
                config[key] = tunnel[key]

        # The server certificate names what the client connects to; the client's names nothing.
        san = [("IP:" if _is_ip(address) else "DNS:") + address] if role == "server" else []
        # The client proves the tunnel by pinging the server's tunnel addresses.
        ping: list[str] = []
        if role == "client":
            for family in ("ipv4", "ipv6"):
                peer_address = _interface_address(tunnel.get(f"server_{family}"))
                if peer_address:
                    ping.append(peer_address)
        result.append(
            {
                "name": name,
                "role": role,
                "peer": tunnel[peer_role],
                "transport": transport,
                "cn": f"{name}-{role}",
                "san": san,
                "extended_key_usage": ["serverAuth"] if role == "server" else ["clientAuth"],
                "dir": directory,
                "key_path": f"{directory}/{role}.key",
                "csr_path": f"{directory}/{role}.csr",
                "cert_path": f"{directory}/{role}.pem",
                "ca_path": f"{directory}/ca.pem",
                "config_path": f"{config_dir}/{name}.yaml",
                "pki_stem": f"{name}-{role}",
                "ping": ping,
                "config": config,
            }
        )
    return result


class FilterModule:
    """rustvpn role filters (see the module docstring)."""

    def filters(self) -> dict[str, Any]:
        return {
            "rustvpn_tunnel_problems": tunnel_problems,
            "rustvpn_host_instances": host_instances,
        }
