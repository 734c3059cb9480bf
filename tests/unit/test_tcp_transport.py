"""rustvpn.tcp_transport over real TLS 1.3 on loopback sockets: no root and no TUN device needed.

A real TcpServer and real TcpClients (or hand-made peers speaking PROTOCOL.md's "TCP mode" byte
by byte) talk over 127.0.0.1, with 127.0.0.2 as "another source IP" (all of 127/8 is local on
Linux). Packets go into a recording sink instead of a TUN device: the thing under test is the
transport, the sink only records what the data connections deliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import ssl
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from rustvpn import DEFAULT_BUILD_ID, tcp_channel, tcp_transport
from rustvpn.config_exchange import OPTION_OFFLOAD
from rustvpn.errors import ExchangeMismatch, PeerRejected, RustvpnError, SystemSetupError
from rustvpn.offload import MAX_OFFLOAD_FRAME
from rustvpn.pki import new_authority, write_demo_set
from rustvpn.pump import PacketChannel, PacketPump
from rustvpn.session import Session
from rustvpn.settings import TunnelConfig, build_config
from rustvpn.tcp_channel import FramedConnection
from rustvpn.tcp_transport import TcpClient, TcpServer, TcpSession
from rustvpn.tls import client_context, server_context
from rustvpn.token import new_token

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
OTHER_LOOPBACK = "127.0.0.2"
SERVER_CN = "rustvpn-server"
CLIENT_CN = "rustvpn-client"
STREAMS = 3
MTU = 1400
TEST_TIMEOUT = 15.0  # a hard stop per test; each one normally takes well under 5 s
STEP = 4.0  # how long any single expected event may take on loopback
TOKEN_RUN = re.compile(r"(?<![0-9A-Za-z])[0-9A-Za-z]{32}(?![0-9A-Za-z])")


def run(coro: Coroutine[Any, Any, T], timeout: float = TEST_TIMEOUT) -> T:
    async def main() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# Certificates, ports, configs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_demo_set(tmp_path_factory.mktemp("pki"), [LOOPBACK])


@pytest.fixture(scope="module")
def foreign_certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same file set, issued by a CA the server and client do not trust."""
    return write_demo_set(tmp_path_factory.mktemp("other-pki"), [LOOPBACK], ca=new_authority("other"))


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out as free (all bound at once, so they are distinct)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in socks]


def server_config(certs: Mapping[str, Path], ports: Sequence[int], **over: Any) -> TunnelConfig:
    values: dict[str, Any] = {
        "ca_bundle": certs["ca"],
        "cert": certs["server_cert"],
        "key": certs["server_key"],
        "control_bind_address": LOOPBACK,
        "data_bind_address": LOOPBACK,
        "control_port": ports[0],
        "data_port": ports[1],
        "stream_count": STREAMS,
        "mtu": MTU,
        **over,
    }
    return build_config("tcp", "server", values, lambda k: k)


def client_config(certs: Mapping[str, Path], ports: Sequence[int], **over: Any) -> TunnelConfig:
    values: dict[str, Any] = {
        "ca_bundle": certs["ca"],
        "cert": certs["client_cert"],
        "key": certs["client_key"],
        "server": LOOPBACK,
        "control_port": ports[0],
        "data_port": ports[1],
        "stream_count": STREAMS,
        "mtu": MTU,
        **over,
    }
    return build_config("tcp", "client", values, lambda k: k)


# ---------------------------------------------------------------------------------------------
# Wire helpers for hand-made peers (PROTOCOL.md, "TCP mode")


def exchange_text(*, streams: int = STREAMS, mtu: int = MTU, token: str, build_id: str = DEFAULT_BUILD_ID) -> bytes:
    return f"build_id={build_id};number_of_streams={streams};mtu={mtu};token={token}".encode()


def parse_text(data: bytes) -> dict[str, str]:
    return dict(item.split("=", 1) for item in data.decode().split(";") if item)


def send_message(writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(len(payload).to_bytes(2, "big") + payload)


async def read_message(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(STEP):
        length = int.from_bytes(await reader.readexactly(2), "big")
        return await reader.readexactly(length)


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = STEP) -> bytes:
    """Everything the server sends until it closes or resets the connection."""
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    chunk = await reader.read(4096)
                except OSError:  # reset, or a TLS alert: closed either way
                    return data
                if not chunk:
                    return data
                data += chunk
    except TimeoutError:
        pytest.fail(f"the peer kept the connection open for {timeout} s (received {data!r})")


# ---------------------------------------------------------------------------------------------
# A recording sink in place of the pump, and a server with its clean-up


class Recorder:
    """Stands in for PacketPump: records what each channel delivers."""

    def __init__(self) -> None:
        self.got: dict[PacketChannel, list[bytes]] = defaultdict(list)
        self._changed = asyncio.Event()

    def deliver(self, channel: PacketChannel, packets: list[bytes]) -> None:
        self.got[channel].extend(packets)
        self._changed.set()

    async def wait(self, done: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(STEP):
                while not done():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"timed out waiting for {what}; got {dict(self.got)!r:.500}")


def bind(session: Session) -> Recorder:
    recorder = Recorder()
    session.bind(cast(PacketPump, recorder))
    return recorder


def conn(channel: PacketChannel) -> FramedConnection:
    assert isinstance(channel, FramedConnection)
    return channel


def counterpart(channel: PacketChannel, other: Session) -> PacketChannel:
    """The channel of the other side's session that is the same TCP connection."""
    mine = conn(channel)
    matches = [c for c in other.channels if (conn(c).peer, conn(c).local) == (mine.local, mine.peer)]
    assert len(matches) == 1, f"no single counterpart for {mine.local}->{mine.peer} among {len(other.channels)}"
    return matches[0]


async def ends_within(session: Session, what: str, timeout: float = STEP) -> str:
    try:
        return await asyncio.wait_for(asyncio.shield(session.ended), timeout)
    except TimeoutError:
        pytest.fail(f"{what} did not end within {timeout} s")


async def no_session_within(server: TcpServer, timeout: float) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(server.next_session(), timeout)


class Rig:
    def __init__(self, certs: Mapping[str, Path], server: TcpServer, ports: Sequence[int]) -> None:
        self.certs = certs
        self.server = server
        self.ports = ports
        self.sessions: list[Session] = []
        self.writers: list[asyncio.StreamWriter] = []

    def client_config(self, **over: Any) -> TunnelConfig:
        cfg = self.server.config
        defaults = {"stream_count": cfg.stream_count, "mtu": cfg.mtu, "build_id": cfg.build_id}
        return client_config(self.certs, self.ports, **{**defaults, **over})

    async def connect(self, **over: Any) -> Session:
        session = await TcpClient(self.client_config(**over)).connect()
        self.sessions.append(session)
        return session

    async def accept(self, timeout: float = STEP) -> Session:
        try:
            session = await asyncio.wait_for(self.server.next_session(), timeout)
        except TimeoutError:
            pytest.fail(f"the server established no session within {timeout} s")
        self.sessions.append(session)
        return session

    async def pair(self, **over: Any) -> tuple[Session, Session]:
        client = await self.connect(**over)
        return client, await self.accept()

    async def open_raw(
        self, plane: str, local_ip: str = LOOPBACK, *, tls: bool = True, cert_set: Mapping[str, Path] | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        files = cert_set or self.certs
        context = client_context(str(files["ca"]), str(files["client_cert"]), str(files["client_key"]))
        port = self.ports[0] if plane == "control" else self.ports[1]
        async with asyncio.timeout(STEP):
            reader, writer = await asyncio.open_connection(
                LOOPBACK,
                port,
                ssl=context if tls else None,
                server_hostname=LOOPBACK if tls else None,
                local_addr=(local_ip, 0),
            )
        self.writers.append(writer)
        return reader, writer

    async def hand_exchange(
        self, my_token: str, local_ip: str = LOOPBACK
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict[str, str]]:
        """Step 1 of TCP mode by hand: our config text out, the server's back."""
        cfg = self.server.config
        reader, writer = await self.open_raw("control", local_ip)
        send_message(writer, exchange_text(streams=cfg.stream_count, mtu=cfg.mtu, token=my_token))
        reply = parse_text(await read_message(reader))
        assert reply["number_of_streams"] == str(cfg.stream_count)
        assert re.fullmatch(r"[0-9A-Za-z]{32}", reply["token"])
        return reader, writer, reply

    async def aclose(self) -> None:
        for session in self.sessions:
            session.end("test over")
        for writer in self.writers:
            writer.close()
        await self.server.close()
        await asyncio.sleep(0.05)  # let the closing transports run their callbacks


@contextlib.asynccontextmanager
async def serving(certs: Mapping[str, Path], **over: Any) -> AsyncIterator[Rig]:
    for attempt in range(5):
        ports = free_ports(2)
        server = TcpServer(server_config(certs, ports, **over))
        try:
            await server.start()
        except SystemSetupError:  # another process took a port in between: pick again
            if attempt == 4:
                raise
            continue
        break
    rig = Rig(certs, server, ports)
    try:
        yield rig
    finally:
        await rig.aclose()


def sample_packets(tag: str, mtu: int) -> list[bytes]:
    """A few packets of various sizes, each unique, ending with one of exactly ``mtu`` bytes."""
    packets = [f"{tag}:{n}:".encode() + os.urandom(size) for n, size in enumerate((1, 40, 577))]
    packets.append(b"MTU" + os.urandom(mtu - 3))
    assert len(packets[-1]) == mtu
    return packets


async def check_flow(sender: Session, receiver: Session, recorder: Recorder, tag: str) -> None:
    """Frames written on each of the sender's channels arrive intact, in order, on the same connection."""
    expected: dict[PacketChannel, list[bytes]] = {}
    for index, channel in enumerate(sender.channels):
        packets = sample_packets(f"{tag}{index}", sender.params.mtu)
        channel.send_packets(packets)
        expected[counterpart(channel, receiver)] = packets
    await recorder.wait(lambda: sum(map(len, recorder.got.values())) >= sum(map(len, expected.values())), tag)
    await asyncio.sleep(0.05)  # anything extra (duplicates) would show up now
    assert dict(recorder.got) == expected


async def wait_for_log(caplog: pytest.LogCaptureFixture, *parts: str, timeout: float = STEP) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in caplog.records:
            message = record.getMessage()
            if all(part in message for part in parts):
                return message
        await asyncio.sleep(0.02)
    messages = [r.getMessage() for r in caplog.records]
    pytest.fail(f"no log line containing {parts!r}; got {messages!r}")


# ---------------------------------------------------------------------------------------------
# 1. Happy path


def test_session_set_up_and_frames_both_ways(certs: dict[str, Path]) -> None:
    async def main() -> None:
        async with serving(certs) as rig:
            client, server = await rig.pair()

            assert len(client.channels) == STREAMS
            assert len(server.channels) == STREAMS
            assert client.peer_cn == SERVER_CN
            assert server.peer_cn == CLIENT_CN
            for session in (client, server):
                assert session.params.build_id == DEFAULT_BUILD_ID
                assert session.params.number_of_streams == STREAMS
                assert session.params.mtu == MTU
                assert not session.ended.done()
            # Each side holds the other's fresh token (PROTOCOL.md: 32 chars of [0-9a-zA-Z]).
            assert re.fullmatch(r"[0-9A-Za-z]{32}", client.params.token)
            assert re.fullmatch(r"[0-9A-Za-z]{32}", server.params.token)
            assert client.params.token != server.params.token
            # Every data connection comes from the control connection's source IP, one per channel.
            assert [(conn(c).peer or ("?", 0))[0] for c in server.channels] == [LOOPBACK] * STREAMS
            for channel in client.channels:
                counterpart(channel, server)

            at_server, at_client = bind(server), bind(client)
            await check_flow(client, server, at_server, "up")
            await check_flow(server, client, at_client, "down")
            # Many frames in one write, split across TLS records, still arrive one by one.
            burst = [bytes([n % 251 + 1]) * (n % MTU + 1) for n in range(300)]
            channel = client.channels[0]
            channel.send_packets(burst)
            target = counterpart(channel, server)
            await at_server.wait(lambda: len(at_server.got[target]) >= 4 + len(burst), "burst")
            assert at_server.got[target][4:] == burst
            assert not server.ended.done() and not client.ended.done()

            # PROTOCOL.md: TCP_NODELAY on every socket, control and data, on both sides.
            for session in (client, server):
                assert isinstance(session, TcpSession)
                for connection in [session.control, *session.data]:
                    assert connection.transport is not None
                    sock = connection.transport.get_extra_info("socket")
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    run(main())


def test_frames_sent_before_the_receiver_binds_are_delivered_on_bind(certs: dict[str, Path]) -> None:
    async def main() -> None:
        async with serving(certs, stream_count=2) as rig:
            client, server = await rig.pair()
            packets = sample_packets("early", MTU)
            channel = client.channels[1]
            channel.send_packets(packets)
            await asyncio.sleep(0.2)  # they reach the server before it binds the session
            recorder = bind(server)
            target = counterpart(channel, server)
            await recorder.wait(lambda: len(recorder.got[target]) >= len(packets), "early frames")
            assert recorder.got[target] == packets

    run(main())


@pytest.mark.parametrize(
    "streams",
    [
        1,
        64,
        100,
    ],
)
def test_any_allowed_stream_count_gets_a_session(certs: dict[str, Path], streams: int) -> None:
    async def main() -> None:
        async with serving(certs, stream_count=streams) as rig:
            client, server = await rig.pair()
            assert len(client.channels) == len(server.channels) == streams
            recorder = bind(server)
            bind(client)
            await check_flow(client, server, recorder, "n")

    run(main())


# ---------------------------------------------------------------------------------------------
# 2. Session end and back to listening


def test_client_ending_the_session_ends_it_on_the_server_and_a_new_client_gets_in(certs: dict[str, Path]) -> None:
    async def main() -> None:
        async with serving(certs) as rig:
            client, server = await rig.pair()
            bind(client), bind(server)
            client.end("x")
            assert client.ended.result() == "x"
            reason = await ends_within(server, "the server session")
            assert reason

            client2, server2 = await rig.pair()
            assert server2 is not server
            assert len(server2.channels) == STREAMS
            recorder = bind(server2)
            bind(client2)
            await check_flow(client2, server2, recorder, "again")

    run(main())


def test_server_ending_the_session_ends_it_on_the_client(certs: dict[str, Path]) -> None:
    async def main() -> None:
        async with serving(certs) as rig:
            client, server = await rig.pair()
            bind(client), bind(server)
            server.end("server says bye")
            assert await ends_within(client, "the client session")
            await rig.pair()

    run(main())


def test_a_closed_connection_lets_go_of_its_read_buffer(certs: dict[str, Path]) -> None:
    """Each TLS transport reads into a 256 KB buffer. Transport and protocol refer to each other, so
    without help the buffer would wait for the cycle collector, and never go if the connection was
    alive when the daemon froze its start-up objects (app.settle_heap)."""

    async def main() -> None:
        async with serving(certs) as rig:
            client, server = await rig.pair()
            bind(client), bind(server)
            assert isinstance(client, TcpSession) and isinstance(server, TcpSession)
            transports = [
                cast(tcp_channel.TlsSocketTransport, c.transport)
                for session in (client, server)
                for c in [session.control, *session.data]
            ]
            assert all(len(t._buffer) == tcp_channel.READ_BUDGET for t in transports)
            server.end("bye")
            await ends_within(client, "the client session")
            await asyncio.sleep(0.1)  # the last close callbacks
            assert [len(t._buffer) for t in transports] == [0] * len(transports)

    run(main())


def test_closing_one_data_connection_ends_the_session(certs: dict[str, Path]) -> None:
    async def main() -> None:
        async with serving(certs) as rig:
            client, server = await rig.pair()
            bind(client), bind(server)
            conn(client.channels[-1]).close("one stream gone")
            assert await ends_within(server, "the server session")
            assert await ends_within(client, "the client session")

    run(main())


# ---------------------------------------------------------------------------------------------
# 3. One session at a time


def test_second_client_is_refused_while_a_session_is_active(certs: dict[str, Path]) -> None:
    async def main() -> None:
        async with serving(certs) as rig:
            client, server = await rig.pair()
            at_client, at_server = bind(client), bind(server)

            with pytest.raises(RustvpnError):
                await rig.connect()
            await asyncio.sleep(0.1)
            assert not server.ended.done()
            assert not client.ended.done()
            await check_flow(client, server, at_server, "still-up")
            await check_flow(server, client, at_client, "still-down")
            await no_session_within(rig.server, 0.2)

    run(main())


def test_second_client_is_refused_while_a_session_is_being_set_up(certs: dict[str, Path]) -> None:
    async def main() -> None:
        async with serving(certs) as rig:
            _reader, _writer, _reply = await rig.hand_exchange(new_token())
            with pytest.raises(RustvpnError):
                await rig.connect()

    run(main())


# ---------------------------------------------------------------------------------------------
# 4. Config exchange mismatches


@pytest.mark.parametrize(
    ("server_over", "client_over", "key", "ours", "theirs"),
    [
        ({"stream_count": 5}, {"stream_count": 3}, "number_of_streams", "3", "5"),
        ({"mtu": 1500}, {"mtu": 1400}, "mtu", "1400", "1500"),
        ({}, {"build_id": "rustvpn-other-build"}, "build_id", "rustvpn-other-build", DEFAULT_BUILD_ID),
    ],
    ids=["streams", "mtu", "build_id"],
)
def test_exchange_mismatch_is_named_and_the_server_stays_available(
    certs: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
    server_over: dict[str, Any],
    client_over: dict[str, Any],
    key: str,
    ours: str,
    theirs: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="rustvpn")

    def names(message: str) -> bool:
        words = set(re.findall(r"[\w.-]+", message))
        return key in words and ours in words and theirs in words

    async def main() -> None:
        async with serving(certs, **server_over) as rig:
            with pytest.raises(ExchangeMismatch) as caught:
                await rig.connect(**client_over)
            assert names(str(caught.value)), str(caught.value)
            # The server logs it too, naming the key and both values.
            logged = await wait_for_log(caplog, "refused", key)
            assert names(logged), logged

            client, server = await rig.pair()
            assert server.params.number_of_streams == rig.server.config.stream_count
            assert client.params.mtu == rig.server.config.mtu

    run(main())


# ---------------------------------------------------------------------------------------------
# 5-7. Data connections that must be turned away


def test_wrong_token_on_a_data_connection_fails_the_set_up(
    certs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rustvpn")

    async def main() -> None:
        async with serving(certs) as rig:
            my_token = new_token()
            control_r, _control_w, reply = await rig.hand_exchange(my_token)
            server_token = reply["token"]
            wrong = new_token()
            assert wrong != server_token

            data_r, data_w = await rig.open_raw("data")
            send_message(data_w, wrong.encode())
            assert await read_until_closed(data_r) == b"", "the server must not answer a wrong token"
            # The pending set-up failed: the server closed the control connection too.
            assert await read_until_closed(control_r) == b""
            await wait_for_log(caplog, "wrong token")
            await no_session_within(rig.server, 0.2)

            _client, server = await rig.pair()
            assert len(server.channels) == STREAMS

        text = "\n".join(r.getMessage() for r in caplog.records)
        for secret in (my_token, server_token, wrong):
            assert secret not in text

    run(main())


def test_data_connection_from_another_source_ip_is_refused(certs: dict[str, Path]) -> None:
    async def main() -> None:
        # One stream: if the intruding connection counted, it alone would complete the set-up.
        async with serving(certs, stream_count=1) as rig:
            my_token = new_token()
            _control_r, _control_w, reply = await rig.hand_exchange(my_token, LOOPBACK)
            server_token = reply["token"]

            data_r, data_w = await rig.open_raw("data", OTHER_LOOPBACK)
            send_message(data_w, server_token.encode())
            assert await read_until_closed(data_r) == b"", "the server answered a connection from another IP"
            await no_session_within(rig.server, 0.3)

            # The set-up is still pending: the right connection from the control IP completes it.
            data_r, data_w = await rig.open_raw("data", LOOPBACK)
            send_message(data_w, server_token.encode())
            assert await read_message(data_r) == my_token.encode()
            session = await rig.accept()
            assert len(session.channels) == 1
            peer = conn(session.channels[0]).peer
            assert peer is not None and peer[0] == LOOPBACK
            assert session.params.token == my_token

    run(main())


def test_data_connection_with_no_session_being_set_up_is_closed(
    certs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rustvpn.tcp")

    async def main() -> None:
        async with serving(certs) as rig:
            data_r, data_w = await rig.open_raw("data")
            send_message(data_w, new_token().encode())
            assert await read_until_closed(data_r) == b""
            await wait_for_log(caplog, "no session is being set up")
            await rig.pair()

    run(main())


def test_set_up_fails_when_data_connections_do_not_arrive_in_time(
    certs: dict[str, Path], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tcp_transport, "data_deadline", lambda _streams: 1.0)  # max(5, 2 x N) s in real life
    caplog.set_level(logging.WARNING, logger="rustvpn.tcp")

    async def main() -> None:
        async with serving(certs) as rig:
            control_r, _control_w, reply = await rig.hand_exchange(new_token())
            data_r, data_w = await rig.open_raw("data")  # only 1 of the 3 data connections
            send_message(data_w, reply["token"].encode())
            await read_message(data_r)
            started = time.monotonic()
            assert await read_until_closed(control_r) == b""
            assert 0.5 <= time.monotonic() - started <= 3.0
            assert await read_until_closed(data_r) == b""
            await wait_for_log(caplog, "only 1 of 3 data connections")
            await no_session_within(rig.server, 0.2)
            await rig.pair()

    run(main())


def test_failed_client_set_up_leaves_no_data_connection_behind(
    certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tcp_transport, "HANDSHAKE_TIMEOUT", 2.0)

    async def main() -> None:
        # A hand-made server: it answers the first data connection with a wrong token and lets the
        # other two wait, un-accepted, in the listen backlog until connect() has failed.
        loop = asyncio.get_running_loop()
        context = server_context(str(certs["ca"]), str(certs["server_cert"]), str(certs["server_key"]))
        server_token = new_token()
        writers: list[asyncio.StreamWriter] = []

        async def on_control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            await read_message(reader)
            send_message(writer, exchange_text(streams=STREAMS, mtu=MTU, token=server_token))
            await reader.read()

        async def accept_tls() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            sock, _ = await loop.sock_accept(listener)
            reader = asyncio.StreamReader()
            protocol = asyncio.StreamReaderProtocol(reader)
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=context, ssl_handshake_timeout=STEP
            )
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            writers.append(writer)
            return reader, writer

        control = await asyncio.start_server(on_control, LOOPBACK, 0, ssl=context)
        listener = socket.socket()
        try:
            listener.bind((LOOPBACK, 0))
            listener.listen(16)
            listener.setblocking(False)
            ports = [control.sockets[0].getsockname()[1], listener.getsockname()[1]]
            connecting = asyncio.ensure_future(TcpClient(client_config(certs, ports)).connect())

            reader, writer = await accept_tls()
            assert await read_message(reader) == server_token.encode()
            send_message(writer, new_token().encode())
            with pytest.raises(PeerRejected):
                await connecting

            # connect() has failed: its other attempts must be gone, not carry on by themselves.
            for _ in range(STREAMS - 1):
                try:
                    reader, _writer = await accept_tls()
                except OSError:
                    continue  # the client gave this attempt up: right
                assert await read_until_closed(reader, timeout=2.5) == b""
        finally:
            listener.close()
            control.close()
            for writer in writers:
                writer.close()
            await asyncio.sleep(0.05)

    run(main())


# ---------------------------------------------------------------------------------------------
# 8. Invalid frames on an established session


@pytest.mark.parametrize(
    ("offload", "length"),
    [(False, 0), (False, MTU + 1), (False, 0xFFFF), (True, 0), (True, MAX_OFFLOAD_FRAME + 1)],
    ids=["zero", "mtu+1", "max", "offload-zero", "offload-max+1"],
)
def test_invalid_frame_length_ends_the_session(certs: dict[str, Path], offload: bool, length: int) -> None:
    # Without offload a frame holds one MTU-sized packet; with offload agreed, a virtio header and
    # a segment of up to 64 KB.
    async def main() -> None:
        async with serving(certs, offload=offload) as rig:
            client, server = await rig.pair(offload=offload)
            assert (OPTION_OFFLOAD in client.params.options) is offload
            bind(client), bind(server)
            transport = conn(client.channels[0]).transport
            assert transport is not None
            transport.write(length.to_bytes(2, "big"))
            reason = await ends_within(server, "the server session")
            assert "frame length" in reason and str(length) in re.findall(r"\d+", reason), reason
            assert await ends_within(client, "the client session")

    run(main())


# ---------------------------------------------------------------------------------------------
# 9-10. TLS handshakes that never finish or fail


def test_silent_peer_is_dropped_after_the_handshake_timeout(
    certs: dict[str, Path], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tcp_transport, "HANDSHAKE_TIMEOUT", 1.0)
    caplog.set_level(logging.WARNING, logger="rustvpn.tcp")

    async def main() -> None:
        async with serving(certs) as rig:
            started = time.monotonic()
            silent = [await rig.open_raw(plane, tls=False) for plane in ("control", "data")]
            # Silent peers hold no lock: a real client gets a session meanwhile.
            client, server = await rig.pair()
            client.end("done")
            await ends_within(server, "the server session")

            for reader, _writer in silent:
                assert await read_until_closed(reader, timeout=3.0) == b""
            elapsed = time.monotonic() - started
            assert 0.8 <= elapsed <= 3.5, f"dropped after {elapsed:.2f} s, expected about 1 s"
            await wait_for_log(caplog, "TLS handshake from", "failed")

            await rig.pair()

    run(main())


def test_client_certificate_from_another_ca_is_refused(
    certs: dict[str, Path], foreign_certs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rustvpn.tcp")

    async def main() -> None:
        async with serving(certs) as rig:
            with pytest.raises(RustvpnError):
                await rig.connect(cert=foreign_certs["client_cert"], key=foreign_certs["client_key"])
            logged = await wait_for_log(caplog, "TLS handshake from", "failed")
            assert LOOPBACK in logged
            await no_session_within(rig.server, 0.2)
            await rig.pair()

    run(main())


def test_server_certificate_from_another_ca_is_refused_by_the_client(
    certs: dict[str, Path], foreign_certs: dict[str, Path]
) -> None:
    async def main() -> None:
        async with serving(certs) as rig:
            with pytest.raises(PeerRejected, match="TLS handshake"):
                await rig.connect(ca_bundle=foreign_certs["ca"])
            await rig.pair()

    run(main())


def test_peer_cn_is_enforced_on_both_sides(certs: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rustvpn.tcp")

    async def main() -> None:
        async with serving(certs, peer_cn="someone-else") as rig:
            with pytest.raises(RustvpnError):
                await rig.connect()
            await wait_for_log(caplog, "refusing control connection", CLIENT_CN)
            await no_session_within(rig.server, 0.2)
        async with serving(certs, peer_cn=CLIENT_CN) as rig:
            with pytest.raises(PeerRejected):
                await rig.connect(peer_cn="not-the-server")
            client, server = await rig.pair(peer_cn=SERVER_CN)
            assert client.peer_cn == SERVER_CN and server.peer_cn == CLIENT_CN

    run(main())


# ---------------------------------------------------------------------------------------------
# 11. Tokens never reach the log


def test_tokens_never_appear_in_debug_logs(certs: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="rustvpn")
    tokens: list[str] = []

    async def main() -> None:
        async with serving(certs) as rig:
            client, server = await rig.pair()
            tokens.extend([client.params.token, server.params.token])
            at_client, at_server = bind(client), bind(server)
            await check_flow(client, server, at_server, "up")
            await check_flow(server, client, at_client, "down")
            client.end("done")
            await ends_within(server, "the server session")

    run(main())
    assert len(tokens) == 2 and all(len(t) == 32 for t in tokens)
    assert any(r.name == "rustvpn.tcp" for r in caplog.records), "expected the transport to log its steps"
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "") + (record.stack_info or "")
        for token in tokens:
            assert token not in text, f"a token leaked into the log: {record.name}: {text}"
        assert not TOKEN_RUN.search(text), f"a token-like string in the log: {record.name}: {text}"


# ---------------------------------------------------------------------------------------------
# 12. The TLS transport's end of a connection: with or without the peer's close_notify


@pytest.mark.parametrize("close_notify", [True, False])
def test_a_peer_closing_with_or_without_close_notify_is_a_clean_close(
    certs: dict[str, Path], close_notify: bool
) -> None:
    """What the peer sent before closing is delivered, then the connection ends as "peer closed
    the connection" either way: a TCP stream that ends without TLS's close_notify (a ragged EOF,
    what a killed peer leaves) is no protocol error."""

    def send_and_close(peer: ssl.SSLSocket) -> None:
        try:
            peer.setblocking(True)
            peer.sendall(b"\x00\x03abc")  # one frame
            if close_notify:
                with contextlib.suppress(OSError):
                    peer.unwrap()  # sends close_notify (and waits for the answer that never comes)
        finally:
            peer.close()  # without unwrap: no close_notify

    async def main() -> str:
        loop = asyncio.get_running_loop()
        listener = socket.create_server((LOOPBACK, 0))
        listener.setblocking(False)
        port = listener.getsockname()[1]
        server_ctx = server_context(str(certs["ca"]), str(certs["server_cert"]), str(certs["server_key"]))
        client_ctx = client_context(str(certs["ca"]), str(certs["client_cert"]), str(certs["client_key"]))
        with listener:
            connecting = asyncio.ensure_future(
                tcp_channel.connect_tls(FramedConnection, LOOPBACK, port, client_ctx, server_hostname=LOOPBACK)
            )
            raw, _ = await loop.sock_accept(listener)
            peer = await tcp_channel.tls_handshake(raw, server_ctx, server_side=True)
            conn = await connecting
        closing = asyncio.ensure_future(asyncio.to_thread(send_and_close, peer))
        try:
            assert await conn.read_message(STEP) == b"abc"
            async with asyncio.timeout(STEP):
                return await conn.closed
        finally:
            await closing

    assert run(main()) == "peer closed the connection"
