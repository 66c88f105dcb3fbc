"""nats-server's users on a server install, written before each of its starts.

`homeport-nats.service` runs, as root (`ExecStartPre=+`), before nats-server starts:

    python -m deploy.nats_config --credentials /etc/homeport/nats \
        --out /var/lib/homeport/nats/auth.conf --owner homeport-nats

Each service's password is made once in `<credentials>/<service>` (0600, owned by the user its
installed unit runs as: the unit file's `User=`, so that an install whose units are from an
older release, whose services all ran as `homeport`, keeps working after `homeport update`
until install.sh rewrites them; the folder 0711 root), and `auth.conf` (0600, nats-server's
user's) is rendered from them with the permissions of the release running
(libs/events/nats_access.py): `homeport update` restarts NATS with the rest, so a release that
calls something new brings its permission along.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
from pathlib import Path

from deploy.units import unit_name, unit_user
from libs.events.nats_access import SERVICE_USERS, ensure_credentials, render_authorization

__all__ = ["UNIT_DIR", "installed_user", "main", "write_config"]

UNIT_DIR = Path("/etc/systemd/system")


def installed_user(service: str, unit_dir: Path = UNIT_DIR) -> str:
    """The user `service`'s installed unit runs as (its `User=`); `unit_user(service)` when
    the unit file is missing or names none."""
    try:
        text = (unit_dir / unit_name(service)).read_text(encoding="utf-8")
    except FileNotFoundError:
        return unit_user(service)
    users = [
        line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith("User=")
    ]
    return users[-1] if users and users[-1] else unit_user(service)


def write_config(
    credentials: Path, out: Path, owner: str | None, unit_dir: Path = UNIT_DIR
) -> bool:
    """Make missing passwords (each file given to the user its installed unit runs as), then
    write `out` if its text changed; whether it did."""
    passwords = ensure_credentials(credentials, SERVICE_USERS)
    if owner is not None:  # a server install (as root): each service reads only its own
        os.chmod(credentials, 0o711)  # noqa: S103 - passable, not listable: each file is 0600
        for user in SERVICE_USERS:
            entry = pwd.getpwnam(installed_user(user, unit_dir))
            fd = os.open(credentials / user, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fchown(fd, entry.pw_uid, entry.pw_gid)
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
    text = render_authorization(passwords).encode()
    try:
        fd = os.open(out, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        old = None
    else:
        with os.fdopen(fd, "rb") as f:
            old = f.read()
    if old == text:
        return False
    tmp = out.with_name(f".{out.name}.new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, text)
        os.fsync(fd)
        if owner is not None:
            entry = pwd.getpwnam(owner)
            os.fchown(fd, entry.pw_uid, entry.pw_gid)
    finally:
        os.close(fd)
    os.replace(tmp, out)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.nats_config", description=__doc__)
    parser.add_argument("--credentials", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--owner", help="the user nats-server runs as (owns --out)")
    args = parser.parse_args(argv)
    try:
        changed = write_config(args.credentials, args.out, args.owner)
    except (OSError, KeyError, ValueError) as e:
        print(f"deploy.nats_config: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {'written' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
