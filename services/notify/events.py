"""The events of the notify service: alerts it opened and resolved, what it told whom, and how
each administrator wants to hear of things.

- Stream `alert-<uuid5 of the condition key>`: `AlertOpened`, `AlertResolved` (one open alert per
  condition at a time), and `NotificationDelivered` for each of them once mailed and pushed.
- Stream `notice-<id>`: `NoticePosted` (a one-off: an address banned), `NotificationDelivered`.
- Stream `notify-user-<user id>`: `NotificationsRead`, `NotifyPreferencesSet` (push URLs sealed
  with the user's subject in notify's keyring).

Titles and details name apps, hosts and addresses an administrator sees anyway; never a secret,
never a person's mail or password.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from libs.events.registry import REGISTRY

__all__ = [
    "ADDRESS",
    "AlertOpened",
    "AlertResolved",
    "NoticePosted",
    "NotificationDelivered",
    "NotificationsRead",
    "NotifyPreferencesSet",
    "alert_stream",
    "notice_stream",
    "user_stream",
]

_NS = uuid.UUID("6f1d3a52-7c38-4b7e-9a55-2d0c7d6a9e10")


def alert_stream(key: str) -> str:
    """`alert-<uuid5(key)>`: every opening and resolution of one condition."""
    return f"alert-{uuid.uuid5(_NS, key)}"


def notice_stream(notice_id: str) -> str:
    return f"notice-{notice_id}"


def user_stream(user_id: str) -> str:
    return f"notify-user-{user_id}"


@REGISTRY.event("AlertOpened")
@dataclass(frozen=True, slots=True, kw_only=True)
class AlertOpened:
    key: str  # the condition, e.g. "app-down:<app id>", "disk:90:/var/lib/homeport"
    category: str  # libs/contracts/notify.py CATEGORIES
    severity: str  # warning | critical
    title: str  # one line for a person
    detail: str  # what was seen and what to do

    def summary(self) -> str:
        return f"alert: {self.title}"


@REGISTRY.event("AlertResolved")
@dataclass(frozen=True, slots=True, kw_only=True)
class AlertResolved:
    key: str
    title: str  # the resolved notice's line

    def summary(self) -> str:
        return f"resolved: {self.title}"


# Where a notice's words name the client address its event holds sealed (meta.ip): filled in
# when it is delivered (identity reads the address back), never written into an event.
ADDRESS = "{address}"


@REGISTRY.event("NoticePosted")
@dataclass(frozen=True, slots=True, kw_only=True)
class NoticePosted:
    notice_id: str
    key: str  # what it is about: "ban:<keyed index of the address>:<until>"
    category: str
    title: str
    detail: str
    user_id: str | None = None  # only for this administrator; None: every administrator

    def summary(self) -> str:
        return f"notice: {self.title}"


@REGISTRY.event("NotificationDelivered")
@dataclass(frozen=True, slots=True, kw_only=True)
class NotificationDelivered:
    """What was done with one notification (`notification_id`: the id of the event that made
    it): how many mails and pushes left, and why none did when none did."""

    notification_id: str
    mailed: int
    pushed: int
    note: str  # "", or e.g. "mailed within the hour", "no way to send mail: ..."

    def summary(self) -> str:
        return f"notification delivered: {self.mailed} mail(s), {self.pushed} push(es)"


@REGISTRY.event("NotificationsRead")
@dataclass(frozen=True, slots=True, kw_only=True)
class NotificationsRead:
    user_id: str
    ids: list[str]  # empty with `up_to`: every notification up to that position
    up_to: int | None = None

    def summary(self) -> str:
        return "notifications marked read"


@REGISTRY.event("NotifyPreferencesSet")
@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyPreferencesSet:
    user_id: str
    email: list[str]  # categories sent by mail
    push: list[str]  # categories pushed
    push_urls: list[str]  # each sealed (apprise URLs hold tokens)

    def summary(self) -> str:
        return f"notification preferences set ({len(self.push_urls)} push target(s))"
