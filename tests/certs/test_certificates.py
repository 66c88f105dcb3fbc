"""Certificate utilities: custom uploads refused for each reason, wildcards, fallback, renewal."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from services.certs.certificates import (
    CertificateError,
    CertInfo,
    covers,
    csr_for,
    inspect,
    new_private_key,
    next_check_delay,
    renewal_due,
    self_signed,
    validate_custom,
)

NOW = datetime.now(UTC).replace(microsecond=0)
Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def pem_key(key: Key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def make_cert(
    cn: str,
    key: Key,
    *,
    issuer: x509.Certificate | None = None,
    issuer_key: Key | None = None,
    ca: bool = False,
    names: list[str] | None = None,
    not_before: datetime = NOW - timedelta(days=1),
    not_after: datetime = NOW + timedelta(days=60),
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
    signer = issuer_key if issuer_key is not None else key
    algo = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return b.sign(signer, algo)


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class Pki:
    root: x509.Certificate
    root_key: Key
    inter: x509.Certificate
    inter_key: Key

    @property
    def root_pem(self) -> str:
        return pem_cert(self.root)

    def leaf(
        self,
        names: list[str],
        key: Key | None = None,
        not_before: datetime = NOW - timedelta(days=1),
        not_after: datetime = NOW + timedelta(days=60),
    ) -> tuple[str, str]:
        """(chain PEM leaf + intermediate, key PEM) for a leaf with `names`."""
        k = key if key is not None else p256()
        leaf = make_cert(
            names[0], k, issuer=self.inter, issuer_key=self.inter_key, names=names,
            not_before=not_before, not_after=not_after,
        )  # fmt: skip
        return pem_cert(leaf) + pem_cert(self.inter), pem_key(k)


@pytest.fixture(scope="module")
def pki() -> Pki:
    root_key, inter_key = p256(), p256()
    root = make_cert("Test Root", root_key, ca=True, not_after=NOW + timedelta(days=3650))
    inter = make_cert(
        "Test Intermediate", inter_key, issuer=root, issuer_key=root_key, ca=True,
        not_after=NOW + timedelta(days=1000),
    )  # fmt: skip
    return Pki(root, root_key, inter, inter_key)


def refused(field: str, *args: object, **kw: object) -> CertificateError:
    with pytest.raises(CertificateError) as caught:
        validate_custom(*args, **kw)  # type: ignore[arg-type]
    assert caught.value.field == field, caught.value.message
    return caught.value


# accepted uploads


def test_valid_chain_to_a_trusted_root_is_accepted(pki: Pki) -> None:
    chain, key = pki.leaf(["blog.example.test", "www.example.test"])
    info = validate_custom(chain, key, ["blog.example.test"], trust_roots_pem=pki.root_pem)
    assert info.names == ("blog.example.test", "www.example.test")
    assert info.issuer == "CN=Test Intermediate"
    assert info.self_signed is False
    # without trust roots the chain only has to link
    assert validate_custom(chain, key, ["www.example.test"]).names == info.names


@pytest.mark.parametrize(
    "make_key",
    [
        lambda: rsa.generate_private_key(65537, 2048),
        lambda: ec.generate_private_key(ec.SECP384R1()),
    ],
    ids=["rsa2048", "ec-p384"],
)
def test_rsa_2048_and_ec_keys_are_accepted(pki: Pki, make_key: object) -> None:
    key = make_key()  # type: ignore[operator]
    chain, key_pem = pki.leaf(["blog.example.test"], key=key)
    validate_custom(chain, key_pem, ["blog.example.test"], trust_roots_pem=pki.root_pem)


# refusals, each naming its field


def test_unparsable_certificate(pki: Pki) -> None:
    _, key = pki.leaf(["blog.example.test"])
    err = refused("certificate", "not a certificate", key, ["blog.example.test"])
    assert "BEGIN CERTIFICATE" in err.message
    broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    refused("certificate", broken, key, ["blog.example.test"])
    refused("certificate", "", key, ["blog.example.test"])


def test_unparsable_or_encrypted_key(pki: Pki) -> None:
    chain, _ = pki.leaf(["blog.example.test"])
    refused("key", chain, "garbage", ["blog.example.test"])
    encrypted = (
        p256()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        .decode()
    )
    err = refused("key", chain, encrypted, ["blog.example.test"])
    assert "passphrase" in err.message


def test_short_rsa_key_is_refused(pki: Pki) -> None:
    key = rsa.generate_private_key(65537, 1024)
    chain, key_pem = pki.leaf(["blog.example.test"], key=key)
    err = refused("key", chain, key_pem, ["blog.example.test"])
    assert "1024" in err.message and "2048" in err.message


def test_ed25519_key_is_refused(pki: Pki) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    chain, key_pem = pki.leaf(["blog.example.test"], key=key)
    refused("key", chain, key_pem, ["blog.example.test"])


def test_key_of_another_certificate_is_refused(pki: Pki) -> None:
    chain, _ = pki.leaf(["blog.example.test"])
    _, other_key = pki.leaf(["blog.example.test"])
    err = refused("key", chain, other_key, ["blog.example.test"])
    assert "does not belong" in err.message and "blog.example.test" in err.message


def test_chain_in_wrong_order_is_refused(pki: Pki) -> None:
    chain, key = pki.leaf(["blog.example.test"])
    leaf_pem, inter_pem = chain.split("-----END CERTIFICATE-----\n")[:2]
    leaf_pem += "-----END CERTIFICATE-----\n"
    inter_pem += "-----END CERTIFICATE-----\n"
    # leaf, root, intermediate: the leaf is not issued by the root
    err = refused("chain", leaf_pem + pki.root_pem + inter_pem, key, ["blog.example.test"])
    assert "certificate 1" in err.message


def test_chain_missing_the_intermediate_does_not_reach_the_root(pki: Pki) -> None:
    chain, key = pki.leaf(["blog.example.test"])
    leaf_only = chain.split("-----END CERTIFICATE-----\n")[0] + "-----END CERTIFICATE-----\n"
    err = refused("chain", leaf_only, key, ["blog.example.test"], trust_roots_pem=pki.root_pem)
    assert "intermediate" in err.message
    # the same leaf alone passes when no trust roots are given (nothing to link)
    validate_custom(leaf_only, key, ["blog.example.test"])


def test_chain_to_an_untrusted_root_is_refused(pki: Pki) -> None:
    chain, key = pki.leaf(["blog.example.test"])
    other_root = make_cert("Other Root", p256(), ca=True)
    refused("chain", chain, key, ["blog.example.test"], trust_roots_pem=pem_cert(other_root))


def test_issuer_that_is_not_a_ca_is_refused() -> None:
    not_ca_key, leaf_key = p256(), p256()
    not_ca = make_cert("Just A Leaf", not_ca_key, ca=False)
    leaf = make_cert("blog.example.test", leaf_key, issuer=not_ca, issuer_key=not_ca_key,
                     names=["blog.example.test"])  # fmt: skip
    refused("chain", pem_cert(leaf) + pem_cert(not_ca), pem_key(leaf_key), ["blog.example.test"])


def test_expired_and_not_yet_valid_certificates_are_refused(pki: Pki) -> None:
    chain, key = pki.leaf(
        ["blog.example.test"], not_before=NOW - timedelta(days=90), not_after=NOW - timedelta(1)
    )
    err = refused("certificate", chain, key, ["blog.example.test"], trust_roots_pem=pki.root_pem)
    assert "expired" in err.message
    chain, key = pki.leaf(["blog.example.test"], not_before=NOW + timedelta(days=2))
    err = refused("certificate", chain, key, ["blog.example.test"])
    assert "not valid before" in err.message
    # `now` decides: the same certificate is fine three days later
    validate_custom(chain, key, ["blog.example.test"], now=NOW + timedelta(days=3))


def test_names_not_covered_are_refused(pki: Pki) -> None:
    chain, key = pki.leaf(["blog.example.test"])
    err = refused("names", chain, key, ["blog.example.test", "shop.example.test"])
    assert "shop.example.test" in err.message


def test_wildcard_covers_one_label_only(pki: Pki) -> None:
    chain, key = pki.leaf(["*.example.test"])
    validate_custom(chain, key, ["blog.example.test", "SHOP.example.test."])
    refused("names", chain, key, ["example.test"])
    refused("names", chain, key, ["a.blog.example.test"])


@pytest.mark.parametrize(
    ("cert_names", "name", "ok"),
    [
        (["*.example.test"], "blog.example.test", True),
        (["*.example.test"], "example.test", False),
        (["*.example.test"], "a.blog.example.test", False),
        (["*.example.test"], "blog.other.test", False),
        (["*.example.test"], "*.example.test", True),
        (["blog.example.test"], "*.example.test", False),
        (["*.blog.example.test"], "blog.example.test", False),
        (["Blog.Example.Test"], "blog.example.test.", True),
        (["b*.example.test"], "blog.example.test", False),  # partial wildcards: no
        ([], "blog.example.test", False),
    ],
)
def test_covers(cert_names: list[str], name: str, ok: bool) -> None:
    assert covers(cert_names, name) is ok


# fallback certificate, keys, CSRs


def test_self_signed_round_trip() -> None:
    cert_pem, key_pem = self_signed(["blog.example.test", "*.example.test"], days=10)
    info = inspect(cert_pem)
    assert info.names == ("blog.example.test", "*.example.test")
    assert info.self_signed is True
    assert timedelta(days=9, hours=23) < info.not_after - datetime.now(UTC) <= timedelta(days=10)
    assert info.not_before <= datetime.now(UTC)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    assert info.fingerprint_sha256 == cert.fingerprint(hashes.SHA256()).hex()
    assert len(info.fingerprint_sha256) == 64
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    # it passes the upload checks as its own chain, but not against trusted roots
    assert validate_custom(cert_pem, key_pem, ["blog.example.test", "x.example.test"]) == info
    other_root = make_cert("Other Root", p256(), ca=True)
    refused("chain", cert_pem, key_pem, ["blog.example.test"], trust_roots_pem=pem_cert(other_root))


def test_new_private_key_and_csr() -> None:
    key_pem = new_private_key()
    assert key_pem.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    csr = x509.load_pem_x509_csr(csr_for(key_pem, ["Blog.example.test", "*.example.test"]))
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["blog.example.test", "*.example.test"]
    pub = csr.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert pub.public_numbers() == key.public_key().public_numbers()


def test_inspect_refuses_garbage() -> None:
    with pytest.raises(CertificateError) as caught:
        inspect("nothing here")
    assert caught.value.field == "certificate"


# renewal timing


def info_expiring(at: datetime) -> CertInfo:
    return CertInfo(("blog.example.test",), at - timedelta(days=90), at, "CN=x", "00", False)


def test_renewal_due_boundaries() -> None:
    assert renewal_due(info_expiring(NOW + timedelta(days=30)), NOW) is False
    assert renewal_due(info_expiring(NOW + timedelta(days=30, seconds=-1)), NOW) is True
    assert renewal_due(info_expiring(NOW + timedelta(days=60)), NOW) is False
    assert renewal_due(info_expiring(NOW - timedelta(days=1)), NOW) is True  # expired
    assert renewal_due(info_expiring(NOW + timedelta(days=10)), NOW, days=7) is False
    assert renewal_due(info_expiring(NOW + timedelta(days=6)), NOW, days=7) is True


def test_next_check_delay_is_twelve_hours_with_ten_percent_jitter() -> None:
    rng = random.Random(1234)
    delays = [next_check_delay(rng=rng) for _ in range(2000)]
    hours = [d / 3600 for d in delays]
    assert all(10.8 <= h <= 13.2 for h in hours)
    assert min(hours) < 11.0 and max(hours) > 13.0  # spread over the whole range
    assert len(set(delays)) > 1900
    assert next_check_delay(jitter_fraction=0) == 12 * 3600
    assert 5.4 * 3600 <= next_check_delay(base_hours=6) <= 6.6 * 3600
    assert 10.8 * 3600 <= next_check_delay() <= 13.2 * 3600  # default rng
