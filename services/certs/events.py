"""The events of the certs service.

Stream `cert-<primary>` holds the life of the certificate named after its first ("primary")
name: orders (`CertificateOrdered`), each ending in exactly one outcome (`CertificateIssued`
or `CertificateRenewalFailed`), uploads of custom certificates and `CertificateForgotten`.
An order without an outcome was cut short (a crash): the next start runs it again.
Stream `acme-account-<hash of the directory URL>` holds the ACME account used at that CA.
Private keys are sealed (subject: the stream); certificate chains are public.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from libs.events.registry import REGISTRY

__all__ = [
    "ACCOUNT_CATEGORY",
    "CERT_CATEGORY",
    "AcmeAccountRegistered",
    "CertificateForgotten",
    "CertificateIssued",
    "CertificateOrdered",
    "CertificateRenewalFailed",
    "CustomCertificateUploaded",
    "account_stream",
    "cert_stream",
    "primary_of_stream",
]

CERT_CATEGORY = "cert"
ACCOUNT_CATEGORY = "acme"
_WILD = "wildcard:"  # ':' is in no DNS name, so `*.d` and a host `wildcard.d` never collide


def cert_stream(primary: str) -> str:
    """`cert-<primary>`; a wildcard `*.example.test` is `cert-wildcard:example.test`."""
    ident = _WILD + primary[2:] if primary.startswith("*.") else primary
    if len(ident) > 128:  # stream ids stop at 128 characters; DNS names at 253
        ident = "h:" + hashlib.sha256(primary.encode()).hexdigest()
    return f"{CERT_CATEGORY}-{ident}"


def primary_of_stream(stream: str) -> str | None:
    """The primary name of a `cert-` stream, None for a hashed (very long) one."""
    ident = stream.removeprefix(f"{CERT_CATEGORY}-")
    if ident.startswith("h:"):
        return None
    return "*." + ident[len(_WILD) :] if ident.startswith(_WILD) else ident


def account_stream(directory: str) -> str:
    """`acme-account-<first 16 hex digits of sha256(directory URL)>`."""
    return f"{ACCOUNT_CATEGORY}-account-{hashlib.sha256(directory.encode()).hexdigest()[:16]}"


@REGISTRY.event("AcmeAccountRegistered")
@dataclass(frozen=True, slots=True, kw_only=True)
class AcmeAccountRegistered:
    directory: str
    uri: str
    account_key: str  # sealed PEM

    def summary(self) -> str:
        return f"ACME account registered at {self.directory}"


@REGISTRY.event("CertificateOrdered")
@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateOrdered:
    primary: str
    names: list[str]
    challenge: str  # http-01 | dns-01
    task_id: str
    reason: str = "new"  # new | renewal | retry | manual

    def summary(self) -> str:
        return f"certificate for {self.primary} ordered ({self.challenge}, {self.reason})"


@REGISTRY.event("CertificateIssued")
@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateIssued:
    primary: str
    names: list[str]
    chain_pem: str  # public: leaf first
    key: str  # sealed PEM
    not_before: str  # ISO 8601, UTC
    not_after: str
    issuer: str
    fingerprint: str  # SHA-256 of the leaf, hex
    task_id: str | None = None

    def summary(self) -> str:
        return f"certificate for {self.primary} issued by {self.issuer}, until {self.not_after}"


@REGISTRY.event("CertificateRenewalFailed")
@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateRenewalFailed:
    primary: str
    code: str
    message: str
    retry_at: str  # ISO 8601, UTC
    task_id: str | None = None

    def summary(self) -> str:
        return (
            f"certificate order for {self.primary} failed ({self.code}); retry at {self.retry_at}"
        )


@REGISTRY.event("CustomCertificateUploaded")
@dataclass(frozen=True, slots=True, kw_only=True)
class CustomCertificateUploaded:
    primary: str
    names: list[str]  # the names it was uploaded for
    chain_pem: str
    key: str  # sealed PEM
    not_before: str
    not_after: str
    issuer: str
    fingerprint: str
    cert_names: list[str]  # the names the certificate covers

    def summary(self) -> str:
        return f"custom certificate for {self.primary} uploaded, valid until {self.not_after}"


@REGISTRY.event("CertificateForgotten")
@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateForgotten:
    primary: str

    def summary(self) -> str:
        return f"certificate for {self.primary} forgotten"
