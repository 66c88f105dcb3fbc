"""The edge through a real nginx: what a browser, curl or an attacker would see."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from services.gateway.edge import EdgeError, Nginx
from tests.support.nginx import (
    BLOG,
    MY,
    Edge,
    Pki,
    decode,
    nginx_binary,
    raw_http,
    session,
    tls_handshake,
)

WIKI = "wiki.example.test"
HSTS = "max-age=31536000; includeSubDomains"


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def _s_client(edge: Edge, *args: str) -> tuple[int, str]:
    return await _run(
        "openssl", "s_client", "-connect", f"127.0.0.1:{edge.https_port}", "-brief", *args
    )


# -- HTTPS to the upstream ------------------------------------------------------------------


async def test_https_reaches_the_upstream_with_security_headers(edge: Edge) -> None:
    async with session(edge.pki) as http:
        spoof = {"X-Real-IP": "6.6.6.6", "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "http"}
        async with http.get(edge.url(BLOG, "/some/page?q=1"), headers=spoof) as r:
            assert r.status == 200
            seen = decode(await r.read())
            assert r.headers["Strict-Transport-Security"] == HSTS
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
            assert r.headers.getall("X-Frame-Options") == ["SAMEORIGIN"]
            assert "Content-Security-Policy" not in r.headers
        # an app's own X-Frame-Options is replaced, not doubled
        async with http.get(edge.url(BLOG, "/framed")) as r:
            assert r.status == 200
            assert r.headers.getall("X-Frame-Options") == ["SAMEORIGIN"]
    h = seen["headers"]
    assert seen["path"] == "/some/page?q=1"
    assert h["host"] == BLOG
    assert h["x-real-ip"] == "127.0.0.1"
    assert h["x-forwarded-for"] == "127.0.0.1"
    assert h["x-forwarded-proto"] == "https"
    assert h["x-forwarded-host"] == f"{BLOG}:{edge.https_port}"


async def test_requests_are_logged_within_a_second_without_their_query(edge: Edge) -> None:
    """The access log is written in blocks (at the latest each second): a request shows there
    soon, with its path but never its query string (it may carry a reset token)."""
    log = edge.model.log_dir / "access.log"
    marker = f"/logged/{uuid.uuid4().hex}"
    async with (
        session(edge.pki) as http,
        http.get(edge.url(BLOG, f"{marker}?token=very-secret-token")) as r,
    ):
        assert r.status == 200
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(x) for x in log.read_text().splitlines() if marker in x]
        if lines:
            break
        assert time.monotonic() < deadline, "the request was not logged within 5 s"
        await asyncio.sleep(0.1)
    assert [(x["path"], x["status"], x["host"]) for x in lines] == [(marker, 200, BLOG)]
    assert "very-secret-token" not in log.read_text()


async def test_curl_with_the_test_ca(edge: Edge) -> None:
    """What the end-to-end test does: curl --resolve, the CA, the host as SNI."""
    port = edge.https_port
    code, out = await _run(
        "curl", "-sS", "-D", "-", "-o", "/dev/null",
        "--resolve", f"{BLOG}:{port}:127.0.0.1", "--cacert", str(edge.pki.ca),
        f"https://{BLOG}:{port}/",
    )  # fmt: skip
    assert code == 0, out
    lines = [x.strip().lower() for x in out.splitlines()]
    assert lines[0].split()[1] == "200"
    assert f"strict-transport-security: {HSTS}".lower() in lines


async def test_dashboard_headers(edge: Edge) -> None:
    async with session(edge.pki) as http, http.get(edge.url(MY, "/")) as r:
        assert r.status == 200
        assert r.headers["Strict-Transport-Security"] == HSTS
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["Cross-Origin-Resource-Policy"] == "same-origin"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
        csp = r.headers["Content-Security-Policy"]
    directives = {d.strip().split(" ", 1)[0]: d.strip() for d in csp.split(";")}
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert directives["object-src"] == "object-src 'none'"
    assert directives["base-uri"] == "base-uri 'none'"
    assert directives["frame-ancestors"] == "frame-ancestors 'none'"


async def test_an_app_with_an_embedding_setting_gets_frame_ancestors(edge: Edge) -> None:
    wiki = edge.vhost(WIKI, frame_ancestors="'self' https://portal.example.test")
    await edge.nginx.apply(edge.with_vhosts(*edge.model.vhosts, wiki))
    async with session(edge.pki) as http, http.get(edge.url(WIKI, "/framed")) as r:
        assert r.status == 200
        policy = "frame-ancestors 'self' https://portal.example.test"
        assert r.headers["Content-Security-Policy"] == policy
        assert "X-Frame-Options" not in r.headers  # the app's ALLOWALL is hidden too


# -- plain HTTP -----------------------------------------------------------------------------


async def test_http_redirects_to_https_on_the_same_host_port_path_and_query(edge: Edge) -> None:
    for host in (BLOG, MY):
        req = f"GET /same/path?q=1&r=%2F HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        head = (await raw_http(edge.http_port, req.encode())).split(b"\r\n\r\n")[0].decode()
        assert head.startswith("HTTP/1.1 301 ")
        location = f"https://{host}:{edge.https_port}/same/path?q=1&r=%2F"
        assert f"\r\nLocation: {location}\r\n" in head + "\r\n"
    async with session(edge.pki) as http:
        # following it lands on the app over HTTPS
        async with http.get(f"http://{BLOG}:{edge.http_port}/x?y=2") as r:
            assert r.status == 200
            assert str(r.url) == edge.url(BLOG, "/x?y=2")


async def test_http_answers_acme_challenges_from_the_acme_dir(edge: Edge) -> None:
    token = "Xk2_m-9AbCdEf0123456789"
    (edge.acme_dir / token).write_text(f"{token}.thumbprint")
    (edge.acme_dir / token).chmod(0o644)
    outside = edge.acme_dir.parent / "secret.txt"
    outside.write_text("not for the world")
    outside.chmod(0o644)
    (edge.acme_dir / "linked").symlink_to(outside)
    async with session(edge.pki) as http:
        for host in (BLOG, MY):
            base = f"http://{host}:{edge.http_port}/.well-known/acme-challenge/"
            async with http.get(base + token, allow_redirects=False) as r:
                assert r.status == 200
                assert await r.text() == f"{token}.thumbprint"
                assert "Location" not in r.headers
            async with http.get(base + "missing-token", allow_redirects=False) as r:
                assert r.status == 404
            async with http.get(base + "linked", allow_redirects=False) as r:
                assert r.status in (403, 404)  # symlinks are not followed
            async with http.get(base + "..%2Fsecret.txt", allow_redirects=False) as r:
                assert r.status in (301, 404)  # normalised out of the challenge location
                assert b"not for the world" not in await r.read()
    # a host without a vhost yet gets the challenge (the CA may check a token before the
    # host's vhost is applied) and nothing else
    req = (
        f"GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: new.example.test\r\n"
        "Connection: close\r\n\r\n"
    )
    got = await raw_http(edge.http_port, req.encode())
    assert got.startswith(b"HTTP/1.1 200") and got.endswith(f"{token}.thumbprint".encode())
    req = "GET / HTTP/1.1\r\nHost: new.example.test\r\nConnection: close\r\n\r\n"
    assert await raw_http(edge.http_port, req.encode()) == b""


# -- unknown hosts --------------------------------------------------------------------------


async def test_unknown_host_is_refused_on_http_and_https(edge: Edge) -> None:
    def req(host: str) -> bytes:
        return f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()

    known = await raw_http(edge.http_port, req(BLOG))
    assert known.startswith(b"HTTP/1.1 301")  # the control: a known host is answered
    for host in ("evil.example.test", "127.0.0.1", f"{BLOG}.evil.test", "example.test"):
        got = await raw_http(edge.http_port, req(host))
        assert got == b"", f"Host {host!r} got an answer: {got[:80]!r}"

    ctx = edge.pki.client_context()
    version, _, _ = await tls_handshake(edge.https_port, BLOG, ctx)
    assert version in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        await tls_handshake(edge.https_port, "evil.example.test", ctx)
    no_sni = ssl.create_default_context(cafile=str(edge.pki.ca))
    no_sni.check_hostname = False
    with pytest.raises(ssl.SSLError):
        await tls_handshake(edge.https_port, None, no_sni)


async def test_sni_of_a_vhost_with_an_unknown_host_header_gets_no_answer(edge: Edge) -> None:
    ctx = edge.pki.client_context()
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", edge.https_port, ssl=ctx, server_hostname=BLOG
    )
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: evil.example.test\r\n\r\n")
        await writer.drain()
        got = await asyncio.wait_for(reader.read(), 10)
    except (ConnectionResetError, ssl.SSLError):
        got = b""
    finally:
        writer.close()
    assert got == b""


# -- TLS ------------------------------------------------------------------------------------


async def test_tls_1_1_is_refused_by_the_server(edge: Edge) -> None:
    sni = ("-servername", BLOG)
    code, out = await _s_client(edge, *sni, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert code != 0
    assert "alert protocol version" in out, out  # the server's alert, not our own refusal
    code, out = await _s_client(edge, *sni, "-tls1_2")  # the control
    assert code == 0 and "Protocol version: TLSv1.2" in out, out


async def test_tls_1_2_cbc_is_refused_and_gcm_accepted(edge: Edge) -> None:
    cbc = edge.pki.client_context()
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA")
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
        await tls_handshake(edge.https_port, BLOG, cbc)
    gcm = edge.pki.client_context()
    gcm.maximum_version = ssl.TLSVersion.TLSv1_2
    gcm.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    version, cipher, sess = await tls_handshake(edge.https_port, BLOG, gcm)
    assert version == "TLSv1.2"
    assert cipher is not None and cipher[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert sess is not None and not sess.has_ticket  # ssl_session_tickets off


async def test_tls_1_3_is_accepted(edge: Edge) -> None:
    ctx = edge.pki.client_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    version, _, _ = await tls_handshake(edge.https_port, BLOG, ctx)
    assert version == "TLSv1.3"


# -- WebSocket and rate limits --------------------------------------------------------------


async def test_websocket_upgrade_through_nginx(edge: Edge) -> None:
    async with (
        session(edge.pki) as http,
        http.ws_connect(f"wss://{BLOG}:{edge.https_port}/ws") as ws,
    ):
        await ws.send_str("hello edge")
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.type == aiohttp.WSMsgType.TEXT
        assert msg.data == "echo: hello edge"


async def _burst(
    http: aiohttp.ClientSession, url: str, n: int, method: str = "POST"
) -> Counter[int]:
    async def one() -> tuple[int, str | None]:
        async with http.request(method, url, data=b"{}") as r:
            await r.read()
            return r.status, r.headers.get("Strict-Transport-Security")

    got = await asyncio.gather(*(one() for _ in range(n)))
    assert all(hsts == HSTS for _, hsts in got)  # 429s carry the headers too
    return Counter(status for status, _ in got)


async def test_password_routes_are_limited_per_ip_and_other_paths_are_not(edge: Edge) -> None:
    async with session(edge.pki) as http:
        general = await _burst(http, edge.url(MY, "/api/v1/apps"), 40)
        assert general == {200: 40}
        limited = await _burst(http, edge.url(MY, "/api/v1/session"), 40)
        assert limited[429] >= 25, limited  # 10 r/s, burst 5: the rest of 40 at once
        assert 1 <= limited[200] <= 15, limited
        # signing out carries no password: right after that burst, none of these is limited
        signed_out = await _burst(http, edge.url(MY, "/api/v1/session"), 20, "DELETE")
        assert signed_out == {200: 20}
        other = await _burst(http, edge.url(MY, "/api/v1/setup/"), 10)
        assert other[429] >= 1, other  # the trailing-slash spelling is limited too
        for checks_password in ("/api/v1/profile/password", "/api/v1/profile/totp/disable"):
            got = await _burst(http, edge.url(MY, checks_password), 20)
            assert got[429] >= 1, (checks_password, got)  # guesses of the current password
        app = await _burst(http, edge.url(BLOG, "/api/v1/session"), 15)
        assert app == {200: 15}  # the dashboard's password routes only


# -- apply ----------------------------------------------------------------------------------


async def _status(edge: Edge, host: str, path: str = "/") -> int:
    async with session(edge.pki) as http, http.get(edge.url(host, path)) as r:
        await r.read()
        return r.status


async def test_a_broken_model_is_refused_and_the_old_config_keeps_serving(edge: Edge) -> None:
    live = os.readlink(edge.nginx.conf_dir)
    missing = edge.acme_dir.parent / "no-such-dir" / "wiki.pem"
    broken = replace(edge.vhost(WIKI), cert=missing)
    with pytest.raises(EdgeError, match=str(missing)) as err:
        await edge.nginx.apply(edge.with_vhosts(*edge.model.vhosts, broken))
    assert "unchanged" in str(err.value)
    assert os.readlink(edge.nginx.conf_dir) == live
    assert await _status(edge, BLOG) == 200
    assert await _status(edge, MY) == 200
    with pytest.raises(aiohttp.ClientError):
        await _status(edge, WIKI)


async def test_a_model_nginx_cannot_load_is_rolled_back(edge: Edge) -> None:
    """nginx -t does not bind ports: a busy port fails only at reload; the old config stays."""
    live = os.readlink(edge.nginx.conf_dir)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        moved = replace(edge.model, http_port=busy.getsockname()[1])
        with pytest.raises(EdgeError, match="bind"):
            await edge.nginx.apply(moved)
    # it answered once nginx gave the reload up, not at its first of five tries: the other
    # tries would land in the next reload's part of the log and fail that one
    assert "still could not bind()" in edge.nginx.error_log.read_text()
    assert os.readlink(edge.nginx.conf_dir) == live
    assert edge.nginx.running
    assert await _status(edge, BLOG) == 200
    req = f"GET / HTTP/1.1\r\nHost: {BLOG}\r\nConnection: close\r\n\r\n"
    assert (await raw_http(edge.http_port, req.encode())).startswith(b"HTTP/1.1 301")
    await edge.nginx.apply(edge.model)  # and a good one applies after it


async def test_a_port_freed_while_nginx_retries_it_is_a_reload_that_worked(edge: Edge) -> None:
    """nginx tries a busy port again for about 2 s: freed meanwhile, the reload succeeds, and
    the edge says so (it is serving the new configuration), not that it failed."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    moved = replace(edge.model, http_port=port)
    applying = asyncio.create_task(edge.nginx.apply(moved))
    try:
        log = edge.nginx.error_log

        def first_try_failed() -> bool:
            return f"bind() to 127.0.0.1:{port} failed" in log.read_text()

        deadline = time.monotonic() + 10
        while not first_try_failed() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert first_try_failed(), "nginx never tried the busy port"
        busy.close()  # free before nginx's next try
        await asyncio.wait_for(applying, 15)
    finally:
        busy.close()
        if not applying.done():
            applying.cancel()
        await asyncio.gather(applying, return_exceptions=True)
    assert "still could not bind()" not in edge.nginx.error_log.read_text()
    req = f"GET / HTTP/1.1\r\nHost: {BLOG}\r\nConnection: close\r\n\r\n"
    assert (await raw_http(port, req.encode())).startswith(b"HTTP/1.1 301")


async def test_adding_a_vhost_keeps_the_others_and_requests_in_flight(edge: Edge) -> None:
    workers_before = edge.nginx.pid
    async with session(edge.pki) as http:
        async with http.get(edge.url(BLOG, "/")) as r:
            assert r.status == 200
        slow = asyncio.create_task(_status(edge, BLOG, "/slow?s=1.5"))
        await asyncio.sleep(0.4)  # the request is inside nginx, waiting on the upstream
        await edge.nginx.apply(edge.with_vhosts(*edge.model.vhosts, edge.vhost(WIKI)))
        assert not slow.done()
        async with http.get(edge.url(WIKI, "/hello")) as r:  # served right after apply
            assert r.status == 200
            assert decode(await r.read())["headers"]["host"] == WIKI
        async with http.get(edge.url(BLOG, "/")) as r:
            assert r.status == 200
        assert await asyncio.wait_for(slow, 10) == 200
    assert edge.nginx.pid == workers_before  # a reload, not a restart


def _group(pid: int) -> list[int]:
    """The live processes of process group `pid` (nginx's master and workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


async def test_stop_leaves_no_nginx_process(edge: Edge) -> None:
    pid = edge.nginx.pid
    assert pid is not None
    await edge.nginx.stop()
    assert not edge.nginx.running
    assert not _group(pid), "nginx processes left after stop"


async def test_a_stop_cancelled_while_requests_finish_leaves_no_nginx(edge: Edge) -> None:
    """A service whose drain runs out cancels the edge while nginx still finishes a request in
    flight (graceful quit): nginx must not outlive it (CI saw it left running)."""
    pid = edge.nginx.pid
    assert pid is not None
    started = time.monotonic()
    slow = asyncio.create_task(_status(edge, BLOG, "/slow?s=2"))
    await asyncio.sleep(0.4)  # inside nginx, waiting on the upstream
    stopping = asyncio.create_task(edge.nginx.stop())
    await asyncio.sleep(0.4)  # SIGQUIT sent; nginx waits for the request
    assert _group(pid), "nginx quit before its request was done"
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    deadline = time.monotonic() + 5
    while _group(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not _group(pid), "nginx processes left after a cancelled stop"
    assert time.monotonic() - started < 2, "killed only once the request was done"
    await asyncio.gather(slow, return_exceptions=True)
    await asyncio.sleep(max(0.0, started + 2.2 - time.monotonic()))  # the upstream's answer


async def test_start_without_a_config_and_a_mismatched_model_are_refused(
    edge_root: Path, pki: Pki
) -> None:
    nginx = Nginx(edge_root / "other", binary=nginx_binary())
    with pytest.raises(EdgeError, match="apply"):
        await nginx.start()
    from tests.support.nginx import build_model

    model = replace(build_model(nginx, edge_root, pki, ()), log_dir=edge_root / "elsewhere")
    with pytest.raises(EdgeError, match="log_dir"):
        await nginx.apply(model)
