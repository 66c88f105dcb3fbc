"""The one-time setup token: until the first administrator exists, setup needs it, so whoever
reaches the server first cannot claim it (SECURITY.md "Lessons": a setup wizard anyone can
reach first).

At start, while setup is not done, identity makes sure a token exists: the one in
`<data dir>/setup-token` (mode 0600) if the file is there, else a new one (256 random bits)
written there. Only its SHA-256 is kept, in the read model's `identity.platform` row
`setup_token` (operational, not an event). Setup compares it in constant time and deletes the
row in the transaction that appends `PlatformSetUp`, so the token works once; the file goes
after. `make run` prints the dashboard link with the token; `homeport setup` reads the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import asyncpg

from services.identity.errors import SetupTokenRefused
from services.identity.tokens import new_link_token, token_hash, tokens_equal

__all__ = ["SETUP_TOKEN_FILE", "check_setup_token", "forget_setup_token", "offer_setup_token"]

SETUP_TOKEN_FILE = "setup-token"  # noqa: S105 - a file name
_KEY = "setup_token"
_MAX = 128

log = logging.getLogger(__name__)


def _read(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return text if 32 <= len(text) <= _MAX and text.isascii() and text.isprintable() else None


def _write(path: Path, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
    os.replace(tmp, path)


async def offer_setup_token(pool: asyncpg.Pool, data_dir: Path) -> str | None:
    """At start, before setup: the setup token (in `data_dir`, its hash stored); None once
    the platform is set up."""
    path = data_dir / SETUP_TOKEN_FILE
    done = await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM identity.platform WHERE key = 'setup')"
    )
    if done:
        forget_setup_token(data_dir)
        return None
    token = _read(path)
    if token is None:
        token, _ = new_link_token()
        _write(path, token)
    await pool.execute(
        "INSERT INTO identity.platform (key, value) VALUES ($1, $2::jsonb)"
        " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        _KEY,
        json.dumps({"hash": token_hash(token)}),
    )
    # Never the token itself in a log line: on a server the journal is read by more than root.
    # The console of the one who installs prints the link (deploy/stack.py, the installer).
    log.info(
        "setup is not done: finish it from the setup link printed at start (the token is in "
        "%s, readable by root and the platform only) or with `homeport setup`",
        path,
    )
    return token


async def check_setup_token(db: Any, given: str, *, use: bool = False) -> None:
    """Refuse (SetupTokenRefused) unless `given` is the setup token; with `use`, in the
    caller's transaction, take it (locked, then deleted: a second use finds none)."""
    lock = " FOR UPDATE" if use else ""
    stored = await db.fetchval(
        f"SELECT value ->> 'hash' FROM identity.platform WHERE key = $1{lock}",  # noqa: S608
        _KEY,
    )
    if not isinstance(stored, str) or not tokens_equal(token_hash(given[:_MAX]), stored):
        raise SetupTokenRefused()
    if use:
        await db.execute("DELETE FROM identity.platform WHERE key = $1", _KEY)


def forget_setup_token(data_dir: Path) -> None:
    """Remove the token's file (setup is done: it opens nothing any more)."""
    with contextlib.suppress(FileNotFoundError):
        (data_dir / SETUP_TOKEN_FILE).unlink()
