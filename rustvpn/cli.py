"""Command line: the seed's `server|client|tcpserver|tcpclient` with their flags and defaults;
`run`/`check` for the daemon's YAML file, `status` for live state, `certs` for throwaway PKI."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rustvpn import DEFAULT_BUILD_ID, __version__
from rustvpn.errors import RustvpnError
from rustvpn.log_setup import resolve_level, setup_logging
from rustvpn.settings import (
    DEFAULT_CONTROL_PORT,
    DEFAULT_DATA_PORT,
    DEFAULT_DEVICE,
    DEFAULT_MTU,
    DEFAULT_QUIC_PORT,
    DEFAULT_STREAMS,
    Role,
    Transport,
    TunnelConfig,
    build_config,
)
from rustvpn.status import DEFAULT_RUNTIME_ROOT, default_socket_path

if TYPE_CHECKING:
    from rustvpn.config_file import LoadedConfig

log = logging.getLogger("rustvpn")

# Subcommand -> (transport, role)
MODES: dict[str, tuple[Transport, Role]] = {
    "server": ("quic", "server"),
    "client": ("quic", "client"),
    "tcpserver": ("tcp", "server"),
    "tcpclient": ("tcp", "client"),
}

# Config key -> the flag that sets it, per role (for error messages).
_FLAG_NAMES = {
    ("server", "cert"): "--server-cert",
    ("server", "key"): "--server-key",
    ("client", "cert"): "--client-cert",
    ("client", "key"): "--client-key",
    ("server", "routes"): "--route",
    ("client", "routes"): "--route",
}


def _common_tunnel_flags(p: argparse.ArgumentParser, role: Role) -> None:
    p.add_argument("-d", "--device", default=DEFAULT_DEVICE, help="TUN device name (default: %(default)s)")
    p.add_argument("--ca-bundle", default="ca.pem", help="CA bundle (PEM) that signs the peer (default: %(default)s)")
    if role == "server":
        p.add_argument("--server-cert", default="server.pem", help="server certificate (PEM) (default: %(default)s)")
        p.add_argument("--server-key", default="server.key", help="server private key (PEM) (default: %(default)s)")
    else:
        p.add_argument("--client-cert", default="client.pem", help="client certificate (PEM) (default: %(default)s)")
        p.add_argument("--client-key", default="client.key", help="client private key (PEM) (default: %(default)s)")
    p.add_argument("--peer-cn", help="expected common name (CN) of the peer's certificate")
    p.add_argument(
        "--stream-count",
        default=str(DEFAULT_STREAMS),
        help="number of data streams/connections, 1-100 (default: %(default)s)",
    )
    p.add_argument("--mtu", default=str(DEFAULT_MTU), help="MTU of the TUN device, 100-1500 (default: %(default)s)")
    p.add_argument("--ipv4", help="IPv4 address/prefix for the TUN device, e.g. 192.168.3.1/24")
    p.add_argument("--ipv6", help="IPv6 address/prefix for the TUN device, e.g. 2001:db8::1/64")
    p.add_argument(
        "--route", action="append", default=[], metavar="CIDR", help="route to send through the tunnel (repeatable)"
    )
    p.add_argument(
        "--build-id",
        default=DEFAULT_BUILD_ID,
        help="build id sent in the config exchange; must equal the peer's (default: %(default)s)",
    )
    p.add_argument("--status-socket", metavar="PATH", help="serve live state on this Unix socket, for `rustvpn status`")
    p.add_argument(
        "--log-level",
        choices=("error", "warn", "info", "debug", "trace"),
        help="log level (default: from RUST_LOG, else info)",
    )


def _datagram_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-datagrams",
        dest="datagrams",
        action="store_const",
        const=False,
        help="carry packets on the data streams only, never as QUIC DATAGRAM frames (offered by default; "
        "used only when the peer offers them too)",
    )


def _offload_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-offload",
        dest="offload",
        action="store_const",
        const=False,
        help="do not offer TUN segmentation offload (64 KB segments carried whole between two rustvpn peers)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rustvpn", description="Point-to-point VPN over QUIC or TLS/TCP.")
    parser.add_argument("--version", action="version", version=f"rustvpn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("server", help="QUIC mode server (UDP; N streams on one QUIC connection)")
    p.add_argument(
        "-b", "--bind-address", default="0.0.0.0", help="address to listen on, IPv4 or IPv6 (default: %(default)s)"
    )
    p.add_argument("--port", default=str(DEFAULT_QUIC_PORT), help="UDP port to listen on (default: %(default)s)")
    _common_tunnel_flags(p, "server")
    _datagram_flag(p)

    p = sub.add_parser("client", help="QUIC mode client")
    p.add_argument("--server", required=True, help="server hostname or IP (also the TLS name checked)")
    p.add_argument("--port", default=str(DEFAULT_QUIC_PORT), help="server UDP port (default: %(default)s)")
    _common_tunnel_flags(p, "client")
    _datagram_flag(p)

    p = sub.add_parser("tcpserver", help="TCP mode server (TLS control plane + N TLS data connections)")
    p.add_argument("--control-bind-address", default="0.0.0.0", help="control plane address (default: %(default)s)")
    p.add_argument(
        "--control-port", default=str(DEFAULT_CONTROL_PORT), help="control plane port (default: %(default)s)"
    )
    p.add_argument("--data-bind-address", default="0.0.0.0", help="data plane address (default: %(default)s)")
    p.add_argument("--data-port", default=str(DEFAULT_DATA_PORT), help="data plane port (default: %(default)s)")
    _common_tunnel_flags(p, "server")
    _offload_flag(p)

    p = sub.add_parser("tcpclient", help="TCP mode client")
    p.add_argument("--server", required=True, help="server hostname or IP (also the TLS name checked)")
    p.add_argument(
        "--control-port", default=str(DEFAULT_CONTROL_PORT), help="control plane port (default: %(default)s)"
    )
    p.add_argument("--data-port", default=str(DEFAULT_DATA_PORT), help="data plane port (default: %(default)s)")
    _common_tunnel_flags(p, "client")
    _offload_flag(p)

    p = sub.add_parser("run", help="run the tunnel described by a YAML file (the systemd service's command)")
    p.add_argument(
        "--config", required=True, metavar="FILE", help="the tunnel's YAML file, e.g. /etc/rustvpn/NAME.yaml"
    )
    p.add_argument("--instance", metavar="NAME", help="instance name (default: the file name without .yaml)")

    p = sub.add_parser("check", help="validate a YAML file without running anything")
    p.add_argument("--config", required=True, metavar="FILE", help="the YAML file to check")

    p = sub.add_parser("status", help="live state of running instances (all when no NAME is given)")
    p.add_argument("names", nargs="*", metavar="NAME", help="instance names")
    p.add_argument("--json", action="store_true", help="machine-readable JSON")
    p.add_argument("--runtime-dir", default=DEFAULT_RUNTIME_ROOT, metavar="DIR",
                   help="where instances keep NAME/status.sock (default: %(default)s)")  # fmt: skip

    p = sub.add_parser("render", help="render the config template (the one Ansible uses) from a YAML mapping")
    p.add_argument("--vars", required=True, metavar="FILE", help="YAML mapping of settings (config keys, plus name)")
    p.add_argument("--check", action="store_true", help="also validate the result as `rustvpn check` would")

    p = sub.add_parser("certs", help="write a throwaway CA and server/client certificates (for tests and demos)")
    p.add_argument("--out", default=".", help="directory to write ca.pem, server.pem/.key, client.pem/.key into")
    p.add_argument(
        "--server-name",
        action="append",
        default=[],
        required=True,
        metavar="NAME",
        help="DNS name or IP address of the server, put in its certificate (repeatable)",
    )
    p.add_argument("--server-cn", default="rustvpn-server", help="server certificate CN (default: %(default)s)")
    p.add_argument("--client-cn", default="rustvpn-client", help="client certificate CN (default: %(default)s)")
    return parser


def config_from_args(args: argparse.Namespace) -> TunnelConfig:
    transport, role = MODES[args.command]
    values: dict[str, Any] = {
        key: getattr(args, key, None)
        for key in (
            "device",
            "ca_bundle",
            "peer_cn",
            "stream_count",
            "mtu",
            "ipv4",
            "ipv6",
            "build_id",
            "bind_address",
            "port",
            "status_socket",
            "control_bind_address",
            "control_port",
            "data_bind_address",
            "data_port",
            "server",
            "datagrams",
            "offload",
        )
    }
    values["log_level"] = resolve_level(args.log_level)
    values["routes"] = args.route
    values["cert"] = getattr(args, f"{role}_cert")
    values["key"] = getattr(args, f"{role}_key")

    def flag(key: str) -> str:
        return _FLAG_NAMES.get((role, key), "--" + key.replace("_", "-"))

    return build_config(transport, role, values, flag)


def _write_certs(args: argparse.Namespace) -> None:
    from rustvpn.pki import write_demo_set

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = write_demo_set(out, args.server_name, server_cn=args.server_cn, client_cn=args.client_cn)
    for path in paths.values():
        print(path)


def _load_config_file(path: str, instance: str | None = None) -> LoadedConfig:
    # Start-up time: only a config file needs YAML (~30 ms to import), not the seed commands.
    from rustvpn.config_file import load_config_file

    return load_config_file(path, instance)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "certs":
            _write_certs(args)
            return 0
        if args.command == "status":
            from rustvpn.status_format import status_command

            return status_command(args.names, args.json, args.runtime_dir)
        if args.command == "render":
            from rustvpn.config_file import parse_config_text
            from rustvpn.render import render_vars_file

            text = render_vars_file(args.vars)
            if args.check:
                parse_config_text(text, f"{args.vars} (rendered)", "render")
            sys.stdout.write(text)
            return 0
        if args.command == "check":
            loaded = _load_config_file(args.config)
            cfg = loaded.config
            print(f"{args.config}: ok ({cfg.transport} {cfg.role}, device {cfg.device}, {cfg.stream_count} streams)")
            return 0
        instance = ""
        if args.command == "run":
            loaded = _load_config_file(args.config, args.instance)
            config, instance = loaded.config, loaded.instance
            if config.status_socket is None:
                config = dataclasses.replace(config, status_socket=default_socket_path(instance))
        else:
            config = config_from_args(args)
            # A seed command with a status socket is named after the socket's directory.
            instance = Path(config.status_socket).parent.name if config.status_socket else ""
        setup_logging(config.log_level, instance=instance, transport=config.transport)
        # Start-up time: only running a tunnel needs asyncio (~50 ms to import), not --help or check.
        from rustvpn import event_loop

        event_loop.run(_run(config, instance))
        return 0
    except RustvpnError as exc:
        print(f"rustvpn: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


async def _run(config: TunnelConfig, instance: str) -> None:
    from rustvpn.app import run_tunnel

    await run_tunnel(config, instance)


if __name__ == "__main__":
    sys.exit(main())
