"""Account security: the second factor (TOTP) at sign-in and in the profile, API tokens, and the
platform's MFA policy.

Identity owns the rules (services/identity/mfa.py); the schemas here refuse malformed input
before anything reaches it, and only declared fields of its replies reach the caller. Every
profile route acts on the caller's own account. A TOTP secret and recovery codes are shown
once, at enrolment; an API token once, when created.

While administrators must use TOTP and an admin has none, whoami says so and the dispatcher
lets that admin reach only api.app.ENROLMENT_ROUTES (profile, TOTP enrolment, sign-out).
"""

from __future__ import annotations

from typing import Any

from libs.contracts.schema import array, boolean, integer, nullable, obj, string
from libs.events.bus import Internal
from services.gateway.api.auth import Via, credentials_of
from services.gateway.api.handlers.identity import (
    PASSWORD,
    RECOVERY_CODE,
    SESSION,
    TOTP_CODE,
    session_reply,
)
from services.gateway.api.routes import Access, Call, Reply, Routes

__all__ = ["routes"]

routes = Routes("security")

TICKET = string(
    minLength=1,
    maxLength=128,
    pattern="^[A-Za-z0-9_-]+$",
    writeOnly=True,
    description="the ticket POST /session answered with totp_required",
)
TOKEN_ID = string(format="uuid", description="a token id (UUID)")
SCOPE = string(enum=["read", "full"], description="read: GET (and HEAD) only; full: everything")
EXPIRES_AT = string(
    format="date-time",
    description="when the token stops working, at most a year ahead (90 days if left out)",
)
EXPIRES_IN_DAYS = integer(
    minimum=1, maximum=366, description="days the token works (instead of expires_at)"
)

LOGIN_TOTP_BODY = obj(
    {"ticket": TICKET, "code": TOTP_CODE, "recovery_code": RECOVERY_CODE},
    required=["ticket"],
    description="the ticket with either code or recovery_code",
)
CONFIRM_BODY = obj({"code": TOTP_CODE}, required=["code"])
DISABLE_BODY = obj({"current_password": PASSWORD}, required=["current_password"])
NEW_TOKEN_BODY = obj(
    {
        "name": string(minLength=1, maxLength=64, description="what the token is for"),
        "scope": SCOPE,
        "expires_at": EXPIRES_AT,
        "expires_in_days": EXPIRES_IN_DAYS,
    },
    required=["name", "scope"],
)
TOKEN_PATH = obj({"token_id": TOKEN_ID}, required=["token_id"])
POLICY_BODY = obj(
    {"require_admin_totp": boolean(description="administrators must use a second factor")},
    required=["require_admin_totp"],
)

TOTP_STATE = obj(
    {
        "enabled": boolean(description="whether sign-in asks for a TOTP code"),
        "recovery_codes_left": integer(minimum=0, description="unused recovery codes"),
    },
    required=["enabled", "recovery_codes_left"],
)
ENROLMENT = obj(
    {
        "secret": string(description="the TOTP secret (base32), shown this once"),
        "otpauth_uri": string(description="the same as an otpauth:// URI for a QR code"),
    },
    required=["secret", "otpauth_uri"],
    description="Pending until POST /profile/totp/confirm sends a code from it.",
)
RECOVERY_CODES = obj(
    {
        "recovery_codes": array(
            string(), minItems=1, description="shown this once; each works once instead of a code"
        )
    },
    required=["recovery_codes"],
)
TOKEN = obj(
    {
        "token_id": string(format="uuid"),
        "name": string(),
        "scope": SCOPE,
        "created_at": string(format="date-time"),
        "expires_at": nullable(string(format="date-time")),
        "expired": boolean(),
    },
    required=["token_id", "name", "scope", "created_at", "expires_at", "expired"],
)
TOKENS = obj({"items": array(TOKEN)}, required=["items"])
NEW_TOKEN = obj(
    {
        "token_id": string(format="uuid"),
        "token": string(description="send as Authorization: Bearer <token>; shown this once"),
        "name": string(),
        "scope": SCOPE,
        "expires_at": nullable(string(format="date-time")),
    },
    required=["token_id", "token", "name", "scope", "expires_at"],
)
POLICY = obj({"require_admin_totp": boolean()}, required=["require_admin_totp"])


# -- signing in with a second factor ----------------------------------------------------------


@routes.post(
    "/session/totp",
    access=Access.anonymous,
    summary="Sign in, second step: a TOTP code or recovery code for the ticket",
    description=(
        "Sets the session cookie as POST /session does. The ticket works once, whatever the "
        "answer; a wrong code is 401 and counts as a failed sign-in."
    ),
    body=LOGIN_TOTP_BODY,
    responses={200: SESSION},
    problems=("unauthorized",),
)
async def login_totp(call: Call) -> Any:
    payload = dict(call.body)
    user_agent = call.request.headers.get("User-Agent")
    if user_agent:
        payload["user_agent"] = user_agent[:400]
    reply = await call.command("identity", "login_totp", payload)
    return session_reply(reply, "login_totp")


# -- the caller's second factor -----------------------------------------------------------------


@routes.get(
    "/profile/totp",
    access=Access.user,
    summary="Whether the caller's account uses a second factor (TOTP)",
    responses={200: TOTP_STATE},
    problems=("not_found",),
)
async def totp_state(call: Call) -> Any:
    reply = await call.ask("identity", "totp_state", _me(call))
    return {
        "enabled": _get(reply, "totp_state", "enabled", bool),
        "recovery_codes_left": _get(reply, "totp_state", "recovery_codes_left", int),
    }


@routes.post(
    "/profile/totp",
    access=Access.user,
    summary="Start enrolling TOTP: a new secret for the authenticator app",
    description="Starting again replaces a pending secret; 409 when TOTP is already on.",
    responses={200: ENROLMENT},
    problems=("conflict", "not_found"),
)
async def totp_enrol(call: Call) -> Any:
    reply = await call.command("identity", "totp_enrol", _me(call))
    return {
        "secret": _get(reply, "totp_enrol", "secret", str),
        "otpauth_uri": _get(reply, "totp_enrol", "otpauth_uri", str),
    }


@routes.post(
    "/profile/totp/confirm",
    access=Access.user,
    summary="Turn TOTP on with a code from the new secret; answers the recovery codes",
    description="A wrong code is 400 naming code; 409 when nothing is pending.",
    body=CONFIRM_BODY,
    responses={200: RECOVERY_CODES},
    problems=("conflict",),
)
async def totp_confirm(call: Call) -> Any:
    reply = await call.command("identity", "totp_confirm", {**_me(call), "code": call.body["code"]})
    codes = _get(reply, "totp_confirm", "recovery_codes", list)
    if not codes or not all(isinstance(c, str) for c in codes):
        raise Internal("identity answered totp_confirm without valid recovery_codes")
    return {"recovery_codes": codes}


@routes.post(
    "/profile/totp/disable",
    access=Access.user,
    summary="Turn TOTP off (or drop a pending enrolment); needs the current password",
    description="A wrong password is 400 naming current_password.",
    body=DISABLE_BODY,
    responses={204: None},
    problems=("not_found",),
)
async def totp_disable(call: Call) -> Any:
    payload = {**_me(call), "current_password": call.body["current_password"]}
    await call.command("identity", "totp_disable", payload)
    return Reply(status=204)


# -- the caller's API tokens ------------------------------------------------------------------


@routes.get(
    "/profile/tokens",
    access=Access.user,
    summary="The caller's API tokens (never the tokens themselves)",
    responses={200: TOKENS},
    problems=("not_found",),
)
async def list_tokens(call: Call) -> Any:
    reply = await call.ask("identity", "tokens", _me(call))
    return {"items": [_token(item) for item in _get(reply, "tokens", "items", list)]}


@routes.post(
    "/profile/tokens",
    access=Access.user,
    summary="Create an API token; the answer shows it, this once",
    description=(
        "Needs a recent sign-in: a dashboard session started within the last 10 minutes "
        "(else 403; an API token cannot create another). Every token expires, within a year. "
        "409 past 100 tokens."
    ),
    body=NEW_TOKEN_BODY,
    responses={201: NEW_TOKEN},
    problems=("conflict", "forbidden"),
)
async def create_token(call: Call) -> Any:
    payload = {**_me(call), **call.body}
    creds = credentials_of(call.request)
    if call.user.via is Via.session and creds is not None and creds.via is Via.session:
        payload["session"] = creds.secret  # identity checks it was started recently
    reply = await call.command("identity", "create_token", payload)
    expires_at = reply.get("expires_at") if isinstance(reply, dict) else None
    if expires_at is not None and not isinstance(expires_at, str):
        raise Internal("identity answered create_token without a valid expires_at")
    body = {
        "token_id": _get(reply, "create_token", "token_id", str),
        "token": _get(reply, "create_token", "token", str),
        "name": _get(reply, "create_token", "name", str),
        "scope": _get(reply, "create_token", "scope", str),
        "expires_at": expires_at,
    }
    return Reply(body, status=201)


@routes.delete(
    "/profile/tokens/{token_id}",
    access=Access.user,
    summary="Revoke one of the caller's API tokens; it fails from the next request on",
    path_params=TOKEN_PATH,
    responses={204: None},
)
async def revoke_token(call: Call) -> Any:
    payload = {**_me(call), "token_id": str(call.path["token_id"]).lower()}
    await call.command("identity", "revoke_token", payload)
    return Reply(status=204)


# -- the platform's policy --------------------------------------------------------------------


@routes.get(
    "/settings/mfa",
    access=Access.admin,
    summary="Whether administrators must use a second factor",
    responses={200: POLICY},
)
async def mfa_policy(call: Call) -> Any:
    reply = await call.ask("identity", "mfa_policy", {})
    return {"require_admin_totp": _get(reply, "mfa_policy", "require_admin_totp", bool)}


@routes.put(
    "/settings/mfa",
    access=Access.admin,
    summary="Require (or stop requiring) administrators to use a second factor",
    description=(
        "Administrators without TOTP keep their sessions, but may only enrol it, read their "
        "profile and sign out until they do."
    ),
    body=POLICY_BODY,
    responses={200: POLICY},
)
async def set_mfa_policy(call: Call) -> Any:
    reply = await call.command("identity", "set_mfa_policy", dict(call.body))
    return {"require_admin_totp": _get(reply, "set_mfa_policy", "require_admin_totp", bool)}


# -- helpers ----------------------------------------------------------------------------------


def _me(call: Call) -> dict[str, Any]:
    return {"user_id": call.user.user_id}


def _get(reply: Any, what: str, key: str, kind: type) -> Any:
    value = reply.get(key) if isinstance(reply, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Internal(f"identity answered {what} without a valid {key}")
    return value


def _token(item: Any) -> dict[str, Any]:
    """Only the declared fields of a token reach the caller."""
    expires_at = item.get("expires_at") if isinstance(item, dict) else None
    if expires_at is not None and not isinstance(expires_at, str):
        raise Internal("identity answered tokens without a valid expires_at")
    return {
        "token_id": _get(item, "tokens", "token_id", str),
        "name": _get(item, "tokens", "name", str),
        "scope": _get(item, "tokens", "scope", str),
        "created_at": _get(item, "tokens", "created_at", str),
        "expires_at": expires_at,
        "expired": _get(item, "tokens", "expired", bool),
    }
