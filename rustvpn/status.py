"""The daemon's live status, served on a Unix socket in its runtime directory.

Protocol: the client sends one request line (``status`` or ``{"version": 1, "command": "status"}``)
and gets one JSON line back: ``{"version": 1, "ok": true, "status": {...}}`` or
``{"version": 1, "ok": false, "error": "..."}``. Access needs both the socket's mode (0660) and a
SO_PEERCRED check, so a too-open directory or socket mode alone does not expose the tunnel.
The status never carries the token or key material.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rustvpn import __version__
from rustvpn.errors import RustvpnError, SystemSetupError

if TYPE_CHECKING:
    # Type-only: `rustvpn status` imports this module and should not pull in the transports.
    from rustvpn.session import Session
    from rustvpn.settings import TunnelConfig
    from rustvpn.stats import TunnelState

log = logging.getLogger("rustvpn.status")

STATUS_VERSION = 1
DEFAULT_RUNTIME_ROOT = "/run/rustvpn"
SOCKET_NAME = "status.sock"
MAX_REQUEST = 4096  # bytes in a request line, newline not counted
REQUEST_TIMEOUT = 5.0  # seconds for a whole exchange, from accept to reply written
MAX_CLIENTS = 16
MAX_REPLY = 1 << 20  # client side: a status with 100 streams is ~15 KiB
_CLOSE_GRACE = 1.0  # seconds for a client to take its reply and hang up before we abort

# struct ucred {pid_t pid; uid_t uid; gid_t gid;}: uid/gid are unsigned (nobody may be 4294967294).
_UCRED = struct.Struct("iII")
# Linux >= 4.13 reports the peer's supplementary groups; Python 3.11 does not export the constant.
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)

_STATUS_REQUEST = json.dumps({"version": STATUS_VERSION, "command": "status"}).encode() + b"\n"


class StatusUnavailable(RustvpnError):
    """The status of an instance could not be read; the message is one line for people.

    ``not_running`` tells "no daemon there" (LSB status exit code 3) from "could not ask" (4).
    """

    def __init__(self, message: str, *, not_running: bool = False) -> None:
        super().__init__(message)
        self.not_running = not_running
        self.exit_code = 3 if not_running else 4


def socket_path(instance: str, root: str = DEFAULT_RUNTIME_ROOT) -> str:
    return os.path.join(root, instance, SOCKET_NAME)


def default_socket_path(instance: str) -> str:
    return socket_path(instance, DEFAULT_RUNTIME_ROOT)


# ---------------------------------------------------------------------------------------------
# The snapshot


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _endpoints(config: TunnelConfig) -> dict[str, str]:
    """Where the server listens, or where the client connects, keyed by what each port carries."""
    if config.is_server:
        if config.transport == "quic":
            return {"quic": _host_port(config.bind_address, config.port)}
        return {
            "control": _host_port(config.control_bind_address, config.control_port),
            "data": _host_port(config.data_bind_address, config.data_port),
        }
    host = config.server or ""
    if config.transport == "quic":
        return {"quic": _host_port(host, config.port)}
    return {"control": _host_port(host, config.control_port), "data": _host_port(host, config.data_port)}


def snapshot(instance: str, config: TunnelConfig, state: TunnelState, session: Session | None) -> dict[str, Any]:
    """The JSON-able live state of one tunnel. Built field by field so no secret can ride along."""
    now = time.monotonic()  # the clock TunnelState's timestamps come from
    peer: dict[str, Any] | None = None
    streams: list[dict[str, Any]] = []
    mtu, stream_count = config.mtu, config.stream_count
    if session is not None:
        # The negotiated values; validation makes them equal to ours, but report what is in use.
        mtu, stream_count = session.params.mtu, session.params.number_of_streams
        peer = {"address": session.peer, "cn": session.peer_cn, "build_id": session.params.build_id}
        streams = [{"index": i, **channel.counters.as_dict()} for i, channel in enumerate(session.channels)]
    endpoints = _endpoints(config)
    started = state.session_started_at
    return {
        "version": STATUS_VERSION,
        "instance": instance,
        "pid": os.getpid(),
        "rustvpn_version": __version__,
        "build_id": config.build_id,
        "transport": config.transport,
        "role": config.role,
        "state": state.state,
        "listen": endpoints if config.is_server else None,
        "server": None if config.is_server else endpoints,
        "device": config.device,
        "mtu": mtu,
        "stream_count": stream_count,
        "addresses": [str(i) for i in config.interfaces()],
        "routes": [str(r) for r in config.all_routes()],
        "peer": peer,
        "uptime_s": round(max(0.0, now - state.started_at), 3),
        "session_age_s": None if started is None else round(max(0.0, now - started), 3),
        "sessions": state.sessions,
        "reconnects": state.reconnects,
        "last_error": state.last_error,
        "totals": state.totals.as_dict(),
        "streams": streams,
    }


# ---------------------------------------------------------------------------------------------
# The server


class _BadRequest(Exception):
    """A request we answer with an error; the message goes to the client."""


def _reply_line(reply: dict[str, Any]) -> bytes:
    # default=str: a provider value json cannot encode must not cost the client its answer.
    return json.dumps({"version": STATUS_VERSION, **reply}, default=str).encode() + b"\n"


def _error_line(message: str) -> bytes:
    return _reply_line({"ok": False, "error": message})


def _parse_request(line: bytes) -> str:
    """The command of one request line: a bare word or a JSON object."""
    try:
        text = line.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _BadRequest("request is not UTF-8 text") from None
    if text.startswith("{"):
        try:
            request = json.loads(text)
        except (ValueError, RecursionError):
            raise _BadRequest("request is not valid JSON") from None
        if not isinstance(request, dict):
            raise _BadRequest("request must be a JSON object")
        version = request.get("version", STATUS_VERSION)
        if isinstance(version, bool) or version != STATUS_VERSION:
            raise _BadRequest(f"unsupported status protocol version (this daemon speaks {STATUS_VERSION})")
        command = request.get("command")
    else:
        command = text
    if command != "status":
        raise _BadRequest('unknown command (expected "status")')
    return str(command)


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise _BadRequest("empty request") from None
        return exc.partial  # the client shut down its side without a newline: take what it sent
    except asyncio.LimitOverrunError:
        raise _BadRequest(f"request too large (limit {MAX_REQUEST} bytes)") from None


def _peer_groups(sock: Any) -> frozenset[int]:
    for count in (64, 65536):
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * count)
        except OSError as exc:
            if exc.errno == errno.ERANGE:
                continue  # more groups than the buffer holds
            return frozenset()  # an older kernel: the primary gid still counts
        return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    return frozenset()


async def _finish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, linger: bool) -> None:
    """Half-close, let the client hang up first, then close; abort a client that dawdles.

    Closing a Unix socket with the client's bytes still unread makes the kernel reset the
    connection, and an asyncio client then loses the reply it was sent (readline() raises the
    reset before returning buffered data). So unread input is drained, within bounds, first.
    """
    try:
        if linger:
            async with asyncio.timeout(_CLOSE_GRACE):
                if writer.can_write_eof():
                    writer.write_eof()
                discarded = 0
                while discarded <= MAX_REQUEST:
                    chunk = await reader.read(MAX_REQUEST + 1)
                    if not chunk:
                        break
                    discarded += len(chunk)
        writer.close()
        async with asyncio.timeout(_CLOSE_GRACE):
            await writer.wait_closed()
    except (TimeoutError, OSError):
        writer.transport.abort()


class StatusServer:
    """Serves ``provider()`` to local clients that are root, the daemon's user or its group."""

    def __init__(
        self,
        path: str,
        provider: Callable[[], dict[str, Any]],
        *,
        allowed_uids: set[int] | None = None,
        allowed_gids: set[int] | None = None,
    ) -> None:
        self.path = path
        self._provider = provider
        self.allowed_uids = frozenset({0, os.geteuid()} if allowed_uids is None else allowed_uids)
        self.allowed_gids = frozenset({os.getegid()} if allowed_gids is None else allowed_gids)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we bound

    async def start(self) -> None:
        """Bind the socket; raises SystemSetupError when it cannot (or another daemon owns it)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bound = False
        try:
            _make_runtime_dir(os.path.dirname(self.path) or ".")
            _remove_stale_socket(self.path)
            sock.bind(self.path)
            bound = True
            # The mode is set before listen(): until then every connect is refused, so nobody gets in
            # through whatever mode the umask left on the fresh socket.
            os.chmod(self.path, 0o660)
            info = os.stat(self.path)
            self._identity = (info.st_dev, info.st_ino)
            self._server = await asyncio.start_unix_server(self._handle, sock=sock, limit=MAX_REQUEST)
        except BaseException as exc:
            sock.close()
            if bound:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            if isinstance(exc, OSError):
                raise SystemSetupError(f"status socket {self.path}: {exc.strerror or exc}") from None
            raise
        log.debug("status socket listening on %s", self.path)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        clients = list(self._clients)
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        await server.wait_closed()
        self._unlink_own_socket()

    def _unlink_own_socket(self) -> None:
        # Only our own socket: a newer daemon of the same name may already have replaced it.
        try:
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == self._identity:
                os.unlink(self.path)
        except OSError:
            pass

    def _allowed(self, sock: Any) -> bool:
        try:
            pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        except (OSError, struct.error, AttributeError):
            log.warning("status request refused: peer credentials unavailable")
            return False
        if uid in self.allowed_uids or gid in self.allowed_gids:
            return True
        # Group members usually hold the daemon's group as a supplementary group, not their primary one.
        if self.allowed_gids & _peer_groups(sock):
            return True
        log.warning("status request refused: uid %d gid %d (pid %d) is not allowed", uid, gid, pid)
        return False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        linger = True
        try:
            if len(self._clients) > MAX_CLIENTS:
                writer.write(_error_line("busy: too many status clients"))
                return
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    await self._exchange(reader, writer)
            except TimeoutError:
                writer.write(_error_line("request timed out"))
        except asyncio.CancelledError:
            # Only close() cancels us. The task must not end cancelled: in 3.11 asyncio's done
            # callback would log that as an unhandled error.
            linger = False
        except Exception:
            # A bad client must never disturb the daemon.
            log.debug("status client failed", exc_info=True)
        finally:
            if task is not None:
                self._clients.discard(task)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await _finish(reader, writer, linger=linger)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._allowed(writer.get_extra_info("socket")):
            writer.write(_error_line("permission denied"))
            return
        try:
            _parse_request(await _read_request(reader))
        except _BadRequest as exc:
            writer.write(_error_line(str(exc)))
            return
        try:
            line = _reply_line({"ok": True, "status": self._provider()})
        except Exception:
            log.exception("building the status reply failed")
            line = _error_line("internal error")
        writer.write(line)
        await writer.drain()


def _make_runtime_dir(path: str) -> None:
    try:
        os.makedirs(path, mode=0o750)
    except FileExistsError:
        return  # e.g. systemd's RuntimeDirectory=: its mode is the admin's choice
    os.chmod(path, 0o750)  # mkdir's mode went through the umask


def _remove_stale_socket(path: str) -> None:
    """Remove a socket left by a dead daemon; refuse to touch a live one or a non-socket."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise SystemSetupError(f"status socket {path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass
    except OSError as exc:
        raise SystemSetupError(f"status socket {path}: cannot tell whether it is in use: {exc}") from None
    else:
        raise SystemSetupError(f"status socket {path} is in use: is another instance of this name running?")
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# ---------------------------------------------------------------------------------------------
# The client


def _instance_of(path: str) -> str:
    return os.path.basename(os.path.dirname(os.path.abspath(path))) or path


def _denied(path: str) -> StatusUnavailable:
    return StatusUnavailable(f"permission denied on {path}: run as root or a member of the daemon's group")


async def query(path: str, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the daemon behind ``path`` for its status object; StatusUnavailable says why not."""
    name = _instance_of(path)
    not_running = f"rustvpn instance {name} is not running"
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise StatusUnavailable(f"{not_running} (no {path})", not_running=True) from None
    except PermissionError:
        raise _denied(path) from None
    except OSError as exc:
        raise StatusUnavailable(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise StatusUnavailable(f"{path} is not a socket")
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(path, limit=MAX_REPLY)
            try:
                writer.write(_STATUS_REQUEST)
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        raise StatusUnavailable(f"rustvpn instance {name} did not answer within {timeout:g} s ({path})") from None
    except FileNotFoundError:
        raise StatusUnavailable(f"{not_running} (no {path})", not_running=True) from None
    except ConnectionRefusedError:
        raise StatusUnavailable(f"{not_running} (stale socket {path})", not_running=True) from None
    except PermissionError:
        raise _denied(path) from None
    except ValueError:  # readline over the limit
        raise StatusUnavailable(f"rustvpn instance {name} sent a reply over {MAX_REPLY} bytes") from None
    except OSError as exc:
        raise StatusUnavailable(f"cannot reach rustvpn instance {name} at {path}: {exc.strerror or exc}") from None
    return _unwrap_reply(name, path, line)


def _unwrap_reply(name: str, path: str, line: bytes) -> dict[str, Any]:
    bad = f"rustvpn instance {name} sent a bad status reply"
    if not line:
        raise StatusUnavailable(f"rustvpn instance {name} closed the connection without a reply ({path})")
    try:
        reply = json.loads(line)
    except (ValueError, RecursionError):
        raise StatusUnavailable(f"{bad}: not JSON") from None
    if not isinstance(reply, dict):
        raise StatusUnavailable(f"{bad}: not a JSON object")
    if reply.get("version") != STATUS_VERSION:
        raise StatusUnavailable(
            f"rustvpn instance {name} speaks status version {reply.get('version')!r}, this client {STATUS_VERSION}"
        )
    if reply.get("ok") is not True:
        error = str(reply.get("error") or "unknown error")
        if error == "permission denied":
            raise _denied(path)
        raise StatusUnavailable(f"rustvpn instance {name}: {error}")
    status = reply.get("status")
    if not isinstance(status, dict):
        raise StatusUnavailable(f"{bad}: no status object")
    return status


def list_instances(root: str = DEFAULT_RUNTIME_ROOT) -> list[str]:
    """Names of the instances under ``root`` that have a status socket, sorted."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    found = []
    for name in names:
        try:
            if stat.S_ISSOCK(os.stat(socket_path(name, root)).st_mode):
                found.append(name)
        except PermissionError:
            found.append(name)  # a private runtime directory: query() will say "permission denied"
        except OSError:
            continue
    return sorted(found)
