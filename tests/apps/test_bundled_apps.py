"""The bundled catalog for real: each app built from its directory on the base image, run under
the container rules of services/apps/DESIGN.md, and used over HTTP as a person would.

Notes and DokuWiki sign in through the identity service's LDAP endpoint and Notes keeps its
notes in a Postgres of its own; both servers listen on the gateway address of the test's
Docker network, the way the platform's addons listen on the services network. Roundcube signs
people in to real Postfix, Dovecot and rspamd (tests/mail/serverskit.py) listening there the
way the mail service's listener for apps does, and is used in a browser.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import re
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import docker
import docker.errors
import pytest
from playwright.async_api import Page, expect

from deploy.embedded import EmbeddedError, PostgresServer
from services.apps.base_image import BaseImageError, ensure_base_image
from tests.dashboard.browserkit import chromium, shot
from tests.identity.kit import ADMIN, running_identity
from tests.mail.serverskit import ALICE, BOB, MailStack, servers_missing
from tests.mail.serverskit import DOMAIN as MAIL_DOMAIN
from tests.support.pdns import PdnsServer
from tests.support.servers import need_server, started

pytestmark = pytest.mark.asyncio(loop_scope="function")

BUNDLED = Path(__file__).resolve().parents[2] / "services" / "apps" / "bundled"
APPS = {
    "static": BUNDLED / "org.homeport.static" / "1.0.0",
    "dokuwiki": BUNDLED / "org.dokuwiki" / "2022.7.31",
    "notes": BUNDLED / "org.homeport.notes" / "1.0.0",
    "notes-1.0.1": BUNDLED / "org.homeport.notes" / "1.0.1",
    "roundcube": BUNDLED / "net.roundcube" / "1.6.5",
}
# kept between runs, like the test dockerd's image cache, so only the first run debootstraps
BASE_CACHE = Path("/var/lib/homeport-test/base-image-cache")
BUILD_TIMEOUT = 1800  # a cold machine: debootstrap plus apt in three builds
PREFIX = "hpbndl"


def manifest(app: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((APPS[app] / "manifest.json").read_text())
    return data


def image_tag(app: str) -> str:
    m = manifest(app)
    return f"homeport-app/{m['id']}:{m['version']}"


@pytest.fixture(scope="session")
def images(docker_host: str) -> dict[str, str]:
    """Every bundled app's image, built as the runtime does: base image, then `docker build`."""
    BASE_CACHE.mkdir(parents=True, exist_ok=True)
    client = docker.DockerClient(base_url=docker_host, version="auto", timeout=BUILD_TIMEOUT)
    # both xdist workers get here; one builds while the other waits, then finds the cache
    with open(BASE_CACHE / "tests-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            asyncio.run(ensure_base_image(docker_host, BASE_CACHE))
            tags = {}
            for app, path in APPS.items():
                tag = image_tag(app)
                started = time.monotonic()
                # the build reaches the Debian mirror through the host's network
                client.images.build(
                    path=str(path), tag=tag, network_mode="host", rm=True, forcerm=True
                )
                print(f"built {tag} in {time.monotonic() - started:.1f}s")
                tags[app] = tag
        except docker.errors.BuildError as e:
            log = "".join(str(c.get("stream", c.get("error", ""))) for c in e.build_log)
            pytest.fail(f"docker build failed: {e}\n{log[-3000:]}", pytrace=False)
        except (BaseImageError, docker.errors.DockerException) as e:
            need_server("docker images", e)
        finally:
            client.close()
    return tags


@dataclass
class Net:
    name: str
    gateway: str
    subnet: str


@pytest.fixture
def net(docker_client: docker.DockerClient) -> Iterator[Net]:
    """A bridge network of this test; servers for the app listen on its gateway address."""
    network = docker_client.networks.create(f"{PREFIX}-{uuid.uuid4().hex[:10]}", driver="bridge")
    try:
        network.reload()
        ipam = network.attrs["IPAM"]["Config"][0]
        yield Net(network.name, ipam["Gateway"], ipam["Subnet"])
    finally:
        network.remove()


class App:
    """One app container under the rules of DESIGN.md, with its data volume."""

    def __init__(self, client: docker.DockerClient, app: str, net: Net, env: dict[str, str]):
        self.client = client
        self.app = app
        self.net = net
        self.env = env
        self.name = f"{PREFIX}-{app}-{uuid.uuid4().hex[:10]}"
        self.volume = client.volumes.create(self.name)
        self.container: Any = None
        self.port = 0

    def _start(self) -> None:
        m = manifest(self.app)
        self.container = self.client.containers.run(
            image_tag(self.app),
            name=self.name,
            detach=True,
            network=self.net.name,
            read_only=True,
            tmpfs={"/tmp": "", "/run": ""},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            user="1000:1000",
            mem_limit=m["memoryLimit"],
            pids_limit=256,
            volumes={self.volume.name: {"bind": "/app/data", "mode": "rw"}},
            environment=self.env,
            ports={f"{m['httpPort']}/tcp": ("127.0.0.1", None)},
        )
        self._read_port()

    def _read_port(self) -> None:
        self.container.reload()
        binding = self.container.attrs["NetworkSettings"]["Ports"][
            f"{manifest(self.app)['httpPort']}/tcp"
        ]
        self.port = int(binding[0]["HostPort"])

    def _restart(self) -> None:
        self.container.restart(timeout=10)
        self._read_port()

    def logs(self) -> str:
        return self.container.logs(tail=40).decode(errors="replace") if self.container else ""

    def _remove(self) -> None:
        if self.container is not None:
            self.container.remove(force=True)
        self.volume.remove(force=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        await asyncio.to_thread(self._start)
        await self.healthy()

    async def restart(self) -> None:
        await asyncio.to_thread(self._restart)
        await self.healthy()

    async def healthy(self, deadline_s: float = 90) -> None:
        """Wait until the manifest's health check answers 200, as the platform would."""
        path = manifest(self.app)["healthCheckPath"]
        end = time.monotonic() + deadline_s
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < end:
                await asyncio.to_thread(self.container.reload)
                if self.container.status == "exited":
                    break
                try:
                    async with http.get(self.url + path) as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.5)
        raise AssertionError(f"{self.app} not healthy on {path}; logs:\n{self.logs()}")

    async def remove(self) -> None:
        await asyncio.to_thread(self._remove)


@pytest.fixture
async def run_app(
    images: dict[str, str], docker_client: docker.DockerClient, net: Net
) -> AsyncIterator[Any]:
    started: list[App] = []

    async def run(app: str, env: dict[str, str] | None = None) -> App:
        a = App(docker_client, app, net, env or {})
        started.append(a)
        await a.start()
        return a

    yield run
    for a in started:
        await a.remove()


def browser() -> aiohttp.ClientSession:
    # cookies of a bare IP address are kept only with unsafe=True
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=30)
    )


# -- the servers Notes and DokuWiki use --------------------------------------------------------


@pytest.fixture
def app_pg(tmp_root: Path, net: Net) -> Iterator[PostgresServer]:
    """A Postgres for the app's database, on loopback and the network's gateway; the network's
    subnet may log in with a password, like the addon Postgres."""
    datadir = tmp_root / f"app-pg-{uuid.uuid4().hex[:8]}"
    datadir.mkdir(mode=0o755)
    hba = datadir / "pg_hba.conf"
    hba.write_text(
        "local all all trust\n"
        "host all postgres 127.0.0.1/32 trust\n"
        f"host all all {net.subnet} scram-sha-256\n"
    )
    hba.chmod(0o644)
    server = PostgresServer(datadir, fsync=False, listen=("127.0.0.1", net.gateway), hba_file=hba)
    yield from started(server, "postgres", EmbeddedError)


@pytest.fixture
async def platform(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path, net: Net
) -> AsyncIterator[Any]:
    """The identity service with its LDAP endpoint on the gateway address, and its admin set up."""
    env = {"HP_LDAP_HOST": net.gateway, "HP_LDAP_PORT": "0"}
    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, env=env
    ) as ident:
        await ident.set_up()
        yield ident


async def ldap_env(ident: Any, app_id: str) -> dict[str, str]:
    reply = await ident.cmd(
        "ldap_register_app",
        {"app_id": app_id, "access": {"all_users": True}},
        actor="system",
    )
    return {
        "HOMEPORT_APP_ID": str(uuid.uuid4()),
        "HOMEPORT_LDAP_HOST": reply["host"],
        "HOMEPORT_LDAP_PORT": str(reply["port"]),
        "HOMEPORT_LDAP_URL": f"ldap://{reply['host']}:{reply['port']}",
        "HOMEPORT_LDAP_BIND_DN": reply["bind_dn"],
        "HOMEPORT_LDAP_BIND_PASSWORD": reply["password"],
        "HOMEPORT_LDAP_USERS_BASE_DN": reply["users_dn"],
        "HOMEPORT_LDAP_GROUPS_BASE_DN": reply["groups_dn"],
    }


async def pg_env(server: PostgresServer, gateway: str) -> dict[str, str]:
    name, password = f"app_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    admin = await asyncpg.connect(server.dsn)
    try:
        await admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        await admin.execute(f"CREATE DATABASE {name} OWNER {name}")
    finally:
        await admin.close()
    return {
        "HOMEPORT_POSTGRESQL_HOST": gateway,
        "HOMEPORT_POSTGRESQL_PORT": str(server.port),
        "HOMEPORT_POSTGRESQL_DATABASE": name,
        "HOMEPORT_POSTGRESQL_USERNAME": name,
        "HOMEPORT_POSTGRESQL_PASSWORD": password,
        "HOMEPORT_POSTGRESQL_URL": f"postgresql://{name}:{password}@{gateway}:{server.port}/{name}",
    }


def field(html: str, name: str) -> str:
    m = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', html)
    assert m, f"no form field {name} in:\n{html[:2000]}"
    return m.group(1)


# -- the tests ---------------------------------------------------------------------------------


@pytest.mark.timeout(BUILD_TIMEOUT + 120)
async def test_static_site_serves_welcome_then_the_users_page(run_app: Any) -> None:
    site = await run_app("static")
    async with browser() as http:
        async with http.get(site.url + "/") as r:
            assert r.status == 200
            assert "Welcome to your website" in await r.text()

        page = b"<!doctype html><title>Mine</title><h1>My own page</h1>\n"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("index.html")
            info.size, info.uid, info.gid, info.mode = len(page), 1000, 1000, 0o644
            tar.addfile(info, io.BytesIO(page))
        put = site.container.put_archive
        assert await asyncio.to_thread(put, "/app/data/www", buf.getvalue())

        async with http.get(site.url + "/") as r:
            assert r.status == 200
            body = await r.text()
        assert "My own page" in body
        assert "Welcome to your website" not in body
        async with http.get(site.url + "/nothing-here.html") as r:
            assert r.status == 404


@pytest.mark.timeout(BUILD_TIMEOUT + 120)
async def test_notes_sign_in_write_restart_keep(
    run_app: Any, platform: Any, app_pg: PostgresServer, net: Net
) -> None:
    env = await ldap_env(platform, f"notes-{uuid.uuid4().hex[:8]}")
    env |= await pg_env(app_pg, net.gateway)
    env["HOMEPORT_APP_ORIGIN"] = "http://notes.example.test"
    notes = await run_app("notes", env)
    user, password = ADMIN["username"], ADMIN["password"]
    async with browser() as http:
        async with http.get(notes.url + "/") as r:
            assert r.status == 200 and str(r.url).endswith("/login")
            csrf = field(await r.text(), "csrf")

        form = {"csrf": csrf, "username": user, "password": password + "x"}
        async with http.post(notes.url + "/login", data=form) as r:
            assert r.status == 401
            assert "Wrong username or password" in await r.text()

        form = {"csrf": "forged", "username": user, "password": password}
        async with http.post(notes.url + "/login", data=form) as r:
            assert r.status == 403

        form = {"csrf": csrf, "username": user, "password": password}
        async with http.post(notes.url + "/login", data=form) as r:
            assert r.status == 200 and str(r.url).endswith("/")
            text = await r.text()
            assert "No notes yet" in text and "Sign out" in text

        note = {"csrf": csrf, "title": "Groceries <b>now</b>", "body": "milk & eggs"}
        async with http.post(notes.url + "/notes", data=note) as r:
            assert r.status == 200
            text = await r.text()
        assert "Groceries &lt;b&gt;now&lt;/b&gt;" in text and "milk &amp; eggs" in text

    await notes.restart()
    async with browser() as http:
        # a fresh browser sees nothing
        async with http.get(notes.url + "/") as r:
            assert str(r.url).endswith("/login")
            assert "Groceries" not in await r.text()
            csrf = field(await r.text(), "csrf")
        form = {"csrf": csrf, "username": user, "password": password}
        async with http.post(notes.url + "/login", data=form) as r:
            assert r.status == 200
            assert "Groceries &lt;b&gt;now&lt;/b&gt;" in await r.text()


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer read off a raw connection: status, headers (lower-case), body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {k.strip().lower(): v.strip() for k, v in (x.split(":", 1) for x in lines)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return int(status_line.split()[1]), headers, body


@pytest.mark.timeout(BUILD_TIMEOUT + 120)
async def test_notes_1_0_1_answers_several_requests_on_one_connection(
    run_app: Any, app_pg: PostgresServer, net: Net
) -> None:
    env = await pg_env(app_pg, net.gateway)
    # only signing in talks to LDAP: the sign-in page needs none
    env |= {
        "HOMEPORT_LDAP_HOST": net.gateway,
        "HOMEPORT_LDAP_PORT": "389",
        "HOMEPORT_LDAP_BIND_DN": "cn=unused",
        "HOMEPORT_LDAP_BIND_PASSWORD": "unused",
        "HOMEPORT_LDAP_USERS_BASE_DN": "ou=users,dc=unused",
    }
    notes = await run_app("notes-1.0.1", env)
    reader, writer = await asyncio.open_connection("127.0.0.1", notes.port)
    try:
        get = b"GET /login HTTP/1.1\r\nHost: notes.example.test\r\n\r\n"
        for _ in range(2):
            writer.write(get)
            status, headers, body = await _answer(reader)
            assert status == 200 and b"Sign in" in body
            assert headers.get("connection") != "close"
        # an answer comes at once, not after the client's delayed ACK of its headers (40 ms)
        took = []
        for _ in range(20):
            t0 = time.monotonic()
            writer.write(get)
            await _answer(reader)
            took.append(time.monotonic() - t0)
        assert sorted(took)[10] < 0.03, [round(t * 1000, 1) for t in took]
        # two requests sent at once are answered in order on the same connection
        writer.write(get + b"GET /nothing HTTP/1.1\r\nHost: notes.example.test\r\n\r\n")
        assert (await _answer(reader))[0] == 200
        assert (await _answer(reader))[0] == 404
        # a body it does not read (too large) ends the connection, and says so
        writer.write(
            b"POST /login HTTP/1.1\r\nHost: notes.example.test\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\n"
            + get  # would be taken for a request if the connection stayed open
        )
        status, headers, _ = await _answer(reader)
        assert status == 413 and headers["connection"] == "close"
        try:  # closed: an end of stream, or a reset for the bytes it left unread
            rest = await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:
            rest = b""
        assert rest == b""
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.timeout(BUILD_TIMEOUT + 120)
async def test_dokuwiki_ldap_sign_in_edit_restart_keep(run_app: Any, platform: Any) -> None:
    env = await ldap_env(platform, f"wiki-{uuid.uuid4().hex[:8]}")
    wiki = await run_app("dokuwiki", env)
    user, password = ADMIN["username"], ADMIN["password"]
    page_id = f"homeport_{uuid.uuid4().hex[:8]}"
    text = f"Hello from the wiki test {page_id}"

    async def sign_in(http: aiohttp.ClientSession, pw: str) -> str:
        async with http.get(wiki.url + "/doku.php?id=start&do=login") as r:
            assert r.status == 200
            sectok = field(await r.text(), "sectok")
        form = {"sectok": sectok, "id": "start", "do": "login", "u": user, "p": pw}
        async with http.post(wiki.url + "/doku.php?id=start", data=form) as r:
            return await r.text()

    async with browser() as http:
        refused = await sign_in(http, password + "x")
        assert "username or password was wrong" in refused
        assert "do=logout" not in refused

        signed_in = await sign_in(http, password)
        assert "do=logout" in signed_in, signed_in[:3000]

        async with http.get(wiki.url + f"/doku.php?id={page_id}&do=edit") as r:
            assert r.status == 200
            editor = await r.text()
        form_html = editor[editor.index('id="dw__editform"') :]
        form_html = form_html[: form_html.index("</form>")]
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form_html))
        assert "sectok" in fields
        fields |= {"wikitext": text, "summary": "test", "do[save]": "1"}
        async with http.post(wiki.url + "/doku.php", data=fields) as r:
            assert r.status == 200
        async with http.get(wiki.url + f"/doku.php?id={page_id}") as r:
            assert text in await r.text()

    await wiki.restart()
    async with browser() as http:
        async with http.get(wiki.url + f"/doku.php?id={page_id}") as r:
            assert text not in await r.text()  # a closed wiki: signed-in users only
        assert "do=logout" in await sign_in(http, password)
        async with http.get(wiki.url + f"/doku.php?id={page_id}") as r:
            assert r.status == 200
            assert text in await r.text()


# -- Roundcube: webmail on the mail servers ----------------------------------------------------


@pytest.fixture
def webmail_servers(tmp_root: Path, pdns: PdnsServer, net: Net) -> Iterator[MailStack]:
    """Postfix, Dovecot and rspamd with the listeners the mail service gives apps, on the test
    network's gateway, and that network trusted as a mail client's (the `mailclient` addon)."""
    missing = servers_missing()
    if missing:
        need_server("mail servers", RuntimeError(missing))
    root = Path(tempfile.mkdtemp(prefix="mail-", dir=tmp_root))
    stack = MailStack(
        root,
        f"127.0.0.1:{pdns.dns_port}",
        f"bl{uuid.uuid4().hex[:10]}.test",
        apps_listen=(net.gateway,),
        client_networks=(net.subnet,),
    )
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


def webmail_env(stack: MailStack, gateway: str) -> dict[str, str]:
    """What the `mailclient` addon gives an app (services/apps/operations/install.py)."""
    s = stack.settings
    return {
        "HOMEPORT_MAIL_IMAP_HOST": gateway,
        "HOMEPORT_MAIL_IMAP_PORT": str(s.apps_imap_port),
        "HOMEPORT_MAIL_SUBMISSION_HOST": gateway,
        "HOMEPORT_MAIL_SUBMISSION_PORT": str(s.apps_port),
        "HOMEPORT_MAIL_SIEVE_HOST": gateway,
        "HOMEPORT_MAIL_SIEVE_PORT": str(s.apps_sieve_port),
        "HOMEPORT_MAIL_DOMAIN": MAIL_DOMAIN,
    }


async def _compose(page: Page, to: str, subject: str, body: str) -> None:
    await page.goto("/?_task=mail&_action=compose")
    recipient = page.locator("#compose_to input[type=text]").first
    await recipient.fill(to, timeout=30_000)
    await page.locator("#compose-subject").fill(subject)
    await page.locator("#composebody").fill(body)
    await page.get_by_role("button", name="Send").first.click()
    # Once the message is sent, Roundcube says so for half a second and goes back to the
    # message list by itself; a refused send stays on the form with its error. So the way back
    # is what is waited for (on a loaded machine the page was back before "Message sent
    # successfully" was looked for), and the caller checks the delivery itself. A page opened
    # before that would be cut off by that navigation (net::ERR_ABORTED), and one opened while
    # the list still loads waits for it (the session is locked meanwhile).
    await page.wait_for_url(lambda url: "_action=compose" not in url, timeout=30_000)
    await expect(page.locator("#messagelist")).to_be_attached(timeout=30_000)
    await page.wait_for_load_state("networkidle", timeout=30_000)


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
async def test_roundcube_signs_in_sends_and_keeps_a_sieve_filter(
    run_app: Any, app_pg: PostgresServer, net: Net, webmail_servers: MailStack
) -> None:
    stack = webmail_servers
    env = await pg_env(app_pg, net.gateway) | webmail_env(stack, net.gateway)
    rc = await run_app("roundcube", env)
    # only index.php runs: plugins' PHP, their settings and dot files are not served
    async with browser() as http:
        for path in (
            "/plugins/homeport/homeport.php",
            "/plugins/managesieve/config.inc.php",
            "/plugins/managesieve/managesieve.php",
            "/.htaccess",
            "/program/js/../../config/config.inc.php",
        ):
            async with http.get(rc.url + path) as r:
                body = await r.text()
                assert r.status in (403, 404), (path, r.status)
                assert "<?php" not in body and "des_key" not in body, path
    tag = uuid.uuid4().hex[:8]
    filtered = f"webmail filtered {tag}"
    async with chromium(rc.url) as kit:
        ctx = await kit.context()
        # the edge sets X-Real-IP to the browser's address: Roundcube names it to Dovecot
        await ctx.set_extra_http_headers({"X-Real-IP": "203.0.113.9"})
        page = await ctx.new_page()
        await page.goto("/")
        await page.locator("#rcmloginuser").fill(ALICE.login)
        await page.locator("#rcmloginpwd").fill(ALICE.password + "x")
        await page.locator("#rcmloginsubmit").click()
        await expect(page.get_by_text("Login failed")).to_be_visible(timeout=20_000)
        # the failure counts against the person's address, not the webmail's
        refused = [c for c in stack.auth.calls if c["user"] == ALICE.login]
        assert refused and refused[-1]["ip"] == "203.0.113.9", stack.auth.calls

        await page.locator("#rcmloginuser").fill(ALICE.login)
        await page.locator("#rcmloginpwd").fill(ALICE.password)
        await page.locator("#rcmloginsubmit").click()
        await expect(page.locator("#messagelist")).to_be_attached(timeout=30_000)

        # a filter made in Settings → Filters (ManageSieve): this subject goes to Trash
        await page.goto("/?_task=settings&_action=plugin.managesieve")
        await page.get_by_role("button", name="Create").first.click()
        form = page.frame_locator("#filter-box")
        await form.locator("input[name=_name]").fill(f"webmail test {tag}")
        await form.locator("input[name='_rule_target[0][]']").fill(filtered)
        await form.locator("select[name='_action_type[0]']").select_option("fileinto")
        await form.locator("select[name='_action_mailbox[0]']").select_option("Trash")
        await form.get_by_role("button", name="Save").click()
        await expect(page.get_by_text("Filter saved successfully")).to_be_visible(timeout=20_000)

        await _compose(page, BOB.address, f"webmail to bob {tag}", "from the browser")
        await _compose(page, ALICE.address, filtered, "to be filed")
        await shot(page, "roundcube-sent")

    bobs = await asyncio.to_thread(stack.fetch, BOB, f"webmail to bob {tag}")
    assert b"from the browser" in bobs[0]
    assert f"From: {ALICE.address}".encode() in bobs[0] or ALICE.address.encode() in bobs[0]
    filed = await asyncio.to_thread(_subjects, stack, "Trash")
    assert filtered in filed, filed


def _subjects(stack: MailStack, folder: str, deadline: float = 30) -> list[str]:
    """Alice's subjects in `folder`, once there is one."""
    end = time.monotonic() + deadline
    box = stack.imap(ALICE)
    try:
        while True:
            box.select(folder, readonly=True)
            _, found = box.search(None, "ALL")
            out = []
            for num in found[0].split():
                _, data = box.fetch(num, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                part = data[0]
                assert isinstance(part, tuple)
                out.append(bytes(part[1]).decode().split(":", 1)[1].strip())
            if out or time.monotonic() > end:
                return out
            time.sleep(0.3)
    finally:
        box.logout()
