"""A private CA and server certificate for the embedded PostgreSQL, so that clients can use
``sslmode=verify-full`` against it exactly as they do against CockroachDB Cloud."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VALIDITY = dt.timedelta(days=825)


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cesar-ops embedded stack"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def ensure_server_certificates(
    directory: Path, owner_uid: int | None = None, *, extra_ips: Sequence[str] = ()
) -> bool:
    """Create ca.crt, server.crt and server.key in ``directory`` unless present.

    The CA's private key is not kept: nothing else is ever signed with it. The server
    certificate is valid for localhost, 127.0.0.1 and ``extra_ips`` (e.g. the address the test
    hosts reach the server at). Returns True when new files were written.
    """
    ca_crt, crt, key = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    if ca_crt.exists() and crt.exists() and key.exists():
        return False
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("cesar embedded CA"))
        .issuer_name(_name("cesar embedded CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in extra_ips),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_crt.write_bytes(ca.public_bytes(pem))
    crt.write_bytes(server.public_bytes(pem))
    key_bytes = server_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_bytes)
    if owner_uid is not None:
        for path in (crt, key):
            os.chown(path, owner_uid, -1)
    return True
