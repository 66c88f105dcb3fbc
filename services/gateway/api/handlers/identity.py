"""Accounts: first setup, sign-in and sign-out (the session cookie), profiles and users.

Identity owns the accounts and applies the real rules (password policy, rate limits, who may
do what); the schemas here refuse malformed input before anything reaches it. The session id
travels only in the `__Host-hp_session` cookie, never in a response body.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from libs.contracts.schema import array, boolean, nullable, obj, string
from libs.events.bus import Internal, Invalid, Unauthorized
from services.gateway.api.auth import SESSION_COOKIE, Via, credentials_of
from services.gateway.api.routes import Access, Call, Reply, Routes

__all__ = ["SESSION", "SESSION_COOKIE_ATTRIBUTES", "routes", "session_cookie", "session_reply"]

routes = Routes("identity")

SESSION_COOKIE_ATTRIBUTES = "Path=/; Secure; HttpOnly; SameSite=Lax"  # SECURITY.md "HTTP"
LOGIN_REFUSED = "wrong username or password"
_USER_AGENT_MAX = 400  # identity's limit
# RFC 6265 cookie-octet: printable ASCII without space, '"', ',', ';' and '\'.
_COOKIE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]{1,512}")

USERNAME = string(
    pattern="^[A-Za-z][A-Za-z0-9._-]{1,31}$",
    description="2 to 32 characters: a letter, then letters, digits, '.', '_' or '-'",
)
PASSWORD = string(
    minLength=1,
    maxLength=256,
    writeOnly=True,
    description="identity applies the password policy (8 to 256 characters, not a common one)",
)
EMAIL = string(minLength=3, maxLength=254, pattern="^[^@\\s]+@[^@\\s]+$", description="an email")
DISPLAY_NAME = string(maxLength=100)
USER_ID = string(format="uuid", description="a user id (UUID)")

SETUP_TOKEN = string(
    minLength=1,
    maxLength=128,
    writeOnly=True,
    description=(
        "the one-time setup token the server printed when it started (part of the setup "
        "link; also in <data dir>/setup-token on the server)"
    ),
)
SETUP_BODY = obj(
    {
        "username": USERNAME,
        "email": EMAIL,
        "password": PASSWORD,
        "display_name": DISPLAY_NAME,
        "setup_token": SETUP_TOKEN,
    },
    required=["username", "email", "password", "setup_token"],
)
TOTP_CODE = string(
    minLength=6,
    maxLength=12,
    pattern="^[0-9 ]+$",
    writeOnly=True,
    description="the 6 digits the authenticator app shows (spaces are ignored)",
)
RECOVERY_CODE = string(
    minLength=16,
    maxLength=40,
    pattern="^[A-Za-z0-9 _-]+$",
    writeOnly=True,
    description="one of the recovery codes shown at enrolment (xxxx-xxxx-xxxx-xxxx), once each",
)
LOGIN_BODY = obj(
    {
        "username": USERNAME,
        "password": PASSWORD,
        "totp": TOTP_CODE,
        "recovery_code": RECOVERY_CODE,
    },
    required=["username", "password"],
)
NEW_USER_BODY = obj(
    {
        "username": USERNAME,
        "email": EMAIL,
        "password": PASSWORD,
        "display_name": DISPLAY_NAME,
        "is_admin": boolean(default=False),
    },
    required=["username", "email", "password"],
)
USER_PATH = obj({"user_id": USER_ID}, required=["user_id"])

CREATED = obj({"user_id": string()}, required=["user_id"])
SESSION = obj(
    {
        "user_id": string(),
        "username": string(),
        "is_admin": boolean(),
        "expires_at": string(format="date-time", description="when the session ends at the latest"),
        "totp_enrolment_required": boolean(
            const=True,
            description=(
                "present when administrators must use a second factor and this one has none: "
                "until TOTP is enrolled, the session may only enrol it, read the profile and "
                "sign out"
            ),
        ),
    },
    required=["user_id", "username", "is_admin", "expires_at"],
)
LOGIN_REPLY = obj(
    {
        **SESSION["properties"],
        "totp_required": boolean(const=True, description="a second factor is needed"),
        "ticket": string(
            description="send it with a code to POST /session/totp within 5 minutes (once)"
        ),
    },
    description=(
        "Either the session (user_id, username, is_admin, expires_at; the cookie is set) or, "
        "for an account with a second factor signing in without a code, "
        "{totp_required: true, ticket} and no cookie."
    ),
)
PROFILE = obj(
    {
        "user_id": string(),
        "username": string(),
        "email": string(),
        "display_name": nullable(string()),
        "is_admin": boolean(),
        "disabled": boolean(),
    },
    required=["user_id", "username", "email", "display_name", "is_admin", "disabled"],
)
GROUP_REF = obj(
    {"group_id": string(format="uuid"), "name": string()}, required=["group_id", "name"]
)
USER = obj(
    {
        **PROFILE["properties"],
        "totp_enabled": boolean(description="a second factor (TOTP) is enrolled"),
        "groups": array(GROUP_REF, description="the groups the user is a member of, by name"),
    },
    required=[*PROFILE["required"], "totp_enabled", "groups"],
)
USERS = obj({"items": array(USER)}, required=["items"])
USER_CHANGE = obj(
    {
        "is_admin": boolean(),
        "email": EMAIL,
        "display_name": nullable(DISPLAY_NAME),
    },
    description="only the fields sent change, all or none; display_name null or empty clears it",
)


@routes.post(
    "/setup",
    access=Access.anonymous,
    summary="Create the first administrator (once)",
    description=(
        "Needs the one-time setup token the server printed when it started: without it, or "
        "with a wrong one, 403 naming setup_token. Answers 409 once setup is done."
    ),
    body=SETUP_BODY,
    responses={201: CREATED},
    problems=("conflict", "forbidden"),
)
async def setup(call: Call) -> Any:
    reply = await call.command("identity", "setup", call.body)
    return Reply(_created(reply, "setup"), status=201)


@routes.post(
    "/session",
    access=Access.anonymous,
    summary="Sign in: start a session and set its cookie",
    description=(
        f"Sets the {SESSION_COOKIE} cookie; the session id is never in the body. "
        "A wrong username or password is 401, an address with too many failures 403. "
        "An account with a second factor answers {totp_required: true, ticket} without a "
        "cookie, unless the body carries totp or recovery_code (a wrong one is 401 too)."
    ),
    body=LOGIN_BODY,
    responses={200: LOGIN_REPLY},
    problems=("unauthorized", "forbidden"),
)
async def login(call: Call) -> Any:
    payload = dict(call.body)
    agent = call.request.headers.get("User-Agent", "").strip()
    if agent:  # what the profile's session list shows as the device
        payload["user_agent"] = agent[:_USER_AGENT_MAX]
    try:
        reply = await call.command("identity", "login", payload)
    except Unauthorized:
        # One answer for every refusal, whatever identity said: never which part was wrong.
        raise Unauthorized(LOGIN_REFUSED) from None
    if isinstance(reply, dict) and reply.get("totp_required") is True:
        return {"totp_required": True, "ticket": _get(reply, "login", "ticket", str)}
    return session_reply(reply, "login")


@routes.delete(
    "/session",
    access=Access.user,
    summary="Sign out: end this session and clear its cookie",
    responses={204: None},
)
async def logout(call: Call) -> Any:
    creds = credentials_of(call.request)
    if call.user.via is not Via.session or creds is None or creds.via is not Via.session:
        raise Invalid(
            "signing out ends the session of the cookie; this request used an API token "
            "(revoke the token instead)"
        )
    await call.command("identity", "logout", {"session": creds.secret})
    return Reply(status=204, headers={"Set-Cookie": session_cookie("", 0)})


@routes.get(
    "/profile",
    access=Access.user,
    summary="The caller's profile",
    responses={200: PROFILE},
    problems=("not_found",),
)
async def profile(call: Call) -> Any:
    own = call.user.profile  # sent with whoami (services/gateway/api/auth.py)
    if own is not None:
        return _profile(dict(own), "whoami")
    reply = await call.ask("identity", "profile", {"user_id": call.user.user_id})
    return _profile(reply, "profile")


PROFILE_CHANGE = obj(
    {"email": EMAIL, "display_name": nullable(DISPLAY_NAME)},
    description="only the fields sent change; display_name null or empty clears it",
)
PASSWORD_CHANGE = obj(
    {"current_password": PASSWORD, "new_password": PASSWORD},
    required=["current_password", "new_password"],
)
SESSION_ID = string(format="uuid", description="a session id (UUID), not the cookie value")
SESSION_PATH = obj({"session_id": SESSION_ID}, required=["session_id"])
SESSION_ITEM = obj(
    {
        "session_id": string(format="uuid"),
        "ip": nullable(string()),
        "user_agent": nullable(string()),
        "started_at": string(format="date-time"),
        "last_seen": string(format="date-time"),
        "expires_at": string(format="date-time"),
        "current": boolean(description="the session of this request"),
    },
    required=["session_id", "ip", "user_agent", "started_at", "last_seen", "expires_at", "current"],
)
SESSIONS = obj({"items": array(SESSION_ITEM)}, required=["items"])


@routes.patch(
    "/profile",
    access=Access.user,
    summary="Change the caller's email or display name",
    body=PROFILE_CHANGE,
    responses={200: PROFILE},
    problems=("conflict",),
)
async def update_profile(call: Call) -> Any:
    payload = {"user_id": call.user.user_id, **call.body}
    if payload.get("display_name") is None and "display_name" in call.body:
        payload["display_name"] = ""
    reply = await call.command("identity", "update_profile", payload)
    return _profile(reply, "update_profile")


@routes.post(
    "/profile/password",
    access=Access.user,
    summary="Change the caller's password (asks for the current one)",
    description="Every other session of the account ends; this one stays.",
    body=PASSWORD_CHANGE,
    responses={204: None},
)
async def change_password(call: Call) -> Any:
    payload = {"user_id": call.user.user_id, **call.body}
    creds = credentials_of(call.request)
    if creds is not None and creds.via is Via.session and creds.secret:
        payload["session"] = creds.secret
    await call.command("identity", "change_password", payload)
    return Reply(status=204)


@routes.get(
    "/profile/sessions",
    access=Access.user,
    summary="The caller's open sessions",
    responses={200: SESSIONS},
)
async def list_sessions(call: Call) -> Any:
    payload: dict[str, Any] = {"user_id": call.user.user_id}
    creds = credentials_of(call.request)
    if creds is not None and creds.via is Via.session and creds.secret:
        payload["session"] = creds.secret
    reply = await call.ask("identity", "sessions", payload)
    items = _get(reply, "sessions", "items", list)
    keys = SESSION_ITEM["required"]
    return {"items": [{k: item.get(k) for k in keys} for item in items if isinstance(item, dict)]}


@routes.delete(
    "/profile/sessions/{session_id}",
    access=Access.user,
    summary="End one of the caller's sessions",
    path_params=SESSION_PATH,
    responses={204: None},
)
async def revoke_session(call: Call) -> Any:
    session_id = str(call.path["session_id"]).lower()
    await call.command(
        "identity", "revoke_session", {"user_id": call.user.user_id, "session_id": session_id}
    )
    return Reply(status=204)


@routes.get(
    "/users",
    access=Access.admin,
    summary="Every user",
    responses={200: USERS},
)
async def list_users(call: Call) -> Any:
    reply = await call.ask("identity", "users", {})
    items = _get(reply, "users", "items", list)
    return {"items": [_user(item, "users") for item in items]}


@routes.post(
    "/users",
    access=Access.admin,
    summary="Create a user",
    description="Answers 409 when the username or email is taken.",
    body=NEW_USER_BODY,
    responses={201: CREATED},
    problems=("conflict",),
)
async def create_user(call: Call) -> Any:
    reply = await call.command("identity", "create_user", call.body)
    return Reply(_created(reply, "create_user"), status=201)


@routes.patch(
    "/users/{user_id}",
    access=Access.admin,
    summary="Change a user's administrator role, email or display name",
    description=(
        "Answers the user as GET /users lists them. 409 naming email when another account has "
        "it, naming is_admin when it would remove the last enabled administrator or the "
        "caller's own role."
    ),
    path_params=USER_PATH,
    body=USER_CHANGE,
    responses={200: USER},
    problems=("conflict",),
)
async def update_user(call: Call) -> Any:
    payload = {**_user_id(call), **call.body}
    if "display_name" in call.body and call.body["display_name"] is None:
        payload["display_name"] = ""
    reply = await call.command("identity", "update_user", payload)
    return _user(reply, "update_user")


@routes.post(
    "/users/{user_id}/disable",
    access=Access.admin,
    summary="Disable a user: sign-in refused, sessions and tokens end",
    path_params=USER_PATH,
    responses={204: None},
    problems=("conflict",),
)
async def disable_user(call: Call) -> Any:
    await call.command("identity", "disable_user", _user_id(call))
    return Reply(status=204)


@routes.post(
    "/users/{user_id}/enable",
    access=Access.admin,
    summary="Enable a disabled user",
    path_params=USER_PATH,
    responses={204: None},
)
async def enable_user(call: Call) -> Any:
    await call.command("identity", "enable_user", _user_id(call))
    return Reply(status=204)


@routes.delete(
    "/users/{user_id}",
    access=Access.admin,
    summary="Delete a user",
    path_params=USER_PATH,
    responses={204: None},
    problems=("conflict",),
)
async def delete_user(call: Call) -> Any:
    await call.command("identity", "delete_user", _user_id(call))
    return Reply(status=204)


def session_reply(reply: Any, what: str) -> Reply:
    """The answer to a sign-in that identity turned into a session: the cookie, and the
    session's public facts in the body."""
    session = _get(reply, what, "session", str)
    expires_at = _get(reply, what, "expires_at", str)
    if not _COOKIE_VALUE.fullmatch(session):
        raise Internal(f"identity answered {what} with a session id unfit for a cookie")
    body = {
        "user_id": _get(reply, what, "user_id", str),
        "username": _get(reply, what, "username", str),
        "is_admin": _get(reply, what, "is_admin", bool),
        "expires_at": expires_at,
    }
    if reply.get("totp_enrolment_required") is True:
        body["totp_enrolment_required"] = True
    max_age = _seconds_until(expires_at, what)
    return Reply(body, headers={"Set-Cookie": session_cookie(session, max_age)})


def session_cookie(session: str, max_age: int) -> str:
    """The Set-Cookie value of the session cookie (empty with max_age 0: clear it)."""
    return f"{SESSION_COOKIE}={session}; {SESSION_COOKIE_ATTRIBUTES}; Max-Age={max_age}"


def _user_id(call: Call) -> dict[str, Any]:
    """The path's user id in canonical (lower-case) form, as identity stores it."""
    return {"user_id": str(call.path["user_id"]).lower()}


def _seconds_until(expires_at: str, what: str) -> int:
    try:
        when = datetime.fromisoformat(expires_at)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise Internal(f"identity answered {what} with expires_at {expires_at!r:.60}, not a time")
    seconds = math.floor((when - datetime.now(UTC)).total_seconds())
    if seconds <= 0:
        raise Internal(f"identity answered {what} with a session that has already expired")
    return seconds


def _get(reply: Any, what: str, key: str, kind: type) -> Any:
    value = reply.get(key) if isinstance(reply, dict) else None
    if not isinstance(value, kind):
        raise Internal(f"identity answered {what} without a valid {key}")
    return value


def _created(reply: Any, what: str) -> dict[str, Any]:
    return {"user_id": _get(reply, what, "user_id", str)}


def _user(reply: Any, what: str) -> dict[str, Any]:
    """A user of an admin's list: the profile, whether TOTP is on, the groups."""
    groups = _get(reply, what, "groups", list)
    refs = []
    for g in groups:
        if not (
            isinstance(g, dict)
            and isinstance(g.get("group_id"), str)
            and isinstance(g.get("name"), str)
        ):
            raise Internal(f"identity answered {what} with a malformed group")
        refs.append({"group_id": g["group_id"], "name": g["name"]})
    return {
        **_profile(reply, what),
        "totp_enabled": _get(reply, what, "totp_enabled", bool),
        "groups": refs,
    }


def _profile(reply: Any, what: str) -> dict[str, Any]:
    """Only the declared fields of a profile reach the caller."""
    display_name = reply.get("display_name") if isinstance(reply, dict) else None
    if display_name is not None and not isinstance(display_name, str):
        raise Internal(f"identity answered {what} without a valid display_name")
    return {
        "user_id": _get(reply, what, "user_id", str),
        "username": _get(reply, what, "username", str),
        "email": _get(reply, what, "email", str),
        "display_name": display_name,
        "is_admin": _get(reply, what, "is_admin", bool),
        "disabled": _get(reply, what, "disabled", bool),
    }
