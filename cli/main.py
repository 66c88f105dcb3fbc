"""The `homeport` command: run the local stack, show its status, replay projections, audit."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

from deploy.errors import StackError
from deploy.planning import parse_module
from deploy.stack import Stack
from deploy.state import is_running, process_alive, read_state
from deploy.supervision import probe
from libs.service.config import LOG_LEVELS, ConfigError
from libs.service.logs import redact

if TYPE_CHECKING:
    from deploy.layout import Layout
    from libs.events.store import ChainReport
    from services.apps.catalog import Catalog

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3

_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `homeport` script; returns the exit code."""
    args = _parser().parse_args(argv)
    code: int = args.func(args)
    return code


def _default_data_dir() -> str:
    return os.environ.get("HOMEPORT_DATA_DIR") or ".homeport"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="homeport", description="Homeport: run and inspect the self-hosting platform."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def data_dir_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir",
            default=_default_data_dir(),
            help="the stack's data directory (default: $HOMEPORT_DATA_DIR or ./.homeport)",
        )

    def dsn_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--dsn", help="Postgres URL of the event store (default: the running stack's)"
        )

    up = sub.add_parser(
        "up", help="start Postgres, NATS and every service in the foreground (Ctrl-C stops)"
    )
    data_dir_arg(up)
    up.add_argument(
        "--base-port",
        type=int,
        help="use consecutive ports from here (postgres, nats, nats monitor, then services) "
        "instead of remembered or free ones",
    )
    up.add_argument(
        "--service",
        action="append",
        metavar="NAME=MODULE",
        help="supervise only these modules instead of the relay and services/* "
        "(repeatable; for development and tests)",
    )
    up.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS, help="default INFO"
    )
    up.set_defaults(func=_cmd_up)

    status = sub.add_parser("status", help="list each part of the running stack and its health")
    data_dir_arg(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(func=_cmd_status)

    # On a server install (/etc/homeport/homeport.env under --prefix) these talk to systemd.
    def prefix_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--prefix", type=Path, default=Path("/"), help="install root (default /)")

    prefix_arg(status)
    logs = sub.add_parser("logs", help="show one service's log (the journal on a server)")
    data_dir_arg(logs)
    prefix_arg(logs)
    logs.add_argument("service", help="the service: gateway, identity, postgres, …")
    logs.add_argument("-n", "--lines", type=int, default=100, help="how many lines (default 100)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.set_defaults(func=_cmd_logs)
    restart = sub.add_parser("restart", help="restart one service of a server install")
    prefix_arg(restart)
    restart.add_argument("service", help="the service: gateway, identity, postgres, …")
    restart.set_defaults(func=_cmd_restart)

    setup = sub.add_parser(
        "setup", help="create the first administrator of the running stack (once)"
    )
    data_dir_arg(setup)
    setup.add_argument("--username", help="the administrator's user name (asked if missing)")
    setup.add_argument("--email", help="the administrator's email (asked if missing)")
    setup.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input instead of asking for it",
    )
    setup.set_defaults(func=_cmd_setup)

    replay = sub.add_parser("replay", help="rebuild one projection from the event store")
    replay.add_argument("projection", help="the projection's name")
    data_dir_arg(replay)
    dsn_arg(replay)
    replay.set_defaults(func=_cmd_replay)

    def checkpoint_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--prefix",
            type=Path,
            default=Path("/"),
            help="a server install's root (default /): without --dsn, its database and "
            "/var/lib/homeport are used when it has a homeport.env",
        )
        p.add_argument(
            "--checkpoints",
            type=Path,
            help="the signed checkpoint file (default <data dir>/backup/audit/checkpoints.jsonl)",
        )
        p.add_argument(
            "--key",
            type=Path,
            help="the checkpoint signing key; verify reads its .pub beside it "
            "(default <data dir>/backup/audit/checkpoint.key)",
        )

    audit = sub.add_parser("audit", help="check the integrity of the event store")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = audit_sub.add_parser(
        "verify",
        help="recompute the event hash chain and check it against the signed checkpoints",
    )
    data_dir_arg(verify)
    dsn_arg(verify)
    checkpoint_args(verify)
    verify.set_defaults(func=_cmd_audit_verify)
    cp = audit_sub.add_parser(
        "checkpoint", help="sign the chain head into the checkpoint file (outside the database)"
    )
    data_dir_arg(cp)
    dsn_arg(cp)
    checkpoint_args(cp)
    cp.set_defaults(func=_cmd_audit_checkpoint)

    def target_args(p: argparse.ArgumentParser, required: bool = True) -> None:
        p.add_argument(
            "--from",
            dest="source",
            required=required,
            metavar="TARGET",
            help="the backup target: a directory, or s3://bucket/prefix (credentials from "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or --credentials-file)",
        )
        p.add_argument("--endpoint-url", help="s3: the endpoint (default: AWS)")
        p.add_argument("--region", default="us-east-1", help="s3: the region (default us-east-1)")
        p.add_argument(
            "--credentials-file",
            type=Path,
            help="s3: a file of AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=... lines",
        )

    restore = sub.add_parser(
        "restore",
        help="restore the whole platform from a backup: on a server install in place of the "
        "running one (the old data kept aside), else into an empty data directory",
    )
    target_args(restore, required=False)
    restore.add_argument("--key", type=Path, help="the backup key file (AGE-SECRET-KEY-1...)")
    restore.add_argument(
        "--data-dir",
        help="restore into this empty directory for `homeport up` (default on a server "
        "install: the install itself; else $HOMEPORT_DATA_DIR or ./.homeport)",
    )
    restore.add_argument(
        "--from-request",
        type=Path,
        metavar="FILE",
        help="server install: the setup wizard's request (homeport-restore.service)",
    )
    restore.add_argument(
        "--recover",
        action="store_true",
        help="server install: after a restore that was cut off, put the data from before it "
        "back (homeport-restore-recover.service runs it before the platform starts)",
    )
    restore.add_argument(
        "--health-timeout", type=float, default=300.0, help="server install: seconds (300)"
    )
    restore.add_argument("--prefix", type=Path, default=Path("/"), help="install root (default /)")
    restore.add_argument(
        "--snapshot", help="a platform backup's id (default: the newest; homeport backup list)"
    )
    restore.set_defaults(func=_cmd_restore)

    backup = sub.add_parser("backup", help="list and check the backups on a target (offline)")
    backup_sub = backup.add_subparsers(dest="backup_command", required=True, metavar="COMMAND")
    blist = backup_sub.add_parser("list", help="list the complete backups on a target")
    target_args(blist)
    blist.set_defaults(func=_cmd_backup_list)
    bverify = backup_sub.add_parser(
        "verify",
        help="check backups: with --key decrypt every chunk, without it check every chunk is "
        "there with its size (default: the newest platform backup and its apps' backups)",
    )
    target_args(bverify)
    bverify.add_argument("--key", type=Path, help="the backup key file: check the contents too")
    which = bverify.add_mutually_exclusive_group()
    which.add_argument("snapshot", nargs="?", help="one backup's id")
    which.add_argument("--all", action="store_true", help="every backup on the target")
    bverify.add_argument(
        "--read-data",
        action="store_true",
        help="without --key: also read every pack and check its hash",
    )
    bverify.set_defaults(func=_cmd_backup_verify)

    catalog = sub.add_parser("catalog", help="make, sign, check and search an app catalog index")
    catalog_sub = catalog.add_subparsers(dest="catalog_command", required=True, metavar="COMMAND")
    keygen = catalog_sub.add_parser(
        "keygen", help="make an Ed25519 signing key (mode 0600); prints its public key (PEM)"
    )
    keygen.add_argument("--key", required=True, type=Path, help="where to write the private key")
    keygen.set_defaults(func=_cmd_catalog_keygen)
    publish = catalog_sub.add_parser(
        "publish", help="write and sign DIR/index.json for a <app-id>/<version>/ source tree"
    )
    publish.add_argument("--source", required=True, type=Path, help="the catalog source tree")
    publish.add_argument("--out", required=True, type=Path, help="where index.json goes")
    publish.add_argument("--key", required=True, type=Path, help="the private signing key")
    publish.set_defaults(func=_cmd_catalog_publish)

    def index_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--index", required=True, type=Path, help="the index directory")
        p.add_argument(
            "--trust",
            required=True,
            action="append",
            type=Path,
            metavar="PUBKEY",
            help="a trusted public key (PEM file); repeatable",
        )

    cat_verify = catalog_sub.add_parser("verify", help="check the index signature (and entries)")
    index_args(cat_verify)
    cat_verify.add_argument(
        "--all", action="store_true", help="also re-hash every entry's manifest and build context"
    )
    cat_verify.set_defaults(func=_cmd_catalog_verify)
    search = catalog_sub.add_parser("search", help="list the latest apps matching text and tag")
    index_args(search)
    search.add_argument("--text", help="words that must all appear (case-insensitive)")
    search.add_argument("--tag", help="an exact tag")
    search.set_defaults(func=_cmd_catalog_search)
    _release_parsers(sub)
    return parser


def _release_parsers(sub: Any) -> None:
    release = sub.add_parser("release", help="make a signing key and signed platform releases")
    release_sub = release.add_subparsers(dest="release_command", required=True, metavar="COMMAND")
    rkeygen = release_sub.add_parser(
        "keygen", help="make an Ed25519 release key (mode 0600); prints its public key (PEM)"
    )
    rkeygen.add_argument("--out", required=True, type=Path, help="where to write the private key")
    rkeygen.set_defaults(func=_cmd_release_keygen)
    rbuild = release_sub.add_parser(
        "build", help="archive the repository's tracked files as a signed release in DIR"
    )
    rbuild.add_argument("--version", required=True, help="the release's semantic version")
    rbuild.add_argument("--key", required=True, type=Path, help="the private release key")
    rbuild.add_argument("--out", required=True, type=Path, help="the release directory")
    rbuild.add_argument("--changelog", type=Path, help="a text file: what changed")
    rbuild.add_argument("--repo", type=Path, default=Path(), help="the git checkout (default .)")
    rbuild.set_defaults(func=_cmd_release_build)
    update = sub.add_parser(
        "update", help="install the newest signed platform release (rolled back if unhealthy)"
    )
    update.add_argument("--check", action="store_true", help="only say what is available")
    update.add_argument("--prefix", type=Path, default=Path("/"), help="install root (default /)")
    update.add_argument("--url", help="release URL (default: /etc/homeport/release-url)")
    update.add_argument("--venv-from", type=Path, help="use this virtualenv instead of pip")
    update.add_argument(
        "--health-timeout", type=float, default=120.0, help="seconds to wait for health"
    )
    update.add_argument(
        "--scheduled",
        action="store_true",
        help="the nightly timer's run: does nothing unless the dashboard turned it on",
    )
    update.set_defaults(func=_cmd_update)


def _err(msg: str) -> None:
    print(f"homeport: {msg}", file=sys.stderr)


# -- up -----------------------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace) -> int:
    from libs.service.logs import configure_logging

    configure_logging("stack", args.log_level)
    try:
        modules = [parse_module(s) for s in args.service] if args.service else None
        stack = Stack(
            Path(args.data_dir),
            base_port=args.base_port,
            modules=modules,
            log_level=args.log_level,
        )
        asyncio.run(stack.run(on_ready=_print_ready))
    except StackError as e:
        _err(str(e))
        return EXIT_FAILED
    return EXIT_OK


def _print_ready(stack: Stack) -> None:
    """The human part of `up`: where the dashboard is and what to do next."""
    data = stack.data_dir
    lines = ["", f"Homeport is running (data in {data}, stack pid {os.getpid()})."]
    bad = stack.unhealthy()
    if bad:
        names = ", ".join(f"{p.name} (log: {p.log})" for p in bad)
        lines.append(f"Not healthy yet: {names}")
    url = stack.dashboard_url
    steps: list[str] = []
    if url is not None:
        port = url.rsplit(":", 1)[1].rstrip("/")
        lines.append(f"  Dashboard: {url}")
        secure = stack.secure_dashboard_url
        if secure is not None:
            lines.append(f"             {secure} (through nginx, self-signed certificate)")
        token = read_setup_token(data)
        link = secure or url
        if token is not None:  # setup is not done: only the one with this link may do it
            link = f"{link.rstrip('/')}/#/setup?token={token}"
            lines.append(f"  Setup:     {link}")
        steps += [
            f"Open {link} in a browser on this machine and follow the setup wizard:\n"
            "     the first administrator, then your domain and its DNS provider\n"
            f"     (from another machine: ssh -L {port}:127.0.0.1:{port} <this server>;\n"
            f"     without a browser: homeport setup --data-dir {data}).",
        ]
        if stack.apps_url is not None:
            lines.append(f"  Apps:      {stack.apps_url} (self-signed certificates)")
    else:
        lines.append("  No dashboard yet: this checkout has no gateway service (services/gateway).")
        steps.append("Add the gateway service; `homeport up` starts it and prints its URL.")
    steps += [
        f"Check every part: homeport status --data-dir {data}",
        "Press Ctrl-C here (or send SIGTERM to the stack pid) to stop everything.",
    ]
    lines += ["", "To finish setup:"]
    lines += [f"  {n}. {step}" for n, step in enumerate(steps, 1)]
    lines += [f"Logs: {data / 'logs'}", ""]
    print("\n".join(lines), flush=True)


# -- status -------------------------------------------------------------------------------


def _cmd_status(args: argparse.Namespace) -> int:
    if _server(args) is not None:
        return _systemd_status(args)
    data = Path(args.data_dir).absolute()
    state = read_state(data)
    if state is None or not is_running(state):
        if args.json:
            print(json.dumps({"running": False, "data_dir": str(data)}))
        else:
            print(f"homeport is not running in {data}: start it with `homeport up`")
        return EXIT_NOT_RUNNING
    parts = asyncio.run(_check_parts(state))
    healthy = all(p["healthy"] for p in parts)
    if args.json:
        report = {
            "running": True,
            "healthy": healthy,
            "data_dir": str(data),
            "pid": state["pid"],
            "state": state.get("state"),
            "dashboard_url": state.get("dashboard_url"),
            "parts": parts,
        }
        print(json.dumps(report, indent=2))
    else:
        _print_table(state, parts)
    return EXIT_OK if healthy else EXIT_FAILED


async def _check_parts(state: dict[str, Any]) -> list[dict[str, Any]]:
    async def one(part: dict[str, Any]) -> dict[str, Any]:
        alive = process_alive(part.get("pid"), part.get("proc_start"))
        if alive:
            ok, detail = await probe(str(part.get("health")))
        else:
            ok, detail = False, f"not running ({part.get('state')})"
        return {**part, "alive": alive, "healthy": ok, "detail": detail}

    parts = [p for p in state.get("parts", []) if isinstance(p, dict)]
    return list(await asyncio.gather(*(one(p) for p in parts)))


def _print_table(state: dict[str, Any], parts: list[dict[str, Any]]) -> None:
    head = ("NAME", "KIND", "PID", "PORT", "STATE", "RESTARTS", "HEALTH", "URL")
    rows = [
        (
            str(p.get("name")),
            str(p.get("kind")),
            "-" if p.get("pid") is None else str(p["pid"]),
            str(p.get("port")),
            str(p.get("state")),
            str(p.get("restarts", 0)),
            ("ok" if p["healthy"] else "FAIL") + f" ({p['detail']})",
            str(p.get("url")),
        )
        for p in parts
    ]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    print(f"homeport {state.get('state')} in {state.get('data_dir')} (stack pid {state['pid']})")
    for r in (head, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if state.get("dashboard_url"):
        print(f"Dashboard: {state['dashboard_url']}")


# -- a server install: systemd ------------------------------------------------------------


def _server(args: argparse.Namespace) -> Layout | None:
    """The install's Layout when this is a server install (its homeport.env exists)."""
    from deploy.layout import Layout

    layout = Layout(args.prefix)
    return layout if layout.env_file.is_file() else None


def _run(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        _err(f"cannot run {argv[0]}: {e}")
        return None


def _systemd_status(args: argparse.Namespace) -> int:
    from deploy.units import installed_units, parse_show, status_argv, unit_ok

    layout = _server(args)
    assert layout is not None
    r = _run(status_argv(installed_units(layout)))
    if r is None or r.returncode != 0:
        _err(f"systemctl show failed: {r.stderr.strip() if r else 'not run'}")
        return EXIT_FAILED
    units = parse_show(r.stdout)
    healthy = bool(units) and all(unit_ok(u) for u in units)
    if args.json:
        print(json.dumps({"running": True, "healthy": healthy, "units": units}, indent=2))
    else:
        rows = [("UNIT", "STATE", "PID", "RESTARTS")] + [
            (
                u.get("Id", "?"),
                f"{u.get('ActiveState', '?')} ({u.get('SubState', '?')})"
                + (f", starts with {u['TriggeredBy']}" if u.get("TriggeredBy") else ""),
                u.get("MainPID", "0"),
                u.get("NRestarts", "0"),
            )
            for u in units
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK if healthy else EXIT_FAILED


def _cmd_logs(args: argparse.Namespace) -> int:
    from deploy.units import logs_argv, unit_for

    if args.lines < 1:
        _err(f"--lines {args.lines}: give a number of lines >= 1")
        return EXIT_USAGE
    try:
        unit = unit_for(args.service)
    except ValueError as e:
        _err(str(e))
        return EXIT_USAGE
    if _server(args) is not None:
        return subprocess.call(logs_argv(unit, args.lines, args.follow))
    # the local stack: its log files (see `homeport up`)
    path = Path(args.data_dir).absolute() / "logs" / f"{args.service}.log"
    if not path.is_file():
        _err(f"no log of {args.service!r} in {path.parent}: check the name with homeport status")
        return EXIT_USAGE
    argv = ["tail", "-n", str(args.lines), *(["-F"] if args.follow else []), "--", str(path)]
    return subprocess.call(argv)


def _cmd_restart(args: argparse.Namespace) -> int:
    from deploy.units import restart_argv, unit_for

    if _server(args) is None:
        _err(
            "restart works on a server install (no homeport.env here); the local stack "
            "restarts crashed parts itself: stop it and run homeport up again"
        )
        return EXIT_USAGE
    try:
        unit = unit_for(args.service)
    except ValueError as e:
        _err(str(e))
        return EXIT_USAGE
    r = _run(restart_argv(unit))
    if r is None or r.returncode != 0:
        _err(f"restart of {unit} failed: {r.stderr.strip() if r else 'not run'}")
        return EXIT_FAILED
    print(f"restarted {unit}")
    return EXIT_OK


# -- setup --------------------------------------------------------------------------------

SETUP_TOKEN_FILE = "setup-token"  # noqa: S105 - written by identity (services/identity/setup_token.py)


def read_setup_token(data: Path) -> str | None:
    """The one-time setup token identity left in the data directory, while setup is not done."""
    try:
        token = (data / SETUP_TOKEN_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


def _cmd_setup(args: argparse.Namespace) -> int:
    data = Path(args.data_dir).absolute()
    state = read_state(data)
    url = state.get("dashboard_url") if state is not None and is_running(state) else None
    if not url:
        print(f"homeport is not running in {data}: start it with `homeport up`", file=sys.stderr)
        return EXIT_NOT_RUNNING
    username = args.username or input("Administrator user name: ").strip()
    email = args.email or input("Administrator email: ").strip()
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password (8 to 256 characters; 15 or more recommended): ")
        if getpass.getpass("The same password again: ") != password:
            print("The two passwords differ; nothing was changed.", file=sys.stderr)
            return EXIT_USAGE
    token = read_setup_token(data)
    if token is None:
        print(
            f"setup is already done (there is no setup token in {data / SETUP_TOKEN_FILE}): "
            f"sign in at {url}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    body = {"username": username, "email": email, "password": password, "setup_token": token}
    status, answer = asyncio.run(_post(str(url).rstrip("/") + "/api/v1/setup", body))
    if status == 201:
        print(f"Administrator {username} created. Sign in at {url}")
        return EXIT_OK
    detail = answer.get("detail") if isinstance(answer, dict) else None
    field = answer.get("field") if isinstance(answer, dict) else None
    where = f" ({field})" if field else ""
    print(f"Setup refused{where}: {detail or status}", file=sys.stderr)
    return EXIT_FAILED


async def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    import aiohttp  # here: every other command (`homeport up` first) starts without it

    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=30)) as r,
    ):
        try:
            return r.status, await r.json(content_type=None)
        except ValueError:
            return r.status, None


# -- replay and audit ---------------------------------------------------------------------


def _dsn(args: argparse.Namespace) -> str | None:
    """The event store URL: --dsn, else the running stack's; None (after a message) if neither."""
    if args.dsn:
        return str(args.dsn)
    data = Path(args.data_dir).absolute()
    state = read_state(data)
    if state is None or not is_running(state) or not state.get("database_url"):
        _err(f"homeport is not running in {data}: start it with `homeport up`, or pass --dsn")
        return None
    return str(state["database_url"])


def _cmd_replay(args: argparse.Namespace) -> int:
    try:
        from libs.events import projection
    except ImportError as e:
        _err(f"projections are not available in this checkout ({e})")
        return EXIT_USAGE
    known = sorted(projection.known_projections())
    if args.projection not in known:
        _err(
            f"no projection named {args.projection!r}; known projections: "
            f"{', '.join(known) or 'none'}"
        )
        return EXIT_USAGE
    dsn = _dsn(args)
    if dsn is None:
        return EXIT_NOT_RUNNING
    try:
        count = asyncio.run(projection.replay_by_name(args.projection, dsn))
    except (projection.ProjectionError, ConfigError) as e:
        _err(str(e))  # a ConfigError: the projection's settings (HP_*) are invalid
        return EXIT_USAGE
    except _DB_ERRORS as e:
        _err(f"cannot replay {args.projection!r}: the event store at {redact(dsn)} failed: {e}")
        return EXIT_FAILED
    print(f"replayed projection {args.projection}: {count} events applied")
    return EXIT_OK


def _audit_where(args: argparse.Namespace) -> tuple[str | None, Path]:
    """(the event store's URL, the data dir): --dsn and --data-dir; on a server install (and no
    --dsn), the database in its homeport.env and its data dir. None (after a message) if none."""
    layout = None if args.dsn else _server(args)
    if layout is None:
        return _dsn(args), Path(args.data_dir).absolute()
    from deploy.update import admin_env_file, read_env_file

    where = admin_env_file(layout)
    dsn = read_env_file(where).get("HP_DATABASE_URL")
    if not dsn:
        _err(f"{where} sets no HP_DATABASE_URL: run the installer again")
    return dsn or None, layout.data


def _checkpoint_paths(args: argparse.Namespace, data: Path) -> tuple[Path, Path]:
    """The log and key the backup service keeps (<data>/backup/audit), unless named."""
    from libs.events.checkpoints import KEY_FILE, LOG_FILE

    audit = data / "backup" / "audit"
    return (args.checkpoints or audit / LOG_FILE, args.key or audit / KEY_FILE)


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    dsn, data = _audit_where(args)
    if dsn is None:
        return EXIT_NOT_RUNNING
    log_path, key_path = _checkpoint_paths(args, data)
    public: str | None = None
    pub_path = key_path.with_name(key_path.name + ".pub")
    if log_path.exists():
        try:
            public = pub_path.read_text().strip()
        except OSError as e:
            _err(f"{log_path} holds checkpoints but their public key {pub_path} is unreadable: {e}")
            return EXIT_FAILED
    try:
        report, checked = asyncio.run(_verify(dsn, log_path, public))
    except _DB_ERRORS as e:
        _err(f"cannot verify: the event store at {redact(dsn)} failed: {e}")
        return EXIT_FAILED
    except ValueError as e:  # the public key
        _err(f"cannot verify the checkpoints: {pub_path}: {e}")
        return EXIT_FAILED
    ok = report.ok
    if report.ok:
        print(
            f"event chain intact: {report.checked} events checked, "
            f"up to position {report.last_position}"
        )
    else:
        n = len(report.problems)
        print(
            f"event chain BROKEN: {n} problem{'s' if n != 1 else ''} in {report.checked} events "
            f"checked (up to position {report.last_position})"
        )
        for p in report.problems:
            print(f"  position {p.position}: {p.kind}: {p.detail}")
    if checked is None:
        print(f"no signed checkpoints in {log_path}: only the chain's own hashes were checked")
    else:
        matched, problems = checked
        if problems:
            ok = False
            first = problems[0]
            where = "" if first.position is None else f" (position {first.position})"
            print(
                f"checkpoints: {matched} match; the first that does not: line {first.line} of "
                f"{log_path}{where}: {first.detail}"
            )
            for p in problems[1:]:
                print(f"  line {p.line}: {p.detail}")
        else:
            print(f"checkpoints: all {matched} signed checkpoints match")
    return EXIT_OK if ok else EXIT_FAILED


async def _verify(
    dsn: str, log_path: Path, public: str | None
) -> tuple[ChainReport, tuple[int, list[Any]] | None]:
    from libs.events.checkpoints import CheckpointLog, verify_checkpoints
    from libs.events.store import PostgresEventStore

    store = await PostgresEventStore.open(dsn, max_size=2)
    try:
        report = await store.verify_chain()
        if public is None:
            return report, None
        return report, await verify_checkpoints(store, CheckpointLog(log_path), public)
    finally:
        await store.close()


def _cmd_audit_checkpoint(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from libs.events.checkpoints import CheckpointLog, load_or_create_key, take_checkpoint
    from libs.events.store import PostgresEventStore

    dsn, data = _audit_where(args)
    if dsn is None:
        return EXIT_NOT_RUNNING
    log_path, key_path = _checkpoint_paths(args, data)

    async def run() -> Any:
        key = load_or_create_key(key_path)
        store = await PostgresEventStore.open(dsn, max_size=1)
        try:
            return await take_checkpoint(store, CheckpointLog(log_path), key, now=datetime.now(UTC))
        finally:
            await store.close()

    try:
        cp = asyncio.run(run())
    except _DB_ERRORS as e:
        _err(f"cannot take a checkpoint: the event store at {redact(dsn)} failed: {e}")
        return EXIT_FAILED
    except (OSError, ValueError) as e:
        _err(f"cannot take a checkpoint: {e}")
        return EXIT_FAILED
    if cp is None:
        print(f"the chain head has not moved since the last checkpoint in {log_path}")
    else:
        print(f"checkpoint of position {cp.position} signed into {log_path}")
    return EXIT_OK


# -- restore and backups ------------------------------------------------------------------


def _cmd_restore(args: argparse.Namespace) -> int:
    from deploy.restore import open_target, read_identity, restore_platform
    from services.backup.repo import BackupError
    from services.backup.targets.base import TargetError

    server = _server(args) if args.data_dir is None else None
    if args.recover:
        return _cmd_restore_recover(args, server)
    if server is not None:
        return _cmd_restore_server(args, server)
    if args.from_request is not None:
        _err("--from-request works on a server install (no homeport.env here)")
        return EXIT_USAGE
    if not args.source or args.key is None:
        _err("restore needs --from TARGET and --key FILE")
        return EXIT_USAGE
    data = Path(args.data_dir or _default_data_dir()).absolute()

    async def run() -> int:
        target = open_target(
            args.source,
            endpoint_url=args.endpoint_url,
            region=args.region,
            credentials_file=args.credentials_file,
        )
        try:
            s = await restore_platform(
                data,
                target,
                identity,
                snapshot=args.snapshot,
                say=lambda line: print(f"  {line}", flush=True),
            )
        finally:
            await target.close()
        _print_restored(
            s,
            f" into {data}",
            "their data is put back when the stack starts",
            f"Now run `make run` (or `homeport up --data-dir {data}`).",
        )
        return EXIT_OK

    try:
        identity = read_identity(args.key)
        print(f"Restoring from {_shown(args.source)} into {data}", flush=True)
        return asyncio.run(run())
    except (StackError, TargetError, BackupError) as e:
        _err(str(e))
        return EXIT_FAILED


def _cmd_restore_recover(args: argparse.Namespace, layout: Layout | None) -> int:
    """`homeport restore --recover`: the data from before a cut-off restore back (root)."""
    from deploy.server_restore import recover_interrupted

    if layout is None:
        _err("--recover works on a server install (no homeport.env here)")
        return EXIT_USAGE
    if args.source or args.key is not None or args.from_request is not None:
        _err("--recover takes nothing else: no --from, --key or --from-request")
        return EXIT_USAGE
    if os.geteuid() != 0:
        _err("recovering a server install needs root: sudo homeport restore --recover")
        return EXIT_FAILED
    try:
        done = recover_interrupted(layout, say=lambda line: print(f"  {line}", flush=True))
    except StackError as e:
        _err(str(e))
        return EXIT_FAILED
    print("No restore was interrupted: nothing to do." if done is None else "Recovered.")
    return EXIT_OK


def _cmd_restore_server(args: argparse.Namespace, layout: Layout) -> int:
    """`homeport restore` on a server install: in place of the running platform (root)."""
    from deploy.restore import open_target, read_identity
    from deploy.server_restore import restore_server, take_request, write_failed
    from services.backup.repo import BackupError
    from services.backup.targets.base import TargetError
    from services.backup.targets.factory import TargetSettingsError, target_from_settings

    request: dict[str, Any] | None = None

    async def run() -> int:
        if request is not None:
            try:
                target = target_from_settings(
                    dict(request["target"]), allow_loopback=bool(request.get("allow_loopback"))
                )
            except TargetSettingsError as e:
                raise StackError(f"the restore request's target: {e}") from None
            identity, snapshot = str(request.get("identity", "")), request.get("snapshot_id")
            shown = f"the target the setup wizard named ({target!r})"
        else:
            target = open_target(
                args.source,
                endpoint_url=args.endpoint_url,
                region=args.region,
                credentials_file=args.credentials_file,
            )
            identity, snapshot, shown = key, args.snapshot, _shown(args.source)
        print(f"Restoring from {shown} in place of the platform in {layout.data}", flush=True)
        try:
            s, aside = await restore_server(
                layout,
                target,
                identity,
                snapshot=snapshot if isinstance(snapshot, str) else None,
                say=lambda line: print(f"  {line}", flush=True),
                health_timeout=args.health_timeout,
            )
        finally:
            await target.close()
        _print_restored(
            s,
            "",
            "being rebuilt with their data now; see the dashboard",
            f"Every unit is running. The data from before the restore is in {aside}: remove it"
            " when you no longer need it.",
        )
        return EXIT_OK

    try:
        if args.from_request is not None:
            if args.source or args.key is not None:
                _err("--from-request takes the target and key from the request: no --from/--key")
                return EXIT_USAGE
            request = take_request(layout, args.from_request)
            key = ""
        else:
            if not args.source or args.key is None:
                _err("restore needs --from TARGET and --key FILE (or --from-request FILE)")
                return EXIT_USAGE
            key = read_identity(args.key)
        return asyncio.run(run())
    except (StackError, TargetError, BackupError) as e:
        _err(str(e))
        if request is not None:
            with contextlib.suppress(OSError, KeyError):
                write_failed(layout, str(e))
        return EXIT_FAILED


def _print_restored(s: Any, where: str, apps_then: str, next_step: str) -> None:
    """What a restore brought back (a RestoreSummary), the same words embedded and on a server."""
    apps = ", ".join(sorted(s.apps)) or "none"
    print(
        f"Restored platform backup {s.snapshot} of {s.time} (Homeport {s.platform_version})"
        f"{where}:\n  {s.events} events (users, groups, domains, settings), the keyring and"
        f" certificates; {s.sessions_ended} open sessions ended (everyone signs in again);"
        f"\n  apps: {apps} ({apps_then}).\n{next_step}",
        flush=True,
    )


def _shown(source: str) -> str:
    return redact(source) if "://" in source else source


async def _open_repo(args: argparse.Namespace) -> tuple[Any, Any]:
    from deploy.restore import open_repository, open_target

    target = open_target(
        args.source,
        endpoint_url=args.endpoint_url,
        region=args.region,
        credentials_file=args.credentials_file,
    )
    try:
        return target, await open_repository(target)
    except BaseException:
        await target.close()
        raise


def _what(labels: dict[str, str]) -> str:
    """What a backup holds, from its public labels."""
    kind = labels.get("kind", "?")
    if kind == "app":
        return (
            f"app {labels.get('app_id', '?')} ({labels.get('manifest_id', '?')} "
            f"{labels.get('version', '?')}, {labels.get('reason', '?')})"
        )
    if kind == "platform":
        n = len([a for a in labels.get("apps", "").split(",") if a])
        mail = ", the mail" if labels.get("mail") else ""
        return f"platform ({n} app backup{'s' if n != 1 else ''}{mail})"
    if kind == "mail":
        boxes = labels.get("mailboxes", "?")
        return f"mail ({boxes} mailbox{'' if boxes == '1' else 'es'})"
    return kind


def _cmd_backup_list(args: argparse.Namespace) -> int:
    from services.backup.repo import BackupError
    from services.backup.targets.base import TargetError

    async def run() -> int:
        target, repo = await _open_repo(args)
        try:
            snaps = await repo.snapshots()
        finally:
            await target.close()
        if not snaps:
            print(f"no complete backups on {_shown(args.source)}")
            return EXIT_OK
        head = ("ID", "TIME (UTC)", "WHAT", "FILES", "BYTES", "NEW BYTES")
        rows = [
            (
                s.id,
                s.time.strftime("%Y-%m-%d %H:%M:%S"),
                _what(s.labels),
                str(s.stats.files),
                str(s.stats.bytes),
                str(s.stats.new_bytes),
            )
            for s in snaps
        ]
        widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
        for r in (head, *rows):
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        return EXIT_OK

    try:
        return asyncio.run(run())
    except (StackError, TargetError, BackupError) as e:
        _err(str(e))
        return EXIT_FAILED


def _cmd_backup_verify(args: argparse.Namespace) -> int:
    from deploy.restore import read_identity
    from services.backup.repo import BackupError
    from services.backup.targets.base import TargetError

    async def run(identity: str | None) -> int:
        target, repo = await _open_repo(args)
        try:
            snaps = {s.id: s for s in await repo.snapshots()}
            chosen = _chosen(args, snaps)
            damaged: list[str] = []
            for sid in chosen:
                s = snaps[sid]
                what = _what(s.labels)
                problems: tuple[str, ...]
                files: tuple[str, ...]
                try:
                    report = await repo.verify(sid, identity, read_data=args.read_data)
                except BackupError as e:
                    problems, files, checked = (str(e),), (), "?"
                else:
                    problems, files = report.problems, report.files
                    checked = f"{report.checked_chunks} chunks in {report.checked_packs} packs"
                if not problems:
                    print(f"ok       {sid}  {what}: {checked}")
                    continue
                damaged.append(what)
                print(f"DAMAGED  {sid}  {what}")
                for p in problems:
                    print(f"    {p}")
                for f in files:
                    print(f"    file hurt: {f}")
        finally:
            await target.close()
        how = "decrypted and checked" if identity else "present with their sizes"
        if damaged:
            print(f"{len(damaged)} of {len(chosen)} backups damaged: {'; '.join(damaged)}")
            return EXIT_FAILED
        print(f"all {len(chosen)} backups checked: every chunk {how}")
        return EXIT_OK

    try:
        identity = read_identity(args.key) if args.key is not None else None
        return asyncio.run(run(identity))
    except (StackError, TargetError) as e:  # RestoreError included
        _err(str(e))
        return EXIT_FAILED


def _chosen(args: argparse.Namespace, snaps: dict[str, Any]) -> list[str]:
    from deploy.restore import RestoreError

    if args.all:
        return list(snaps)
    if args.snapshot:
        if args.snapshot not in snaps:
            raise RestoreError(f"the target holds no backup {args.snapshot[:80]!r}")
        return [args.snapshot]
    platforms = [s for s in snaps.values() if s.labels.get("kind") == "platform"]
    if not platforms:
        raise RestoreError("the target holds no platform backup: name a backup or use --all")
    newest = platforms[-1]
    apps = [a for a in newest.labels.get("apps", "").split(",") if a in snaps]
    mail = [m for m in (newest.labels.get("mail"),) if m in snaps]
    return [newest.id, *apps, *mail]


# -- catalog ------------------------------------------------------------------------------


def _cmd_catalog_keygen(args: argparse.Namespace) -> int:
    from services.apps import catalog

    try:
        key = catalog.generate_key(args.key)
    except catalog.CatalogError as e:
        _err(str(e))
        return EXIT_FAILED
    print(
        f"private key written to {args.key} (mode 0600), {catalog.key_fingerprint(key)}; "
        "its public key, to give to whoever trusts this catalog:",
        file=sys.stderr,
    )
    print(catalog.public_key_text(key), end="")
    return EXIT_OK


def _cmd_catalog_publish(args: argparse.Namespace) -> int:
    from services.apps import catalog
    from services.apps.manifest import ManifestError

    try:
        key = catalog.load_private_key(args.key)
        index = catalog.publish(args.source, args.out, key)
        count = len(catalog.Catalog.load(args.out, [key.public_key()]).entries)
    except (catalog.CatalogError, ManifestError) as e:
        _err(str(e))
        return EXIT_FAILED
    print(f"published {count} entries to {index}, signed by {catalog.key_fingerprint(key)}")
    return EXIT_OK


def _load_catalog(args: argparse.Namespace) -> Catalog:
    from services.apps import catalog

    keys = [catalog.load_public_key(p) for p in args.trust]
    return catalog.Catalog.load(args.index, keys)


def _cmd_catalog_verify(args: argparse.Namespace) -> int:
    from services.apps import catalog

    try:
        cat = _load_catalog(args)
    except catalog.CatalogError as e:
        _err(str(e))
        return EXIT_FAILED
    print(
        f"index {args.index / catalog.INDEX_FILE}: signature OK "
        f"({catalog.key_fingerprint(cat.signed_by)}), {len(cat.entries)} entries"
    )
    if not args.all:
        return EXIT_OK
    failed = 0
    for entry in cat.entries:
        try:
            entry.verify()
        except catalog.CatalogError as e:
            _err(str(e))
            failed += 1
        else:
            print(f"  ok {entry.app_id} {entry.version}")
    if failed:
        _err(f"{failed} of {len(cat.entries)} entries differ from the signed index")
        return EXIT_FAILED
    return EXIT_OK


def _cmd_catalog_search(args: argparse.Namespace) -> int:
    from services.apps import catalog

    try:
        found = _load_catalog(args).search(text=args.text, tag=args.tag)
    except catalog.CatalogError as e:
        _err(str(e))
        return EXIT_FAILED
    if not found:
        print("no apps match")
        return EXIT_OK
    head = ("ID", "VERSION", "TITLE", "TAGS", "TAGLINE")
    rows = [(m.id, str(m.version), m.title, ",".join(m.tags), m.tagline) for m in found]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    for r in (head, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return EXIT_OK


# -- release and update ---------------------------------------------------------------------


def _cmd_release_keygen(args: argparse.Namespace) -> int:
    from deploy import release

    try:
        key = release.generate_key(args.out)
    except release.ReleaseError as e:
        _err(str(e))
        return EXIT_FAILED
    print(f"private key written to {args.out} (mode 0600); its public key:", file=sys.stderr)
    print(release.public_key_text(key), end="")
    return EXIT_OK


def _cmd_release_build(args: argparse.Namespace) -> int:
    from deploy import release

    try:
        changelog = args.changelog.read_text() if args.changelog else ""
        key = release.load_private_key(args.key)
        manifest = release.build_release(
            args.repo, args.version, key, args.out, changelog=changelog
        )
    except (release.ReleaseError, OSError) as e:
        _err(str(e))
        return EXIT_FAILED
    print(f"release {args.version}: {manifest} (signed), {args.out / release.LATEST}")
    return EXIT_OK


def _cmd_update(args: argparse.Namespace) -> int:
    from deploy.layout import Layout
    from deploy.update import SystemdHost, UpdateError, Updater, admin_env_file
    from deploy.update_events import EventLog, EventLogError, recorded_update

    layout = Layout(args.prefix)
    updater = Updater(
        layout,
        SystemdHost(),
        url=args.url,
        venv_from=args.venv_from,
        health_timeout=args.health_timeout,
    )
    try:
        if args.check:
            found = updater.check()
            if found is None:
                print(f"{updater.current_version()} is the newest release")
            else:
                print(f"{found.version} is available (running {updater.current_version()})")
                if found.changelog:
                    print(found.changelog.rstrip())
            return EXIT_OK
        events = EventLog.from_env_file(admin_env_file(layout), lambda m: _err(f"warning: {m}"))
        if args.scheduled:
            try:
                enabled = events.auto_update_enabled()
            except EventLogError as e:
                _err(f"{e}; nothing was updated")
                return EXIT_FAILED
            if not enabled:
                print(
                    "nightly platform updates are off (turn them on in the dashboard): nothing done"
                )
                return EXIT_OK
        outcome = recorded_update(updater, events, scheduled=args.scheduled)
    except UpdateError as e:
        _err(str(e))
        return EXIT_FAILED
    if outcome is None:
        print(f"{updater.current_version()} is the newest release: nothing to update")
        return EXIT_OK
    if outcome.rolled_back:
        _err(f"{outcome.version} was rolled back: {', '.join(outcome.unhealthy)}")
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
