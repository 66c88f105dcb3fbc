"""Notes: per-user notes behind a sign-in through the platform's LDAP, stored in Postgres.

Runs inside the app container (Debian's python3, python3-psycopg2, python3-ldap3), not in
the platform: it reads only the HOMEPORT_* variables of services/apps/DESIGN.md.

Sign-in binds as the app account, finds the user by uid under the users base DN, then binds
as that user's DN with the given password. The session is a cookie signed with HMAC-SHA256
under a key kept in /app/data; every form POST carries a CSRF token that must equal the
value of a separate cookie (double submit), and cookies are SameSite=Lax.

It speaks HTTP/1.1 and keeps connections open (the edge reuses its connections to the app):
every answer says its Content-Length, a request whose body is not read ends its connection
(the rest would be taken for the next request), and an idle connection is closed after
IDLE_SECONDS, so an idle client cannot hold a thread forever.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import os
import re
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import ldap3
import psycopg2
import psycopg2.pool
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

DATA = Path("/app/data")
KEY_FILE = DATA / "session.key"
SESSION_COOKIE = "notes_session"
CSRF_COOKIE = "notes_csrf"
SESSION_SECONDS = 7 * 24 * 3600
MAX_BODY = 64 * 1024
MAX_TITLE = 200
MAX_NOTE = 20000
USERNAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
NOTE_PATH = re.compile(r"/notes/([0-9]{1,18})/delete")
# longer than the edge's keepalive_timeout to its upstreams (60 s), so the edge closes an idle
# connection first and never sends a request on one the app is closing
IDLE_SECONDS = 75

SCHEMA = """
CREATE TABLE IF NOT EXISTS notes (
    id bigserial PRIMARY KEY,
    owner text NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS notes_owner ON notes (owner, created_at DESC);
"""


@dataclass(frozen=True)
class Config:
    database_url: str
    ldap_host: str
    ldap_port: int
    bind_dn: str
    bind_password: str
    users_dn: str
    secure_cookies: bool

    @classmethod
    def from_env(cls) -> Config:
        def need(name: str) -> str:
            value = os.environ.get(name, "")
            if not value:
                sys.exit(f"notes: {name} is not set: the app needs the postgresql and ldap addons")
            return value

        port = need("HOMEPORT_LDAP_PORT")
        if not port.isdigit():
            sys.exit(f"notes: HOMEPORT_LDAP_PORT must be a port number, not {port!r}")
        return cls(
            database_url=need("HOMEPORT_POSTGRESQL_URL"),
            ldap_host=need("HOMEPORT_LDAP_HOST"),
            ldap_port=int(port),
            bind_dn=need("HOMEPORT_LDAP_BIND_DN"),
            bind_password=need("HOMEPORT_LDAP_BIND_PASSWORD"),
            users_dn=need("HOMEPORT_LDAP_USERS_BASE_DN"),
            secure_cookies=os.environ.get("HOMEPORT_APP_ORIGIN", "").startswith("https://"),
        )


def load_key() -> bytes:
    """The session signing key, made once and kept on the volume."""
    try:
        fd = os.open(KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = KEY_FILE.read_bytes()
        if len(key) < 32:
            sys.exit(f"notes: {KEY_FILE} is shorter than 32 bytes: delete it to make a new one")
        return key
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


class Ldap:
    """Checks a user's password through the platform's LDAP endpoint."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.server = ldap3.Server(
            cfg.ldap_host, port=cfg.ldap_port, get_info=ldap3.NONE, connect_timeout=5
        )

    def _conn(self, dn: str, password: str) -> ldap3.Connection:
        return ldap3.Connection(
            self.server, user=dn, password=password, receive_timeout=10, raise_exceptions=False
        )

    def check(self, username: str, password: str) -> dict[str, str] | None:
        """The user's uid and name if the password is right, else None."""
        if not USERNAME.fullmatch(username) or not password:
            return None  # an empty password would be an unauthenticated bind
        app = self._conn(self.cfg.bind_dn, self.cfg.bind_password)
        try:
            if not app.bind():
                raise RuntimeError(f"LDAP bind as the app account failed: {app.result}")
            app.search(
                self.cfg.users_dn,
                f"(&(uid={escape_filter_chars(username)})(objectClass=inetOrgPerson))",
                search_scope=ldap3.LEVEL,
                attributes=["uid", "cn"],
                size_limit=2,
            )
            entries = list(app.entries)
        finally:
            app.unbind()
        if len(entries) != 1:
            return None
        entry = entries[0]
        user = self._conn(entry.entry_dn, password)
        try:
            if not user.bind():
                return None
        finally:
            user.unbind()
        uid = str(entry.uid.value)
        name = str(entry.cn.value) if entry.cn.value else uid
        return {"uid": uid, "name": name}


class Store:
    """Notes in the addon Postgres."""

    def __init__(self, cfg: Config) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                self.pool = psycopg2.pool.ThreadedConnectionPool(1, 8, cfg.database_url)
                break
            except psycopg2.OperationalError as e:
                if time.monotonic() > deadline:
                    sys.exit(f"notes: cannot reach the database: {e}")
                print(f"notes: waiting for the database: {e}".strip(), file=sys.stderr)
                time.sleep(2)
        self.run(lambda cur: cur.execute(SCHEMA))

    def run(self, fn: Any) -> Any:
        conn = self.pool.getconn()
        try:
            with conn, conn.cursor() as cur:
                return fn(cur)
        finally:
            self.pool.putconn(conn, close=bool(conn.closed))  # a broken one is not reused

    def alive(self) -> bool:
        try:
            return bool(self.run(lambda cur: (cur.execute("SELECT 1"), cur.fetchone())[1]))
        except psycopg2.Error:
            return False

    def notes(self, owner: str) -> list[tuple[int, str, str, Any]]:
        def q(cur: Any) -> list[tuple[int, str, str, Any]]:
            cur.execute(
                "SELECT id, title, body, created_at FROM notes WHERE owner = %s"
                " ORDER BY created_at DESC, id DESC",
                (owner,),
            )
            return list(cur.fetchall())

        result: list[tuple[int, str, str, Any]] = self.run(q)
        return result

    def add(self, owner: str, title: str, body: str) -> None:
        self.run(
            lambda cur: cur.execute(
                "INSERT INTO notes (owner, title, body) VALUES (%s, %s, %s)", (owner, title, body)
            )
        )

    def delete(self, owner: str, note_id: int) -> None:
        self.run(
            lambda cur: cur.execute(
                "DELETE FROM notes WHERE id = %s AND owner = %s", (note_id, owner)
            )
        )


class Sessions:
    """Signed cookie values: base64url(JSON).base64url(HMAC-SHA256)."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def _mac(self, payload: bytes) -> str:
        digest = hmac.new(self.key, payload, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def make(self, user: dict[str, str]) -> str:
        body = {"u": user["uid"], "n": user["name"], "exp": int(time.time()) + SESSION_SECONDS}
        payload = base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
        return f"{payload}.{self._mac(payload.encode())}"

    def read(self, value: str) -> dict[str, Any] | None:
        payload, _, mac = value.partition(".")
        if not mac or not hmac.compare_digest(mac, self._mac(payload.encode())):
            return None
        try:
            body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except ValueError:
            return None
        if not isinstance(body, dict) or int(body.get("exp", 0)) < time.time():
            return None
        return body


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 42rem; margin: 2rem auto; padding: 0 1rem;
        color: #1f2933; }}
input, textarea {{ width: 100%; box-sizing: border-box; margin: .25rem 0 .75rem; padding: .4rem; }}
textarea {{ min-height: 6rem; }}
.note {{ border: 1px solid #d9e2ec; border-radius: 6px; padding: .5rem 1rem; margin: 1rem 0; }}
.note pre {{ white-space: pre-wrap; font-family: inherit; }}
.error {{ color: #b91c1c; }}
header {{ display: flex; justify-content: space-between; align-items: center; }}
button.link {{ background: none; border: none; color: #2563eb; cursor: pointer; padding: 0; }}
</style></head><body>
{body}
</body></html>
"""


def page(title: str, body: str) -> bytes:
    return PAGE.format(title=html.escape(title), body=body).encode()


def login_form(csrf: str, error: str = "", username: str = "") -> bytes:
    e = html.escape
    msg = f'<p class="error">{e(error)}</p>' if error else ""
    return page(
        "Sign in - Notes",
        f"""<h1>Notes</h1>{msg}
<form method="post" action="/login">
<input type="hidden" name="csrf" value="{e(csrf)}">
<label>Username <input name="username" autocomplete="username" value="{e(username)}"
 required></label>
<label>Password <input name="password" type="password" autocomplete="current-password"
 required></label>
<button type="submit">Sign in</button>
</form>""",
    )


def notes_page(name: str, csrf: str, notes: list[tuple[int, str, str, Any]]) -> bytes:
    e = html.escape
    items = "".join(
        f"""<div class="note"><h3>{e(title)}</h3><pre>{e(body)}</pre>
<form method="post" action="/notes/{int(nid)}/delete">
<input type="hidden" name="csrf" value="{e(csrf)}">
<button class="link" type="submit">Delete</button></form></div>"""
        for nid, title, body, _ in notes
    )
    return page(
        "Notes",
        f"""<header><h1>Notes</h1>
<form method="post" action="/logout"><span>{e(name)}</span>
<input type="hidden" name="csrf" value="{e(csrf)}">
<button class="link" type="submit">Sign out</button></form></header>
<form method="post" action="/notes">
<input type="hidden" name="csrf" value="{e(csrf)}">
<label>Title <input name="title" maxlength="{MAX_TITLE}" required></label>
<label>Note <textarea name="body" maxlength="{MAX_NOTE}"></textarea></label>
<button type="submit">Add note</button>
</form>
{items or "<p>No notes yet.</p>"}""",
    )


class App:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.sessions = Sessions(load_key())
        self.ldap = Ldap(cfg)
        self.store = Store(cfg)


class Handler(BaseHTTPRequestHandler):
    server_version = "notes"
    sys_version = ""
    protocol_version = "HTTP/1.1"  # keep-alive; send_error answers with Connection: close
    timeout = IDLE_SECONDS  # per read or write on the connection, the wait for a request too
    # headers and body go out in two writes: with Nagle's algorithm the body would wait for
    # the client's delayed ACK of the headers (40 ms) on a connection that stays open
    disable_nagle_algorithm = True
    app: App  # set on the class before serving

    # -- helpers ---------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def _cookies(self) -> SimpleCookie:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie", ""))
        except CookieError:
            pass
        return jar

    def _cookie(self, name: str) -> str:
        morsel = self._cookies().get(name)
        return morsel.value if morsel is not None else ""

    def _set_cookie(self, name: str, value: str, max_age: int) -> None:
        secure = "; Secure" if self.app.cfg.secure_cookies else ""
        self.send_header(
            "Set-Cookie",
            f"{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}",
        )

    def _csrf(self) -> tuple[str, bool]:
        """The visitor's CSRF token and whether it is new (to be set as a cookie)."""
        token = self._cookie(CSRF_COOKIE)
        if re.fullmatch(r"[A-Za-z0-9_-]{32,64}", token):
            return token, False
        return secrets.token_urlsafe(32), True

    def _user(self) -> dict[str, Any] | None:
        value = self._cookie(SESSION_COOKIE)
        return self.app.sessions.read(value) if value else None

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        *,
        ctype: str = "text/html; charset=utf-8",
        cookies: list[tuple[str, str, int]] | None = None,
        location: str | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'")
        if self.close_connection:
            self.send_header("Connection", "close")
        if location:
            self.send_header("Location", location)
        for name, value, age in cookies or []:
            self._set_cookie(name, value, age)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _redirect(self, to: str, cookies: list[tuple[str, str, int]] | None = None) -> None:
        self._send(HTTPStatus.SEE_OTHER, b"", location=to, cookies=cookies)

    def _form(self) -> dict[str, str] | None:
        """The url-encoded form of a POST; None, and the connection to be closed, if it is not
        read (too large, no valid Content-Length)."""
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if self.headers.get("Transfer-Encoding") or length < 0 or length > MAX_BODY:
            self.close_connection = True
            return None
        raw = self.rfile.read(length).decode("utf-8", errors="replace")
        return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}

    # -- routes ----------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length", "0") != "0":
            self.close_connection = True  # a body nobody reads: not the start of a request
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            ok = self.app.store.alive()
            status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
            body = b"ok\n" if ok else b"database unavailable\n"
            self._send(status, body, ctype="text/plain; charset=utf-8")
            return
        csrf, new = self._csrf()
        cookies = [(CSRF_COOKIE, csrf, SESSION_SECONDS)] if new else []
        user = self._user()
        if path == "/login":
            if user is not None:
                self._redirect("/")
                return
            self._send(HTTPStatus.OK, login_form(csrf), cookies=cookies)
        elif path == "/":
            if user is None:
                self._redirect("/login", cookies)
                return
            notes = self.app.store.notes(user["u"])
            self._send(HTTPStatus.OK, notes_page(user["n"], csrf, notes), cookies=cookies)
        else:
            self._send(HTTPStatus.NOT_FOUND, page("Not found", "<h1>Not found</h1>"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        form = self._form()
        if form is None:
            self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, page("Too large", "<h1>Too large</h1>"))
            return
        token = self._cookie(CSRF_COOKIE)
        sent = form.get("csrf", "")
        if not token or not hmac.compare_digest(token.encode(), sent.encode()):
            body = page("Forbidden", "<h1>The form expired</h1><p><a href='/'>Try again</a></p>")
            self._send(HTTPStatus.FORBIDDEN, body)
            return
        if path == "/login":
            self._login(form, token)
            return
        user = self._user()
        if user is None:
            self._redirect("/login")
            return
        if path == "/logout":
            self._redirect("/login", [(SESSION_COOKIE, "", 0)])
        elif path == "/notes":
            title = form.get("title", "").strip()[:MAX_TITLE]
            note = form.get("body", "")[:MAX_NOTE]
            if title:
                self.app.store.add(user["u"], title, note)
            self._redirect("/")
        elif m := NOTE_PATH.fullmatch(path):
            self.app.store.delete(user["u"], int(m.group(1)))
            self._redirect("/")
        else:
            self._send(HTTPStatus.NOT_FOUND, page("Not found", "<h1>Not found</h1>"))

    def _login(self, form: dict[str, str], csrf: str) -> None:
        username = form.get("username", "").strip()
        try:
            user = self.app.ldap.check(username, form.get("password", ""))
        except (LDAPException, RuntimeError, OSError) as e:
            print(f"notes: sign-in failed: {e}", file=sys.stderr)
            body = login_form(csrf, "Sign-in is unavailable right now; try again later.", username)
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, body)
            return
        if user is None:
            body = login_form(csrf, "Wrong username or password.", username)
            self._send(HTTPStatus.UNAUTHORIZED, body)
            return
        self._redirect("/", [(SESSION_COOKIE, self.app.sessions.make(user), SESSION_SECONDS)])


class Server(ThreadingHTTPServer):
    """A thread per connection, none waited for at exit."""

    daemon_threads = True
    # the listen backlog (socketserver's is 5): a proxy opening its pool of connections at
    # once (the edge keeps up to 32) would otherwise see some dropped and retried after 1 s
    request_queue_size = 128


def main() -> None:
    cfg = Config.from_env()
    Handler.app = App(cfg)
    server = Server(("0.0.0.0", 8080), Handler)  # noqa: S104 (container port)

    def stop(signum: int, _frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("notes: listening on port 8080", file=sys.stderr)
    server.serve_forever()
    server.server_close()
    Handler.app.store.pool.closeall()


if __name__ == "__main__":
    main()
