"""The wire contract of the certs service: ensure, renew, upload, forget; files, certificates.

Callers: the gateway (certificates: list, renew, upload), the edge and the apps service
(`ensure {names}` for the hosts they serve, `forget {primary}`, `files {host}`).
The service turns a name into its one form (lower case, no final dot) and checks what only it
knows (whether a certificate exists, covers the names, was uploaded).
"""

from __future__ import annotations

from libs.contracts import Contract
from libs.contracts.schema import array, nullable, obj, string

__all__ = ["CHALLENGES", "CONTRACT", "HOST", "MAX_NAMES", "MAX_PEM"]

MAX_NAMES = 100
MAX_PEM = 64 * 1024
CHALLENGES = ("http-01", "dns-01")

HOST = string(
    pattern=r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$",
    maxLength=253,
    description="a host name (a leading `*.` for a wildcard)",
)
_PEM = string(
    minLength=1, maxLength=MAX_PEM, pattern=r"\S", description=f"PEM text of at most {MAX_PEM}"
)

CONTRACT = Contract(
    "certs",
    commands={
        # A certificate for these names: nothing if one serves them, else a fallback at once
        # and an ACME order (the names are checked by the service, naming `names`).
        "ensure": obj(
            {
                "names": array(
                    string(), minItems=1, maxItems=MAX_NAMES, description="first: the primary"
                ),
                "challenge": nullable(string(enum=list(CHALLENGES), description="default http-01")),
            },
            required=["names"],
        ),
        "renew": obj({"primary": HOST}, required=["primary"]),
        "upload": obj(
            {
                "names": array(
                    HOST, minItems=1, maxItems=MAX_NAMES, description="first: the primary name"
                ),
                "chain_pem": {**_PEM, "description": "the certificate, then its intermediates"},
                "key_pem": {**_PEM, "writeOnly": True, "description": "its private key (PEM)"},
            },
            required=["names", "chain_pem", "key_pem"],
        ),
        "forget": obj({"primary": HOST}, required=["primary"]),
    },
    queries={
        "files": obj({"host": HOST}, required=["host"]),
        "certificates": obj({}),
    },
)
