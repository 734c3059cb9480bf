"""Throwaway PKI for demos and tests: a private CA and the leaf certificates rust-vpn expects.

Everything here is shaped to pass both OpenSSL (Python ssl, including VERIFY_X509_STRICT, which is
on by default from Python 3.13) and rustls/webpki in the Rust reference peer: EC P-256 keys,
ECDSA-SHA256 signatures, X.509 v3, critical BasicConstraints and KeyUsage, key identifiers on every
certificate and an explicit ExtendedKeyUsage on leaves. This is not a CA for production use: there is
no revocation, and write_demo_set throws the CA key away.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "Authority",
    "issue_certificate",
    "new_authority",
    "write_demo_set",
    "write_pair",
]

# Back-date every certificate so a peer whose clock is a little behind ours still accepts it.
CLOCK_SKEW = timedelta(minutes=1)

CERT_MODE = 0o644
KEY_MODE = 0o600

# One DNS label: letters, digits and inner hyphens, 1-63 characters (RFC 1123).
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class Authority:
    """A certificate authority: its self-signed certificate and private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return _key_pem(self.key)


def new_authority(common_name: str = "rustvpn CA", days: int = 3650) -> Authority:
    """A fresh self-signed CA that may sign leaf certificates only (path length 0)."""
    if days <= 0:
        raise ValueError(f"days must be positive, not {days}")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=False, cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        # Redundant on a self-signed root, but harmless, and OpenSSL's strict mode likes to see it.
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert=cert, key=key)


def issue_certificate(
    ca: Authority,
    common_name: str,
    *,
    server_names: Sequence[str] = (),
    client: bool = True,
    server: bool = True,
    days: int = 825,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> tuple[bytes, bytes]:
    """Sign a new leaf certificate for a fresh P-256 key; returns (cert_pem, key_pem).

    Each entry of server_names becomes an IPAddress SAN if ipaddress.ip_address() accepts it, otherwise
    a DNSName SAN (which must then be a valid ASCII host name, "*." wildcard allowed). With no
    server_names the SAN holds the common name as a DNSName if it is a valid host name, and the
    certificate has no SAN at all if it is not (for example "rustvpn client" or an IP address):
    webpki matches names only against the SAN, never the CN.

    client/server choose the clientAuth/serverAuth extended key usages; at least one is needed.
    The validity runs from a minute ago for `days` days; not_before/not_after replace either end
    (tests use them for expired and not-yet-valid certificates). Naive datetimes are taken as UTC.
    If only not_after is given and it is already past, not_before moves back to `days` before it.
    """
    if not (client or server):
        raise ValueError("a certificate needs at least one of client or server usage")
    if days <= 0:
        raise ValueError(f"days must be positive, not {days}")
    start, end = _validity(days, not_before, not_after)

    sans = [_san_entry(name) for name in server_names]
    if not sans and _is_host_name(common_name, wildcard=False):
        sans = [x509.DNSName(common_name)]

    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)

    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def write_pair(directory: Path, stem: str, cert_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    """Write STEM.pem (0644) and STEM.key (0600) into directory, creating it if needed.

    Existing files are overwritten. Returns (cert_path, key_path).
    """
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{stem}.pem"
    key_path = directory / f"{stem}.key"
    _write_file(cert_path, cert_pem, CERT_MODE)
    _write_file(key_path, key_pem, KEY_MODE)
    return cert_path, key_path


def write_demo_set(
    directory: Path,
    server_names: Sequence[str],
    *,
    server_cn: str = "rustvpn-server",
    client_cn: str = "rustvpn-client",
    ca: Authority | None = None,
) -> dict[str, Path]:
    """Write ca.pem, server.pem/.key and client.pem/.key (rust-vpn's default names) into directory.

    The server certificate carries server_names as its SANs and only the serverAuth usage; the client
    certificate only clientAuth. Without `ca` a new CA is made and its key is not written anywhere,
    so the set cannot be extended later; pass an Authority to keep that option.
    Returns the paths under the keys ca, server_cert, server_key, client_cert and client_key.
    """
    authority = ca if ca is not None else new_authority()
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / "ca.pem"
    _write_file(ca_path, authority.cert_pem(), CERT_MODE)
    server_cert, server_key = write_pair(
        directory,
        "server",
        *issue_certificate(authority, server_cn, server_names=server_names, client=False, server=True),
    )
    client_cert, client_key = write_pair(
        directory, "client", *issue_certificate(authority, client_cn, client=True, server=False)
    )
    return {
        "ca": ca_path,
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
    }


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_usage(*, digital_signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _validity(days: int, not_before: datetime | None, not_after: datetime | None) -> tuple[datetime, datetime]:
    start = _utc(not_before) if not_before is not None else datetime.now(UTC) - CLOCK_SKEW
    end = _utc(not_after) if not_after is not None else start + timedelta(days=days)
    if not_before is None and end <= start:
        start = end - timedelta(days=days)
    if end <= start:
        raise ValueError(f"not_after ({end.isoformat()}) must be later than not_before ({start.isoformat()})")
    return start, end


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _san_entry(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not _is_host_name(name, wildcard=True):
        raise ValueError(f"server name {name!r} is neither an IP address nor a valid DNS name")
    return x509.DNSName(name)


def _is_host_name(name: str, *, wildcard: bool) -> bool:
    """True for an ASCII host name rustls/webpki accepts as a DNS SAN.

    An all-numeric last label is refused, as webpki does, so "198.18.0.300" is an error rather than a
    DNS name that nothing will ever match.
    """
    if wildcard and name.startswith("*."):
        name = name[2:]
    if not name or len(name) > 253 or not name.isascii():
        return False
    labels = name.split(".")
    return all(_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()


def _write_file(path: Path, data: bytes, mode: int) -> None:
    # The mode is given to open() so a new key file is never readable by others, not even between
    # creation and a chmod; fchmod then fixes the mode of a file that already existed (open() leaves
    # that alone) and undoes the umask. It runs before any byte is written, and O_TRUNC has emptied
    # the old contents, so nothing new is ever exposed. O_NOFOLLOW refuses a planted symlink.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
