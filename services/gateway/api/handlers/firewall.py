"""The firewall: what is open and to whom, the allow lists (SSH, the dashboard, each app's
published ports), the block list, active bans, and apps' way out to the internet.

The firewall service owns the rules (what a CIDR is, the trial of an allow-list change made
from a remote address, confirming only from an address the new list lets in); the schemas here
are its contract's and refuse malformed input first. The caller's address reaches the service
in the bus context (Context.ip, from the dispatcher), which is how it tells a remote change from
a local one. A block list may come as JSON or as plain text (`curl -T list.txt`).
"""

from __future__ import annotations

from typing import Any

from libs.contracts.firewall import CONTRACT as FIREWALL
from libs.contracts.firewall import MAX_BLOCK_TEXT
from libs.contracts.schema import Schema, array, boolean, integer, nullable, obj, string
from services.gateway.api.bodies import command_body
from services.gateway.api.problems import Problem
from services.gateway.api.routes import Access, Call, Routes

__all__ = ["routes"]

routes = Routes("firewall")

# An import of 100,000 entries is parsed, recorded in parts and applied before the answer.
_IMPORT_TIMEOUT = 60.0
_TIMEOUT = 20.0
_TEXT = "text/plain"
# Bytes of an imported list's body: its characters (MAX_BLOCK_TEXT, checked below with a
# clearer 413) plus room for JSON's escapes of line ends and some text that is not ASCII; the
# command still fits one NATS message (4 MiB, libs/events/nats_access.py).
_IMPORT_MAX_BODY = MAX_BLOCK_TEXT + 512 * 1024


def _contract_field(command: str, field: str) -> Schema:
    schema = FIREWALL.schema("cmd", command)
    if schema is None:
        raise ValueError(f"libs/contracts/firewall.py declares no command {command}")
    return dict(schema["properties"][field])


def _contract_query(name: str) -> Schema:
    schema = FIREWALL.schema("qry", name)
    if schema is None:
        raise ValueError(f"libs/contracts/firewall.py declares no query {name}")
    return schema


def _text_unbounded(body: Schema) -> Schema:
    """The import body without the text's length limit: the handler answers 413 above it."""
    props = dict(body["properties"])
    text = {k: v for k, v in props["text"].items() if k != "maxLength"}
    return {**body, "properties": {**props, "text": text}}


SCOPE_PATH = obj({"scope": _contract_field("set_allowlist", "scope")}, required=["scope"])
APP_PATH = obj({"app_id": _contract_field("set_app_internet", "app_id")}, required=["app_id"])
ALLOW_BODY = command_body(
    FIREWALL,
    "set_allowlist",
    without=["scope"],
    notes={"cidrs": {"description": "who may reach it (addresses or CIDR ranges); [] everyone"}},
)
CONFIRM_BODY = command_body(FIREWALL, "confirm_allowlist", without=["scope"])
IMPORT_BODY = _text_unbounded(
    command_body(
        FIREWALL,
        "import_blocklist",
        notes={
            "text": {
                "description": (
                    f"one address or CIDR per line, '#' or ';' starts a comment; at most "
                    f"{MAX_BLOCK_TEXT:,} characters (413 above)"
                )
            }
        },
    )
)
IMPORT_QUERY = obj(
    {
        "replace": boolean(
            description="a text/plain body only: false adds the lines to the list (default true)"
        )
    }
)
ENTRIES_BODY = command_body(FIREWALL, "block")
UNBLOCK_BODY = command_body(FIREWALL, "unblock")
INTERNET_BODY = command_body(FIREWALL, "set_app_internet", without=["app_id"])

# What the service answers; it may say more than these name.
_ANY = obj({}, additional=True)
CIDRS = array(string(), description="addresses and CIDR ranges; [] everyone")
TRIAL = obj(
    {
        "trial_id": string(format="uuid"),
        "deadline": string(format="date-time", description="when it is undone unless confirmed"),
        "seconds": {"type": "number", "description": "how long a trial lasts"},
        "seconds_left": integer(description="until the deadline"),
        "previous": array(string(), description="the list it is undone to"),
        "you": nullable(string(description="the caller's address, as the firewall saw it")),
        "lets_you_in": boolean(description="whether the new list lets the caller in"),
    },
    required=["trial_id", "deadline"],
    additional=True,
    description="the change is on trial: confirm it from an address the new list lets in",
)
ALLOWLIST = obj(
    {"scope": string(), "cidrs": CIDRS, "trial": nullable(TRIAL)},
    required=["scope", "cidrs"],
    additional=True,
)
OPENING = obj(
    {
        "port": integer(),
        "protocol": string(description="tcp or udp"),
        "what": string(description="what it is open for"),
        "allow": array(string(), description="who may reach it; [] everyone"),
    },
    required=["port", "protocol"],
    additional=True,
)
BAN = obj({"ip": string(), "until": string(format="date-time")}, required=["ip"], additional=True)
STATUS = obj(
    {
        "open": array(OPENING, description="what is open, and to whom"),
        "allowlists": obj(
            {"ssh": ALLOWLIST, "dashboard": ALLOWLIST, "edge": ALLOWLIST, "mail": ALLOWLIST},
            additional=True,
        ),
        "blocklist": obj({"count": integer()}, additional=True),
        "bans": array(BAN, description="addresses banned for failed sign-ins, until when"),
        "apps": array(_ANY),
        "applied": _ANY,
    },
    required=["open", "allowlists", "blocklist", "bans"],
    additional=True,
)
BLOCKLIST = obj(
    {"total": integer(description="entries in the list"), "offset": integer(), "entries": CIDRS},
    required=["total", "entries"],
    additional=True,
)
IMPORTED = obj(
    {
        "imported": integer(description="entries in the text (after duplicates)"),
        "total": integer(description="entries in the list now"),
        "replace": boolean(),
    },
    required=["total"],
    additional=True,
)
EDITED = obj(
    {"added": integer(), "removed": integer(), "total": integer()},
    required=["total"],
    additional=True,
)
APP_FIREWALL = obj(
    {
        "app_id": string(format="uuid"),
        "internet": boolean(description="whether it may reach the internet"),
        "allow": array(string(), description="who may reach its published ports; [] everyone"),
        "tcp_ports": array(integer(), description="its published TCP ports (host side)"),
        "udp_ports": array(integer(), description="its published UDP ports (host side)"),
        "open": boolean(description="whether its ports are open now (installed and running)"),
    },
    required=["app_id", "internet"],
    additional=True,
)
INTERNET = obj(
    {"app_id": string(format="uuid"), "internet": boolean()},
    required=["app_id", "internet"],
    additional=True,
)


@routes.get(
    "/firewall",
    access=Access.admin,
    summary="The packet filter: what is open and to whom, the lists, bans, the last apply",
    responses={200: STATUS},
)
async def firewall_status(call: Call) -> Any:
    return await call.ask("firewall", "status", {})


@routes.get(
    "/firewall/allowlists/{scope}",
    access=Access.admin,
    summary="An allow list (ssh, dashboard, or app:<app id>) and its trial, if any",
    path_params=SCOPE_PATH,
    responses={200: ALLOWLIST},
)
async def firewall_allowlist(call: Call) -> Any:
    return await call.ask("firewall", "allowlist", dict(call.path))


@routes.put(
    "/firewall/allowlists/{scope}",
    access=Access.admin,
    summary="Set who may reach SSH, the dashboard, or an app's published ports",
    description=(
        "An empty list lets everyone in. The dashboard's list is also enforced by the edge "
        "(nginx), which always lets in 127.0.0.1 and ::1. A change to the ssh or dashboard "
        "list asked from a remote address is on trial: the answer's `trial` names it, and it "
        "is undone by itself at its deadline unless confirmed (POST .../confirm) from an "
        "address the new list lets in. A 400 names the entry refused (`cidrs.N`)."
    ),
    path_params=SCOPE_PATH,
    body=ALLOW_BODY,
    responses={200: ALLOWLIST},
    problems=("conflict", "not_found"),
)
async def set_firewall_allowlist(call: Call) -> Any:
    payload = {**call.body, **call.path}
    return await call.command("firewall", "set_allowlist", payload, timeout=_TIMEOUT)


@routes.post(
    "/firewall/allowlists/{scope}/confirm",
    access=Access.admin,
    summary="Keep an allow list that is on trial",
    description=(
        "Only from an address the new list lets in (403 otherwise); 409 naming `trial_id` when "
        "that trial is not running (confirmed already, undone, or replaced)."
    ),
    path_params=SCOPE_PATH,
    body=CONFIRM_BODY,
    responses={200: ALLOWLIST},
    problems=("conflict",),
)
async def confirm_firewall_allowlist(call: Call) -> Any:
    payload = {**call.body, **call.path}
    return await call.command("firewall", "confirm_allowlist", payload, timeout=_TIMEOUT)


@routes.get(
    "/firewall/blocklist",
    access=Access.admin,
    summary="The block list, a page at a time",
    query=_contract_query("blocklist"),
    responses={200: BLOCKLIST},
)
async def firewall_blocklist(call: Call) -> Any:
    return await call.ask("firewall", "blocklist", dict(call.query))


@routes.put(
    "/firewall/blocklist",
    access=Access.admin,
    summary="Import a block list (the whole list, or lines added to it)",
    description=(
        "JSON `{text, replace}`, or the list itself as text/plain (then `?replace=false` adds "
        "it; the whole list by default). One address or CIDR per line; '#' or ';' starts a "
        f"comment. At most {MAX_BLOCK_TEXT:,} characters (413 above: split the list and add "
        "the rest with replace=false). A 400 names the first line refused."
    ),
    body=IMPORT_BODY,
    alt_body_types=(_TEXT,),
    query=IMPORT_QUERY,
    max_body=_IMPORT_MAX_BODY,
    responses={200: IMPORTED},
)
async def import_firewall_blocklist(call: Call) -> Any:
    if isinstance(call.body, str):
        payload = {"text": call.body, "replace": call.query.get("replace", True)}
    else:
        if "replace" in call.query:
            raise Problem(
                "invalid",
                "replace goes in the JSON body; ?replace= is for a text/plain body",
                field="replace",
            )
        payload = dict(call.body)
    if len(payload["text"]) > MAX_BLOCK_TEXT:
        raise Problem(
            "payload_too_large",
            f"the list is over {MAX_BLOCK_TEXT:,} characters ({len(payload['text']):,}): "
            "split it, import the first part and add the rest with replace=false",
            field="text",
        )
    return await call.command("firewall", "import_blocklist", payload, timeout=_IMPORT_TIMEOUT)


@routes.post(
    "/firewall/blocklist/add",
    access=Access.admin,
    summary="Block addresses or CIDR ranges",
    body=ENTRIES_BODY,
    responses={200: EDITED},
)
async def block_addresses(call: Call) -> Any:
    return await call.command("firewall", "block", dict(call.body), timeout=_TIMEOUT)


@routes.post(
    "/firewall/blocklist/remove",
    access=Access.admin,
    summary="Take addresses or CIDR ranges off the block list",
    body=UNBLOCK_BODY,
    responses={200: EDITED},
)
async def unblock_addresses(call: Call) -> Any:
    return await call.command("firewall", "unblock", dict(call.body), timeout=_TIMEOUT)


@routes.get(
    "/apps/{app_id}/firewall",
    access=Access.admin,
    summary="An app's firewall: its published ports, who may reach them, its way out",
    path_params=APP_PATH,
    responses={200: APP_FIREWALL},
    problems=("not_found",),
)
async def app_firewall(call: Call) -> Any:
    return await call.ask("firewall", "app", dict(call.path))


@routes.put(
    "/apps/{app_id}/internet",
    access=Access.admin,
    summary="Let an app reach the internet, or cut it off (its addons stay reachable)",
    path_params=APP_PATH,
    body=INTERNET_BODY,
    responses={200: INTERNET},
    problems=("not_found",),
)
async def set_app_internet(call: Call) -> Any:
    payload = {**call.path, **call.body}
    return await call.command("firewall", "set_app_internet", payload, timeout=_TIMEOUT)
