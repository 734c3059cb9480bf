"""rustvpn.pki: parse the generated material back, and use it in real mutual TLS 1.3 handshakes."""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rustvpn.pki import Authority, issue_certificate, new_authority, write_demo_set, write_pair

SERVER_IP = "198.18.0.2"
SERVER_IP6 = "fd00::2"
SERVER_DNS = "vpn.example.test"

# (not_before, not_after)
Validity = tuple[datetime, datetime]


@pytest.fixture(scope="module")
def ca() -> Authority:
    return new_authority()


@pytest.fixture(scope="module")
def other_ca() -> Authority:
    return new_authority("some other CA")


def load(cert_pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cert_pem)


def cn(cert: x509.Certificate) -> str:
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(value, str)
    return value


def ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def san(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        value = ext(cert, x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    assert isinstance(value, x509.SubjectAlternativeName)
    return value


def eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    value = ext(cert, x509.ExtendedKeyUsage).value
    assert isinstance(value, x509.ExtendedKeyUsage)
    return set(value)


# --- parsing the output back -----------------------------------------------------------------------


def test_authority_certificate(ca: Authority) -> None:
    cert = ca.cert
    assert cert.version is x509.Version.v3
    assert cn(cert) == "rustvpn CA"
    assert cert.issuer == cert.subject
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    cert.verify_directly_issued_by(cert)

    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert bc.value == x509.BasicConstraints(ca=True, path_length=0)
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical
    assert isinstance(ku.value, x509.KeyUsage)
    assert ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    assert ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(public)

    # Back-dated for clock skew, and valid for the default ten years.
    now = datetime.now(UTC)
    assert now - timedelta(minutes=2) < cert.not_valid_before_utc <= now - timedelta(seconds=55)
    assert cert.not_valid_after_utc - now > timedelta(days=3649)


def test_authority_pem_round_trip(ca: Authority) -> None:
    assert load(ca.cert_pem()) == ca.cert
    assert ca.key_pem().startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS8, unencrypted
    key = serialization.load_pem_private_key(ca.key_pem(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == ca.cert.public_key()


def test_leaf_certificate(ca: Authority) -> None:
    cert_pem, key_pem = issue_certificate(ca, "peer-one", server_names=[SERVER_IP, SERVER_DNS, SERVER_IP6])
    cert = load(cert_pem)
    assert cert.version is x509.Version.v3
    assert cn(cert) == "peer-one"
    assert cert.issuer == ca.cert.subject
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    cert.verify_directly_issued_by(ca.cert)

    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value == x509.BasicConstraints(ca=False, path_length=None)
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical
    assert isinstance(ku.value, x509.KeyUsage)
    assert ku.value.digital_signature and not ku.value.key_cert_sign and not ku.value.key_encipherment
    assert eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}

    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert key.public_key() == cert.public_key()
    assert ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    ca_ski = ext(ca.cert, x509.SubjectKeyIdentifier).value
    assert isinstance(ca_ski, x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ca_ski.digest

    names = san(cert)
    assert names is not None
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address(SERVER_IP),
        ipaddress.ip_address(SERVER_IP6),
    ]
    assert names.get_values_for_type(x509.DNSName) == [SERVER_DNS]


@pytest.mark.parametrize(
    ("client", "server", "expected"),
    [
        (True, False, {ExtendedKeyUsageOID.CLIENT_AUTH}),
        (False, True, {ExtendedKeyUsageOID.SERVER_AUTH}),
    ],
)
def test_extended_key_usage_as_asked(
    ca: Authority, client: bool, server: bool, expected: set[x509.ObjectIdentifier]
) -> None:
    cert_pem, _ = issue_certificate(ca, "peer", client=client, server=server)
    assert eku(load(cert_pem)) == expected


def test_neither_usage_is_an_error(ca: Authority) -> None:
    with pytest.raises(ValueError, match="at least one"):
        issue_certificate(ca, "peer", client=False, server=False)


@pytest.mark.parametrize(
    ("common_name", "expected"),
    [
        ("rustvpn-client", [x509.DNSName("rustvpn-client")]),
        ("vpn.example.test", [x509.DNSName("vpn.example.test")]),
        ("rustvpn client", None),  # not a host name
        ("192.0.2.7", None),  # looks like an address; webpki refuses such a DNS name
        ("-leading-hyphen", None),
    ],
)
def test_common_name_fallback_san(ca: Authority, common_name: str, expected: list[x509.GeneralName] | None) -> None:
    cert = load(issue_certificate(ca, common_name)[0])
    assert cn(cert) == common_name
    names = san(cert)
    assert (list(names) if names is not None else None) == expected


def test_server_names_replace_the_common_name_in_the_san(ca: Authority) -> None:
    names = san(load(issue_certificate(ca, "rustvpn-server", server_names=[SERVER_IP])[0]))
    assert names is not None and list(names) == [x509.IPAddress(ipaddress.ip_address(SERVER_IP))]


def test_wildcard_dns_name(ca: Authority) -> None:
    names = san(load(issue_certificate(ca, "peer", server_names=["*.example.test"])[0]))
    assert names is not None and names.get_values_for_type(x509.DNSName) == ["*.example.test"]


@pytest.mark.parametrize("bad", ["", "198.18.0.300", "198.18.0.0/15", "host name", "a..b", "bücher.test", "x."])
def test_bad_server_name_is_an_error(ca: Authority, bad: str) -> None:
    with pytest.raises(ValueError, match="neither an IP address nor a valid DNS name"):
        issue_certificate(ca, "peer", server_names=[bad])


def test_serial_numbers_are_random(ca: Authority) -> None:
    serials = {load(issue_certificate(ca, "peer")[0]).serial_number for _ in range(5)}
    assert len(serials) == 5
    assert all(serial > 2**64 for serial in serials)


def test_validity_defaults_and_overrides(ca: Authority) -> None:
    now = datetime.now(UTC)
    cert = load(issue_certificate(ca, "peer", days=10)[0])
    assert now - timedelta(minutes=2) < cert.not_valid_before_utc <= now - timedelta(seconds=55)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=10)

    start = datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    end = datetime(2021, 1, 2, 3, 4, 5, tzinfo=UTC)
    cert = load(issue_certificate(ca, "peer", not_before=start, not_after=end)[0])
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (start, end)

    # Naive datetimes are UTC.
    cert = load(issue_certificate(ca, "peer", not_before=start.replace(tzinfo=None), not_after=end)[0])
    assert cert.not_valid_before_utc == start

    # Only an end in the past: the start moves back rather than landing after it.
    cert = load(issue_certificate(ca, "peer", days=3, not_after=end)[0])
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (end - timedelta(days=3), end)

    # Only a start in the future: valid for `days` from then.
    future = (now + timedelta(days=1)).replace(microsecond=0)
    cert = load(issue_certificate(ca, "peer", days=3, not_before=future)[0])
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (future, future + timedelta(days=3))

    with pytest.raises(ValueError, match="must be later"):
        issue_certificate(ca, "peer", not_before=end, not_after=start)


# --- files -------------------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_write_pair_modes(ca: Authority, tmp_path: Path, umask: int) -> None:
    cert_pem, key_pem = issue_certificate(ca, "peer")
    old = os.umask(umask)
    try:
        cert_path, key_path = write_pair(tmp_path / "new" / "dir", "peer", cert_pem, key_pem)
    finally:
        os.umask(old)
    assert cert_path == tmp_path / "new" / "dir" / "peer.pem"
    assert key_path == tmp_path / "new" / "dir" / "peer.key"
    assert cert_path.read_bytes() == cert_pem
    assert key_path.read_bytes() == key_pem
    assert mode(cert_path) == 0o644
    assert mode(key_path) == 0o600


def test_write_pair_overwrites_and_tightens_an_existing_key(ca: Authority, tmp_path: Path) -> None:
    stale = tmp_path / "peer.key"
    stale.write_bytes(b"an old and much longer key file " * 20)
    stale.chmod(0o666)
    cert_pem, key_pem = issue_certificate(ca, "peer")
    _, key_path = write_pair(tmp_path, "peer", cert_pem, key_pem)
    assert key_path.read_bytes() == key_pem
    assert mode(key_path) == 0o600


def test_write_pair_refuses_a_symlinked_key(ca: Authority, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    (tmp_path / "peer.key").symlink_to(target)
    with pytest.raises(OSError):
        write_pair(tmp_path, "peer", *issue_certificate(ca, "peer"))
    assert target.read_bytes() == b""


def test_write_demo_set(tmp_path: Path) -> None:
    paths = write_demo_set(tmp_path / "pki", [SERVER_IP, SERVER_DNS])
    directory = tmp_path / "pki"
    assert paths == {
        "ca": directory / "ca.pem",
        "server_cert": directory / "server.pem",
        "server_key": directory / "server.key",
        "client_cert": directory / "client.pem",
        "client_key": directory / "client.key",
    }
    assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in paths.values())
    for name in ("ca", "server_cert", "client_cert"):
        assert mode(paths[name]) == 0o644
    for name in ("server_key", "client_key"):
        assert mode(paths[name]) == 0o600

    ca_cert = load(paths["ca"].read_bytes())
    server = load(paths["server_cert"].read_bytes())
    client = load(paths["client_cert"].read_bytes())
    server.verify_directly_issued_by(ca_cert)
    client.verify_directly_issued_by(ca_cert)
    assert (cn(server), cn(client)) == ("rustvpn-server", "rustvpn-client")
    assert eku(server) == {ExtendedKeyUsageOID.SERVER_AUTH}
    assert eku(client) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    names = san(server)
    assert names is not None
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(SERVER_IP)]
    assert names.get_values_for_type(x509.DNSName) == [SERVER_DNS]


def test_write_demo_set_with_given_authority(ca: Authority, tmp_path: Path) -> None:
    paths = write_demo_set(tmp_path, [], server_cn="srv", client_cn="cli", ca=ca)
    assert load(paths["ca"].read_bytes()) == ca.cert
    assert cn(load(paths["server_cert"].read_bytes())) == "srv"
    assert cn(load(paths["client_cert"].read_bytes())) == "cli"


# --- real TLS 1.3 handshakes ---------------------------------------------------------------------


@dataclass
class Outcome:
    server_error: BaseException | None = None
    client_error: BaseException | None = None
    version: str | None = None
    client_cn_seen_by_server: str | None = None
    reply: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.server_error is None and self.client_error is None and self.reply == b"ok"


def context(side: int, ca_pem: bytes, cert_path: Path, key_path: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(side)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    # Python 3.13 turns strict checking on by default; hold the certificates to it here already.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


def server_context(ca_pem: bytes, cert_path: Path, key_path: Path) -> ssl.SSLContext:
    return context(ssl.PROTOCOL_TLS_SERVER, ca_pem, cert_path, key_path)


def client_context(ca_pem: bytes, cert_path: Path, key_path: Path) -> ssl.SSLContext:
    ctx = context(ssl.PROTOCOL_TLS_CLIENT, ca_pem, cert_path, key_path)
    assert ctx.check_hostname
    return ctx


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str) -> Outcome:
    """Run both ends over a socketpair, one thread each; the server answers b"ok" once it is satisfied.

    In TLS 1.3 the client finishes its handshake before the server has checked the client certificate,
    so the client proves success by reading that reply rather than by the handshake returning.
    """
    outcome = Outcome()
    server_sock, client_sock = socket.socketpair()
    for sock in (server_sock, client_sock):
        sock.settimeout(10)

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(server_sock, server_side=True) as tls:
                peer = tls.getpeercert(binary_form=True)
                assert peer is not None
                outcome.client_cn_seen_by_server = cn(x509.load_der_x509_certificate(peer))
                outcome.version = tls.version()
                tls.sendall(b"ok")
        except BaseException as exc:  # handed to the test thread
            outcome.server_error = exc
        finally:
            server_sock.close()

    def connect() -> None:
        try:
            with client_ctx.wrap_socket(client_sock, server_hostname=server_hostname) as tls:
                outcome.reply = tls.recv(2)
        except BaseException as exc:  # handed to the test thread
            outcome.client_error = exc
        finally:
            client_sock.close()

    threads = [threading.Thread(target=serve), threading.Thread(target=connect)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
        assert not thread.is_alive(), "handshake hung"
    return outcome


@dataclass
class Peers:
    ca: Authority
    directory: Path

    def pair(
        self,
        stem: str,
        common_name: str,
        *,
        server_names: Sequence[str] = (),
        client: bool = True,
        server: bool = True,
        validity: Validity | None = None,
    ) -> tuple[Path, Path]:
        start, end = validity if validity is not None else (None, None)
        pem = issue_certificate(
            self.ca,
            common_name,
            server_names=server_names,
            client=client,
            server=server,
            not_before=start,
            not_after=end,
        )
        return write_pair(self.directory, stem, *pem)


@pytest.fixture
def peers(ca: Authority, tmp_path: Path) -> Peers:
    return Peers(ca, tmp_path)


# OpenSSL verify codes (X509_V_ERR_*); the message texts differ between OpenSSL versions, the codes do not.
NOT_YET_VALID_CODE = 9
EXPIRED_CODE = 10
SELF_SIGNED_IN_CHAIN = 19
UNKNOWN_ISSUER = 20
INVALID_PURPOSE = 26
HOSTNAME_MISMATCH = 62
IP_ADDRESS_MISMATCH = 64

ALL_NAMES = (SERVER_IP, SERVER_IP6, SERVER_DNS)


def verify_code(error: BaseException | None) -> int | None:
    assert isinstance(error, ssl.SSLCertVerificationError), error
    code = error.verify_code
    assert isinstance(code, int)
    return code


@pytest.mark.parametrize("hostname", ALL_NAMES)
def test_mutual_tls13_handshake(peers: Peers, hostname: str) -> None:
    ca_pem = peers.ca.cert_pem()
    server = server_context(ca_pem, *peers.pair("server", "rustvpn-server", server_names=ALL_NAMES))
    client = client_context(ca_pem, *peers.pair("client", "rustvpn-client"))
    outcome = handshake(server, client, hostname)
    assert outcome.ok, outcome
    assert outcome.version == "TLSv1.3"
    assert outcome.client_cn_seen_by_server == "rustvpn-client"


def test_demo_set_handshake(tmp_path: Path) -> None:
    paths = write_demo_set(tmp_path, [SERVER_IP])
    ca_pem = paths["ca"].read_bytes()
    server = server_context(ca_pem, paths["server_cert"], paths["server_key"])
    client = client_context(ca_pem, paths["client_cert"], paths["client_key"])
    outcome = handshake(server, client, SERVER_IP)
    assert outcome.ok, outcome
    assert outcome.client_cn_seen_by_server == "rustvpn-client"


@pytest.mark.parametrize("client_trusts_other_ca", [False, True])
def test_client_from_another_ca_is_rejected(peers: Peers, other_ca: Authority, client_trusts_other_ca: bool) -> None:
    ca_pem = peers.ca.cert_pem()
    server = server_context(ca_pem, *peers.pair("server", "srv", server_names=[SERVER_IP]))
    stranger = write_pair(peers.directory, "stranger", *issue_certificate(other_ca, "rustvpn-client"))
    # A client that also trusts its own CA sends that CA along in its chain; either way the server,
    # which trusts only peers.ca, must refuse.
    client_ca = ca_pem + other_ca.cert_pem() if client_trusts_other_ca else ca_pem
    outcome = handshake(server, client_context(client_ca, *stranger), SERVER_IP)
    assert verify_code(outcome.server_error) in (UNKNOWN_ISSUER, SELF_SIGNED_IN_CHAIN)
    assert outcome.reply in (None, b"")
    assert outcome.client_cn_seen_by_server is None


def test_server_only_certificate_is_rejected_as_a_client(peers: Peers) -> None:
    ca_pem = peers.ca.cert_pem()
    server = server_context(ca_pem, *peers.pair("server", "srv", server_names=[SERVER_IP]))
    client = client_context(ca_pem, *peers.pair("client", "cli", client=False, server=True))
    outcome = handshake(server, client, SERVER_IP)
    assert verify_code(outcome.server_error) == INVALID_PURPOSE


def test_client_only_certificate_is_rejected_as_a_server(peers: Peers) -> None:
    ca_pem = peers.ca.cert_pem()
    server = server_context(ca_pem, *peers.pair("server", "srv", server_names=[SERVER_IP], server=False))
    client = client_context(ca_pem, *peers.pair("client", "cli"))
    outcome = handshake(server, client, SERVER_IP)
    assert verify_code(outcome.client_error) == INVALID_PURPOSE


@pytest.mark.parametrize(
    ("hostname", "code"),
    [
        ("198.18.0.3", IP_ADDRESS_MISMATCH),
        ("192.0.2.2", IP_ADDRESS_MISMATCH),
        ("fd00::3", IP_ADDRESS_MISMATCH),
        ("other.example.test", HOSTNAME_MISMATCH),
        ("srv", HOSTNAME_MISMATCH),  # the CN does not count once there is a SAN
    ],
)
def test_hostname_not_in_san_is_rejected(peers: Peers, hostname: str, code: int) -> None:
    ca_pem = peers.ca.cert_pem()
    server = server_context(ca_pem, *peers.pair("server", "srv", server_names=ALL_NAMES))
    client = client_context(ca_pem, *peers.pair("client", "cli"))
    outcome = handshake(server, client, hostname)
    assert verify_code(outcome.client_error) == code
    assert outcome.server_error is not None


def _now() -> datetime:
    return datetime.now(UTC)


EXPIRED = (_now() - timedelta(days=30), _now() - timedelta(days=1))
NOT_YET_VALID = (_now() + timedelta(days=1), _now() + timedelta(days=30))
OUT_OF_DATE = pytest.mark.parametrize(
    ("validity", "code"),
    [(EXPIRED, EXPIRED_CODE), (NOT_YET_VALID, NOT_YET_VALID_CODE)],
    ids=["expired", "future"],
)


@OUT_OF_DATE
def test_server_certificate_out_of_date_is_rejected(peers: Peers, validity: Validity, code: int) -> None:
    ca_pem = peers.ca.cert_pem()
    server = server_context(ca_pem, *peers.pair("server", "srv", server_names=[SERVER_IP], validity=validity))
    client = client_context(ca_pem, *peers.pair("client", "cli"))
    outcome = handshake(server, client, SERVER_IP)
    assert verify_code(outcome.client_error) == code


@OUT_OF_DATE
def test_client_certificate_out_of_date_is_rejected(peers: Peers, validity: Validity, code: int) -> None:
    ca_pem = peers.ca.cert_pem()
    server = server_context(ca_pem, *peers.pair("server", "srv", server_names=[SERVER_IP]))
    client = client_context(ca_pem, *peers.pair("client", "cli", validity=validity))
    outcome = handshake(server, client, SERVER_IP)
    assert verify_code(outcome.server_error) == code
    assert outcome.reply in (None, b"")
