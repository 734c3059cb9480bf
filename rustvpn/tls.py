"""TLS 1.3 contexts with mutual certificates, and the peer-CN check (TCP mode, Python ssl)."""

from __future__ import annotations

import ssl
from typing import Any

from rustvpn.errors import ConfigError, PeerRejected, describe_error


def _load(context: ssl.SSLContext, ca_bundle: str, cert: str, key: str) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"CA bundle {ca_bundle}: cannot load ({describe_error(exc)})") from None
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"certificate {cert} / key {key}: cannot load ({describe_error(exc)})") from None
    # No ALPN, no session tickets to resume: every session is a full mutual handshake.
    context.options |= ssl.OP_NO_TICKET
    return context


def server_context(ca_bundle: str, cert: str, key: str) -> ssl.SSLContext:
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ca_bundle, cert, key)


def client_context(ca_bundle: str, cert: str, key: str) -> ssl.SSLContext:
    context = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), ca_bundle, cert, key)
    context.check_hostname = True
    return context


def common_name(peercert: dict[str, Any] | None) -> str | None:
    """The subject CN (OID 2.5.4.3) of a certificate as returned by SSLSocket.getpeercert()."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName":
                return str(value)
    return None


def require_cn(cn: str | None, expected: str | None) -> None:
    """The peer-CN rule of both transports: if a CN is expected, the peer's must equal it."""
    if expected is not None and cn != expected:
        raise PeerRejected(f"peer certificate CN {cn!r} does not match expected --peer-cn {expected!r}")


def check_peer_cn(peercert: dict[str, Any] | None, expected: str | None) -> str | None:
    """Return the peer's CN, made safe to print; raise PeerRejected if ``expected`` is set and differs.

    The comparison uses the CN as it is; the result is for logs, the systemd status line and
    ``rustvpn status``, where a CN with a newline could forge a line (see :func:`printable`)."""
    cn = common_name(peercert)
    require_cn(cn, expected)
    return printable(cn)


def printable(text: str | None) -> str | None:
    """``text`` with control characters (newlines, escape sequences) escaped as repr() does.

    A certificate's CN is chosen by whoever asked the CA for it: printed raw, ``"x\\nSTOPPING=1"``
    would forge a log line, or an sd_notify assignment in the status line."""
    if text is None or text.isprintable():
        return text
    return repr(text)[1:-1]


def describe_tls_error(exc: BaseException) -> str:
    """A one-line reason for a failed handshake, without key material."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate rejected: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    return str(exc) or type(exc).__name__
