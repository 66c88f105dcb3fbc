"""The wire contract of the identity service: the payload of every command and query it serves.

The shapes are checked here, on both sides of the bus; the rules that need identity's state
stay in the service (the password policy, a taken name, who may act, whether a link is still
good). A sign-in's username is any string: a name that cannot exist is refused like a wrong
password, never as invalid input (no oracle). Optional fields take null for "not given".
"""

from __future__ import annotations

from libs.contracts import Contract
from libs.contracts.common import uuid
from libs.contracts.schema import array, boolean, integer, nullable, obj, string

__all__ = [
    "APP_ID_PATTERN",
    "CONTRACT",
    "EMAIL_PATTERN",
    "GROUP_NAME_PATTERN",
    "MAIL_PROTOCOLS",
    "MAX_ACCESS_GROUPS",
    "MAX_ACCESS_USERS",
    "MAX_ADDRESS_VALUES",
    "MAX_INVITATION_GROUPS",
    "MAX_NAME_IDS",
    "SSH_FAILURE_REASONS",
    "USERNAME_PATTERN",
]

USERNAME_PATTERN = r"^[A-Za-z][A-Za-z0-9._-]{1,31}$"
EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]{1,189}$"
GROUP_NAME_PATTERN = r"^[a-z][a-z0-9_-]{1,31}$"
APP_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
MAX_INVITATION_GROUPS = 100
MAX_ACCESS_USERS = 1000
MAX_ACCESS_GROUPS = 200
MAX_ADDRESS_VALUES = 500
MAX_NAME_IDS = 500  # ids of one kind in one `names` query
MAIL_PROTOCOLS = ("imap", "smtp", "managesieve")
# Failed SSH sign-ins the firewall reads in sshd's log (services/firewall/sshd.py says which
# lines count as which).
SSH_FAILURE_REASONS = ("ssh_password", "ssh_invalid_user", "ssh_preauth", "ssh_max_tries")

_USERNAME = string(
    maxLength=32,
    pattern=USERNAME_PATTERN,
    description="2 to 32 characters: a letter, then letters, digits, '.', '_' or '-'",
)
_EMAIL = string(maxLength=254, pattern=EMAIL_PATTERN, description="an email")
# The password policy (length, common passwords, ...) is identity's: any string gets there.
_PASSWORD = string(writeOnly=True)
_DISPLAY_NAME = nullable(
    string(
        maxLength=100, pattern=r"^[^\x00-\x1f\x7f]*$", description="text without control characters"
    )
)
_USER_ID = uuid(description="a user id (UUID)")
_GROUP_ID = uuid(description="a group id (UUID)")
_USER = obj({"user_id": _USER_ID}, required=["user_id"])
_NOTHING = obj({})
_USER_AGENT = nullable(string(maxLength=400))
_SESSION = string(maxLength=512)
_TOTP = nullable(string(maxLength=32, writeOnly=True))
_RECOVERY = nullable(string(maxLength=64, writeOnly=True))
_LINK_TOKEN = string(maxLength=128, writeOnly=True)
_SETUP_TOKEN = string(
    maxLength=128,
    writeOnly=True,
    description="the one-time setup token the server printed when it started",
)
_GROUP_NAME = string(
    maxLength=32,
    pattern=GROUP_NAME_PATTERN,
    description="2 to 32 characters: a lower-case letter, then lower-case letters, digits, '_'"
    " or '-'",
)
_APP_ID = string(
    pattern=APP_ID_PATTERN,
    description="1 to 63 characters: a lower-case letter or digit, then lower-case letters,"
    " digits or '-'",
)
# User ids are checked for their UUID form by identity, so a bad one names the list.
_ACCESS = obj(
    {
        "all_users": boolean(),
        "user_ids": array(string(), maxItems=MAX_ACCESS_USERS, description="user ids"),
        "groups": array(
            string(minLength=1, maxLength=64),
            maxItems=MAX_ACCESS_GROUPS,
            description="group ids or names",
        ),
    },
    description="who may log in to the app: every user, or these users and groups' members",
)
_APP_ACCESS = obj({"app_id": _APP_ID, "access": _ACCESS}, required=["app_id", "access"])
_NEW_ACCOUNT = {
    "username": _USERNAME,
    "email": _EMAIL,
    "password": _PASSWORD,
    "display_name": _DISPLAY_NAME,
}
_ACCOUNT_REQUIRED = ["username", "email", "password"]

CONTRACT = Contract(
    "identity",
    commands={
        # users
        "setup": obj(
            {**_NEW_ACCOUNT, "setup_token": _SETUP_TOKEN},
            required=[*_ACCOUNT_REQUIRED, "setup_token"],
        ),
        "create_user": obj(
            {**_NEW_ACCOUNT, "is_admin": boolean(default=False)}, required=_ACCOUNT_REQUIRED
        ),
        "disable_user": _USER,
        "enable_user": _USER,
        "delete_user": _USER,
        "set_admin": obj(
            {"user_id": _USER_ID, "is_admin": boolean(default=False)}, required=["user_id"]
        ),
        "update_user": obj(
            {
                "user_id": _USER_ID,
                "is_admin": nullable(boolean()),
                "email": nullable(_EMAIL),
                "display_name": _DISPLAY_NAME,
            },
            required=["user_id"],
        ),
        "update_profile": obj(
            {"user_id": _USER_ID, "email": nullable(_EMAIL), "display_name": _DISPLAY_NAME},
            required=["user_id"],
        ),
        "change_password": obj(
            {
                "user_id": _USER_ID,
                "current_password": _PASSWORD,
                "new_password": _PASSWORD,
                "session": nullable(_SESSION),
            },
            required=["user_id", "current_password", "new_password"],
        ),
        # sign-in and sessions
        "login": obj(
            {
                "username": string(),
                "password": _PASSWORD,
                "user_agent": _USER_AGENT,
                "totp": _TOTP,
                "recovery_code": _RECOVERY,
            },
            required=["username", "password"],
        ),
        # the mail service's check of a mail client's sign-in (actor "system" only; a user
        # with TOTP is refused: their mail client signs in with an app password)
        "mail_login": obj(
            {
                "username": string(maxLength=256),
                "password": string(maxLength=1024, writeOnly=True),
                "ip": nullable(
                    string(maxLength=64, description="the mail client's IPv4 or IPv6 address")
                ),
                "protocol": string(
                    enum=list(MAIL_PROTOCOLS), description="how the client signs in"
                ),
            },
            required=["username", "password", "ip", "protocol"],
        ),
        # a failed sign-in another surface saw (sshd, read by the firewall; actor "system"
        # only): recorded like the dashboard's, from that address, for the firewall's bans
        "record_failure": obj(
            {
                "ip": string(maxLength=64, description="the client's IPv4 or IPv6 address"),
                "reason": string(
                    enum=list(SSH_FAILURE_REASONS), description="what the client failed at"
                ),
            },
            required=["ip", "reason"],
        ),
        "logout": obj({"session": _SESSION}, required=["session"]),
        "revoke_session": obj(
            {"user_id": _USER_ID, "session_id": uuid(description="a session id (UUID)")},
            required=["user_id", "session_id"],
        ),
        # second factor, MFA policy, API tokens
        "totp_enrol": _USER,
        "totp_confirm": obj(
            {"user_id": _USER_ID, "code": string(maxLength=32, writeOnly=True)},
            required=["user_id", "code"],
        ),
        "totp_disable": obj(
            {"user_id": _USER_ID, "current_password": _PASSWORD},
            required=["user_id", "current_password"],
        ),
        "login_totp": obj(
            {
                "ticket": _LINK_TOKEN,
                "code": _TOTP,
                "recovery_code": _RECOVERY,
                "user_agent": _USER_AGENT,
            },
            required=["ticket"],
        ),
        "set_mfa_policy": obj({"require_admin_totp": boolean()}, required=["require_admin_totp"]),
        "create_token": obj(
            {
                "user_id": _USER_ID,
                "name": string(maxLength=64),
                "scope": string(enum=["read", "full"], description="read (GET only) or full"),
                "expires_at": nullable(
                    string(format="date-time", description="in the future, within a year")
                ),
                "expires_in_days": nullable(integer(minimum=1, maximum=366)),
                # the caller's session: creating a token needs a recent sign-in
                "session": nullable(_SESSION),
            },
            required=["user_id", "name", "scope"],
        ),
        "revoke_token": obj(
            {"user_id": _USER_ID, "token_id": uuid(description="a token id (UUID)")},
            required=["user_id", "token_id"],
        ),
        # groups, invitations, reset links
        "create_group": obj({"name": _GROUP_NAME}, required=["name"]),
        "rename_group": obj(
            {"group_id": _GROUP_ID, "name": _GROUP_NAME}, required=["group_id", "name"]
        ),
        "delete_group": obj({"group_id": _GROUP_ID}, required=["group_id"]),
        "add_group_member": obj(
            {"group_id": _GROUP_ID, "user_id": _USER_ID}, required=["group_id", "user_id"]
        ),
        "remove_group_member": obj(
            {"group_id": _GROUP_ID, "user_id": _USER_ID}, required=["group_id", "user_id"]
        ),
        # recorded, then its link emailed through notify: the answer has the token (shown this
        # once) and whether the mail went out ({invitation_id, token, expires_at, emailed,
        # email_error})
        "invite": obj(
            {
                "email": _EMAIL,
                "is_admin": boolean(default=False),
                "groups": array(_GROUP_ID, maxItems=MAX_INVITATION_GROUPS),
            },
            required=["email"],
        ),
        "revoke_invitation": obj(
            {"invitation_id": uuid(description="an invitation id (UUID)")},
            required=["invitation_id"],
        ),
        "accept_invitation": obj(
            {"token": _LINK_TOKEN, **_NEW_ACCOUNT},
            required=["token", *_ACCOUNT_REQUIRED],
        ),
        # anonymous: the same answer for any email; an enabled account's gets a link by mail
        "request_password_reset": obj({"email": _EMAIL}, required=["email"]),
        "create_password_reset": _USER,
        "reset_password": obj(
            {"token": _LINK_TOKEN, "new_password": _PASSWORD}, required=["token", "new_password"]
        ),
        # LDAP accounts of apps
        "ldap_register_app": _APP_ACCESS,
        "ldap_set_app_access": _APP_ACCESS,
        "ldap_remove_app": obj({"app_id": _APP_ID}, required=["app_id"]),
    },
    queries={
        "setup_state": _NOTHING,
        # the setup token is right and setup not done (used by the wizard's restore; the token
        # is not taken: the restored platform replaces it)
        "check_setup_token": obj({"setup_token": _SETUP_TOKEN}, required=["setup_token"]),
        # a session or an API token; exactly one (identity checks that)
        "whoami": obj({"session": string(writeOnly=True), "token": string(writeOnly=True)}),
        "profile": _USER,
        "users": _NOTHING,
        "sessions": obj({"user_id": _USER_ID, "session": nullable(string())}, required=["user_id"]),
        "totp_state": _USER,
        "mfa_policy": _NOTHING,
        "tokens": _USER,
        "groups": _NOTHING,
        "group": obj({"group_id": _GROUP_ID}, required=["group_id"]),
        "invitations": _NOTHING,
        "ldap_apps": _NOTHING,
        "ldap_endpoint": _NOTHING,
        # client addresses sealed to their week (the activity log): the text, or null once the
        # week's key is destroyed; one page of the log at a time
        "addresses": obj(
            {"values": array(string(maxLength=1024), maxItems=MAX_ADDRESS_VALUES)},
            required=["values"],
        ),
        # what the activity log shows for a page's ids and browser strings (names.py): the
        # username or group name, null when deleted; a browser's short family, null once the
        # week's key of its string is destroyed
        "names": obj(
            {
                "user_ids": array(_USER_ID, maxItems=MAX_NAME_IDS),
                "group_ids": array(_GROUP_ID, maxItems=MAX_NAME_IDS),
                "user_agents": array(string(maxLength=1024), maxItems=MAX_ADDRESS_VALUES),
            }
        ),
    },
)
