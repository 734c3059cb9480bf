"""Secrets: no token, key or packet payload ever reaches a log line or `rustvpn status`, at any
log level; tokens are compared in constant time.

The live tunnel's daemons run at log level trace and server B at debug (see world.py). A hand-written
peer learns both tokens of a session with B (its own, and the server's from the exchange), and
traffic with a recognisable marker crosses both tunnels; then every log is searched.

Token generation (the `secrets` module, uniform over the alphabet, fresh each time) and
tokens_match's results are unit-tested in tests/unit/test_token.py.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import secrets
import socket
from pathlib import Path

import pytest

import rustvpn
from tests.hostile.nettools import ns_socket
from tests.hostile.quic_peer import QuicPeer, client_quic
from tests.hostile.tcp_peer import TcpHandPeer, parse_text
from tests.hostile.world import A_TUN_SERVER, World

TOKEN_RUN = re.compile(r"(?<![0-9A-Za-z])[0-9A-Za-z]{32}(?![0-9A-Za-z])")


def token_like(text: str) -> list[str]:
    """32-character runs of the token alphabet that mix cases and digits, as every real token does
    (a hostile peer's echoed '999...' in a refusal is not one)."""
    return [run for run in TOKEN_RUN.findall(text) if len({c.isdigit() + 2 * c.isupper() for c in run}) == 3]


PACKAGE = Path(rustvpn.__file__).parent


def key_lines(path: Path) -> list[str]:
    """The base64 lines of a PEM private key: any one of them in a log is a leak."""
    return [line for line in path.read_text().splitlines() if line and not line.startswith("-----")]


@pytest.fixture(params=["tcp", "quic"])
def world(request: pytest.FixtureRequest) -> World:
    return request.getfixturevalue(f"{request.param}_world")  # type: ignore[no-any-return]


@pytest.mark.root
@pytest.mark.hostile
def test_no_token_key_or_payload_in_any_log(world: World) -> None:
    marker = b"RV" + secrets.token_hex(6).encode()  # 14 bytes: fits ping's 16-byte pattern
    tokens = session_with_b(world, marker)
    assert all(len(t) == 32 for t in tokens)

    # Through the live tunnel (both daemons at trace): ICMP with the marker as its pattern, and a
    # UDP datagram whose ICMP port-unreachable answer carries it back.
    ping = world.pair.run(
        world.client_ns, "ping", "-c", "3", "-i", "0.2", "-p", marker.hex(), A_TUN_SERVER, check=False
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    udp = ns_socket(world.client_ns, socket.AF_INET, socket.SOCK_DGRAM)
    with udp:
        udp.sendto(b"payload " + marker * 10, (A_TUN_SERVER, 9))

    pki = world.pki
    secrets_ = {f"token {t}": t for t in tokens}
    secrets_ |= {"marker": marker.decode(), "marker in hex": marker.hex()}
    for key in (pki.server_key, pki.client_key):
        secrets_ |= {f"{key.name} line {n}": line for n, line in enumerate(key_lines(key))}
    for daemon in (world.a_server, world.a_client, world.b_server):
        text = daemon.log()
        assert re.search(r"DEBUG", text), f"{daemon.name} did not log at debug level: the test would prove nothing"
        for what, secret in secrets_.items():
            assert secret not in text, f"{daemon.name} logged a secret ({what})"
        leaked = token_like(text)
        assert not leaked, f"{daemon.name} logged token-like strings: {leaked[:3]}"
        status = json.dumps(daemon.status())
        assert not token_like(status) and marker.decode() not in status, f"{daemon.name} status: {status}"


def session_with_b(world: World, marker: bytes) -> list[str]:
    """A session with B by hand, a marked ping through it; returns both tokens of the session."""
    if world.mode == "tcp":
        peer = TcpHandPeer(world)
        try:
            peer.establish()
            assert peer.ping(1, b"payload " + marker * 4), "no echo reply from B"
        finally:
            peer.close()
        return [peer.token, peer.server_token]

    async def main() -> list[str]:
        peer = await QuicPeer.open(world, client_quic(world))
        try:
            await peer.establish()
            assert await peer.ping(1, b"payload " + marker * 4), "no echo reply from B"
            return [peer.token, parse_text(peer.stream_bytes(4))["token"]]
        finally:
            peer.close()

    return asyncio.run(main())


def _mentions_token(node: ast.expr) -> bool:
    return isinstance(node, ast.Name | ast.Attribute) and "token" in ast.unparse(node).lower()


def test_tokens_are_only_compared_in_constant_time() -> None:
    """No ==, !=, `in` or `is` on a token anywhere in the package: only token.tokens_match, which
    must itself use hmac.compare_digest."""
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Compare)
                and any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn | ast.Is | ast.IsNot) for op in node.ops)
                and any(_mentions_token(operand) for operand in [node.left, *node.comparators])
            ):
                offenders.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "tokens compared with a timing leak:\n" + "\n".join(offenders)

    tree = ast.parse((PACKAGE / "token.py").read_text())
    match = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "tokens_match")
    calls = {ast.unparse(n.func) for n in ast.walk(match) if isinstance(n, ast.Call)}
    assert "hmac.compare_digest" in calls, calls
    imports = {alias.name for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom) for alias in n.names}
    assert "secrets" in imports and "random" not in imports, imports
