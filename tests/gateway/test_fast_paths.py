"""The gateway's per-request shortcuts (issue 20) answer exactly as the long ways they replace."""

from __future__ import annotations

import json
import math
import uuid

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.events.envelope import uuid7_str
from services.gateway.api.app import _json
from services.gateway.api.auth import SESSION_COOKIE, Credentials, Via, credentials_of
from services.gateway.api.inputs import _UNFIT, _fit
from services.gateway.api.principals import credential_key
from services.gateway.api.problems import CORRELATION_ID
from services.gateway.api.security import HSTS, ApiResponse, api_response, response_headers

# Pieces a Cookie header is made of, the odd ones included: quotes, backslashes, spaces, tabs,
# a name alone, "$" names, commas, our name with and without a value, twice.
_PIECES = st.sampled_from(
    [SESSION_COOKIE, f"{SESSION_COOKIE}=", "=", ";", "; ", " ", "\t", '"', "\\", ",", "$",
     "a", "a=b", "tok-1_.~", "x=y=z", "; a=b; ", "%22", "ümlaut"]
)  # fmt: skip


def _long_way(header: str) -> Credentials | None:
    """What credentials_of gave before the shortcut: aiohttp's parse of every cookie."""
    value = make_mocked_request("GET", "/", headers={"Cookie": header}).cookies.get(SESSION_COOKIE)
    if value is None:
        return None
    if not value or len(value) > 512 or any(not 0x21 <= ord(c) <= 0x7E for c in value):
        return Credentials(Via.session, malformed=True)
    return Credentials(Via.session, value)


@settings(max_examples=800, deadline=None)
@given(st.lists(_PIECES, max_size=10).map("".join))
def test_the_session_cookie_is_read_as_aiohttps_parser_reads_it(header: str) -> None:
    request = make_mocked_request("GET", "/", headers={"Cookie": header})
    assert credentials_of(request) == _long_way(header)


def test_the_last_session_cookie_wins_and_others_are_ignored() -> None:
    header = f"a=1; {SESSION_COOKIE}=first; b=2; {SESSION_COOKIE}=second; c="
    got = credentials_of(make_mocked_request("GET", "/", headers={"Cookie": header}))
    assert got == Credentials(Via.session, "second")
    quoted = f'{SESSION_COOKIE}="abc"'
    got = credentials_of(make_mocked_request("GET", "/", headers={"Cookie": quoted}))
    assert got == Credentials(Via.session, "abc")  # unquoted, as aiohttp does


def test_a_correlation_id_is_a_uuid7_rising_with_time() -> None:
    ids = [uuid7_str() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # monotonic within the process
    for text in ids[:50]:
        u = uuid.UUID(text)
        assert str(u) == text and u.version == 7 and u.variant == uuid.RFC_4122


def test_answers_are_the_json_the_json_module_writes() -> None:
    values = [
        {"name": "ümlaut ✓", "n": 1, "f": 0.5, "list": [None, True, False], "nested": {"a": []}},
        {1: "int keys become strings", 2: None},
        {"big": 2**70, "neg": -(2**65)},  # over 64 bits: written all the same
        ["</script>", "\u2028", "\x00"],
    ]
    for value in values:
        assert json.loads(_json(value)) == json.loads(json.dumps(value))
    # JSON has no NaN or infinity: null, not an invalid document
    assert json.loads(_json({"x": math.nan, "y": math.inf})) == {"x": None, "y": None}


@pytest.mark.parametrize("size", [1, 43, 512, 513, 2000])
def test_a_session_cookie_alone_is_read_as_the_long_way_at_every_length(size: int) -> None:
    for value in ("a" * size, "b" * (size - 1) + "=", "é" * size):
        header = f"{SESSION_COOKIE}={value}"
        request = make_mocked_request("GET", "/", headers={"Cookie": header})
        assert credentials_of(request) == _long_way(header), (size, value[:5])


@settings(max_examples=500, deadline=None)
@given(st.text(st.sampled_from(["a", "%", "\x00", "\ud800", "\udcff", "é", "\x7f", " ", "\t"])))
def test_the_ascii_shortcut_finds_what_the_expression_finds(text: str) -> None:
    assert _fit(text) == (_UNFIT.search(text) is None)


async def _prepared_headers(response: web.StreamResponse, cors: frozenset[str]) -> dict[str, str]:
    """The headers `response` is sent with, after the root app's hook (security.py)."""
    request = make_mocked_request(
        "GET", "/api/v1/status", headers={"Origin": "https://partner.example"}
    )
    request[CORRELATION_ID] = "0192-cid"
    await response_headers(cors)(request, response)
    return dict(response.headers)


@pytest.mark.parametrize("cors", [frozenset(), frozenset({"https://partner.example"})])
@pytest.mark.parametrize(
    "own",
    [
        None,
        {"Location": "/api/v1/x"},
        {"Cache-Control": "max-age=60", "X-Extra": "1"},
        {"x-frame-options": "ALLOWALL", "Strict-Transport-Security": "max-age=0"},
    ],
)
@pytest.mark.parametrize("body", [b'{"a":1}', None])
async def test_an_api_answer_carries_the_headers_the_hook_gives_any_other(
    body: bytes | None, own: dict[str, str] | None, cors: frozenset[str]
) -> None:
    """`api_response` sets the hook's headers itself (and the hook then adds only CORS):
    the same headers as a plain response the hook completes, the handler's own winning."""
    ctype = {"content_type": "application/json"} if body is not None else {}
    plain = web.Response(body=body, status=200, headers=own, **ctype)
    made = api_response(body, 200, "0192-cid", own)
    assert type(made) is ApiResponse
    assert await _prepared_headers(made, cors) == await _prepared_headers(plain, cors)
    if own and "Cache-Control" in own:
        assert made.headers["Cache-Control"] == "max-age=60"
    assert made.headers.getall("X-Frame-Options") == ["DENY"]  # never the handler's
    assert made.headers["Strict-Transport-Security"] == HSTS
    if cors:
        assert made.headers["Access-Control-Allow-Origin"] == "https://partner.example"


def test_a_credentials_key_tells_its_kind_and_holds_no_secret() -> None:
    secret = "OHh7bT5J89THQkF1AkcJybCCTvimTVRhsL5XiQe6x20"
    session = credential_key(Credentials(Via.session, secret))
    token = credential_key(Credentials(Via.token, secret))
    assert session != token and len(session) == len(token) == 32
    assert session == credential_key(Credentials(Via.session, secret))  # stable
    assert secret.encode() not in session and secret.encode()[:8] not in session + token
