"""The daemon's YAML file: one file describes one tunnel (``/etc/rustvpn/NAME.yaml``).

Keys are the settings of the command line, by their config names. Everything is checked before
anything on the host is touched, and every error names the file, the line and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError

from rustvpn.errors import ConfigError
from rustvpn.log_setup import resolve_level
from rustvpn.settings import Role, Transport, TunnelConfig, build_config

_STR, _INT, _LIST, _BOOL = "text", "whole number", "list of CIDRs", "true or false"
# key -> expected YAML type. transport and role are required; the rest have defaults.
SCHEMA: dict[str, str] = {
    "transport": _STR,
    "role": _STR,
    "device": _STR,
    "bind_address": _STR,
    "port": _INT,
    "control_bind_address": _STR,
    "control_port": _INT,
    "data_bind_address": _STR,
    "data_port": _INT,
    "server": _STR,
    "ca_bundle": _STR,
    "cert": _STR,
    "key": _STR,
    "peer_cn": _STR,
    "stream_count": _INT,
    "mtu": _INT,
    "ipv4": _STR,
    "ipv6": _STR,
    "routes": _LIST,
    "build_id": _STR,
    "log_level": _STR,
    "status_socket": _STR,
    "datagrams": _BOOL,
    "offload": _BOOL,
}
_TRANSPORTS = ("quic", "tcp")
_ROLES = ("server", "client")
MAX_FILE_SIZE = 1 << 20
# A settings file nests two levels (a mapping holding a list); PyYAML's composer recurses per
# level, so a few hundred would end in RecursionError instead of an error naming the line.
MAX_DEPTH = 20
# What YAML 1.1 reads as booleans (an explicit !!bool tag can put anything else under that tag).
_TRUE = ("true", "yes", "on", "y")
_FALSE = ("false", "no", "off", "n")
# Decimal whole numbers, converted here; int() alone would also take other digits ("²" fails, "٣"
# is 3) and refuses more than 4300 of them with a ValueError.
_DECIMAL = re.compile(r"[-+]?[0-9]+")
_MAX_DIGITS = 18


class _Loader(yaml.SafeLoader):
    """SafeLoader whose composer refuses nesting deeper than MAX_DEPTH, at the line where it starts."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self._depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
            raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


@dataclass(frozen=True)
class LoadedConfig:
    path: str
    instance: str
    config: TunnelConfig


def instance_name(path: str) -> str:
    return Path(path).name.removesuffix(".yaml").removesuffix(".yml")


def load_config_file(path: str, instance: str | None = None, *, check_files: bool = True) -> LoadedConfig:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_SIZE:
        raise ConfigError(f"{path}: file too large ({len(raw)} bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_config_text(text, path, instance or instance_name(path), check_files=check_files)


def parse_config_text(text: str, path: str, instance: str, *, check_files: bool = True) -> LoadedConfig:
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.reader.ReaderError as exc:
        # A control character: the reader knows only the character offset, not a mark.
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(f"{path}:{line}: not valid YAML: character {exc.character!r} is not allowed") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if root is None:
        raise ConfigError(f"{path}: empty file (expected a mapping of settings)")
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:{root.start_mark.line + 1}: expected a mapping of settings at the top level")

    lines: dict[str, int] = {}
    values: dict[str, Any] = {}
    for key_node, value_node in root.value:
        line = key_node.start_mark.line + 1
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(key, str) or key not in SCHEMA:
            known = ", ".join(SCHEMA)
            raise ConfigError(f"{path}:{line}: unknown key {key!r} (known keys: {known})")
        if key in lines:
            raise ConfigError(f"{path}:{line}: {key}: repeated (first set on line {lines[key]})")
        lines[key] = line
        values[key] = _value(path, key, value_node)

    def name_of(key: str) -> str:
        return f"{path}:{lines[key]}: {key}" if key in lines else f"{path}: {key}"

    transport = values.get("transport")
    if transport not in _TRANSPORTS:
        raise ConfigError(f"{name_of('transport')}: {'required' if transport is None else repr(transport)}"
                          f" (one of: {', '.join(_TRANSPORTS)})")  # fmt: skip
    role = values.get("role")
    if role not in _ROLES:
        raise ConfigError(
            f"{name_of('role')}: {'required' if role is None else repr(role)} (one of: {', '.join(_ROLES)})"
        )
    _check_role_keys(values, str(role), name_of)
    if values.get("log_level") is None:
        values["log_level"] = resolve_level(None)  # RUST_LOG, as for the command line
    # Certificate paths relative to the file's own directory, not to wherever we were started
    # (systemd starts us in /).
    base = Path(path).parent
    for key in ("ca_bundle", "cert", "key"):
        if isinstance(values.get(key), str) and not values[key].startswith("/"):
            values[key] = str(base / values[key])
    t: Transport = "quic" if transport == "quic" else "tcp"
    r: Role = "server" if role == "server" else "client"
    config = build_config(t, r, values, name_of, check_files=check_files)
    return LoadedConfig(path=path, instance=instance, config=config)


def _value(path: str, key: str, node: yaml.Node) -> Any:
    """The value of one key, checked against its type; null means "use the default"."""
    line = node.start_mark.line + 1
    expected = SCHEMA[key]
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
        return None
    if expected == _LIST:
        if not isinstance(node, yaml.SequenceNode) or not all(isinstance(n, yaml.ScalarNode) for n in node.value):
            raise ConfigError(f"{path}:{line}: {key}: expected a list of CIDRs, e.g. [192.0.2.0/24]")
        return [_printable(path, key, n) for n in node.value]
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(f"{path}:{line}: {key}: expected a {expected}, not a {type(node).__name__[:-4].lower()}")
    if expected == _BOOL:
        if node.tag != "tag:yaml.org,2002:bool" or node.value.lower() not in _TRUE + _FALSE:
            raise ConfigError(f"{path}:{line}: {key}: expected {expected}, got {node.value!r}")
        return node.value.lower() in _TRUE
    if expected == _INT:
        if node.tag != "tag:yaml.org,2002:int":
            raise ConfigError(f"{path}:{line}: {key}: expected a {expected}, got {node.value!r}")
        # Other spellings YAML tags as int (0x10, 1_000, or anything under !!int) go on as text, and
        # the setting's own check says what is wrong with them.
        if not _DECIMAL.fullmatch(node.value):
            return _printable(path, key, node)
        if len(node.value.lstrip("+-")) > _MAX_DIGITS:
            raise ConfigError(f"{path}:{line}: {key}: {node.value[:_MAX_DIGITS]}... is out of range")
        return int(node.value, 10)
    if node.tag not in ("tag:yaml.org,2002:str", "tag:yaml.org,2002:int"):
        # A bare `yes` or `1.5` where text belongs is almost always a mistake; quote it if meant.
        raise ConfigError(f"{path}:{line}: {key}: expected {expected}, got {node.value!r} (quote it if it is meant)")
    # Scalars keep their source text, so a build id like 0012345 is not turned into 12345.
    return _printable(path, key, node)


def _printable(path: str, key: str, node: yaml.Node) -> str:
    """A scalar's text, refused if it holds a control or other non-printable character.

    No setting has a use for one, and a quoted "\\n" in a path or name would otherwise be printed
    as is by later errors, breaking the one-line rule.
    """
    text = str(node.value)
    if not text.isprintable():
        raise ConfigError(f"{path}:{node.start_mark.line + 1}: {key}: {text!r} contains a non-printable character")
    return text


_SERVER_ONLY = ("bind_address", "control_bind_address", "data_bind_address")
_CLIENT_ONLY = ("server",)


def _check_role_keys(values: dict[str, Any], role: str, name_of: Any) -> None:
    wrong = _CLIENT_ONLY if role == "server" else _SERVER_ONLY
    for key in wrong:
        if values.get(key) is not None:
            raise ConfigError(f"{name_of(key)}: not a setting of a {role} (remove it or change role)")
