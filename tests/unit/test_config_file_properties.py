"""Properties of the YAML config loader beyond tests/unit/test_config_file.py, as the config_file fuzz
target checks them: files of known and unknown keys with values in every YAML form (quoted escapes,
explicit tags, block scalars, nested lists) either load, or fail with a ConfigError that is one line,
starts with the file name and gives a line of the file."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from rustvpn.config_file import SCHEMA, parse_config_text
from rustvpn.errors import ConfigError
from rustvpn.settings import TunnelConfig

PROPERTY = settings(database=None, deadline=None, max_examples=300)
PATH = "/etc/rustvpn/tun0.yaml"

words = st.sampled_from(
    ["quic", "tcp", "server", "client", "vpn.example.com", "1400", "5", "0x10", "1_000", "yes", "~", "ca.pem",
     "10.0.0.0/8", "fd00::1/64", "192.168.3.1/24", "0012345", "-1", "99999999999999999999999", "1.5", "", "--1",
     "\u00b2", "\u0663", "1" * 5000]
)  # fmt: skip
# Text that YAML escapes can carry into a value: line breaks of every kind, controls, wide characters.
escapes = st.lists(st.sampled_from(["a", "/", " ", "\\n", "\\t", "\\0", "\\x85", "\\u2028", "\\e", "\\u00e9", "1"]))
tags = st.sampled_from(["", "!!int ", "!!bool ", "!!str ", "!!null ", "!!float ", "!custom "])


@st.composite
def value(draw: st.DrawFn, depth: int = 0) -> str:
    form = draw(st.integers(0, 5 if depth < 2 else 3))
    if form == 0:
        return draw(words)
    if form == 1:
        return draw(tags) + '"' + "".join(draw(escapes)) + '"'
    if form == 2:
        return draw(tags) + draw(words)
    if form == 3:
        return "|\n  " + draw(words)  # a block scalar keeps its line break
    inner = draw(st.lists(value(depth + 1).filter(lambda v: "\n" not in v), max_size=3))
    if form == 4:
        return "[" + ", ".join(inner) + "]"
    return "{" + ", ".join(f"k{i}: {v}" for i, v in enumerate(inner)) + "}"


keys = st.sampled_from([*SCHEMA, "transport", "role", "routes", "unknown", "<<"])
files = st.lists(st.tuples(keys, value()), max_size=8).map(
    lambda items: "".join(f"{key}: {text}\n" for key, text in items)
)
base = st.sampled_from(["", "transport: quic\nrole: server\n", "transport: tcp\nrole: client\nserver: vpn\n"])


@PROPERTY
@given(head=base, body=files, check_files=st.booleans())
def test_any_file_loads_or_fails_with_one_line_naming_file_and_line(head: str, body: str, check_files: bool) -> None:
    text = head + body
    try:
        loaded = parse_config_text(text, PATH, "tun0", check_files=check_files)
    except ConfigError as err:
        message = str(err)
        assert len(message.splitlines()) == 1, message
        assert message.startswith(f"{PATH}:"), message
        line = re.match(re.escape(PATH) + r":(\d+): ", message)
        if line:
            assert 1 <= int(line[1]) <= len(text.splitlines()) + 1, message
        return
    assert isinstance(loaded.config, TunnelConfig)
