"""The server side of the status socket: serves the daemon's snapshot to local clients.

Access needs both the socket's mode (0660) and a SO_PEERCRED check, so a too-open directory or
socket mode alone does not expose the tunnel.
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
from collections.abc import Callable
from typing import Any

from rustvpn.errors import SystemSetupError
from rustvpn.status import MAX_CLIENTS, MAX_REQUEST, REQUEST_TIMEOUT, STATUS_VERSION

# The name it had before the split: log filters and tests select on it.
log = logging.getLogger("rustvpn.status")

_CLOSE_GRACE = 1.0  # seconds for a client to take its reply and hang up before we abort

# struct ucred {pid_t pid; uid_t uid; gid_t gid;}: uid/gid are unsigned (nobody may be 4294967294).
_UCRED = struct.Struct("iII")
# Linux >= 4.13 reports the peer's supplementary groups; Python 3.11 does not export the constant.
_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)


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
