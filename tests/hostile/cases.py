"""Hostile config exchange texts, shared by both transports (TCP sends each as one length-prefixed
message on the control connection, QUIC raw on stream 4), each with what the server must log."""

from __future__ import annotations

from rustvpn import DEFAULT_BUILD_ID
from tests.hostile.world import B_MTU, B_STREAMS

BID = DEFAULT_BUILD_ID
TOKEN = "A" * 32
OK_REST = f"number_of_streams={B_STREAMS};mtu={B_MTU};token={TOKEN}"

EXCHANGE_CASES: dict[str, tuple[bytes, str]] = {
    # name: (text, what the log says about it)
    "non-utf8": (f"build_id={BID};".encode() + b"\xff\xfe\xc0;" + OK_REST.encode(), r"not valid UTF-8"),
    "missing-mtu": (f"build_id={BID};number_of_streams={B_STREAMS};token={TOKEN}".encode(),
                    r"mismatch on mtu: ours=1400 peer=None \(missing\)"),
    "missing-build-id": (OK_REST.encode(), r"mismatch on build_id: ours='[^']+' peer=None \(missing\)"),
    "missing-token": (f"build_id={BID};number_of_streams={B_STREAMS};mtu={B_MTU}".encode(),
                      r"mismatch on token: ours='<hidden>' peer='<missing>'"),
    "only-separators": (b";;==;=;", r"mismatch on build_id: .*\(missing\)"),
    "duplicated-key": (f"build_id={BID};{OK_REST};mtu={B_MTU}".encode(), r"repeats key 'mtu'"),
    "huge-number": (f"build_id={BID};number_of_streams={B_STREAMS};mtu={'9' * 400};token={TOKEN}".encode(),
                    r"mismatch on mtu: ours=1400 peer='9{32}' \(not a number\)"),
    "huge-in-six-digits": (f"build_id={BID};number_of_streams=999999;mtu={B_MTU};token={TOKEN}".encode(),
                           r"mismatch on number_of_streams: ours=2 peer=999999 \(allowed 1\.\.100\)"),
    "negative": (f"build_id={BID};number_of_streams=-2;mtu={B_MTU};token={TOKEN}".encode(),
                 r"mismatch on number_of_streams: ours=2 peer='-2' \(not a number\)"),
    "zero-streams": (f"build_id={BID};number_of_streams=0;mtu={B_MTU};token={TOKEN}".encode(),
                     r"mismatch on number_of_streams: ours=2 peer=0 \(allowed 1\.\.100\)"),
    "build-id-semicolon": (f"build_id=rust;vpn;{OK_REST}".encode(), r"mismatch on build_id: ours='[^']+' peer='rust'"),
    "build-id-equals": (f"build_id={BID}=x;{OK_REST}".encode(), rf"mismatch on build_id: ours='[^']+' peer='{BID}=x'"),
    "build-id-control-chars": (f"build_id=\x1b[31m\nINFO forged;{OK_REST}".encode(),
                               r"mismatch on build_id: ours='[^']+' peer='\\x1b\[31m\\nINFO forged'"),
    "build-id-4000-chars": (f"build_id={'b' * 4000};{OK_REST}".encode(),
                            r"mismatch on build_id: ours='[^']+' peer='b+"),
}  # fmt: skip
