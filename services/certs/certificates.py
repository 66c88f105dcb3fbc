"""Certificate utilities: keys, CSRs, the self-signed fallback, inspection and custom uploads."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from libs.tls import self_signed_pem
from services.certs.errors import CertificateError

__all__ = [
    "CertInfo",
    "CertificateError",
    "covers",
    "csr_for",
    "inspect",
    "new_private_key",
    "next_check_delay",
    "renewal_due",
    "self_signed",
    "validate_custom",
]

_MIN_RSA_BITS = 2048
_EC_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


@dataclass(frozen=True)
class CertInfo:
    """What a user sees of a certificate: names, validity, issuer and fingerprint."""

    names: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    issuer: str
    fingerprint_sha256: str
    self_signed: bool


def new_private_key() -> str:
    """A new EC P-256 private key as unencrypted PKCS#8 PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    return _key_pem(key)


def csr_for(key_pem: str, names: Sequence[str]) -> bytes:
    """A PEM CSR for `names` (all as DNS SANs, the first as CN when it fits) signed by the key."""
    clean = _clean_names(names)
    if not clean:
        raise CertificateError("names", "a certificate needs at least one name")
    key = _load_key(key_pem)
    builder = x509.CertificateSigningRequestBuilder()
    if len(clean[0]) <= 64:
        builder = builder.subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, clean[0])])
        )
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.DNSName(n) for n in clean]), critical=False
    )
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def self_signed(names: Sequence[str], days: int = 90) -> tuple[str, str]:
    """A self-signed EC P-256 certificate for `names`: (certificate PEM, key PEM)."""
    clean = _clean_names(names)
    if not clean:
        raise CertificateError("names", "a certificate needs at least one name")
    return self_signed_pem(clean, days)


def inspect(chain_pem: str) -> CertInfo:
    """Facts about the leaf (first) certificate of a PEM chain."""
    return _info(_load_chain(chain_pem)[0])


def covers(cert_names: Sequence[str], name: str) -> bool:
    """Whether a certificate for `cert_names` is valid for host `name`.

    A wildcard `*.example.test` covers exactly one extra label (`blog.example.test`), never the
    apex nor deeper names; a requested wildcard is covered only by the same wildcard.
    """
    want = _norm(name)
    for have in (_norm(n) for n in cert_names):
        if have == want:
            return True
        if have.startswith("*.") and not want.startswith("*."):
            label, _, rest = want.partition(".")
            if label and rest and rest == have[2:]:
                return True
    return False


def validate_custom(
    cert_chain_pem: str,
    key_pem: str,
    names: Sequence[str],
    trust_roots_pem: str | None = None,
    now: datetime | None = None,
) -> CertInfo:
    """Check an uploaded certificate before it is served; raise CertificateError naming the field.

    Checks, in order: the chain parses, the key parses and is RSA >= 2048 or EC, the key belongs
    to the leaf, each certificate is signed by the next (and, given trust roots, the last one
    ends at a root), the leaf is valid now, and it covers every name.
    """
    when = now or datetime.now(UTC)
    certs = _load_chain(cert_chain_pem)
    key = _load_custom_key(key_pem)
    leaf = certs[0]
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        raise CertificateError(
            "key",
            f"the private key does not belong to the certificate for {_label(leaf)}: "
            "upload the key that was generated with this certificate's request",
        )
    _check_chain(certs, trust_roots_pem, when)
    if leaf.not_valid_before_utc > when:
        raise CertificateError(
            "certificate",
            f"the certificate for {_label(leaf)} is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: upload it once it is valid",
        )
    if leaf.not_valid_after_utc <= when:
        raise CertificateError(
            "certificate",
            f"the certificate for {_label(leaf)} expired on "
            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: renew it with your CA and upload "
            "the new one",
        )
    info = _info(leaf)
    missing = [n for n in _clean_names(names) if not covers(info.names, n)]
    if missing:
        raise CertificateError(
            "names",
            f"the certificate covers {', '.join(info.names) or 'no names'} but not "
            f"{', '.join(missing)}: get a certificate that lists these names",
        )
    return info


def renewal_due(info: CertInfo, now: datetime, days: int = 30) -> bool:
    """Whether fewer than `days` days of validity remain at `now`."""
    return info.not_after - now < timedelta(days=days)


def next_check_delay(
    base_hours: float = 12, jitter_fraction: float = 0.1, rng: random.Random | None = None
) -> float:
    """Seconds until the next renewal check: `base_hours` ± `jitter_fraction` of it."""
    r = rng if rng is not None else random.Random()  # jitter, not a secret
    base = base_hours * 3600.0
    return base * (1.0 + r.uniform(-jitter_fraction, jitter_fraction))


# helpers


def _norm(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _clean_names(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        c = _norm(n)
        if c and c not in out:
            out.append(c)
    return out


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _load_key(key_pem: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise CertificateError(
            "key",
            "the private key is not an unencrypted PEM key: upload the key file that begins "
            "with -----BEGIN PRIVATE KEY----- (remove any passphrase first)",
        ) from e
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateError(
            "key", f"{type(key).__name__} keys are not supported: use an RSA or EC key"
        )
    return key


def _load_custom_key(key_pem: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    key = _load_key(key_pem)
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < _MIN_RSA_BITS:
        raise CertificateError(
            "key",
            f"the RSA key has {key.key_size} bits: use at least {_MIN_RSA_BITS} bits or an EC key",
        )
    if isinstance(key, ec.EllipticCurvePrivateKey) and not isinstance(key.curve, _EC_CURVES):
        raise CertificateError(
            "key", f"the EC curve {key.curve.name} is not supported: use P-256, P-384 or P-521"
        )
    return key


def _load_chain(chain_pem: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(chain_pem.encode())
    except ValueError as e:
        raise CertificateError(
            "certificate",
            "the certificate is not valid PEM: paste the chain beginning with "
            "-----BEGIN CERTIFICATE-----, leaf first",
        ) from e
    if not certs:
        raise CertificateError("certificate", "no certificate found in the upload")
    return certs


def _spki(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return b""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _label(cert: x509.Certificate) -> str:
    names = _cert_names(cert)
    if names:
        return names[0]
    return cert.subject.rfc4514_string() or "(no subject)"


def _cert_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return tuple(_norm(n) for n in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(_norm(str(a.value)) for a in cns)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return cert.version == x509.Version.v1  # old v1 roots carry no extensions


def _check_chain(
    certs: list[x509.Certificate], trust_roots_pem: str | None, when: datetime
) -> None:
    for i, (cert, issuer) in enumerate(itertools.pairwise(certs), start=1):
        if not _signed_by(cert, issuer) or not _is_ca(issuer):
            raise CertificateError(
                "chain",
                f"certificate {i} ({_label(cert)}) is not issued by certificate {i + 1} "
                f"({issuer.subject.rfc4514_string()}): put the leaf first, then each issuer "
                "in order",
            )
        if not issuer.not_valid_before_utc <= when < issuer.not_valid_after_utc:
            raise CertificateError(
                "chain",
                f"the intermediate {issuer.subject.rfc4514_string()} is not valid now: "
                "download the current chain from your CA",
            )
    if trust_roots_pem is None:
        return
    try:
        roots = x509.load_pem_x509_certificates(trust_roots_pem.encode())
    except ValueError as e:
        raise CertificateError("chain", "the trusted roots are not valid PEM") from e
    last = certs[-1]
    fp = last.fingerprint(hashes.SHA256())
    for root in roots:
        if root.fingerprint(hashes.SHA256()) == fp or (_signed_by(last, root) and _is_ca(root)):
            return
    raise CertificateError(
        "chain",
        f"the chain ends at {last.issuer.rfc4514_string()}, which is not a trusted root: "
        "include the intermediate certificates your CA provided",
    )


def _info(cert: x509.Certificate) -> CertInfo:
    own = cert.issuer == cert.subject and _signed_by(cert, cert)
    return CertInfo(
        names=_cert_names(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        issuer=cert.issuer.rfc4514_string(),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        self_signed=own,
    )
