"""`rustvpn status [NAME...] [--json]`: the daemon's status for people, or as JSON for scripts.

Exit codes follow the LSB/systemctl status convention: 0 all instances answered, 3 one is not
running, 4 its status could not be read (permission, timeout, bad reply).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from rustvpn.status import DEFAULT_RUNTIME_ROOT, StatusUnavailable, socket_path
from rustvpn.status_client import list_instances, query

EXIT_OK, EXIT_NOT_RUNNING, EXIT_UNKNOWN = 0, 3, 4
_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in _BYTE_UNITS:
        value /= 1024
        if value < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{value:.2f} {unit}"
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """Two units at most, like ``3m 12s`` or ``2d 4h``; the finer ones are noise at that scale."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _int(value: Any) -> int:
    # The status may come from a daemon of another release: a missing or odd field shows as 0.
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _duration(value: Any) -> str:
    return human_duration(value) if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def _list(value: Any) -> str:
    return ", ".join(str(v) for v in value) if isinstance(value, list) and value else "none"


def _endpoints(value: Any) -> str:
    if not isinstance(value, dict) or not value:
        return "-"
    if set(value) == {"quic"}:
        return f"{value['quic']} (quic)"
    return ", ".join(f"{kind} {where}" for kind, where in value.items())


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "-"


def _bytes(value: Any) -> str:
    return human_bytes(value) if isinstance(value, int) and not isinstance(value, bool) else "-"


def _process(figures: dict[str, Any]) -> str:
    line = (
        f"{_count(figures.get('asyncio_tasks'))} tasks, {_count(figures.get('threads'))} threads, "
        f"{_count(figures.get('open_fds'))} fds, {_bytes(figures.get('rss_bytes'))} RSS"
    )
    if "malloc_bytes" in figures:  # (a daemon of an older release does not send it)
        line += f" ({_bytes(figures['malloc_bytes'])} allocated)"
    return line


def _transfer(counters: Any) -> list[tuple[str, str]]:
    c = counters if isinstance(counters, dict) else {}
    return [
        ("received", f"{human_bytes(_int(c.get('bytes_in')))}, {_packets(_int(c.get('packets_in')))}"),
        ("sent", f"{human_bytes(_int(c.get('bytes_out')))}, {_packets(_int(c.get('packets_out')))}"),
        ("dropped", _packets(_int(c.get("dropped")))),
    ]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _ms(value: float) -> str:
    """Milliseconds to about three significant digits: 0.046, 5.45, 201.6."""
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.1f}"


def _rtt(path: Any) -> str:
    """A path's smoothed RTT, or "-" before its first sample."""
    rtt = _number(path.get("rtt_ms")) if isinstance(path, dict) else None
    return "-" if rtt is None else f"{_ms(rtt)} ms"


def _path(path: dict[str, Any], transport: str) -> str:
    """One line for the underlay path: RTT (minimum, variation), window, bytes in flight, losses
    (in TCP mode the kernel's retransmitted segments, in QUIC mode the packets declared lost), the
    congestion control (TCP: the kernel's algorithm; QUIC: the tunnel controller's mode)."""
    parts = [f"rtt {_rtt(path)}"]
    low, var = _number(path.get("min_rtt_ms")), _number(path.get("rtt_var_ms"))
    if low is not None and var is not None:
        parts[0] += f" (min {_ms(low)}, var {_ms(var)})"
    parts += [f"window {_bytes(path.get('cwnd_bytes'))}", f"in flight {_bytes(path.get('in_flight_bytes'))}"]
    lost = path.get("lost_packets")
    if isinstance(lost, int) and not isinstance(lost, bool):
        segments = f"{lost:,} segment" if lost == 1 else f"{lost:,} segments"
        parts.append(f"{segments} retransmitted" if transport == "tcp" else f"{_packets(lost)} lost")
    congestion = path.get("congestion")
    if isinstance(congestion, str) and congestion:
        parts.append(f"congestion: {congestion}")
    connections = _int(path.get("connections"))
    if connections > 1:
        parts.append(f"over {connections} connections")
    return ", ".join(parts)


def _counter_row(label: str, c: dict[str, Any]) -> tuple[str, ...]:
    return (
        label,
        human_bytes(_int(c.get("bytes_in"))),
        f"{_int(c.get('packets_in')):,}",
        human_bytes(_int(c.get("bytes_out"))),
        f"{_int(c.get('packets_out')):,}",
        f"{_int(c.get('dropped')):,}",
    )


def _stream_table(streams: list[Any], datagrams: Any = None) -> list[str]:
    """One row per data stream, then one labelled ``dgram`` for QUIC's DATAGRAM-frame path if in use."""
    header: tuple[str, ...] = ("stream", "received", "packets", "sent", "packets", "dropped")
    streams = [s for s in streams if isinstance(s, dict)]
    rows = [_counter_row(str(_int(s.get("index"))), s) for s in streams]
    # TCP mode's streams are connections of their own, each with its path figures (QUIC's share one).
    if any(isinstance(s.get("path"), dict) for s in streams):
        header += ("rtt", "retransmits")
        for i, s in enumerate(streams):
            path = s.get("path") if isinstance(s.get("path"), dict) else {}
            rows[i] += (_rtt(path), _count(path.get("lost_packets")))
    if isinstance(datagrams, dict):
        rows.append(_counter_row("dgram", datagrams) + ("",) * (len(header) - 6))
    rows.insert(0, header)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return ["  " + "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]


def format_status(status: dict[str, Any]) -> str:
    """A multi-line block for people, in the spirit of `wg show` and `systemctl status`."""
    role = str(status.get("role", "?"))
    header = (
        f"rustvpn@{status.get('instance', '?')}: {status.get('state', 'unknown')} "
        f"({status.get('transport', '?')} {role})"
    )
    fields: list[tuple[str, str]] = []
    peer = status.get("peer")
    if isinstance(peer, dict):
        fields.append(("peer", f"{peer.get('address', '?')}, CN {peer.get('cn') or '-'}"))
    else:
        fields.append(("peer", "none"))
    if role == "server":
        fields.append(("listen", _endpoints(status.get("listen"))))
    else:
        fields.append(("server", _endpoints(status.get("server"))))
    fields += [
        (
            "device",
            f"{status.get('device', '?')}, mtu {_int(status.get('mtu'))}, {_int(status.get('stream_count'))} streams",
        ),
        ("options", _list(status.get("options"))),
        ("addresses", _list(status.get("addresses"))),
        ("routes", _list(status.get("routes"))),
        ("uptime", f"{_duration(status.get('uptime_s'))} (pid {status.get('pid', '?')})"),
    ]
    process = status.get("process")
    if isinstance(process, dict):  # a daemon of an older release does not send it
        fields.append(("process", _process(process)))
    fields += [
        ("session age", _duration(status.get("session_age_s"))),
        ("sessions", f"{_int(status.get('sessions'))}, {_int(status.get('reconnects'))} reconnects"),
    ]
    if status.get("last_error"):
        fields.append(("last error", str(status["last_error"])))
    fields += _transfer(status.get("totals"))
    path = status.get("path")  # none before a session, or from a daemon of an older release
    if isinstance(path, dict):
        fields.append(("path", _path(path, str(status.get("transport")))))
    width = max(len(label) for label, _ in fields)
    lines = [header] + [f"  {label.rjust(width)}: {value}" for label, value in fields]
    streams = status.get("streams")
    streams = streams if isinstance(streams, list) else []
    datagrams = status.get("datagrams")  # a daemon of an older release does not send it
    if streams or isinstance(datagrams, dict):
        lines += ["", *_stream_table(streams, datagrams)]
    return "\n".join(lines)


def _check_name(name: str) -> None:
    # A name is one directory under the runtime root, never a path out of it.
    if not name or "/" in name or name in (".", ".."):
        raise StatusUnavailable(f"{name!r} is not a valid instance name", not_running=True)


async def _query_all(names: list[str], root: str) -> list[dict[str, Any] | StatusUnavailable]:
    async def one(name: str) -> dict[str, Any] | StatusUnavailable:
        try:
            _check_name(name)
            return await query(socket_path(name, root))
        except StatusUnavailable as exc:
            return exc

    return list(await asyncio.gather(*(one(name) for name in names)))


def status_command(names: list[str], as_json: bool, root: str = DEFAULT_RUNTIME_ROOT) -> int:
    """`rustvpn status [NAME...] [--json]`; returns the exit code. Failures go to stderr, one line each
    (a single named instance that fails prints nothing on stdout, even with --json)."""
    single = len(names) == 1  # the JSON shape follows the command line, not how many instances exist
    if not names:
        names = list_instances(root)
        if not names:
            print("no rustvpn instances running", file=sys.stderr)
            return EXIT_NOT_RUNNING
    names = list(dict.fromkeys(names))
    results = asyncio.run(_query_all(names, root))

    code = EXIT_OK
    for result in results:
        if isinstance(result, StatusUnavailable):
            print(result, file=sys.stderr)
            code = EXIT_NOT_RUNNING if result.not_running or code == EXIT_NOT_RUNNING else EXIT_UNKNOWN

    if as_json:
        if single:
            if isinstance(results[0], dict):
                print(json.dumps(results[0], indent=2))
        else:
            instances = {
                name: {"error": str(result)} if isinstance(result, StatusUnavailable) else result
                for name, result in zip(names, results, strict=True)
            }
            print(json.dumps({"instances": instances}, indent=2))
    else:
        blocks = [format_status(result) for result in results if isinstance(result, dict)]
        if blocks:
            print("\n\n".join(blocks))
    return code


def _packets(count: int) -> str:
    return f"{count:,} packet" if count == 1 else f"{count:,} packets"
