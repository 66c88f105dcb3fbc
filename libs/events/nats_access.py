"""Who may say what on NATS: one user per service, its permissions, its credentials file.

nats-server runs with `authorization { users = [...] }` rendered here. Each service (and the
relay) connects as the user of its own name with a password only it can read, and may:

- publish requests only with its own name as the subject's last token
  (`hp.cmd.<service>.<verb>.<sender>`, `hp.qry.<service>.<name>.<sender>`), and only to the
  commands and queries it calls (`CALLS`); the gateway may call every service (it acts for
  users, whose rights each service and the gateway's route table decide);
- subscribe to the commands and queries it serves, to its own reply inbox (`_INBOX.<user>.>`,
  nats-py's `inbox_prefix`) and to the event subjects (reading is everyone's);
- reply to the requests it received (`allow_responses`);
- write the event stream: the relay alone (its subjects and the stream's management API).

So the sender token of a request is proof of who sent it: `libs/events/bus.py` reads it and
refuses a user actor from anyone but the gateway, and "system" from the gateway.

Why subject permissions, not signed envelopes or NATS accounts: the server already checks every
publish against the sender's permissions, so proving the sender costs nothing per message (no
signature to make or verify, no key in every service), and one account keeps JetStream, the
inboxes and the event fan-out as they are.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "CALLS",
    "GATEWAY",
    "HARNESS",
    "RELAY",
    "SERVICE_USERS",
    "CredentialsError",
    "ensure_credentials",
    "inbox_prefix",
    "permissions",
    "read_credentials",
    "render_authorization",
]

GATEWAY = "gateway"
RELAY = "relay"
HARNESS = "harness"  # tests and benchmarks only: every subject (never in a server install)

DEFAULT_STREAM = "HOMEPORT_EVENTS"
DEFAULT_PREFIX = "hp.evt"
IDENTITY_CHANGED = "hp.identity.changed"
MAX_PAYLOAD = 4 * 1024 * 1024  # bytes of one NATS message (the server's default is 1 MiB)

# What each service calls on the others: "<cmd|qry>.<service>.<name>". The gateway calls every
# service ("*"). A call not listed here is refused by nats-server (a permissions violation:
# the request gets no answer), so a new call needs its line here.
CALLS: Mapping[str, tuple[str, ...]] = {
    GATEWAY: ("cmd.*.*", "qry.*.*"),
    "apps": (
        "qry.dns.domain",
        "cmd.dns.set_record",
        "cmd.dns.wait_record",
        "cmd.dns.remove_record",
        "cmd.certs.ensure",
        "cmd.certs.forget",
        "qry.gateway.edge_host",
        "qry.identity.ldap_endpoint",
        "qry.identity.groups",
        "cmd.identity.ldap_register_app",
        "cmd.identity.ldap_set_app_access",
        "cmd.identity.ldap_remove_app",
        "cmd.mail.register_app",
        "cmd.mail.register_client",
        "cmd.mail.remove_app",
    ),
    "dns": ("qry.apps.apps",),
    "certs": ("cmd.dns.publish_txt", "cmd.dns.remove_txt"),
    "backup": (
        "qry.apps.apps",
        "qry.apps.app",
        "cmd.apps.snapshot",
        "cmd.apps.forget_snapshot",
        "cmd.apps.adopt_snapshot",
        "cmd.apps.restore",
        "cmd.apps.install",
        "qry.identity.check_setup_token",
        "cmd.mail.snapshot",
        "cmd.mail.forget_snapshot",
    ),
    "identity": ("cmd.notify.email",),
    "firewall": ("cmd.identity.record_failure",),
    "notify": (
        "qry.identity.users",
        "qry.identity.addresses",
        "qry.dns.domains",
        "qry.apps.platform_update",
        "qry.apps.catalog",
        "qry.apps.apps",
        "qry.firewall.status",
        "cmd.mail.send",
    ),
    "mail": (
        "qry.identity.users",
        "qry.identity.groups",
        "cmd.identity.mail_login",
        "qry.dns.domain",
        "qry.dns.served",
        "cmd.dns.set_record",
        "cmd.dns.remove_record",
        "cmd.certs.ensure",
        "qry.certs.files",
    ),
    RELAY: (),
}
# What each service serves (its own command and query subjects); the relay serves none.
SERVES: Mapping[str, bool] = {name: name != RELAY for name in CALLS}
# Plain (non-request) subjects a service publishes, and the ones it listens to besides events.
PUBLISHES: Mapping[str, tuple[str, ...]] = {"identity": (IDENTITY_CHANGED,)}
LISTENS: Mapping[str, tuple[str, ...]] = {GATEWAY: (IDENTITY_CHANGED,)}

SERVICE_USERS: tuple[str, ...] = tuple(CALLS)
_STREAM_WRITES = ("CREATE", "UPDATE", "DELETE", "PURGE", "MSG.DELETE")


class CredentialsError(Exception):
    """A credentials file that is missing, unsafe or malformed."""


def inbox_prefix(user: str) -> str:
    """The reply inbox of `user`'s connection: only `user` may subscribe under it."""
    return f"_INBOX.{user}"


def permissions(
    user: str, *, stream: str = DEFAULT_STREAM, prefix: str = DEFAULT_PREFIX
) -> dict[str, Any]:
    """The nats-server permissions of `user` (a service name from `CALLS`)."""
    if user not in CALLS:
        raise ValueError(f"no NATS permissions are defined for {user!r}")
    publish: list[str] = []
    for call in CALLS[user]:
        kind, service, name = call.split(".")
        publish.append(f"hp.{kind}.{service}.{name}.{user}")
    publish += PUBLISHES.get(user, ())
    # JetStream: reading the event stream and following it with durable consumers
    publish += [
        "$JS.API.INFO",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        "$JS.API.CONSUMER.>",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]
    subscribe = [f"{inbox_prefix(user)}.>", f"{prefix}.>", *LISTENS.get(user, ())]
    if SERVES[user]:
        subscribe += [f"hp.cmd.{user}.>", f"hp.qry.{user}.>"]
    deny: list[str] = []
    if user == RELAY:
        # the relay alone writes the stream: its subjects and its management API
        publish += [f"{prefix}.>", f"$JS.API.STREAM.CREATE.{stream}"]
        publish += [f"$JS.API.STREAM.UPDATE.{stream}"]
    else:  # not allowed anyway; denied too, so no later allow can open them by accident
        deny = [f"{prefix}.>", *(f"$JS.API.STREAM.{op}.>" for op in _STREAM_WRITES)]
    perms: dict[str, Any] = {
        "publish": {"allow": publish, **({"deny": deny} if deny else {})},
        "subscribe": {"allow": subscribe},
        "allow_responses": True,
    }
    return perms


def render_authorization(
    passwords: Mapping[str, str],
    *,
    stream: str = DEFAULT_STREAM,
    prefix: str = DEFAULT_PREFIX,
) -> str:
    """The `authorization` block of nats-server's configuration: one user per entry of
    `passwords`, each with its permissions (HARNESS: every subject)."""
    users = []
    for user in sorted(passwords):
        entry: dict[str, Any] = {"user": user, "password": passwords[user]}
        if user != HARNESS:
            entry["permissions"] = permissions(user, stream=stream, prefix=prefix)
        users.append(entry)
    # nats-server's configuration format reads JSON values. max_payload: an imported block
    # list (100,000 entries, libs/contracts/firewall.py) is one command of up to 3 MB.
    return (
        f"max_payload: {MAX_PAYLOAD}\n"
        "authorization {\n  users = " + json.dumps(users, indent=2) + "\n}\n"
    )


def ensure_credentials(directory: Path, users: Iterable[str]) -> dict[str, str]:
    """Each user's password, from `<directory>/<user>` (made 0600 with 256 random bits when
    missing; never overwritten); the directory is made 0700."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    out: dict[str, str] = {}
    for user in users:
        path = directory / user
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            out[user] = read_credentials(path)[1]
            continue
        password = secrets.token_urlsafe(32)
        try:
            os.write(fd, f"{user}:{password}\n".encode())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        os.close(fd)
        out[user] = password
    return out


def read_credentials(path: Path) -> tuple[str, str]:
    """(user, password) from a credentials file `user:password` (a link is refused)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise CredentialsError(f"cannot read the NATS credentials {path}: {e.strerror}") from None
    try:
        raw = os.read(fd, 4096)
    finally:
        os.close(fd)
    user, sep, password = raw.decode(errors="replace").strip().partition(":")
    if not sep or not user or not password or "\n" in password:
        raise CredentialsError(f"the NATS credentials {path} are not one line user:password")
    return user, password
