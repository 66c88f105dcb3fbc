"""The platform's mails, in plain text and HTML, with the platform's name: alerts, resolved
notices, notices, invitations and password resets. Every value is escaped in the HTML part;
subjects are one line."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import datetime

__all__ = ["Mail", "alert_mail", "link_mail"]

_LINE = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True, slots=True)
class Mail:
    subject: str
    text: str
    html: str


def _one_line(text: str, limit: int = 250) -> str:
    return _LINE.sub(" ", text).strip()[:limit]


def _page(platform: str, heading: str, paragraphs: list[str], link: tuple[str, str] | None) -> str:
    e = html.escape
    body = "".join(f"<p>{e(p)}</p>" for p in paragraphs if p)
    button = ""
    if link is not None:
        url, label = link
        button = (
            f'<p><a href="{e(url, quote=True)}" style="display:inline-block;padding:10px 16px;'
            f'background:#1f6feb;color:#fff;text-decoration:none;border-radius:6px">{e(label)}'
            f'</a></p><p style="color:#555;font-size:13px">{e(url)}</p>'
        )
    return (
        '<!doctype html><html><body style="font-family:system-ui,sans-serif;line-height:1.5;'
        f'color:#222;max-width:600px"><h2 style="margin:0 0 12px">{e(heading)}</h2>{body}'
        f'{button}<p style="color:#777;font-size:12px">{e(platform)}</p></body></html>'
    )


def _text(platform: str, heading: str, paragraphs: list[str], link: tuple[str, str] | None) -> str:
    parts = [heading, "=" * min(len(heading), 72), *[p for p in paragraphs if p]]
    if link is not None:
        parts.append(f"{link[1]}: {link[0]}")
    parts.append(f"-- \n{platform}")
    return "\n\n".join(parts) + "\n"


def alert_mail(
    platform: str,
    kind: str,
    title: str,
    detail: str,
    at: datetime,
    centre: str | None,
) -> Mail:
    """An alert opened (`kind` opened), cleared (resolved) or a notice."""
    when = f"{at:%Y-%m-%d %H:%M} UTC"
    lead = {
        "opened": f"Alert since {when}.",
        "resolved": f"Cleared at {when}.",
    }.get(kind, f"At {when}.")
    paragraphs = [detail, lead]
    link = (centre, "Open the notifications") if centre else None
    subject = _one_line(f"[{platform}] {title}")
    return Mail(
        subject,
        _text(platform, title, paragraphs, link),
        _page(platform, title, paragraphs, link),
    )


def link_mail(
    platform: str, template: str, url: str, expires_at: datetime, name: str | None
) -> Mail:
    """An invitation (`template` invitation) or a password-reset link (password_reset)."""
    until = f"{expires_at:%Y-%m-%d %H:%M} UTC"
    hello = f"Hello {name}," if name else "Hello,"
    if template == "invitation":
        subject = f"You are invited to {platform}"
        paragraphs = [
            hello,
            f"You are invited to join {platform}. Follow the link to choose your username and"
            " password; sign up with the email address this message was sent to.",
            f"The link works once, until {until}.",
        ]
        label = "Accept the invitation"
    else:
        subject = f"Reset your {platform} password"
        paragraphs = [
            hello,
            f"Someone (we hope you) asked to reset the password of your {platform} account."
            " Follow the link to choose a new one; every session of your account ends.",
            f"The link works once, until {until}. If you did not ask, ignore this message:"
            " your password stays as it is.",
        ]
        label = "Choose a new password"
    subject = _one_line(subject)
    return Mail(
        subject,
        _text(platform, subject, paragraphs, (url, label)),
        _page(platform, subject, paragraphs, (url, label)),
    )
