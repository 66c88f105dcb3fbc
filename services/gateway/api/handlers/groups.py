"""Groups, invitations and password-reset links.

Identity owns the rules (who may, name grammar, link binding, expiry, single use); the schemas
here refuse malformed input first. Link tokens appear in exactly two answers, once each: the
invitation an administrator creates and the reset link an administrator creates. The anonymous
routes (accept an invitation, ask for and complete a reset) answer one way for every refused
link, as identity does. Identity emails the links of invitations and of requested resets
(through notify and the mail service); an invitation's answer says whether its mail went out.
"""

from __future__ import annotations

from typing import Any

from libs.contracts.identity import CONTRACT as IDENTITY
from libs.contracts.schema import array, boolean, nullable, obj, string
from libs.events.bus import Internal
from services.gateway.api.bodies import command_body
from services.gateway.api.handlers.identity import (
    DISPLAY_NAME,
    EMAIL,
    PASSWORD,
    USER_ID,
    USERNAME,
)
from services.gateway.api.routes import Access, Call, Reply, Routes

__all__ = ["routes"]

routes = Routes("groups")

GROUP_ID = string(format="uuid", description="a group id (UUID)")
INVITATION_ID = string(format="uuid", description="an invitation id (UUID)")
LINK_TOKEN = string(minLength=1, maxLength=128, writeOnly=True, description="the token of the link")
SHOWN_ONCE = string(description="the token of the link: shown only in this answer, never again")
WHEN = string(format="date-time")

GROUP_PATH = obj({"group_id": GROUP_ID}, required=["group_id"])
MEMBER_PATH = obj({"group_id": GROUP_ID, "user_id": USER_ID}, required=["group_id", "user_id"])
INVITATION_PATH = obj({"invitation_id": INVITATION_ID}, required=["invitation_id"])
USER_PATH = obj({"user_id": USER_ID}, required=["user_id"])

# Bodies sent on as identity's commands (the group id of a rename comes from the path).
GROUP_BODY = command_body(IDENTITY, "create_group")
RENAME_BODY = command_body(IDENTITY, "rename_group", without=["group_id"])
INVITE_BODY = command_body(
    IDENTITY, "invite", notes={"groups": {"description": "groups the new user joins"}}
)
ACCEPT_BODY = obj(
    {
        "token": LINK_TOKEN,
        "email": {**EMAIL, "description": "the email the invitation was sent to"},
        "username": USERNAME,
        "password": PASSWORD,
        "display_name": DISPLAY_NAME,
    },
    required=["token", "email", "username", "password"],
)
RESET_REQUEST_BODY = command_body(IDENTITY, "request_password_reset")
RESET_BODY = obj(
    {"token": LINK_TOKEN, "new_password": PASSWORD}, required=["token", "new_password"]
)

GROUP = obj(
    {
        "group_id": string(format="uuid"),
        "name": string(),
        "members": array(string(format="uuid"), description="user ids"),
    },
    required=["group_id", "name", "members"],
)
GROUPS = obj({"items": array(GROUP)}, required=["items"])
INVITATION_CREATED = obj(
    {
        "invitation_id": string(format="uuid"),
        "token": SHOWN_ONCE,
        "expires_at": WHEN,
        "emailed": boolean(description="whether the link was emailed to the invited address"),
        "email_error": nullable(
            string(description="why it was not (no way to send mail, ...); null when it was")
        ),
    },
    required=["invitation_id", "token", "expires_at", "emailed", "email_error"],
)
# Identity waits this long for the invitation's mail (services/identity/link_mail.py: 20 s).
_INVITE_TIMEOUT = 30.0
INVITATION = obj(
    {
        "invitation_id": string(format="uuid"),
        "email": string(),
        "is_admin": boolean(),
        "groups": array(string(format="uuid")),
        "created_at": WHEN,
        "expires_at": WHEN,
    },
    required=["invitation_id", "email", "is_admin", "groups", "created_at", "expires_at"],
)
INVITATIONS = obj({"items": array(INVITATION)}, required=["items"])
ACCEPTED = obj({"user_id": string(format="uuid")}, required=["user_id"])
RESET_CREATED = obj({"token": SHOWN_ONCE, "expires_at": WHEN}, required=["token", "expires_at"])

# -- groups ---------------------------------------------------------------------------------


@routes.get("/groups", access=Access.admin, summary="Every group", responses={200: GROUPS})
async def list_groups(call: Call) -> Any:
    reply = await call.ask("identity", "groups", {})
    return {"items": [_group(item, "groups") for item in _get(reply, "groups", "items", list)]}


@routes.post(
    "/groups",
    access=Access.admin,
    summary="Create a group",
    description="Answers 409 when the name is taken.",
    body=GROUP_BODY,
    responses={201: GROUP},
    problems=("conflict",),
)
async def create_group(call: Call) -> Any:
    reply = await call.command("identity", "create_group", call.body)
    return Reply(_group(reply, "create_group"), status=201)


@routes.get(
    "/groups/{group_id}",
    access=Access.admin,
    summary="One group and its members",
    path_params=GROUP_PATH,
    responses={200: GROUP},
)
async def get_group(call: Call) -> Any:
    return _group(await call.ask("identity", "group", _ids(call, "group_id")), "group")


@routes.patch(
    "/groups/{group_id}",
    access=Access.admin,
    summary="Rename a group",
    description="Answers 409 when the name is taken.",
    path_params=GROUP_PATH,
    body=RENAME_BODY,
    responses={200: GROUP},
    problems=("conflict",),
)
async def rename_group(call: Call) -> Any:
    payload = {**_ids(call, "group_id"), "name": call.body["name"]}
    return _group(await call.command("identity", "rename_group", payload), "rename_group")


@routes.delete(
    "/groups/{group_id}",
    access=Access.admin,
    summary="Delete a group (its members stay users)",
    path_params=GROUP_PATH,
    responses={204: None},
)
async def delete_group(call: Call) -> Any:
    await call.command("identity", "delete_group", _ids(call, "group_id"))
    return Reply(status=204)


@routes.put(
    "/groups/{group_id}/members/{user_id}",
    access=Access.admin,
    summary="Add a user to a group (nothing changes if they are in it)",
    path_params=MEMBER_PATH,
    responses={204: None},
)
async def add_group_member(call: Call) -> Any:
    await call.command("identity", "add_group_member", _ids(call, "group_id", "user_id"))
    return Reply(status=204)


@routes.delete(
    "/groups/{group_id}/members/{user_id}",
    access=Access.admin,
    summary="Remove a user from a group",
    description="Answers 404 when the user is not a member.",
    path_params=MEMBER_PATH,
    responses={204: None},
)
async def remove_group_member(call: Call) -> Any:
    await call.command("identity", "remove_group_member", _ids(call, "group_id", "user_id"))
    return Reply(status=204)


# -- invitations ----------------------------------------------------------------------------


@routes.get(
    "/invitations",
    access=Access.admin,
    summary="Pending invitations (without their tokens)",
    responses={200: INVITATIONS},
)
async def list_invitations(call: Call) -> Any:
    reply = await call.ask("identity", "invitations", {})
    items = _get(reply, "invitations", "items", list)
    return {"items": [_invitation(item) for item in items]}


@routes.post(
    "/invitations",
    access=Access.admin,
    summary="Invite someone by email: a link for them, emailed, valid once, for 7 days",
    description=(
        "The link is emailed to the invited address; `emailed` says whether that worked and "
        "`email_error` why not (no mail domain on and no outgoing relay set, ...). The token "
        "is in this answer only, so the link can also be handed over another way; the "
        "invitation can be accepted only with the email it was sent to. Answers 409 when the "
        "email already has an account, 404 when a group does not exist."
    ),
    body=INVITE_BODY,
    responses={201: INVITATION_CREATED},
    problems=("conflict", "not_found"),
)
async def invite(call: Call) -> Any:
    reply = await call.command("identity", "invite", call.body, timeout=_INVITE_TIMEOUT)
    why_not = reply.get("email_error") if isinstance(reply, dict) else None
    body = {
        "invitation_id": _get(reply, "invite", "invitation_id", str),
        "token": _get(reply, "invite", "token", str),
        "expires_at": _get(reply, "invite", "expires_at", str),
        "emailed": _get(reply, "invite", "emailed", bool),
        "email_error": why_not if isinstance(why_not, str) else None,
    }
    return Reply(body, status=201)


@routes.delete(
    "/invitations/{invitation_id}",
    access=Access.admin,
    summary="Revoke a pending invitation",
    path_params=INVITATION_PATH,
    responses={204: None},
)
async def revoke_invitation(call: Call) -> Any:
    await call.command("identity", "revoke_invitation", _ids(call, "invitation_id"))
    return Reply(status=204)


@routes.post(
    "/invitations/accept",
    access=Access.anonymous,
    summary="Accept an invitation: create the account it offers",
    description=(
        "The email must be the one the invitation was sent to. A used, revoked, expired or "
        "mismatched invitation gets one answer (400, field token); a taken username 409."
    ),
    body=ACCEPT_BODY,
    responses={201: ACCEPTED},
    problems=("conflict",),
)
async def accept_invitation(call: Call) -> Any:
    reply = await call.command("identity", "accept_invitation", call.body)
    return Reply({"user_id": _get(reply, "accept_invitation", "user_id", str)}, status=201)


# -- password reset -------------------------------------------------------------------------


@routes.post(
    "/password-reset",
    access=Access.anonymous,
    summary="Ask for a password-reset link: it is emailed",
    description=(
        "Answers 202 whether or not the email has an account, at once: when it is the email "
        "of an enabled account, identity emails a link to it (valid once, for 1 hour). Limited "
        "per client address (403 past it, saying when to try again) and per email asked for. "
        "An administrator can also create a link with POST /users/{user_id}/password-reset."
    ),
    body=RESET_REQUEST_BODY,
    responses={202: None},
    problems=("forbidden",),
)
async def request_password_reset(call: Call) -> Any:
    await call.command("identity", "request_password_reset", call.body)
    return Reply(status=202)


@routes.post(
    "/password-reset/complete",
    access=Access.anonymous,
    summary="Set a new password with a reset link; every session of the user ends",
    description="A used or expired link gets one answer (400, field token).",
    body=RESET_BODY,
    responses={204: None},
)
async def reset_password(call: Call) -> Any:
    await call.command("identity", "reset_password", call.body)
    return Reply(status=204)


@routes.post(
    "/users/{user_id}/password-reset",
    access=Access.admin,
    summary="Create a password-reset link for a user: valid once, for 1 hour",
    description="The token is in this answer only.",
    path_params=USER_PATH,
    responses={201: RESET_CREATED},
)
async def create_password_reset(call: Call) -> Any:
    reply = await call.command("identity", "create_password_reset", _ids(call, "user_id"))
    body = {
        "token": _get(reply, "create_password_reset", "token", str),
        "expires_at": _get(reply, "create_password_reset", "expires_at", str),
    }
    return Reply(body, status=201)


def _ids(call: Call, *names: str) -> dict[str, Any]:
    """Path ids in canonical (lower-case) form, as identity stores them."""
    return {name: str(call.path[name]).lower() for name in names}


def _get(reply: Any, what: str, key: str, kind: type) -> Any:
    value = reply.get(key) if isinstance(reply, dict) else None
    if not isinstance(value, kind):
        raise Internal(f"identity answered {what} without a valid {key}")
    return value


def _ids_of(reply: Any, what: str, key: str) -> list[str]:
    items = _get(reply, what, key, list)
    if not all(isinstance(i, str) for i in items):
        raise Internal(f"identity answered {what} with a {key} that is not a list of ids")
    return list(items)


def _group(reply: Any, what: str) -> dict[str, Any]:
    """Only the declared fields of a group reach the caller."""
    return {
        "group_id": _get(reply, what, "group_id", str),
        "name": _get(reply, what, "name", str),
        "members": _ids_of(reply, what, "members"),
    }


def _invitation(reply: Any) -> dict[str, Any]:
    what = "invitations"
    return {
        "invitation_id": _get(reply, what, "invitation_id", str),
        "email": _get(reply, what, "email", str),
        "is_admin": _get(reply, what, "is_admin", bool),
        "groups": _ids_of(reply, what, "groups"),
        "created_at": _get(reply, what, "created_at", str),
        "expires_at": _get(reply, what, "expires_at", str),
    }
