"""QUIC configuration and mutual TLS for QUIC mode: the aioquic QuicConfiguration, the connection
class that requires and verifies a client certificate, and the peer certificate checks.

aioquic internals relied on (aioquic 1.7.2; each use is commented where it happens):

* ``QuicConnection._initialize`` / ``.tls`` / ``tls.Context._request_client_certificate`` and the
  server's ``_server_handle_certificate[_verify]``: aioquic only requests a client certificate
  behind a test flag and never verifies one, so the server's TLS context is extended to require
  and verify it against the CA bundle.
* ``QuicConnection._local_max_streams_bidi``: the stream limit is not configurable (fixed at 128).
"""

from __future__ import annotations

from typing import Any

from aioquic import tls
from aioquic._buffer import Buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rustvpn.errors import ConfigError, PeerRejected, describe_error
from rustvpn.quic_congestion import CONGESTION_CONTROL as TUNNEL_CONGESTION_CONTROL
from rustvpn.quic_congestion import TunnelPacer
from rustvpn.settings import TunnelConfig
from rustvpn.tls import printable, require_cn

__all__ = [
    "CONNECTION_ID_LENGTH",
    "IDLE_TIMEOUT",
    "certificate_cn",
    "check_peer_certificate",
    "create_connection",
    "quic_configuration",
]

# Transport settings after the reference peer: 5 s idle timeout, 128 MiB / 32 MiB windows, 200
# streams. With the session's keep-alive every 2 s a live peer never idles out; a dead one is
# noticed within about 7 s (the idle timer restarts at our first packet after the peer's last one).
IDLE_TIMEOUT = 5.0
MAX_DATA = 128 * 1024 * 1024
MAX_STREAM_DATA = 32 * 1024 * 1024
MAX_BIDI_STREAMS = 200
# aioquic 1.7.2 offers only reno and cubic (no BBR), both loss-based: quic_congestion adds a
# ceiling on the queue the connection builds in front of the peer (see there).
CONGESTION_CONTROL = TUNNEL_CONGESTION_CONTROL
CONNECTION_ID_LENGTH = 8
# QUIC payload per UDP datagram: 1200 fits every path (aioquic has no path MTU discovery). The
# transport raises it per connection to what the route towards the peer carries (quic_udp).
MAX_DATAGRAM_SIZE = SMALLEST_MAX_DATAGRAM_SIZE
# The max_datagram_frame_size transport parameter, announced when we offer DATAGRAM frames
# (TunnelConfig.datagrams): any frame size, since what fits a packet is the sender's limit.
MAX_DATAGRAM_FRAME_SIZE = 65535


class _AlertCertificateRequired(tls.Alert):
    description = tls.AlertDescription.certificate_required


class _ClientCertContext(tls.Context):
    """The server's TLS context, made to require a client certificate and verify its chain.

    aioquic 1.7.2 sends a CertificateRequest only behind a test flag, carries on when the client
    sends an empty Certificate message, and never verifies a client certificate's chain.
    """

    def _server_handle_certificate(self, input_buf: Buffer) -> None:
        super()._server_handle_certificate(input_buf)
        if self._peer_certificate is None:
            raise _AlertCertificateRequired("a client certificate is required")

    def _server_handle_certificate_verify(self, input_buf: Buffer) -> None:
        assert self._peer_certificate is not None
        # Raises AlertBadCertificate / AlertCertificateExpired, which abort the handshake.
        tls.verify_certificate(
            certificate=self._peer_certificate,
            chain=self._peer_certificate_chain,
            cadata=self._cadata,
            cafile=self._cafile,
            capath=self._capath,
        )
        super()._server_handle_certificate_verify(input_buf)


class _TunnelConnection(QuicConnection):
    """A QuicConnection with the reference's stream limit, our pacer and, as a server, mutual TLS."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Not configurable in aioquic (fixed at 128); must be set before the transport
        # parameters are serialized in _initialize.
        self._local_max_streams_bidi.value = self._local_max_streams_bidi.sent = MAX_BIDI_STREAMS
        # aioquic makes its own pacer, which wakes a busy sender every packet (quic_congestion).
        self._loss._pacer = TunnelPacer(max_datagram_size=self._max_datagram_size)

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if not self._is_client:
            # The TLS context is made inside _initialize, before the ClientHello is handled.
            self.tls.__class__ = _ClientCertContext
            self.tls._request_client_certificate = True


def quic_configuration(config: TunnelConfig, *, is_client: bool) -> QuicConfiguration:
    """The QuicConfiguration for one side: certificates loaded (ConfigError names the file)."""
    configuration = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=None,  # the reference offers and requires no ALPN
        idle_timeout=IDLE_TIMEOUT,
        max_data=MAX_DATA,
        max_stream_data=MAX_STREAM_DATA,
        congestion_control_algorithm=CONGESTION_CONTROL,
        connection_id_length=CONNECTION_ID_LENGTH,
        max_datagram_size=MAX_DATAGRAM_SIZE,
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE if config.datagrams else None,
        server_name=config.server if is_client else None,
    )
    try:
        configuration.load_cert_chain(config.cert, config.key)
    except (OSError, ValueError, TypeError, IndexError) as exc:
        raise ConfigError(
            f"certificate {config.cert} / key {config.key}: cannot load ({describe_error(exc)})"
        ) from None
    try:
        with open(config.ca_bundle, "rb") as fp:
            cadata = fp.read()
        if not tls.load_pem_x509_certificates(cadata):
            raise ValueError("no certificate in it")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"CA bundle {config.ca_bundle}: cannot load ({describe_error(exc)})") from None
    # cadata rather than cafile: read once, and never falls back to certifi's public roots.
    configuration.load_verify_locations(cadata=cadata)
    return configuration


def create_connection(
    configuration: QuicConfiguration, original_destination_connection_id: bytes | None = None
) -> QuicConnection:
    """A client connection, or (given the client's first destination CID) a server connection."""
    if configuration.is_client:
        return _TunnelConnection(configuration=configuration)
    return _TunnelConnection(
        configuration=configuration, original_destination_connection_id=original_destination_connection_id
    )


def certificate_cn(cert: x509.Certificate | None) -> str | None:
    """The subject CN (OID 2.5.4.3) of a certificate."""
    if cert is None:
        return None
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def check_peer_certificate(
    cert: x509.Certificate | None, expected_cn: str | None, *, peer_is_server: bool
) -> str | None:
    """Check the peer's leaf certificate after the handshake (the chain was checked by TLS).

    Its extended key usage, when present, must allow its role (as rustls in the reference
    checks), and its CN must equal ``expected_cn`` when one is set. Returns the CN.
    """
    if cert is None:
        raise PeerRejected("peer presented no certificate")
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    needed = ExtendedKeyUsageOID.SERVER_AUTH if peer_is_server else ExtendedKeyUsageOID.CLIENT_AUTH
    if usages is not None and needed not in usages and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in usages:
        role = "server" if peer_is_server else "client"
        raise PeerRejected(f"peer certificate (CN {certificate_cn(cert)!r}) is not valid for TLS {role} use")
    cn = certificate_cn(cert)
    require_cn(cn, expected_cn)
    return printable(cn)  # for logs and the status line: a CN with a newline must not forge a line
