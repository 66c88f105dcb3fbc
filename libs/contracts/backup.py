"""The wire contract of the backup service: target, key, schedule, retention, backups, restore.

Callers: the gateway (`/api/v1/backups...`, admins only) and the CLI through it. The service
checks what only it knows (a target answers and accepts a probe object, a key opens a backup,
a snapshot exists, a location is free through the apps service).

Secrets on this wire: the target's `secret_access_key` (sealed by the service before it is
kept, never answered back), the private key of `setup_key`'s answer (shown once, never kept
by the server) and the `identity` sent back to restore, clone or verify (used in memory only).
"""

from __future__ import annotations

from libs.contracts import Contract
from libs.contracts.common import location, uuid
from libs.contracts.schema import boolean, integer, nullable, obj, string

__all__ = ["AGE_IDENTITY", "AGE_RECIPIENT", "CONTRACT", "MAX_KEEP", "SNAPSHOT_ID"]

MAX_KEEP = 1000
AGE_RECIPIENT = r"^age1[02-9ac-hj-np-z]{58}$"
AGE_IDENTITY = r"^AGE-SECRET-KEY-1[02-9AC-HJ-NP-Z]{58}$"

SNAPSHOT_ID = r"^[0-9]{14}-[0-9a-f]{16}$"
_SNAPSHOT_ID = string(pattern=SNAPSHOT_ID, description="a backup's id (from the list)")
_IDENTITY = string(
    pattern=AGE_IDENTITY,
    writeOnly=True,
    description="the private backup key (AGE-SECRET-KEY-1...), used in memory only",
)
_RECIPIENT = string(pattern=AGE_RECIPIENT, description="an age public key (age1...)")
_KEEP = integer(minimum=0, maximum=MAX_KEEP)
_DOMAIN = string(
    pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$",
    maxLength=253,
    description="a lower-case domain name",
)

_TARGET = {
    "kind": string(enum=["local", "s3"], description="a directory or S3 storage"),
    "path": string(minLength=1, maxLength=4096, description="local: an absolute directory path"),
    "endpoint_url": string(maxLength=2048, description="s3: https://... (optional)"),
    "region": string(maxLength=64, description="s3: the region (optional)"),
    "bucket": string(minLength=3, maxLength=63, description="s3: the bucket"),
    "prefix": string(maxLength=512, description="s3: a key prefix (optional)"),
    "access_key_id": string(maxLength=256, description="s3: the access key id"),
    "secret_access_key": string(
        maxLength=256,
        writeOnly=True,
        description="s3: the secret (sealed, never shown)",
    ),
}

CONTRACT = Contract(
    "backup",
    commands={
        # Where backups go. Checked before it is kept: a probe object is written, read back and
        # deleted; a repository is created there when none exists (with the key's recipients).
        "set_target": obj(_TARGET, required=["kind"]),
        # A new key pair: the answer holds the private key once (`identity`); the server keeps
        # the public keys only. `second_recipient`: another age public key backups open with.
        # `passphrase`: also store a copy of the private key on the target, encrypted with it.
        "setup_key": obj(
            {
                "second_recipient": nullable(_RECIPIENT),
                "passphrase": nullable(
                    string(minLength=12, maxLength=1024, writeOnly=True, description="12+ chars")
                ),
            }
        ),
        "set_schedule": obj(
            {
                "enabled": boolean(),
                "time": string(
                    pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
                    description="daily at HH:MM (server time)",
                ),
                "jitter_minutes": integer(minimum=0, maximum=180),
            }
        ),
        "set_retention": obj(
            {"last": _KEEP, "daily": _KEEP, "weekly": _KEEP, "monthly": _KEEP},
            description="how many backups to keep of each kind (0: none of that kind)",
        ),
        # Back up now: one app, or (no app_id) every app and the platform. Answers a task id.
        "back_up": obj({"app_id": nullable(uuid(description="an installed app's id"))}),
        # Restore one app's backup in place (the app it was taken of, when still installed).
        "restore": obj(
            {"snapshot_id": _SNAPSHOT_ID, "identity": _IDENTITY},
            required=["snapshot_id", "identity"],
        ),
        # A new app from an app's backup, at its own location (works for uninstalled apps too).
        "clone": obj(
            {
                "snapshot_id": _SNAPSHOT_ID,
                "identity": _IDENTITY,
                "location": location(description="where the new app answers (a DNS label)"),
                "domain": _DOMAIN,
            },
            required=["snapshot_id", "identity", "location"],
        ),
        # With the key: decrypt and check every chunk; without: every chunk exists, right size.
        "verify": obj(
            {"snapshot_id": _SNAPSHOT_ID, "identity": nullable(_IDENTITY)},
            required=["snapshot_id"],
        ),
        "prune": obj({}),
        # The setup wizard's "Restore from a backup" (before setup; the gateway has checked the
        # setup token): the platform backup (newest, or the one named) on this target opens
        # with `identity`? Without check_only, <data dir>/restore-request.json is written for
        # the stack, which restarts the platform restored (deploy/stack.py).
        "platform_restore": obj(
            {
                **_TARGET,
                "identity": _IDENTITY,
                "snapshot_id": nullable(_SNAPSHOT_ID),
                "check_only": boolean(default=False),
                # the proof of a caller who is no administrator (the setup wizard's); the
                # backup service checks it with identity itself
                "setup_token": nullable(string(maxLength=128, writeOnly=True)),
            },
            required=["kind", "identity"],
        ),
    },
    queries={
        # Target (no secret), recipients, schedule, retention, last success/failure.
        "settings": obj({}),
        # Backups on the target, newest first: platform and app backups (one app's with app_id).
        "backups": obj({"app_id": uuid(description="an app's id (also an uninstalled one)")}),
        # The last platform restore the wizard asked for: still to run, or why it failed.
        "platform_restore_state": obj({}),
    },
)
