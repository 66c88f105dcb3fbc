"""Domains: add one with its DNS provider, list, verify again, remove.

The dns service owns the rules (domain grammar, provider settings, the provider's own check
before anything is saved, removal refused while apps use the domain); the schemas here refuse
malformed input first. Provider secrets go in once and never come back: answers show them as
`••••`.
"""

from __future__ import annotations

from typing import Any

from libs.contracts.dns import CONTRACT as DNS_CONTRACT
from libs.contracts.dns import DOMAIN
from libs.contracts.schema import array, nullable, obj, string
from services.gateway.api.bodies import command_body
from services.gateway.api.routes import Access, Call, Reply, Routes

__all__ = ["routes"]

routes = Routes("domains")

# A domain can take a while to check (the provider's API, then its nameservers).
_TIMEOUT = 30.0

_SECRET = {"writeOnly": True}
# The body is dns' add_domain payload; these notes document it (the rules are the contract's).
ADD_BODY = command_body(
    DNS_CONTRACT,
    "add_domain",
    notes={
        "provider.kind": {
            "description": "powerdns, route53, manual (records kept by hand) or wildcard "
            "(*.<domain> already points here)"
        },
        "provider.zone": {"description": "the DNS zone (default: the domain)"},
        "provider.nameservers": {
            "description": 'authoritative servers to check, e.g. ["192.0.2.1:53"] (default: the '
            "zone's NS set)"
        },
        "provider.api_url": {"description": "powerdns: the API, e.g. http://127.0.0.1:8081"},
        "provider.api_key": {**_SECRET, "description": "powerdns: the API key (never shown back)"},
        "provider.server_id": {"description": "powerdns: usually localhost"},
        "provider.access_key_id": {"description": "route53: an IAM access key id"},
        "provider.secret_access_key": {
            **_SECRET,
            "description": "route53: its secret (never shown back)",
        },
        "provider.hosted_zone_id": {"description": "route53: e.g. Z0123456789ABCDEFGHIJ"},
        "provider.region": {"description": "route53: default us-east-1"},
        "provider.endpoint_url": {"description": "route53: only for compatible services"},
        "server_ipv4": {"description": "this server's IPv4 address for apps"},
        "server_ipv6": {"description": "this server's IPv6 address for apps"},
    },
)
DOMAIN_PATH = obj({"domain": DOMAIN}, required=["domain"])

RECORD = obj(
    {
        "name": string(),
        "type": string(),
        "values": array(string()),
        "owner": string(description="what Homeport keeps the record for (an app, acme, ...)"),
    },
    required=["name", "type", "values", "owner"],
)
VIEW = obj(
    {
        "domain": string(),
        "provider": obj(
            {"kind": string()},
            required=["kind"],
            additional=True,
            description="the settings, secrets shown as ••••",
        ),
        "server_ipv4": nullable(string()),
        "server_ipv6": nullable(string()),
        "verified_at": nullable(string(format="date-time", description="last successful check")),
        "verify_error": nullable(string(description="why the last check failed, if it did")),
        "records": array(RECORD, description="the records Homeport created in the zone"),
    },
    required=["domain", "provider", "server_ipv4", "server_ipv6", "verified_at", "records"],
    additional=True,
)
VIEWS = obj({"items": array(VIEW)}, required=["items"])


@routes.get("/domains", access=Access.admin, summary="Every domain", responses={200: VIEWS})
async def list_domains(call: Call) -> Any:
    return await call.ask("dns", "domains", {})


@routes.post(
    "/domains",
    access=Access.admin,
    summary="Add a domain with its DNS provider",
    description=(
        "The provider's settings are checked with the provider first; a failed check is a 400 "
        "naming the setting and nothing is saved. Answers 409 when the domain exists."
    ),
    body=ADD_BODY,
    responses={201: VIEW},
    problems=("conflict",),
)
async def add_domain(call: Call) -> Any:
    reply = await call.command("dns", "add_domain", dict(call.body), timeout=_TIMEOUT)
    return Reply(reply, status=201)


@routes.get(
    "/domains/{domain}",
    access=Access.admin,
    summary="One domain and the records Homeport keeps in it",
    path_params=DOMAIN_PATH,
    responses={200: VIEW},
)
async def get_domain(call: Call) -> Any:
    return await call.ask("dns", "domain", dict(call.path))


@routes.post(
    "/domains/{domain}/verify",
    access=Access.admin,
    summary="Check the domain's DNS provider again",
    description="The answer says when it last passed (verified_at) and why it failed, if it did.",
    path_params=DOMAIN_PATH,
    responses={200: VIEW},
)
async def verify_domain(call: Call) -> Any:
    return await call.command("dns", "verify_domain", dict(call.path), timeout=_TIMEOUT)


@routes.delete(
    "/domains/{domain}",
    access=Access.admin,
    summary="Remove a domain and the records Homeport created in it",
    description=(
        "Answers 409 while apps use the domain, and 503 when the apps service cannot say "
        "whether they do. Records Homeport did not create stay."
    ),
    path_params=DOMAIN_PATH,
    responses={204: None},
    problems=("conflict", "unavailable"),
)
async def remove_domain(call: Call) -> Any:
    await call.command("dns", "remove_domain", dict(call.path), timeout=_TIMEOUT)
    return Reply(status=204)
