"""The activity log as sentences a person reads: "owner installed Static website at
blog.example.org", "kim signed in from 203.0.113.7 (Firefox)", "owner added kim to family".

Each event type that matters has a sentence here, declared with the fields of its event's data
it names (`@_says(...)`). A page reads just those fields of each of its events (`refs_of`),
ids rather than names, and asks for their names once per
kind (`Names`, filled by activity_names.py) and `sentence()` writes each line. Other types read
as their event's own summary. Names are never stored: a deleted user's key is gone, so their id
reads "a deleted user" for good.

`PROGRESS_TYPES` is the one definition of what the "changes" view leaves out: the steps of work
under way, whose outcome is an event of its own.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

__all__ = [
    "ADDRESS_EXPIRED",
    "ADDRESS_UNAVAILABLE",
    "DELETED_GROUP",
    "DELETED_USER",
    "PLATFORM",
    "PROGRESS_TYPES",
    "Line",
    "Names",
    "actor_name",
    "app_ids_of",
    "app_label",
    "group_ids_of",
    "is_uuid",
    "refs_of",
    "sentence",
    "sentence_fields",
    "user_ids_of",
]

PLATFORM = "Homeport"  # the actor "system": the platform itself
SOMEONE = "someone"  # an anonymous caller (a sign-in, a reset link asked for)
DELETED_USER = "a deleted user"
DELETED_GROUP = "a deleted group"
# What the log shows for a client address sealed to its week (libs/events/periods.py) once the
# week's key is destroyed, and while identity cannot be asked.
ADDRESS_EXPIRED = "address expired"
ADDRESS_UNAVAILABLE = "[sealed]"

# The steps of work under way: each operation ends in an outcome event of its own (AppInstalled,
# CertificateIssued, BackupCompleted, ...), which the "changes" view shows. So are the apps'
# accounts other services keep for an app while it is installed (LDAP, mail), the uses of a
# second factor within a sign-in, and the notification centre's own bookkeeping.
PROGRESS_TYPES: frozenset[str] = frozenset(
    {
        "TaskStarted",
        "TaskProgressed",
        "TaskSucceeded",
        "TaskFailed",
        "AppInstallRequested",
        "AppConfigureRequested",
        "AppUpdateRequested",
        "AppUpdateApproved",
        "AppRestoreRequested",
        "AppRebuildRequested",
        "AppUninstallRequested",
        "AppRepairRequested",
        "AppAutoUpdateStarted",
        "AppStepCompleted",
        "AddonProvisioned",
        "CertificateOrdered",
        "BackupStarted",
        "LdapAppRegistered",
        "LdapAppAccessChanged",
        "LdapAppRemoved",
        "MailAppRegistered",
        "MailClientRegistered",
        "MailAppRemoved",
        "TotpEnrolmentStarted",
        "SecondFactorUsed",
        "NotificationDelivered",
        "NotificationsRead",
    }
)


@dataclass(frozen=True, slots=True)
class Names:
    """What a page's ids read as, asked once per kind (activity_names.py). An id missing from
    `users` or `groups` could not be asked (it reads as its short id); one mapped to None is
    deleted."""

    users: Mapping[str, str | None] = field(default_factory=dict)
    groups: Mapping[str, str | None] = field(default_factory=dict)
    apps: Mapping[str, str] = field(default_factory=dict)  # app id -> "Title at host"
    browsers: Mapping[str, str | None] = field(default_factory=dict)  # stored string -> family


@dataclass(frozen=True, slots=True)
class Line:
    """One row of the log as its sentence needs it."""

    actor: str
    type: str
    stream: str
    summary: str
    refs: Mapping[str, Any]
    ip: str | None  # as shown: an address, ADDRESS_EXPIRED, ADDRESS_UNAVAILABLE, or None
    user_agent: str | None  # as stored (sealed or not): the key of Names.browsers


def is_uuid(value: object) -> TypeGuard[str]:
    """An id as identity and apps make them (a UUID in its canonical form)."""
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


# -- the sentences ---------------------------------------------------------------------------

_FIELD = re.compile(r"^[a-z][a-z0-9_]{0,40}(\.[a-z][a-z0-9_]{0,40})?$")
_TYPE = re.compile(r"^[A-Z][A-Za-z0-9]{0,99}$")
Say = Callable[["_Say"], str | None]
_SENTENCES: dict[str, tuple[tuple[str, ...], Say]] = {}


def _says(*types: str, fields: tuple[str, ...] = ()) -> Callable[[Say], Say]:
    """Declare the sentence of `types`, naming the fields of their data it reads."""
    for f in fields:
        if not _FIELD.match(f):
            raise ValueError(f"field {f!r} must be a lower_snake name (or parent.child)")

    def register(fn: Say) -> Say:
        for t in types:
            if not _TYPE.match(t) or t in _SENTENCES:
                raise ValueError(f"{t!r} is not an event type or has a sentence already")
            _SENTENCES[t] = (fields, fn)
        return fn

    return register


class _Say:
    """The parts a sentence is made of, for one line and a page's names."""

    def __init__(self, line: Line, names: Names) -> None:
        self.line = line
        self.names = names
        self.r = line.refs
        self.who = self.actor(line.actor)

    # -- data
    def text(self, key: str) -> str:
        value = self.r.get(key)
        return "" if value is None else str(value)

    def flag(self, key: str) -> bool:
        return self.r.get(key) is True

    def number(self, key: str) -> int | None:
        value = self.r.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    # -- who and what
    def actor(self, actor: str) -> str:
        if actor == "system":
            return PLATFORM
        if actor == "anonymous":
            return SOMEONE
        return self.person(actor) if is_uuid(actor) else actor

    def person(self, user_id: str) -> str:
        if user_id in self.names.users:
            return self.names.users[user_id] or DELETED_USER
        return f"account {user_id[:8]}" if user_id else "an account"

    def user(self, key: str = "user_id") -> str:
        return self.person(self.text(key))

    def own(self, key: str = "user_id") -> bool:
        """The actor acts on their own account."""
        return self.line.actor == self.text(key)

    def group(self, key: str = "group_id") -> str:
        group_id = self.text(key)
        if group_id in self.names.groups:
            name = self.names.groups[group_id]
            return name if name is not None else DELETED_GROUP
        return f"group {group_id[:8]}" if group_id else "a group"

    def app(self, key: str = "app_id") -> str:
        app_id = self.text(key) or _stream_id(self.line.stream, "app")
        return app_label(self.names, app_id)

    @property
    def from_ip(self) -> str:
        ip = self.line.ip
        if not ip or ip in (ADDRESS_EXPIRED, ADDRESS_UNAVAILABLE):
            return ""
        return f" from {ip}"

    @property
    def browser(self) -> str:
        ua = self.line.user_agent
        family = self.names.browsers.get(ua) if ua else None
        return f" ({family})" if family else ""


def app_label(names: Names, app_id: str) -> str:
    """ "Static website at blog.example.org", or the short id of an app never seen installed."""
    if app_id in names.apps:
        return names.apps[app_id]
    return f"app {app_id[:8]}" if app_id else "an app"


def _stream_id(stream: str, category: str) -> str:
    prefix = f"{category}-"
    return stream[len(prefix) :] if stream.startswith(prefix) else ""


def _plural(n: int | None, one: str, many: str | None = None) -> str:
    n = n or 0
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _size(n: int | None) -> str:
    if n is None:
        return "no limit"
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"  # not reached


def _day(iso: str) -> str:
    return iso[:10]


def _when(iso: str) -> str:
    return iso[:16].replace("T", " ") + " UTC" if len(iso) >= 16 else iso


# Identity: accounts, sessions, sign-ins


@_says("PlatformSetUp", fields=("admin_id",))
def _set_up(s: _Say) -> str:
    return f"{s.user('admin_id')} set up Homeport as its first administrator"


@_says("UserCreated", fields=("user_id", "is_admin", "via"))
def _user_created(s: _Say) -> str:
    role = "administrator" if s.flag("is_admin") else "user"
    via = s.text("via")
    if via == "invitation":
        return f"{s.user()} joined through an invitation" + (
            " as an administrator" if s.flag("is_admin") else ""
        )
    if via == "setup":
        return f"an administrator account for {s.user()} was created at setup"
    return (
        f"{s.who} created {'an' if role == 'administrator' else 'a'} {role} account for {s.user()}"
    )


@_says("UserUpdated", fields=("user_id",))
def _user_updated(s: _Say) -> str:
    return (
        f"{s.who} changed their profile"
        if s.own()
        else f"{s.who} changed the profile of {s.user()}"
    )


@_says("PasswordChanged", fields=("user_id", "rehash"))
def _password_changed(s: _Say) -> str:
    if s.flag("rehash"):
        return f"the password of {s.user()} is now stored with stronger hashing"
    if s.own():
        return f"{s.who} changed their password"
    return f"{s.who} changed the password of {s.user()}"


@_says("AdminChanged", fields=("user_id", "is_admin"))
def _admin_changed(s: _Say) -> str:
    if s.flag("is_admin"):
        return f"{s.who} made {s.user()} an administrator"
    return f"{s.who} took administrator rights from {s.user()}"


@_says("UserDisabled", fields=("user_id",))
def _user_disabled(s: _Say) -> str:
    return f"{s.who} disabled the account of {s.user()}"


@_says("UserEnabled", fields=("user_id",))
def _user_enabled(s: _Say) -> str:
    return f"{s.who} enabled the account of {s.user()}"


@_says("UserDeleted", fields=("user_id",))
def _user_deleted(s: _Say) -> str:
    who = s.user()
    return f"{s.who} deleted a user account" if who == DELETED_USER else f"{s.who} deleted {who}"


@_says("SessionStarted", fields=("user_id",))
def _signed_in(s: _Say) -> str:
    return f"{s.user()} signed in{s.from_ip}{s.browser}"


@_says("SessionEnded", fields=("user_id", "reason"))
def _signed_out(s: _Say) -> str:
    if s.text("reason") == "logout":
        return f"{s.user()} signed out"
    if s.own():
        return f"{s.who} ended one of their sessions"
    return f"{s.who} ended a session of {s.user()}"


_FAILURES = {
    "password": "wrong password",
    "disabled": "the account is disabled",
    "limited": "too many attempts",
    "current_password": "wrong current password",
}


@_says("LoginFailed", fields=("user_id", "reason"))
def _login_failed(s: _Say) -> str:
    reason = s.text("reason")
    if reason.startswith("ssh_"):
        return f"an SSH sign-in failed{s.from_ip} ({reason.removeprefix('ssh_').replace('_', ' ')})"
    where = ""
    if reason.startswith("mail_"):
        where, reason = " in a mail client", reason.removeprefix("mail_")
    elif reason.startswith("ldap_"):
        where, reason = " in an app (LDAP)", reason.removeprefix("ldap_")
    why = _FAILURES.get(reason, reason.replace("_", " "))
    if not s.text("user_id"):
        return f"a sign-in{where} with an unknown username failed{s.from_ip}"
    return f"a sign-in{where} as {s.user()} failed{s.from_ip} ({why})"


# Identity: groups, invitations, reset links, second factors, tokens


@_says("GroupCreated", fields=("name",))
def _group_created(s: _Say) -> str:
    return f"{s.who} created the group {s.text('name')}"


@_says("GroupRenamed", fields=("name", "old_name"))
def _group_renamed(s: _Say) -> str:
    return f"{s.who} renamed the group {s.text('old_name')} to {s.text('name')}"


@_says("GroupDeleted", fields=("name",))
def _group_deleted(s: _Say) -> str:
    return f"{s.who} deleted the group {s.text('name')}"


@_says("GroupMemberAdded", fields=("group_id", "user_id"))
def _member_added(s: _Say) -> str:
    return f"{s.who} added {s.user()} to {s.group()}"


@_says("GroupMemberRemoved", fields=("group_id", "user_id"))
def _member_removed(s: _Say) -> str:
    return f"{s.who} removed {s.user()} from {s.group()}"


@_says("InvitationCreated", fields=("is_admin",))
def _invited(s: _Say) -> str:
    return f"{s.who} invited someone" + (" as an administrator" if s.flag("is_admin") else "")


@_says("InvitationAccepted", fields=("user_id",))
def _invitation_accepted(s: _Say) -> str:
    return f"{s.user()} accepted an invitation"


@_says("InvitationRevoked")
def _invitation_revoked(s: _Say) -> str:
    return f"{s.who} revoked an invitation"


@_says("PasswordResetRequested", fields=("user_id", "by_admin"))
def _reset_requested(s: _Say) -> str:
    if not s.text("user_id"):
        return f"someone asked{s.from_ip} to reset the password of an email without an account"
    if s.flag("by_admin"):
        return f"{s.who} made a password reset link for {s.user()}"
    return f"someone asked{s.from_ip} for a password reset link for {s.user()}"


@_says("PasswordResetUsed", fields=("user_id",))
def _reset_used(s: _Say) -> str:
    return f"{s.user()} set a new password with a reset link"


@_says("TotpEnrolmentStarted", fields=("user_id",))
def _totp_started(s: _Say) -> str:
    return f"{s.user()} started setting up two-step sign-in"


@_says("TotpEnabled", fields=("user_id",))
def _totp_on(s: _Say) -> str:
    return f"{s.user()} turned on two-step sign-in"


@_says("TotpDisabled", fields=("user_id",))
def _totp_off(s: _Say) -> str:
    if s.own():
        return f"{s.who} turned off two-step sign-in"
    return f"{s.who} turned off two-step sign-in for {s.user()}"


@_says("SecondFactorUsed", fields=("user_id", "step"))
def _second_factor(s: _Say) -> str:
    how = "a code" if s.number("step") is not None else "a recovery code"
    return f"{s.user()} passed two-step sign-in with {how}"


@_says("MfaPolicySet", fields=("require_admin_totp",))
def _mfa_policy(s: _Say) -> str:
    if s.flag("require_admin_totp"):
        return f"{s.who} required two-step sign-in for administrators"
    return f"{s.who} stopped requiring two-step sign-in for administrators"


@_says("ApiTokenCreated", fields=("user_id", "scope"))
def _token_created(s: _Say) -> str:
    scope = {"read": "read-only", "full": "full-access"}.get(s.text("scope"), s.text("scope"))
    return f"{s.user()} created a {scope} API token"


@_says("ApiTokenRevoked", fields=("user_id",))
def _token_revoked(s: _Say) -> str:
    if s.own():
        return f"{s.who} revoked one of their API tokens"
    return f"{s.who} revoked an API token of {s.user()}"


@_says("LdapAppRegistered", fields=("app_id", "rotated"))
def _ldap_registered(s: _Say) -> str:
    if s.flag("rotated"):
        return f"the LDAP password of {s.app()} was rotated"
    return f"{s.app()} may sign people in through LDAP"


@_says("LdapAppAccessChanged", fields=("app_id",))
def _ldap_access(s: _Say) -> str:
    return f"who may sign in to {s.app()} through LDAP changed"


@_says("LdapAppRemoved", fields=("app_id",))
def _ldap_removed(s: _Say) -> str:
    return f"{s.app()} no longer signs people in through LDAP"


# Apps

_DOING = {
    "install": "installing",
    "configure": "changing the settings of",
    "update": "updating",
    "restore": "restoring",
    "rebuild": "rebuilding",
    "uninstall": "uninstalling",
    "clone": "cloning",
}


@_says(
    "AppInstallRequested",
    fields=("app_id", "manifest_id", "location", "domain", "version", "clone_of"),
)
def _install_requested(s: _Say) -> str:
    if s.text("clone_of"):
        return f"{s.who} started copying {s.app('clone_of')} to {s.app()}"
    return f"{s.who} started installing {s.app()} (version {s.text('version')})"


@_says("AppStepCompleted", fields=("app_id", "operation", "step"))
def _app_step(s: _Say) -> str:
    return f"{s.app()}: the {s.text('step')} step of the {s.text('operation')} is done"


@_says("AddonProvisioned", fields=("app_id", "addon"))
def _addon(s: _Say) -> str:
    return f"{s.app()}: its {s.text('addon')} addon is ready"


@_says("AppInstalled", fields=("app_id", "version"))
def _installed(s: _Say) -> str:
    return f"{s.who} installed {s.app()}"


@_says("AppOperationFailed", fields=("app_id", "operation", "step", "code", "rolled_back"))
def _operation_failed(s: _Say) -> str:
    op = s.text("operation")
    doing = _DOING.get(op, f"the {op} of")
    back = "; it was rolled back" if s.flag("rolled_back") else ""
    return f"{doing} {s.app()} failed at step {s.text('step')} ({s.text('code')}){back}"


@_says("AppConfigureRequested", fields=("app_id", "location"))
def _configure_requested(s: _Say) -> str:
    return f"{s.who} started changing the settings of {s.app()}"


@_says("AppConfigured", fields=("app_id",))
def _configured(s: _Say) -> str:
    return f"{s.who} changed the settings of {s.app()}"


@_says("AppRunStateChanged", fields=("app_id", "running", "restart"))
def _run_state(s: _Say) -> str:
    did = "restarted" if s.flag("restart") else ("started" if s.flag("running") else "stopped")
    return f"{s.who} {did} {s.app()}"


@_says("AppUpdateRequested", fields=("app_id", "from_version", "to_version", "needs_approval"))
def _update_requested(s: _Say) -> str:
    waits = "; it waits for an administrator's approval" if s.flag("needs_approval") else ""
    return (
        f"{s.who} started updating {s.app()} from {s.text('from_version')} to"
        f" {s.text('to_version')}{waits}"
    )


@_says("AppUpdateApproved", fields=("app_id",))
def _update_approved(s: _Say) -> str:
    return f"{s.who} approved the update of {s.app()}"


@_says("AppSnapshotTaken", fields=("app_id", "reason"))
def _snapshot(s: _Say) -> str:
    reason = s.text("reason")
    if reason == "manual":
        return f"{s.who} took a snapshot of {s.app()}"
    why = {"update": "before an update", "clone": "for a copy", "backup": "for a backup"}
    return f"a snapshot of {s.app()} was taken {why.get(reason, f'({reason})')}"


@_says("AppSnapshotForgotten", fields=("app_id",))
def _snapshot_forgotten(s: _Say) -> str:
    return f"{s.who} deleted a snapshot of {s.app()}"


@_says("AppRebuildRequested", fields=("app_id",))
def _rebuild_requested(s: _Say) -> str:
    return f"{s.who} started rebuilding {s.app()} from a snapshot"


@_says("AppRebuilt", fields=("app_id", "version"))
def _rebuilt(s: _Say) -> str:
    return f"{s.app()} was rebuilt from a snapshot (version {s.text('version')})"


@_says("AppUpdated", fields=("app_id", "version"))
def _updated(s: _Say) -> str:
    return f"{s.who} updated {s.app()} to version {s.text('version')}"


@_says("AppRestoreRequested", fields=("app_id",))
def _restore_requested(s: _Say) -> str:
    return f"{s.who} started restoring {s.app()} from a snapshot"


@_says("AppRestored", fields=("app_id", "version"))
def _restored(s: _Say) -> str:
    return f"{s.who} restored {s.app()} from a snapshot (version {s.text('version')})"


@_says("AppUninstallRequested", fields=("app_id",))
def _uninstall_requested(s: _Say) -> str:
    return f"{s.who} started uninstalling {s.app()}"


@_says("AppUninstalled", fields=("app_id",))
def _uninstalled(s: _Say) -> str:
    return f"{s.who} uninstalled {s.app()}"


@_says("AppRepairRequested", fields=("app_id", "operation"))
def _repair(s: _Say) -> str:
    return f"{s.who} asked to repair {s.app()} (its {s.text('operation')})"


@_says("AppUnhealthy", fields=("app_id", "detail"))
def _unhealthy(s: _Say) -> str:
    detail = s.text("detail")
    return f"{s.app()} is unhealthy" + (f": {detail}" if detail else "")


@_says("AppRecovered", fields=("app_id",))
def _recovered(s: _Say) -> str:
    return f"{s.app()} is healthy again"


@_says("AppDied", fields=("app_id", "exit_code"))
def _died(s: _Say) -> str:
    code = s.number("exit_code")
    return f"{s.app()} stopped unexpectedly" + (f" (exit code {code})" if code is not None else "")


@_says("AppOutOfMemory", fields=("app_id", "memory_bytes"))
def _oom(s: _Say) -> str:
    return f"{s.app()} ran out of memory (its limit is {_size(s.number('memory_bytes'))})"


@_says("AppsAutoUpdateSet", fields=("enabled", "window_start", "window_end"))
def _apps_auto_update(s: _Say) -> str:
    if not s.flag("enabled"):
        return f"{s.who} turned automatic app updates off"
    window = f"{s.text('window_start')} to {s.text('window_end')}"
    return f"{s.who} set automatic app updates to run nightly, {window}"


@_says("SubnetTaken", fields=("network", "subnet"))
def _subnet_taken(s: _Say) -> str:
    return f"the app network {s.text('network')} was given the subnet {s.text('subnet')}"


@_says("AppAutoUpdateSet", fields=("app_id", "enabled"))
def _app_auto_update(s: _Say) -> str:
    return f"{s.who} turned automatic updates of {s.app()} {'on' if s.flag('enabled') else 'off'}"


@_says("AppAutoUpdateStarted", fields=("app_id", "from_version", "to_version"))
def _auto_update_started(s: _Say) -> str:
    return (
        f"the automatic update of {s.app()} from {s.text('from_version')} to"
        f" {s.text('to_version')} started"
    )


# Certificates


@_says("CertificateOrdered", fields=("primary", "reason"))
def _cert_ordered(s: _Say) -> str:
    return f"a certificate for {s.text('primary')} was ordered ({s.text('reason')})"


@_says("CertificateIssued", fields=("primary", "issuer", "not_after"))
def _cert_issued(s: _Say) -> str:
    issuer = s.text("issuer")
    by = f" by {issuer}" if issuer else ""
    return (
        f"certificate for {s.text('primary')} issued{by}, valid until {_day(s.text('not_after'))}"
    )


@_says("CertificateRenewalFailed", fields=("primary", "code", "retry_at"))
def _cert_failed(s: _Say) -> str:
    return (
        f"the certificate for {s.text('primary')} could not be issued ({s.text('code')});"
        f" next try at {_when(s.text('retry_at'))}"
    )


@_says("CustomCertificateUploaded", fields=("primary", "not_after"))
def _cert_uploaded(s: _Say) -> str:
    return (
        f"{s.who} uploaded a certificate for {s.text('primary')},"
        f" valid until {_day(s.text('not_after'))}"
    )


@_says("CertificateForgotten", fields=("primary",))
def _cert_forgotten(s: _Say) -> str:
    return f"the certificate for {s.text('primary')} was removed"


# Domains and DNS


@_says("DomainAdded", fields=("domain", "provider.kind"))
def _domain_added(s: _Say) -> str:
    kind = s.text("provider.kind")
    return f"{s.who} added the domain {s.text('domain')}" + (f" (DNS: {kind})" if kind else "")


@_says("DomainVerified", fields=("domain",))
def _domain_verified(s: _Say) -> str:
    return f"the DNS provider of {s.text('domain')} is verified"


@_says("DomainVerificationFailed", fields=("domain", "reason"))
def _domain_failed(s: _Say) -> str:
    return f"the DNS provider of {s.text('domain')} could not be verified: {s.text('reason')}"


@_says("DomainRemoved", fields=("domain",))
def _domain_removed(s: _Say) -> str:
    return f"{s.who} removed the domain {s.text('domain')}"


def _record_owner(s: _Say) -> str:
    owner = s.text("owner")
    if owner.startswith("app-"):
        return app_label(s.names, owner.removeprefix("app-"))
    return owner


@_says("DnsRecordSet", fields=("name", "type", "owner"))
def _record_set(s: _Say) -> str:
    return f"DNS record {s.text('name')} ({s.text('type')}) set for {_record_owner(s)}"


@_says("DnsRecordRemoved", fields=("name", "type", "owner"))
def _record_removed(s: _Say) -> str:
    return f"DNS record {s.text('name')} ({s.text('type')}) of {_record_owner(s)} removed"


# Backups


@_says("BackupTargetSet", fields=("target.kind",))
def _backup_target(s: _Say) -> str:
    return f"{s.who} set where backups are stored ({s.text('target.kind')})"


@_says("BackupKeySet", fields=("recipients",))
def _backup_key(s: _Say) -> str:
    return f"{s.who} set the key backups are encrypted to"


@_says("BackupScheduleSet", fields=("enabled", "time"))
def _backup_schedule(s: _Say) -> str:
    if not s.flag("enabled"):
        return f"{s.who} turned scheduled backups off"
    return f"{s.who} scheduled backups daily at {s.text('time')}"


@_says("BackupRetentionSet", fields=("last", "daily", "weekly", "monthly"))
def _backup_retention(s: _Say) -> str:
    return (
        f"{s.who} set backups to keep the last {s.number('last')}, {s.number('daily')} daily,"
        f" {s.number('weekly')} weekly and {s.number('monthly')} monthly"
    )


@_says("BackupStarted", fields=("scope", "app_ids"))
def _backup_started(s: _Say) -> str:
    scope = s.text("scope")
    what = {
        "all": "every app and the platform",
        "update": "an app before its update",
    }.get(scope, _plural(s.number("app_ids"), "app"))
    return f"{s.who} started a backup of {what}"


@_says("BackupCompleted", fields=("kind", "app_id", "size_bytes"))
def _backup_done(s: _Say) -> str:
    size = _size(s.number("size_bytes"))
    if s.text("app_id"):
        return f"backup of {s.app()} stored ({size})"
    return f"backup of the platform stored ({size})"


@_says("BackupFailed", fields=("app_id", "reason"))
def _backup_failed(s: _Say) -> str:
    what = f"backup of {s.app()}" if s.text("app_id") else "a backup"
    return f"{what} failed: {s.text('reason')}"


# Mail


@_says("MailDomainEnabled", fields=("domain",))
def _mail_on(s: _Say) -> str:
    return f"{s.who} turned on mail for {s.text('domain')}"


@_says("MailDomainDisabled", fields=("domain",))
def _mail_off(s: _Say) -> str:
    return f"{s.who} turned off mail for {s.text('domain')}"


@_says("MailCatchAllSet", fields=("domain", "user_id"))
def _catch_all(s: _Say) -> str:
    if not s.text("user_id"):
        return f"{s.who} turned off the catch-all of {s.text('domain')}"
    return f"{s.who} set mail to unknown addresses at {s.text('domain')} to go to {s.user()}"


@_says("MailAddressSet", fields=("domain", "local_part", "kind", "user_ids", "group_id"))
def _address_set(s: _Say) -> str:
    address = f"{s.text('local_part')}@{s.text('domain')}"
    if s.text("kind") == "list":
        return f"{s.who} made {address} a list of the group {s.group()}"
    return f"{s.who} set {address} to deliver to {_plural(s.number('user_ids'), 'account')}"


@_says("MailAddressRemoved", fields=("domain", "local_part"))
def _address_removed(s: _Say) -> str:
    return f"{s.who} removed the address {s.text('local_part')}@{s.text('domain')}"


@_says("MailQuotaSet", fields=("user_id", "quota_bytes"))
def _quota(s: _Say) -> str:
    return f"{s.who} set the mailbox quota of {s.user()} to {_size(s.number('quota_bytes'))}"


@_says("MailAppPasswordCreated", fields=("user_id",))
def _app_password(s: _Say) -> str:
    if s.own():
        return f"{s.who} created a mail app password"
    return f"{s.who} created a mail app password for {s.user()}"


@_says("MailAppPasswordRevoked", fields=("user_id",))
def _app_password_revoked(s: _Say) -> str:
    if s.own():
        return f"{s.who} revoked one of their mail app passwords"
    return f"{s.who} revoked a mail app password of {s.user()}"


@_says("MailForwardingSet", fields=("user_id", "to", "keep_copy"))
def _forwarding(s: _Say) -> str:
    where = _plural(s.number("to"), "address", "addresses")
    kept = ", keeping a copy" if s.flag("keep_copy") else ""
    if s.own():
        return f"{s.who} forwarded their mail to {where}{kept}"
    return f"{s.who} forwarded the mail of {s.user()} to {where}{kept}"


@_says("MailForwardingCleared", fields=("user_id",))
def _forwarding_off(s: _Say) -> str:
    if s.own():
        return f"{s.who} stopped forwarding their mail"
    return f"{s.who} stopped forwarding the mail of {s.user()}"


@_says("MailAppRegistered", fields=("app_id", "sender"))
def _mail_app(s: _Say) -> str:
    return f"{s.app()} may send mail as {s.text('sender')}"


@_says("MailClientRegistered", fields=("app_id",))
def _mail_client(s: _Say) -> str:
    return f"{s.app()} may sign people in to their mailboxes"


@_says("MailAppRemoved", fields=("app_id",))
def _mail_app_removed(s: _Say) -> str:
    return f"{s.app()} may no longer send mail or sign people in to their mailboxes"


@_says("MailRelaySet", fields=("host", "port"))
def _relay(s: _Say) -> str:
    return f"{s.who} set outgoing mail to go through {s.text('host')}:{s.text('port')}"


@_says("MailRelayCleared")
def _relay_off(s: _Say) -> str:
    return f"{s.who} set outgoing mail to be delivered directly"


# Firewall

_SCOPES = {
    "ssh": "SSH",
    "dashboard": "the dashboard",
    "edge": "the websites (ports 80 and 443)",
    "mail": "the mail ports",
}


def _scope(s: _Say) -> str:
    scope = s.text("scope")
    if scope.startswith("app:"):
        return f"the ports of {app_label(s.names, scope.removeprefix('app:'))}"
    return _SCOPES.get(scope, scope)


@_says("AllowListChanged", fields=("scope", "cidrs", "why"))
def _allow_list(s: _Say) -> str:
    n = s.number("cidrs")
    who_may = "everyone" if not n else _plural(n, "address range")
    why, scope = s.text("why"), _scope(s)
    if why == "confirmed":
        return f"{s.who} confirmed who may reach {scope}"
    if why == "reverted":
        return f"who may reach {scope} was set back: the change was not confirmed in time"
    trial = " on trial (undone in 60 s unless confirmed)" if why == "trial" else ""
    return f"{s.who} let {who_may} reach {scope}{trial}"


@_says("BlockListPart", fields=("part", "parts", "replace", "entries"))
def _block_list(s: _Say) -> str:
    entries = _plural(s.number("entries"), "entry", "entries")
    if (s.number("parts") or 1) == 1:
        did = "replaced" if s.flag("replace") else "added to"
        return f"{s.who} {did} the block list: {entries}"
    part = f"part {s.number('part')} of {s.number('parts')}"
    return f"{s.who} imported {part} of a block list ({entries})"


@_says("BlockListEdited", fields=("added", "removed"))
def _block_edit(s: _Say) -> str:
    return (
        f"{s.who} edited the block list: {s.number('added') or 0} added,"
        f" {s.number('removed') or 0} removed"
    )


@_says("AppInternetSet", fields=("app_id", "internet"))
def _internet(s: _Say) -> str:
    if s.flag("internet"):
        return f"{s.who} let {s.app()} reach the internet"
    return f"{s.who} cut {s.app()} off from the internet"


# Tasks (the "everything" view)


@_says("TaskStarted", fields=("title",))
def _task_started(s: _Say) -> str | None:
    return f"task started: {s.text('title')}" if s.text("title") else None


@_says("TaskProgressed", fields=("message", "percent"))
def _task_progress(s: _Say) -> str | None:
    if not s.text("message"):
        return None
    return f"{s.text('message')} ({s.number('percent') or 0} %)"


@_says("TaskSucceeded", fields=("message",))
def _task_done(s: _Say) -> str | None:
    return f"task done: {s.text('message')}" if s.text("message") else None


@_says("TaskFailed", fields=("message",))
def _task_failed(s: _Say) -> str | None:
    return f"task failed: {s.text('message')}" if s.text("message") else None


# -- reading a page --------------------------------------------------------------------------


def sentence(line: Line, names: Names) -> str:
    """What a person reads for `line`: its type's sentence, else its event's summary."""
    known = _SENTENCES.get(line.type)
    if known is None or (not line.refs and known[0]):
        return line.summary
    try:
        said = known[1](_Say(line, names))
    except (TypeError, ValueError, KeyError):  # a field of an odd shape: the summary says it
        said = None
    return said if said else line.summary


def actor_name(actor: str, names: Names) -> str:
    """The actor as a person reads it: a username, "Homeport", "someone", "a deleted user"."""
    return _Say(Line(actor, "", "", "", {}, None, None), names).who


def user_ids_of(actor: str, refs: Mapping[str, Any]) -> list[str]:
    """The user ids a line names (its actor's among them)."""
    found = [actor, refs.get("user_id"), refs.get("admin_id")]
    return [u for u in found if is_uuid(u)]


def group_ids_of(refs: Mapping[str, Any]) -> list[str]:
    group_id = refs.get("group_id")
    return [group_id] if is_uuid(group_id) else []


def app_ids_of(stream: str, refs: Mapping[str, Any]) -> list[str]:
    """The app ids a line names: its stream's (app-<id>), its data's, a DNS record's owner,
    an allow list's scope."""
    found = [_stream_id(stream, "app"), refs.get("app_id"), refs.get("clone_of")]
    owner, scope = refs.get("owner"), refs.get("scope")
    if isinstance(owner, str) and owner.startswith("app-"):
        found.append(owner.removeprefix("app-"))
    if isinstance(scope, str) and scope.startswith("app:"):
        found.append(scope.removeprefix("app:"))
    return [a for a in found if isinstance(a, str) and a]


def sentence_fields() -> dict[str, tuple[str, ...]]:
    """Each event type with a sentence, and the fields of its data the sentence reads."""
    return {t: fields for t, (fields, _) in _SENTENCES.items()}


def refs_of(event_type: str, data: Any) -> dict[str, Any]:
    """The refs of an event: the fields of its data its type's sentence names, each as a
    sentence may show it: text in clear (at most 200 characters; a sealed one is left out), a
    number, a boolean, or a list's length; anything else (an object, null, missing) left out.
    A nested field ("parent.child") is a path."""
    known = _SENTENCES.get(event_type)
    if known is None or not isinstance(data, dict):
        return {}
    out: dict[str, Any] = {}
    for f in known[0]:
        value: Any = data
        for part in f.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str):
            if "hp:sealed:" not in value:
                out[f] = value[:200]
        elif isinstance(value, bool | int | float):
            out[f] = value
        elif isinstance(value, list):
            out[f] = len(value)
    return out
