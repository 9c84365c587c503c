"""Self-signed certificates, their hashes, files, and loading into aioquic."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import stat
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aiowt.transport.errors import UsageError
from aiowt.transport.tls import (
    MAX_VALIDITY_DAYS,
    SelfSignedCertificate,
    certificate_hashes,
    generate_self_signed,
    load_into,
    write_certificate,
)


@pytest.fixture(scope="module")
def generated() -> SelfSignedCertificate:
    return generate_self_signed()


def parse(cert: SelfSignedCertificate) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cert.cert_pem)


# --- the certificate ------------------------------------------------------------------


def test_certificate_is_ecdsa_p256_signed_with_sha256(generated: SelfSignedCertificate) -> None:
    certificate = parse(generated)
    public_key = certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)
    assert isinstance(certificate.signature_hash_algorithm, hashes.SHA256)
    assert certificate.version is x509.Version.v3
    # Self-signed: the signature verifies with its own key.
    certificate.verify_directly_issued_by(certificate)

    key = serialization.load_pem_private_key(generated.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == public_key


def test_validity_is_at_most_13_days_and_starts_a_minute_ago(
    generated: SelfSignedCertificate,
) -> None:
    certificate = parse(generated)
    now = datetime.datetime.now(datetime.UTC)
    not_before = certificate.not_valid_before_utc
    not_after = certificate.not_valid_after_utc
    assert not_after - now <= datetime.timedelta(days=13)
    assert not_after - not_before == datetime.timedelta(days=13, minutes=1)
    # Browsers refuse serverCertificateHashes for anything longer than two weeks.
    assert not_after - not_before < datetime.timedelta(days=14)
    assert datetime.timedelta(seconds=59) <= now - not_before <= datetime.timedelta(minutes=5)


def test_days_sets_the_validity() -> None:
    certificate = parse(generate_self_signed(days=1))
    span = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert span == datetime.timedelta(days=1, minutes=1)


@pytest.mark.parametrize("days", [0, -1, MAX_VALIDITY_DAYS + 1, 14, 365])
def test_validity_outside_1_to_13_days_is_refused(days: int) -> None:
    with pytest.raises(UsageError, match="between 1 and 13"):
        generate_self_signed(days=days)


def test_non_int_days_are_refused() -> None:
    with pytest.raises(UsageError, match="int"):
        generate_self_signed(days=1.5)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="int"):
        generate_self_signed(days=True)


def test_default_sans_cover_localhost_on_both_ip_versions(
    generated: SelfSignedCertificate,
) -> None:
    sans = parse(generated).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert not sans.critical
    assert sans.value.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


def test_custom_hostnames_become_dns_or_ip_sans() -> None:
    cert = generate_self_signed(["example.test", "10.1.2.3", "fe80::1", "bücher.test"])
    certificate = parse(cert)
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["example.test", "xn--bcher-kva.test"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("fe80::1"),
    ]
    common_name = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [attribute.value for attribute in common_name] == ["example.test"]
    assert certificate.issuer == certificate.subject


@pytest.mark.parametrize("hostnames", [(), [], "localhost", ("ok", "")])
def test_bad_hostnames_are_refused(hostnames: tuple[str, ...]) -> None:
    with pytest.raises(UsageError):
        generate_self_signed(hostnames)


def test_extensions_make_a_server_leaf(generated: SelfSignedCertificate) -> None:
    extensions = parse(generated).extensions
    constraints = extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is False
    usage = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    key_usage = extensions.get_extension_for_class(x509.KeyUsage).value
    assert key_usage.digital_signature
    assert not key_usage.key_cert_sign


# --- hashes ---------------------------------------------------------------------------


def test_sha256_is_the_hash_of_the_der_certificate(generated: SelfSignedCertificate) -> None:
    der = parse(generated).public_bytes(serialization.Encoding.DER)
    expected = hashlib.sha256(der).digest()
    assert generated.sha256 == expected
    assert len(generated.sha256) == 32
    assert generated.sha256_hex == expected.hex()
    assert base64.b64decode(generated.sha256_b64) == expected


def test_spki_hash_is_base64_sha256_of_the_public_key_info(
    generated: SelfSignedCertificate,
) -> None:
    spki = (
        parse(generated)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert generated.spki_sha256_b64 == base64.b64encode(hashlib.sha256(spki).digest()).decode()
    # Cross-check with the private key's own public half.
    key = serialization.load_pem_private_key(generated.key_pem, password=None)
    from_key = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert from_key == spki


def test_certificate_hashes_of_loaded_pem(generated: SelfSignedCertificate) -> None:
    assert certificate_hashes(generated.cert_pem) == (generated.sha256, generated.spki_sha256_b64)


def test_certificate_hashes_of_garbage_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="PEM certificate"):
        certificate_hashes(b"not a certificate")


def test_every_certificate_is_new() -> None:
    first, second = generate_self_signed(), generate_self_signed()
    assert first.sha256 != second.sha256
    assert first.spki_sha256_b64 != second.spki_sha256_b64


def test_repr_never_shows_the_key(generated: SelfSignedCertificate) -> None:
    text = repr(generated)
    assert "PRIVATE KEY" not in text
    assert "key_pem" not in text
    assert "spki_sha256_b64" in text


# --- files ----------------------------------------------------------------------------


def test_write_certificate(generated: SelfSignedCertificate, tmp_path: Path) -> None:
    directory = tmp_path / "certs" / "nested"
    cert_path, key_path = write_certificate(generated, directory)
    assert (cert_path, key_path) == (directory / "cert.pem", directory / "key.pem")
    assert cert_path.read_bytes() == generated.cert_pem
    assert key_path.read_bytes() == generated.key_pem
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_write_certificate_tightens_an_existing_key_file(
    generated: SelfSignedCertificate, tmp_path: Path
) -> None:
    old = tmp_path / "key.pem"
    old.write_bytes(b"old key, much longer than the new one would be" * 100)
    old.chmod(0o644)
    _, key_path = write_certificate(generated, tmp_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_bytes() == generated.key_pem


def test_written_files_load_with_aioquic(generated: SelfSignedCertificate, tmp_path: Path) -> None:
    cert_path, key_path = write_certificate(generated, tmp_path)
    configuration = QuicConfiguration(is_client=False)
    configuration.load_cert_chain(cert_path, key_path)
    assert certificate_hashes(cert_path.read_bytes())[0] == generated.sha256


# --- aioquic --------------------------------------------------------------------------


def test_load_into_sets_the_configuration(generated: SelfSignedCertificate) -> None:
    configuration = QuicConfiguration(is_client=False)
    load_into(configuration, generated.cert_pem, generated.key_pem)
    assert configuration.certificate == parse(generated)
    assert configuration.certificate_chain == []
    assert isinstance(configuration.private_key, ec.EllipticCurvePrivateKey)


def test_load_into_keeps_intermediates_as_the_chain(generated: SelfSignedCertificate) -> None:
    other = generate_self_signed()
    configuration = QuicConfiguration(is_client=False)
    load_into(configuration, generated.cert_pem + other.cert_pem, generated.key_pem)
    assert configuration.certificate == parse(generated)
    assert configuration.certificate_chain == [parse(other)]


def test_load_into_refuses_a_key_of_another_certificate(generated: SelfSignedCertificate) -> None:
    other = generate_self_signed()
    configuration = QuicConfiguration(is_client=False)
    with pytest.raises(UsageError, match="does not belong"):
        load_into(configuration, generated.cert_pem, other.key_pem)
    assert configuration.certificate is None


def test_load_into_refuses_garbage(generated: SelfSignedCertificate) -> None:
    configuration = QuicConfiguration(is_client=False)
    with pytest.raises(UsageError, match="private key"):
        load_into(configuration, generated.cert_pem, b"garbage")
    with pytest.raises(UsageError, match="PEM certificate"):
        load_into(configuration, b"garbage", generated.key_pem)


def test_load_into_refuses_keys_aioquic_cannot_sign_with(generated: SelfSignedCertificate) -> None:
    # An X25519 key can only agree on secrets, not sign a handshake.
    from cryptography.hazmat.primitives.asymmetric import x25519

    key_pem = x25519.X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(UsageError, match="cannot sign"):
        load_into(QuicConfiguration(is_client=False), generated.cert_pem, key_pem)


def test_load_into_accepts_other_signing_keys() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, None)
    )
    configuration = QuicConfiguration(is_client=False)
    load_into(
        configuration,
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    assert configuration.certificate == certificate


def handshake(client: QuicConnection, server: QuicConnection) -> list[QuicEvent]:
    """Move datagrams between two in-memory connections until both fall silent."""
    client_addr, server_addr = ("1.2.3.4", 1234), ("2.3.4.5", 4433)
    now = 0.0
    client.connect(server_addr, now=now)
    events: list[QuicEvent] = []
    for _ in range(50):
        moved = 0
        for data, _ in client.datagrams_to_send(now=now):
            server.receive_datagram(data, client_addr, now=now)
            moved += 1
        for data, _ in server.datagrams_to_send(now=now):
            client.receive_datagram(data, server_addr, now=now)
            moved += 1
        if not moved:
            break
    for connection in (client, server):
        while (event := connection.next_event()) is not None:
            events.append(event)
    return events


@pytest.mark.parametrize("server_name", ["localhost", "127.0.0.1", "::1"])
def test_a_client_trusting_the_certificate_completes_a_handshake(
    generated: SelfSignedCertificate, server_name: str
) -> None:
    # The real TLS stack of aioquic, with certificate verification on: the chain,
    # the SAN for the name, the validity and the key all have to be right.
    server_configuration = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
    load_into(server_configuration, generated.cert_pem, generated.key_pem)
    client_configuration = QuicConfiguration(
        is_client=True, alpn_protocols=["h3"], server_name=server_name
    )
    client_configuration.load_verify_locations(cadata=generated.cert_pem)
    client = QuicConnection(configuration=client_configuration)
    server = QuicConnection(
        configuration=server_configuration,
        original_destination_connection_id=client.original_destination_connection_id,
    )

    events = handshake(client, server)

    completed = [event for event in events if isinstance(event, HandshakeCompleted)]
    assert len(completed) == 2
    assert client.tls._peer_certificate == parse(generated)


def test_a_client_checking_another_name_refuses_the_certificate(
    generated: SelfSignedCertificate,
) -> None:
    # The negative of the test above, so that it cannot pass by not verifying.
    server_configuration = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
    load_into(server_configuration, generated.cert_pem, generated.key_pem)
    client_configuration = QuicConfiguration(
        is_client=True, alpn_protocols=["h3"], server_name="example.com"
    )
    client_configuration.load_verify_locations(cadata=generated.cert_pem)
    client = QuicConnection(configuration=client_configuration)
    server = QuicConnection(
        configuration=server_configuration,
        original_destination_connection_id=client.original_destination_connection_id,
    )

    events = handshake(client, server)
    # The client closes at once; its ConnectionTerminated comes when the close timer
    # (no real time passes: the timer is just fired) ends the closing period.
    timer = client.get_timer()
    assert timer is not None
    client.handle_timer(now=timer)
    while (event := client.next_event()) is not None:
        events.append(event)

    assert not any(isinstance(event, HandshakeCompleted) for event in events)
    terminated = [event for event in events if isinstance(event, ConnectionTerminated)]
    assert terminated
    assert "doesn't match" in terminated[0].reason_phrase
