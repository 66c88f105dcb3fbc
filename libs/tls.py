"""TLS helpers shared by services: the self-signed certificate a vhost serves until (or
instead of) a real one.

`self_signed_pem` needs cryptography's x509 modules (about 2.3 MiB per process for as long as it
lives); a service that makes a certificate once in a while and otherwise never touches x509 (the
gateway) calls `self_signed_pem_apart`, which makes it in a short-lived child process.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

__all__ = ["self_signed_pem", "self_signed_pem_apart"]


def self_signed_pem(names: Sequence[str], days: int = 90) -> tuple[str, str]:
    """A self-signed EC P-256 server certificate for `names` (clean, non-empty DNS names):
    (certificate PEM, PKCS#8 key PEM)."""
    if not names:
        raise ValueError("a certificate needs at least one name")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Homeport fallback"),
        ]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
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
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


async def self_signed_pem_apart(names: Sequence[str], days: int = 90) -> tuple[str, str]:
    """`self_signed_pem` made by a child process (`python -m libs.tls`), so the caller never
    loads x509. The key travels over the child's stdout pipe only."""
    if not names:
        raise ValueError("a certificate needs at least one name")
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "libs.tls",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await child.communicate(json.dumps({"names": list(names), "days": days}).encode())
    if child.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"making a self-signed certificate failed: {tail[0]}")
    made = json.loads(out)
    return str(made["cert"]), str(made["key"])


def _main() -> None:  # python -m libs.tls < {"names": [...], "days": N}
    asked = json.load(sys.stdin)
    cert, key = self_signed_pem([str(n) for n in asked["names"]], int(asked["days"]))
    json.dump({"cert": cert, "key": key}, sys.stdout)


if __name__ == "__main__":
    _main()
