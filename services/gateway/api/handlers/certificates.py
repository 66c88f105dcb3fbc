"""TLS certificates: the list with expiry, renew now, upload a custom certificate.

Admins only. A renewal answers 202 with the task that reports the order's progress
(`/tasks/{task_id}/events`); an upload is checked (key matches, chain valid, names covered,
valid now) and answers 201, or 400 naming the part at fault (`certificate`, `key`, `chain`,
`names`) with nothing recorded.
"""

from __future__ import annotations

from typing import Any

from libs.contracts.certs import CONTRACT as CERTS_CONTRACT
from libs.contracts.certs import HOST
from libs.contracts.schema import array, integer, nullable, obj, string
from services.gateway.api.bodies import command_body
from services.gateway.api.routes import Access, Call, Reply, Routes

__all__ = ["routes"]

routes = Routes("certificates")

WHEN = string(format="date-time")
KINDS = ["acme", "custom", "fallback"]
STATES = ["valid", "fallback", "ordering", "failed"]

PRIMARY_PATH = obj({"primary": HOST}, required=["primary"])
UPLOAD_BODY = command_body(CERTS_CONTRACT, "upload")  # sent on as certs' upload
CERTIFICATE = obj(
    {
        "primary": string(),
        "names": array(string()),
        "requested_names": array(string()),
        "challenge": string(enum=["http-01", "dns-01"]),
        "kind": string(enum=KINDS),
        "issuer": nullable(string()),
        "not_before": nullable(WHEN),
        "not_after": nullable(WHEN),
        "days_left": nullable(integer()),
        "fingerprint": nullable(string()),
        "state": string(enum=STATES),
        "task_id": nullable(string(format="uuid")),
        "last_error": nullable(string()),
        "last_error_code": nullable(string()),
        "next_attempt_at": nullable(WHEN),
    },
    required=["primary", "names", "kind", "issuer", "not_after", "days_left", "state"],
    additional=True,
)
CERTIFICATES = obj({"items": array(CERTIFICATE)}, required=["items"])
RENEWING = obj(
    {"primary": string(), "task_id": string(format="uuid")}, required=["primary", "task_id"]
)


@routes.get(
    "/certificates",
    access=Access.admin,
    summary="TLS certificates with their expiry, state and next renewal attempt",
    responses={200: CERTIFICATES},
)
async def list_certificates(call: Call) -> Any:
    return await call.ask("certs", "certificates", {})


@routes.post(
    "/certificates/{primary}/renew",
    access=Access.admin,
    summary="Renew a certificate now, even if it is not due",
    description=(
        "Answers 202 with the task of the order (the running one if an order is under way); "
        "404 for an unknown certificate, 409 for an uploaded one."
    ),
    path_params=PRIMARY_PATH,
    responses={202: RENEWING},
    problems=("conflict",),
)
async def renew_certificate(call: Call) -> Any:
    return Reply(await call.command("certs", "renew", dict(call.path)), status=202)


@routes.post(
    "/certificates",
    access=Access.admin,
    summary="Upload a custom certificate (never renewed automatically)",
    description=(
        "The key must belong to the certificate, each chain certificate must be issued by the "
        "next, the certificate must be valid now and cover every name; otherwise 400 with "
        "`field` naming `certificate`, `key`, `chain` or `names`."
    ),
    body=UPLOAD_BODY,
    max_body=256 * 1024,
    responses={201: CERTIFICATE},
    problems=("conflict",),
)
async def upload_certificate(call: Call) -> Any:
    return Reply(await call.command("certs", "upload", dict(call.body)), status=201)
