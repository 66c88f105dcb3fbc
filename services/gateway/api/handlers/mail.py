"""Mail: domains mail is on for, their extra addresses, quotas, block lists; a person's own
addresses and app passwords.

The mail service owns the rules (dns must manage the domain, accounts and groups must exist,
an address is taken once); the schemas here refuse malformed input first. An app password
appears in one answer only, the one that creates it.
"""

from __future__ import annotations

from typing import Any

from libs.contracts.dns import DOMAIN
from libs.contracts.mail import CONTRACT as MAIL
from libs.contracts.mail import LOCAL_PART
from libs.contracts.schema import array, boolean, integer, nullable, obj, string
from services.gateway.api.bodies import command_body
from services.gateway.api.routes import Access, Call, Reply, Routes

__all__ = ["routes"]

routes = Routes("mail")

# Turning mail on makes a 2048-bit DKIM key; the servers are reconfigured in the background.
_TIMEOUT = 30.0

USER_ID = string(format="uuid", description="an account id (UUID)")
DOMAIN_PATH = obj({"domain": DOMAIN}, required=["domain"])
ADDRESS_PATH = obj({"domain": DOMAIN, "local_part": LOCAL_PART}, required=["domain", "local_part"])
USER_PATH = obj({"user_id": USER_ID}, required=["user_id"])
PASSWORD_PATH = obj(
    {"password_id": string(format="uuid", description="an app password id")},
    required=["password_id"],
)

ENABLE_BODY = command_body(MAIL, "enable_domain")
CATCH_ALL_BODY = command_body(
    MAIL,
    "set_catch_all",
    without=["domain"],
    notes={"user_id": {"description": "whose mailbox gets mail to unknown addresses; null: off"}},
)
ADDRESS_BODY = command_body(
    MAIL,
    "set_address",
    without=["domain", "local_part"],
    notes={
        "kind": {"description": "alias (to accounts) or list (to a group's members)"},
        "user_ids": {"description": "alias: the accounts that receive it and may send as it"},
        "group_id": {"description": "list: the group whose members receive it"},
    },
)
QUOTA_BODY = command_body(MAIL, "set_quota", without=["user_id"])
DNSBL_BODY = command_body(MAIL, "set_dnsbl")
RELAY_BODY = command_body(
    MAIL,
    "set_relay",
    notes={
        "username": {"description": "the relay's sign-in (null: none)"},
        "password": {"description": "its password (never shown back)"},
        "test_to": {"description": "where a test message goes through it before it is kept"},
    },
)
RELAY = obj(
    {
        "relay": nullable(
            obj(
                {
                    "host": string(),
                    "port": integer(),
                    "tls": string(),
                    "username": nullable(string()),
                },
                additional=True,
            )
        )
    },
    required=["relay"],
)
APP_PASSWORD_BODY = command_body(MAIL, "create_app_password", without=["user_id"])
FORWARDING_BODY = command_body(
    MAIL,
    "set_forwarding",
    without=["user_id"],
    notes={
        "to": {
            "description": (
                "where mail goes on to: addresses elsewhere, or here (not the mailbox's own; "
                "one that nobody here receives is refused)"
            )
        }
    },
)
FORWARDING = obj(
    {
        "to": array(string(), description="the addresses mail goes on to"),
        "keep_copy": boolean(description="the mailbox keeps a copy of each message"),
        "updated_at": string(format="date-time"),
    },
    required=["to", "keep_copy"],
    additional=True,
    description="where the mailbox's mail goes on to; null: nowhere",
)
FORWARDING_SET = obj(
    {"user_id": string(format="uuid"), "to": array(string()), "keep_copy": boolean()},
    required=["user_id", "to", "keep_copy"],
)

RECORD = obj(
    {
        "name": string(),
        "type": string(),
        "values": array(string(), description="what Homeport wants"),
        # only in the view of one domain: what the domain's nameservers serve
        "found": nullable(
            array(string(), description="what the domain's nameservers serve; null: unknown")
        ),
        "ok": boolean(description="found is what Homeport wants (in any order)"),
        "error": nullable(string(description="why found is unknown, or what differs")),
    },
    required=["name", "type", "values"],
)
ADDRESS = obj(
    {
        "address": string(),
        "local_part": string(),
        "kind": string(),
        "user_ids": array(string(format="uuid")),
        "group_id": nullable(string(format="uuid")),
    },
    required=["address", "kind"],
    additional=True,
)
DKIM_NEXT = obj(
    {
        "selector": string(),
        "waiting_since": string(format="date-time", description="when it was made"),
        "signs_by": string(
            format="date-time",
            description="when it signs even if DNS never says it serves its record",
        ),
    },
    required=["selector", "waiting_since", "signs_by"],
    description="a rotation's new key: published, it signs once the nameservers serve it",
)
DKIM_RETIRING = obj(
    {
        "selector": string(),
        "replaced_at": string(format="date-time", description="when it stopped signing"),
        "removed_on": string(format="date-time", description="when its record is removed"),
    },
    required=["selector", "replaced_at", "removed_on"],
)
ROTATION = obj(
    {
        "domain": string(),
        "selector": string(description="the key that signs until the new one does"),
        "next_selector": string(description="the new key's selector"),
    },
    required=["domain", "selector", "next_selector"],
)
VIEW = obj(
    {
        "domain": string(),
        "enabled": boolean(),
        "primary": boolean(description="mailboxes live at this domain"),
        "selector": string(description="the DKIM selector of the key that signs"),
        "dkim_next": nullable(DKIM_NEXT),
        "dkim_retiring": array(DKIM_RETIRING, description="keys replaced, still published"),
        "catch_all": nullable(string(format="uuid")),
        "addresses": array(ADDRESS),
        "records": array(RECORD, description="the DNS records mail for the domain needs"),
    },
    required=["domain", "enabled", "records"],
    additional=True,
)
VIEWS = obj({"items": array(VIEW)}, required=["items"])
APP_PASSWORD = obj(
    {
        "password_id": string(format="uuid"),
        "label": string(),
        "created_at": string(format="date-time"),
        "last_used_at": nullable(string(format="date-time")),
    },
    required=["password_id", "label"],
    additional=True,
)
MAILBOX = obj(
    {
        "user_id": string(format="uuid"),
        "address": nullable(string(description="the mailbox's address (also the mail login)")),
        "addresses": array(string(), description="every address that delivers here"),
        "quota_bytes": nullable(integer()),
        "app_passwords": array(APP_PASSWORD),
        "forwarding": nullable(FORWARDING),
    },
    required=["user_id", "addresses", "app_passwords"],
    additional=True,
)
CREATED_PASSWORD = obj(
    {
        "password_id": string(format="uuid"),
        "label": string(),
        "password": string(description="shown only in this answer, never again"),
    },
    required=["password_id", "password"],
)
STATUS = obj({"running": boolean(), "last_error": nullable(string())}, additional=True)
USAGE = obj(
    {
        "user_id": string(format="uuid"),
        "username": string(),
        "address": string(description="the mailbox's address (also the mail login)"),
        "quota_bytes": nullable(integer(description="the size limit; null: none")),
        "used_bytes": nullable(
            integer(description="what it holds, to the KiB; null: unknown (servers not run here)")
        ),
        "messages": nullable(integer(description="how many messages; null: unknown")),
    },
    required=["user_id", "address", "quota_bytes", "used_bytes"],
    additional=True,
)
DNSBL = obj({"zones": array(string())}, required=["zones"])


@routes.get("/mail/domains", access=Access.admin, summary="Mail domains", responses={200: VIEWS})
async def mail_list_domains(call: Call) -> Any:
    return await call.ask("mail", "domains", {})


@routes.post(
    "/mail/domains",
    access=Access.admin,
    summary="Turn mail on for a domain",
    description=(
        "The domain must be one Homeport manages (404 otherwise); makes its DKIM key and has the "
        "DNS records and the mail host's certificate set up. Answers 409 when mail is on."
    ),
    body=ENABLE_BODY,
    responses={201: obj({"domain": string(), "enabled": boolean()}, additional=True)},
    problems=("conflict", "not_found"),
)
async def mail_enable_domain(call: Call) -> Any:
    reply = await call.command("mail", "enable_domain", dict(call.body), timeout=_TIMEOUT)
    return Reply(reply, status=201)


@routes.get(
    "/mail/domains/{domain}",
    access=Access.admin,
    summary="A mail domain: addresses and the DNS records it needs",
    description=(
        "Each record says what the domain's nameservers serve of it (`found`, `ok`, `error`), "
        "asked when this view is (kept 30 s; a moment when not all is well)."
    ),
    path_params=DOMAIN_PATH,
    responses={200: VIEW},
)
async def mail_get_domain(call: Call) -> Any:
    return await call.ask("mail", "domain", dict(call.path))


@routes.delete(
    "/mail/domains/{domain}",
    access=Access.admin,
    summary="Turn mail off for a domain (mailboxes and addresses are kept)",
    path_params=DOMAIN_PATH,
    responses={204: None},
)
async def mail_disable_domain(call: Call) -> Any:
    await call.command("mail", "disable_domain", dict(call.path), timeout=_TIMEOUT)
    return Reply(status=204)


@routes.post(
    "/mail/domains/{domain}/dkim/rotate",
    access=Access.admin,
    summary="Rotate the domain's DKIM key",
    description=(
        "Makes a new 2048-bit key under a new selector and publishes its record beside the "
        "current one; mail stays signed with the current key until the domain's nameservers "
        "serve the new record (checked from 5 minutes on; after 48 hours it signs regardless). "
        "The old record is removed 7 days after the switch. Answers 409 while a new key is "
        "waiting already, 404 when mail is not on for the domain."
    ),
    path_params=DOMAIN_PATH,
    responses={202: ROTATION},
    problems=("conflict", "not_found"),
)
async def mail_rotate_dkim(call: Call) -> Any:
    reply = await call.command("mail", "rotate_dkim", dict(call.path), timeout=_TIMEOUT)
    return Reply(reply, status=202)


@routes.put(
    "/mail/domains/{domain}/catch-all",
    access=Access.admin,
    summary="Deliver mail to unknown addresses of the domain to one mailbox (or stop)",
    path_params=DOMAIN_PATH,
    body=CATCH_ALL_BODY,
    responses={200: obj({"domain": string(), "catch_all": nullable(string())})},
)
async def mail_set_catch_all(call: Call) -> Any:
    return await call.command("mail", "set_catch_all", {**call.body, **call.path})


@routes.put(
    "/mail/domains/{domain}/addresses/{local_part}",
    access=Access.admin,
    summary="Set an alias or a group list",
    description="Answers 409 when the address is an account's own.",
    path_params=ADDRESS_PATH,
    body=ADDRESS_BODY,
    responses={200: ADDRESS},
    problems=("conflict", "not_found"),
)
async def mail_set_address(call: Call) -> Any:
    return await call.command("mail", "set_address", {**call.body, **call.path})


@routes.delete(
    "/mail/domains/{domain}/addresses/{local_part}",
    access=Access.admin,
    summary="Remove an alias or a list",
    path_params=ADDRESS_PATH,
    responses={204: None},
)
async def mail_remove_address(call: Call) -> Any:
    await call.command("mail", "remove_address", dict(call.path))
    return Reply(status=204)


@routes.get(
    "/mail/mailboxes",
    access=Access.admin,
    summary="Every mailbox: its address, quota, and how much it holds",
    description="Usage is what Dovecot counts; null when the mail servers do not run here.",
    responses={200: obj({"items": array(USAGE)}, required=["items"])},
)
async def mail_list_mailboxes(call: Call) -> Any:
    return await call.ask("mail", "mailboxes", {}, timeout=_TIMEOUT)


@routes.get(
    "/mail/mailboxes/{user_id}",
    access=Access.admin,
    summary="An account's mailbox: addresses, quota, app passwords",
    path_params=USER_PATH,
    responses={200: MAILBOX},
)
async def mail_get_mailbox(call: Call) -> Any:
    return await call.ask("mail", "mailbox", dict(call.path))


@routes.put(
    "/mail/mailboxes/{user_id}/quota",
    access=Access.admin,
    summary="Set the size limit of an account's mailbox (null: none)",
    path_params=USER_PATH,
    body=QUOTA_BODY,
    responses={200: obj({"user_id": string(), "quota_bytes": nullable(integer())})},
)
async def mail_set_quota(call: Call) -> Any:
    return await call.command("mail", "set_quota", {**call.body, **call.path})


_FORWARDING_NOTE = (
    "Mail to the mailbox (its addresses on every domain, its aliases, lists and catch-alls) "
    "goes on to 1 to 5 addresses, and stays in it too with keep_copy. A 400 names the address "
    "refused (`to.N`): the mailbox's own, one given twice, one here that nobody receives. "
    "Forwarded mail keeps its original sender: a receiver that checks SPF strictly may refuse it."
)


@routes.put(
    "/mail/mailboxes/{user_id}/forwarding",
    access=Access.admin,
    summary="Forward an account's mail",
    description=_FORWARDING_NOTE,
    path_params=USER_PATH,
    body=FORWARDING_BODY,
    responses={200: FORWARDING_SET},
    problems=("not_found",),
)
async def mail_set_forwarding(call: Call) -> Any:
    return await call.command("mail", "set_forwarding", {**call.body, **call.path})


@routes.delete(
    "/mail/mailboxes/{user_id}/forwarding",
    access=Access.admin,
    summary="Stop forwarding an account's mail",
    path_params=USER_PATH,
    responses={204: None},
)
async def mail_clear_forwarding(call: Call) -> Any:
    await call.command("mail", "clear_forwarding", dict(call.path))
    return Reply(status=204)


@routes.get(
    "/mail/dnsbl",
    access=Access.admin,
    summary="The DNS block lists in use",
    responses={200: DNSBL},
)
async def mail_dnsbl(call: Call) -> Any:
    return await call.ask("mail", "dnsbl", {})


@routes.put(
    "/mail/dnsbl",
    access=Access.admin,
    summary="The DNS block lists: mail from a client they list is refused",
    body=DNSBL_BODY,
    responses={200: obj({"zones": array(string())})},
)
async def mail_set_dnsbl(call: Call) -> Any:
    return await call.command("mail", "set_dnsbl", dict(call.body))


@routes.get(
    "/mail/relay",
    access=Access.admin,
    summary="The outbound relay (smart host), if any",
    responses={200: RELAY},
)
async def mail_relay(call: Call) -> Any:
    return await call.ask("mail", "relay", {})


@routes.put(
    "/mail/relay",
    access=Access.admin,
    summary="Send mail to other domains through a smart host",
    description=(
        "The relay is tried first (connection, TLS, sign-in, and with test_to a test message "
        "to that address); a failure is a 400 naming the setting to check, and nothing is kept."
    ),
    body=RELAY_BODY,
    responses={200: obj({"host": string(), "port": integer()}, additional=True)},
)
async def set_mail_relay(call: Call) -> Any:
    return await call.command("mail", "set_relay", dict(call.body), timeout=_TIMEOUT)


@routes.delete(
    "/mail/relay",
    access=Access.admin,
    summary="Deliver mail to other domains directly again",
    responses={204: None},
)
async def clear_mail_relay(call: Call) -> Any:
    await call.command("mail", "clear_relay", {})
    return Reply(status=204)


@routes.get(
    "/mail/status",
    access=Access.admin,
    summary="Whether the mail servers run, and the last error",
    responses={200: STATUS},
)
async def mail_status(call: Call) -> Any:
    return await call.ask("mail", "status", {})


# -- the caller's own mail ---------------------------------------------------------------------


@routes.get(
    "/profile/mail",
    access=Access.user,
    summary="The caller's addresses and app passwords",
    responses={200: MAILBOX},
)
async def own_mail(call: Call) -> Any:
    return await call.ask("mail", "mailbox", {"user_id": call.user.user_id})


@routes.post(
    "/profile/mail/app-passwords",
    access=Access.user,
    summary="Create an app password for a mail client (shown once)",
    description="For mail clients of accounts that use TOTP (and anyone who wants one).",
    body=APP_PASSWORD_BODY,
    responses={201: CREATED_PASSWORD},
)
async def create_mail_app_password(call: Call) -> Any:
    payload = {**call.body, "user_id": call.user.user_id}
    return Reply(await call.command("mail", "create_app_password", payload), status=201)


@routes.delete(
    "/profile/mail/app-passwords/{password_id}",
    access=Access.user,
    summary="Revoke one of the caller's app passwords",
    path_params=PASSWORD_PATH,
    responses={204: None},
)
async def revoke_mail_app_password(call: Call) -> Any:
    payload = {**call.path, "user_id": call.user.user_id}
    await call.command("mail", "revoke_app_password", payload)
    return Reply(status=204)


@routes.put(
    "/profile/mail/forwarding",
    access=Access.user,
    summary="Forward the caller's mail",
    description=_FORWARDING_NOTE,
    body=FORWARDING_BODY,
    responses={200: FORWARDING_SET},
)
async def set_own_mail_forwarding(call: Call) -> Any:
    payload = {**call.body, "user_id": call.user.user_id}
    return await call.command("mail", "set_forwarding", payload)


@routes.delete(
    "/profile/mail/forwarding",
    access=Access.user,
    summary="Stop forwarding the caller's mail",
    responses={204: None},
)
async def clear_own_mail_forwarding(call: Call) -> Any:
    await call.command("mail", "clear_forwarding", {"user_id": call.user.user_id})
    return Reply(status=204)
