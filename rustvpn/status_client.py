"""The client side of the status socket: ask one daemon for its status, list the instances."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
from typing import Any

from rustvpn.status import DEFAULT_RUNTIME_ROOT, MAX_REPLY, STATUS_VERSION, StatusUnavailable, socket_path

_STATUS_REQUEST = json.dumps({"version": STATUS_VERSION, "command": "status"}).encode() + b"\n"


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
