"""schemathesis against /api/v1/openapi.json of a running gateway with the real identity service:
no answer is a 5xx, none breaks its declared schema, status code or content type."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.e2e.kit import running_platform
from tests.identity.kit import ADMIN
from tests.support.servers import need_server

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    )
)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_no_5xx_and_no_answer_off_its_schema(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    docker_host: str,
) -> None:
    if not SCHEMATHESIS.exists() and shutil.which("schemathesis") is None:
        need_server("schemathesis", FileNotFoundError("schemathesis is not installed"))
    async with running_platform(
        monkeypatch,
        dsn=dsn,
        nats_url=nats_url,
        uniq=uniq,
        tmp_path=tmp_path,
        docker_host=docker_host,
    ) as p:
        setup = await p.client.call("POST", "/api/v1/setup", body=p.identity.setup_body(ADMIN))
        assert setup.status == 201, setup.body
        login = await p.client.call(
            "POST",
            "/api/v1/session",
            body={"username": ADMIN["username"], "password": ADMIN["password"]},
        )
        assert login.status == 200, login.body
        cookie = login.headers["Set-Cookie"].split(";", 1)[0]
        report = tmp_path / "schemathesis.json"
        proc = await asyncio.create_subprocess_exec(
            str(SCHEMATHESIS),
            "run",
            f"{p.client.base}/api/v1/openapi.json",
            "--checks",
            CHECKS,
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--exclude-operation-id",
            "logout",  # it would end the session the run is authenticated with (so would these:)
            "--exclude-operation-id",
            "set_mfa_policy",  # requiring admin TOTP would confine the run's admin to enrolling
            "--exclude-operation-id",
            "revoke_session",  # it finds the run's own session in GET /profile/sessions
            "--generation-with-security-parameters",
            "false",
            "--workers",
            "1",
            "--no-color",
            "--generation-database",
            "none",
            "--report",
            "ndjson",
            "--report-ndjson-path",
            str(report),
            "-H",
            f"Cookie: {cookie}",
            "-H",  # what a browser sends with the cookie (a cookie alone is refused on changes)
            "Sec-Fetch-Site: same-origin",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
        )
        out, _ = await proc.communicate()
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text[-6000:]
        # the credentials held for the whole run: operations were reached, not just refused
        assert "Authentication failed" not in text, text[-4000:]
        # it really exercised the API: every operation was tested
        doc = await p.client.call("GET", "/api/v1/openapi.json")
        operations = sum(len(methods) for methods in doc.body["paths"].values())
        assert operations >= 10
        assert "No operations" not in text, text[-2000:]
        assert json.loads(report.read_text().splitlines()[0])  # the report was written
