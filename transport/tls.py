"""Certificates for WebTransport servers, built with `cryptography`.

Browsers can connect to a server with a self-signed certificate in two ways, and the
helpers here produce what each needs:

- `serverCertificateHashes` in the `WebTransport` constructor takes the SHA-256 of the
  DER certificate (`SelfSignedCertificate.sha256`). Chromium accepts it only for an
  ECDSA certificate valid for at most two weeks, hence P-256 and the 13-day cap.
- Chromium's `--ignore-certificate-errors-spki-list` takes the base64 SHA-256 of the
  DER SubjectPublicKeyInfo (`SelfSignedCertificate.spki_sha256_b64`).

Everything here is synchronous and meant for start-up, never a handler path.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import UsageError

__all__ = [
    "MAX_VALIDITY_DAYS",
    "SelfSignedCertificate",
    "certificate_hashes",
    "generate_self_signed",
    "load_into",
    "write_certificate",
]

MAX_VALIDITY_DAYS = 13
"""Longest validity `generate_self_signed` allows.

Chromium rejects `serverCertificateHashes` certificates valid for more than 14 days;
13 days plus the minute of back-dating stays clear of that limit.
"""

_SIGNING_KEYS = (
    ec.EllipticCurvePrivateKey,
    rsa.RSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)
"""The key types aioquic's TLS 1.3 stack signs with."""

_BACKDATE = datetime.timedelta(minutes=1)
"""Tolerates a peer whose clock is slightly behind ours."""


@dataclass(frozen=True, repr=False)
class SelfSignedCertificate:
    """A self-signed certificate, its private key, and the hashes browsers pin.

    `repr` shows the hashes only, so that logging the object never leaks the key.
    """

    cert_pem: bytes
    """The certificate, PEM."""
    key_pem: bytes
    """The private key, unencrypted PKCS#8 PEM."""
    sha256: bytes
    """SHA-256 of the DER certificate: the value for `serverCertificateHashes`."""
    spki_sha256_b64: str
    """Base64 SHA-256 of the DER SubjectPublicKeyInfo, for Chromium's SPKI allow-list."""

    def __repr__(self) -> str:
        return (
            f"SelfSignedCertificate(sha256={self.sha256_hex},"
            f" spki_sha256_b64={self.spki_sha256_b64!r})"
        )

    @property
    def sha256_hex(self) -> str:
        """`sha256` as lower-case hex."""
        return self.sha256.hex()

    @property
    def sha256_b64(self) -> str:
        """`sha256` as standard base64 (what a web page decodes into a `Uint8Array`)."""
        return base64.b64encode(self.sha256).decode("ascii")


def generate_self_signed(
    hostnames: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    days: int = MAX_VALIDITY_DAYS,
) -> SelfSignedCertificate:
    """Create an ECDSA P-256 certificate for `hostnames`, valid for `days` days.

    Each hostname becomes an IP address SAN if it parses as one, a DNS name SAN
    otherwise (non-ASCII names are IDNA-encoded). The first one is also the subject's
    common name. `days` must be between 1 and `MAX_VALIDITY_DAYS`; anything longer
    raises `UsageError`, because browsers would refuse the certificate's hash.
    """
    if isinstance(hostnames, str):
        # A bare string would otherwise become one SAN per character.
        raise UsageError("hostnames must be a sequence of names, not a single string")
    names = tuple(hostnames)
    if not names:
        raise UsageError("a certificate needs at least one hostname")
    if isinstance(days, bool) or not isinstance(days, int):
        raise UsageError(f"days must be an int, got {days!r}")
    if not 1 <= days <= MAX_VALIDITY_DAYS:
        raise UsageError(
            f"days must be between 1 and {MAX_VALIDITY_DAYS} (browsers refuse"
            f" serverCertificateHashes for longer validity), got {days}"
        )
    alternative_names = [_general_name(name) for name in names]

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _common_name(names[0]))])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    sha256, spki = _hashes(certificate)
    return SelfSignedCertificate(
        cert_pem=certificate.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        sha256=sha256,
        spki_sha256_b64=spki,
    )


def write_certificate(
    cert: SelfSignedCertificate, directory: str | os.PathLike[str]
) -> tuple[Path, Path]:
    """Write `cert.pem` and `key.pem` into `directory` (created if missing).

    Returns `(cert_path, key_path)`. The key file is created with mode 0600, and an
    existing one is tightened to 0600 before the key is written into it.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    cert_path = folder / "cert.pem"
    key_path = folder / "key.pem"
    cert_path.write_bytes(cert.cert_pem)
    # os.open's mode only applies to a new file, so an old key.pem with wider
    # permissions is narrowed (and truncated) before the secret goes in.
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        os.fchmod(stream.fileno(), 0o600)
        stream.write(cert.key_pem)
    return cert_path, key_path


def certificate_hashes(cert_pem: bytes) -> tuple[bytes, str]:
    """`(sha256, spki_sha256_b64)` of the first certificate in `cert_pem`.

    The same values `SelfSignedCertificate` carries, for a certificate loaded from
    files. Raises `UsageError` if `cert_pem` holds no valid PEM certificate.
    """
    return _hashes(_load_certificates(cert_pem)[0])


def load_into(
    configuration: QuicConfiguration,
    cert_pem: bytes,
    key_pem: bytes,
    *,
    password: bytes | None = None,
) -> None:
    """Put a certificate chain and its private key into an aioquic configuration.

    aioquic's `load_cert_chain` only reads files; its `certificate`,
    `certificate_chain` and `private_key` attributes take `cryptography` objects, so
    in-memory PEM needs no temporary file. `cert_pem` is the leaf first, then any
    intermediates. Raises `UsageError` if either PEM does not parse or the key does
    not belong to the leaf certificate.
    """
    certificates = _load_certificates(cert_pem)
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=password)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"key_pem is not a usable PEM private key: {exc}") from exc
    if not isinstance(private_key, _SIGNING_KEYS):
        raise UsageError(
            f"aioquic cannot sign with a {type(private_key).__name__};"
            " use an EC, RSA, Ed25519 or Ed448 key"
        )
    if _spki(private_key.public_key()) != _spki(certificates[0].public_key()):
        raise UsageError("the private key does not belong to the certificate")
    configuration.certificate = certificates[0]
    configuration.certificate_chain = certificates[1:]
    configuration.private_key = private_key


def _general_name(name: str) -> x509.GeneralName:
    if not name:
        raise UsageError("empty hostname")
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return x509.IPAddress(address)
    try:
        ascii_name = name if name.isascii() else name.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise UsageError(f"not a valid hostname: {name!r}") from exc
    return x509.DNSName(ascii_name)


def _common_name(name: str) -> str:
    # X.520 caps the common name at 64 characters; the SAN carries the full name,
    # which is what clients check anyway.
    return name[:64]


def _load_certificates(cert_pem: bytes) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise UsageError(f"cert_pem holds no valid PEM certificate: {exc}") from exc
    return certificates


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _hashes(certificate: x509.Certificate) -> tuple[bytes, str]:
    der = certificate.public_bytes(serialization.Encoding.DER)
    spki = _spki(certificate.public_key())
    return (
        hashlib.sha256(der).digest(),
        base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii"),
    )
