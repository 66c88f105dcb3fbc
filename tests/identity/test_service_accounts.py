"""The identity service over the real bus, Postgres and keyring: setup, users, sessions."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from libs.events.bus import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from libs.events.projection import replay_by_name
from libs.events.sealing import KeyDestroyed, Keyring
from services.identity.passwords import MEMORY_COST_KIB
from tests.identity.kit import ADMIN, Identity, running_identity, totp_at

pytestmark = pytest.mark.asyncio(loop_scope="function")

ALICE = {"username": "Alice", "email": "alice@example.test", "password": "a long enough phrase"}


@pytest.fixture
async def ident(monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path) -> Any:
    async with running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as i:
        yield i


async def with_alice(ident: Identity) -> tuple[str, str]:
    admin = await ident.set_up()
    reply = await ident.cmd("create_user", dict(ALICE), actor=admin)
    return admin, str(reply["user_id"])


async def test_setup_once_then_409(ident: Identity) -> None:
    assert await ident.ask("setup_state", {}) == {"setup_done": False}
    admin = await ident.set_up()
    assert await ident.ask("setup_state", {}) == {"setup_done": True}
    with pytest.raises(Conflict, match="already done"):
        await ident.cmd(
            "setup", ident.setup_body({**ADMIN, "username": "other", "email": "o@example.test"})
        )
    profile = await ident.ask("profile", {"user_id": admin})
    assert profile == {
        "user_id": admin,
        "username": "root",
        "email": "root@example.test",
        "display_name": None,
        "is_admin": True,
        "disabled": False,
    }


async def test_concurrent_setups_make_exactly_one_admin(ident: Identity) -> None:
    tries = [
        ident.cmd(
            "setup",
            ident.setup_body({**ADMIN, "username": f"admin{i}", "email": f"a{i}@example.test"}),
        )
        for i in range(4)
    ]
    results = await asyncio.gather(*tries, return_exceptions=True)
    assert sum(isinstance(r, dict) for r in results) == 1, results
    assert all(isinstance(r, Conflict) for r in results if not isinstance(r, dict))
    assert len((await ident.ask("users", {}))["items"]) == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"username": "1abc"}, "username"),
        ({"username": "a b"}, "username"),
        ({"email": "not-an-email"}, "email"),
        ({"password": "short"}, "password"),
        ({"password": "password123"}, "password"),  # on the common list
        ({"password": "root@example.test"}, "password"),
        ({"display_name": "bad\x00name"}, "display_name"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_bad_setup_names_the_field_and_changes_nothing(
    ident: Identity, change: dict[str, Any], field: str
) -> None:
    with pytest.raises(Invalid) as e:
        await ident.cmd("setup", ident.setup_body({**ADMIN, **change}))
    assert e.value.field == field
    assert await ident.ask("setup_state", {}) == {"setup_done": False}


async def test_usernames_are_unique_case_insensitively_and_emails_too(ident: Identity) -> None:
    admin, _ = await with_alice(ident)
    with pytest.raises(Conflict) as e:
        await ident.cmd(
            "create_user", {**ALICE, "email": "x@example.test", "username": "aLiCe"}, actor=admin
        )
    assert e.value.field == "username"
    with pytest.raises(Conflict) as e:
        await ident.cmd(
            "create_user", {**ALICE, "username": "bob", "email": "ALICE@example.test"}, actor=admin
        )
    assert e.value.field == "email"
    assert len((await ident.ask("users", {}))["items"]) == 2


async def test_only_enabled_admins_run_admin_commands(ident: Identity) -> None:
    admin, alice = await with_alice(ident)
    bob = {**ALICE, "username": "bob", "email": "bob@example.test"}
    with pytest.raises(Forbidden):
        await ident.cmd("create_user", bob, actor=alice)
    with pytest.raises(Forbidden):
        await ident.cmd("disable_user", {"user_id": admin}, actor=alice)
    with pytest.raises(Forbidden):
        await ident.cmd("create_user", bob, actor="anonymous")
    with pytest.raises(Conflict, match="your own"):
        await ident.cmd("disable_user", {"user_id": admin}, actor=admin)
    nobody = "00000000-0000-4000-8000-000000000000"
    for verb in ("disable_user", "enable_user", "set_admin", "update_user", "delete_user"):
        with pytest.raises(Forbidden):  # before not_found: a non-admin learns nothing
            await ident.cmd(verb, {"user_id": nobody}, actor=alice)
    with pytest.raises(NotFound):
        await ident.cmd("disable_user", {"user_id": nobody}, actor=admin)


async def test_login_whoami_logout(ident: Identity) -> None:
    _, alice = await with_alice(ident)
    s = await ident.login("alice", ALICE["password"])  # case-insensitive name
    assert s["user_id"] == alice and s["username"] == "Alice" and s["is_admin"] is False
    assert len(s["session"]) >= 43  # 256 random bits, base64url
    assert s["idle_timeout_s"] == 1800
    who = await ident.ask("whoami", {"session": s["session"]})
    profile = who.pop("profile")  # what GET /profile shows, folded in
    assert who == {"user_id": alice, "username": "Alice", "is_admin": False, "scope": "full"}
    assert profile == await ident.ask("profile", {"user_id": alice}, actor=alice)
    assert profile["disabled"] is False and profile["email"] == ALICE["email"]
    again = await ident.login("Alice", ALICE["password"])
    assert again["session"] != s["session"]  # a new id at every sign-in
    listed = await ident.ask("sessions", {"user_id": alice, "session": again["session"]})
    assert [x["current"] for x in listed["items"]] == [True, False]
    await ident.cmd("logout", {"session": s["session"]}, actor=alice)
    with pytest.raises(Unauthorized):
        await ident.ask("whoami", {"session": s["session"]})
    assert (await ident.ask("whoami", {"session": again["session"]}))["user_id"] == alice


async def test_sessions_store_only_a_hash(ident: Identity, dsn: str) -> None:
    await with_alice(ident)
    s = await ident.login("alice", ALICE["password"])
    conn = await asyncpg.connect(dsn)
    try:
        dump = " ".join(
            [
                json.dumps(
                    [dict(r) for r in await conn.fetch("SELECT data, meta FROM events.events")],
                    default=str,
                )
            ]
            + [str(dict(r)) for r in await conn.fetch("SELECT * FROM identity.sessions")]
        )
    finally:
        await conn.close()
    assert s["session"] not in dump
    for secret in (ALICE["password"], "alice@example.test", ADMIN["password"]):
        assert secret not in dump  # passwords, and personal data, only sealed


async def test_refusals_are_identical(ident: Identity) -> None:
    admin, alice = await with_alice(ident)
    answers = []
    for username, password in [
        ("alice", "wrong password!"),
        ("nobody", "wrong password!"),
        ("x", "y"),
    ]:
        with pytest.raises(Unauthorized) as e:
            await ident.login(username, password)
        answers.append((type(e.value), str(e.value), e.value.field))
    await ident.cmd("disable_user", {"user_id": alice}, actor=admin)
    with pytest.raises(Unauthorized) as e:
        await ident.login("alice", ALICE["password"])  # right password, disabled account
    answers.append((type(e.value), str(e.value), e.value.field))
    assert len(set(answers)) == 1, answers


async def test_disable_ends_every_session_at_once_and_enable_does_not_revive_them(
    ident: Identity,
) -> None:
    admin, alice = await with_alice(ident)
    sessions = [(await ident.login("alice", ALICE["password"]))["session"] for _ in range(3)]
    await ident.cmd("disable_user", {"user_id": alice}, actor=admin)
    for s in sessions:  # the command has answered: no session may work any more
        with pytest.raises(Unauthorized):
            await ident.ask("whoami", {"session": s})
    await ident.cmd("enable_user", {"user_id": alice}, actor=admin)
    with pytest.raises(Unauthorized):
        await ident.ask("whoami", {"session": sessions[0]})
    assert (await ident.login("alice", ALICE["password"]))["user_id"] == alice


async def test_whoami_refuses_a_disabled_user_whose_credentials_survived(
    ident: Identity, dsn: str
) -> None:
    """Disabling deletes the user's sessions in the same transaction, which hides whoami's own
    "not disabled" filter. Here the read model holds the disabled flag with the session and the
    token still there (as a rebuild cut short, or a write racing one, could leave it): whoami
    must refuse both credentials on the flag alone."""
    _, alice = await with_alice(ident)
    session = (await ident.login("alice", ALICE["password"]))["session"]
    token = (
        await ident.cmd(
            "create_token",
            {"user_id": alice, "name": "ci", "scope": "full", "session": session},
            actor=alice,
        )
    )["token"]
    assert (await ident.ask("whoami", {"session": session}))["user_id"] == alice
    assert (await ident.ask("whoami", {"token": token}))["user_id"] == alice
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            # the flag is set, the token put back after the trigger that ends it
            tokens = await conn.fetch("SELECT * FROM identity.api_tokens WHERE user_id = $1", alice)
            await conn.execute(
                "UPDATE identity.users SET disabled = true WHERE user_id = $1", alice
            )
            await conn.executemany(
                "INSERT INTO identity.api_tokens SELECT * FROM"
                " json_populate_record(NULL::identity.api_tokens, $1::json)",
                [(json.dumps(dict(t), default=str),) for t in tokens],
            )
        left = await conn.fetchval(
            "SELECT (SELECT count(*) FROM identity.sessions WHERE user_id = $1)"
            " + (SELECT count(*) FROM identity.api_tokens WHERE user_id = $1)",
            alice,
        )
    finally:
        await conn.close()
    assert left == 2  # both credentials are still in the read model
    with pytest.raises(Unauthorized):
        await ident.ask("whoami", {"session": session})
    with pytest.raises(Unauthorized):
        await ident.ask("whoami", {"token": token})


async def test_last_admin_cannot_be_disabled_or_deleted(ident: Identity) -> None:
    admin, alice = await with_alice(ident)
    await ident.cmd("set_admin", {"user_id": alice, "is_admin": True}, actor=admin)
    await ident.cmd("disable_user", {"user_id": admin}, actor=alice)  # another admin remains
    await ident.cmd("enable_user", {"user_id": admin}, actor=alice)
    await ident.cmd("set_admin", {"user_id": alice, "is_admin": False}, actor=admin)
    with pytest.raises(Conflict):
        await ident.cmd("set_admin", {"user_id": admin, "is_admin": False}, actor=admin)


async def test_admins_demoting_each_other_at_once_leave_one(ident: Identity) -> None:
    """Each sees the other still an admin unless the last-admin decisions are serialised."""
    admin, alice = await with_alice(ident)
    for _ in range(5):
        await ident.cmd("update_user", {"user_id": alice, "is_admin": True}, actor=admin)
        results = await asyncio.gather(
            ident.cmd("update_user", {"user_id": alice, "is_admin": False}, actor=admin),
            ident.cmd("set_admin", {"user_id": admin, "is_admin": False}, actor=alice),
            return_exceptions=True,
        )
        # one goes through; the other finds it would remove the last admin (or, when it
        # started after the first committed, that its actor is no admin any more)
        assert sum(isinstance(r, dict) for r in results) == 1, results
        assert sum(isinstance(r, Conflict | Forbidden) for r in results) == 1, results
        users = (await ident.ask("users", {}))["items"]
        assert sum(u["is_admin"] for u in users) == 1, users
        if not next(u for u in users if u["user_id"] == admin)["is_admin"]:
            await ident.cmd("set_admin", {"user_id": admin, "is_admin": True}, actor=alice)


async def test_delete_shreds_personal_data_but_keeps_the_events(ident: Identity, dsn: str) -> None:
    admin, alice = await with_alice(ident)
    await ident.login("alice", ALICE["password"])
    await ident.cmd("delete_user", {"user_id": alice}, actor=admin)
    with pytest.raises(NotFound):
        await ident.ask("profile", {"user_id": alice})
    assert [u["user_id"] for u in (await ident.ask("users", {}))["items"]] == [admin]
    with pytest.raises(Unauthorized):
        await ident.login("alice", ALICE["password"])
    conn = await asyncpg.connect(dsn)
    try:
        created = await conn.fetchrow(
            "SELECT data FROM events.events WHERE type = 'UserCreated' AND stream = $1",
            f"user-{alice}",
        )
        types = [
            r["type"]
            for r in await conn.fetch(
                "SELECT type FROM events.events WHERE stream = $1 ORDER BY version", f"user-{alice}"
            )
        ]
    finally:
        await conn.close()
    assert types == ["UserCreated", "SessionStarted", "UserDeleted"]
    sealed_email = json.loads(created["data"])["email"]
    with Keyring.open(ident.keyring_path) as kr, pytest.raises(KeyDestroyed):
        kr.unseal(sealed_email)
    # the name is free again
    again = await ident.cmd("create_user", dict(ALICE), actor=admin)
    assert again["user_id"] != alice


async def test_change_password_needs_the_current_one_and_ends_other_sessions(
    ident: Identity,
) -> None:
    _, alice = await with_alice(ident)
    keep = (await ident.login("alice", ALICE["password"]))["session"]
    other = (await ident.login("alice", ALICE["password"]))["session"]
    new = "another long phrase"
    with pytest.raises(Invalid) as e:
        await ident.cmd(
            "change_password", {"user_id": alice, "current_password": "nope", "new_password": new}
        )
    assert e.value.field == "current_password"
    with pytest.raises(Invalid) as e:
        await ident.cmd(
            "change_password",
            {"user_id": alice, "current_password": ALICE["password"], "new_password": "12345678"},
        )
    assert e.value.field == "new_password"
    await ident.cmd(
        "change_password",
        {
            "user_id": alice,
            "current_password": ALICE["password"],
            "new_password": new,
            "session": keep,
        },
    )
    assert (await ident.ask("whoami", {"session": keep}))["user_id"] == alice
    with pytest.raises(Unauthorized):
        await ident.ask("whoami", {"session": other})
    with pytest.raises(Unauthorized):
        await ident.login("alice", ALICE["password"])
    assert (await ident.login("alice", new))["user_id"] == alice


async def test_revoke_own_session(ident: Identity) -> None:
    admin, alice = await with_alice(ident)
    s = await ident.login("alice", ALICE["password"])
    with pytest.raises(NotFound):  # someone else's session is not found, not revoked
        await ident.cmd("revoke_session", {"user_id": admin, "session_id": s["session_id"]})
    await ident.cmd("revoke_session", {"user_id": alice, "session_id": s["session_id"]})
    with pytest.raises(Unauthorized):
        await ident.ask("whoami", {"session": s["session"]})


async def test_idle_and_absolute_timeouts(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> None:
    env = {"HP_SESSION_IDLE_SECONDS": "1", "HP_SESSION_MAX_SECONDS": "3"}
    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, env=env
    ) as ident:
        await with_alice(ident)
        idle = await ident.login("alice", ALICE["password"])
        ident.clock.advance(1.3)  # past the idle timeout, by the service's clock
        with pytest.raises(Unauthorized):
            await ident.ask("whoami", {"session": idle["session"]})
        busy = await ident.login("alice", ALICE["password"])
        assert busy["idle_timeout_s"] == 1


async def test_per_address_limit_is_not_global(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> None:
    env = {"HP_SIGNIN_IP_LIMIT": "3"}
    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, env=env
    ) as ident:
        await with_alice(ident)
        for _ in range(3):
            with pytest.raises(Unauthorized):
                await ident.login("alice", "wrong password!", ip="198.51.100.7")
        with pytest.raises(Forbidden, match="your address"):  # even with the right password
            await ident.login("alice", ALICE["password"], ip="198.51.100.7")
        # another address, and the real user, are not locked out
        assert (await ident.login("alice", ALICE["password"], ip="198.51.100.8"))[
            "username"
        ] == "Alice"


async def test_callers_without_an_address_share_one_limit(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> None:
    """A login that reaches identity with no client address (a proxy that passed none) is not
    exempt from the per-address limit: all such callers share one."""
    env = {"HP_SIGNIN_IP_LIMIT": "3"}
    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, env=env
    ) as ident:
        await with_alice(ident)
        for _ in range(3):
            with pytest.raises(Unauthorized):
                await ident.cmd(
                    "login", {"username": "alice", "password": "wrong password!"}, ip=None
                )
        with pytest.raises(Forbidden, match="your address"):
            await ident.cmd("login", {"username": "alice", "password": ALICE["password"]}, ip=None)
        assert (await ident.login("alice", ALICE["password"], ip="198.51.100.8"))[
            "username"
        ] == "Alice"


async def test_current_password_checks_are_refused_past_the_address_limit(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> None:
    """An address over its limit gets 403 on a change of password too, even with the right
    current password, and nothing changes."""
    env = {"HP_SIGNIN_IP_LIMIT": "3"}
    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, env=env
    ) as ident:
        _, alice = await with_alice(ident)
        session = (await ident.login("alice", ALICE["password"], ip="198.51.100.9"))["session"]
        for _ in range(3):
            with pytest.raises(Unauthorized):
                await ident.login("ghost", "wrong password!", ip="198.51.100.9")
        change = {
            "user_id": alice,
            "session": session,
            "current_password": ALICE["password"],
            "new_password": "another long phrase",
        }
        with pytest.raises(Forbidden, match="your address"):
            await ident.cmd("change_password", change, actor=alice, ip="198.51.100.9")
        assert (await ident.login("alice", ALICE["password"], ip="198.51.100.8"))[
            "username"
        ] == "Alice"  # the password did not change


async def test_account_limit_spares_known_addresses(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> None:
    env = {"HP_SIGNIN_ACCOUNT_LIMIT": "3"}
    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, env=env
    ) as ident:
        await with_alice(ident)
        await ident.login("alice", ALICE["password"], ip="203.0.113.1")  # the user's own address
        for i in range(3):
            with pytest.raises(Unauthorized):
                await ident.login("alice", "wrong password!", ip=f"198.51.100.{i}")
        with pytest.raises(Unauthorized):  # a new address: not evaluated, same answer
            await ident.login("alice", ALICE["password"], ip="198.51.100.50")
        assert (await ident.login("alice", ALICE["password"], ip="203.0.113.1"))[
            "username"
        ] == "Alice"


async def test_every_failure_is_an_event_with_the_address(ident: Identity, dsn: str) -> None:
    await with_alice(ident)
    for name in ("alice", "ghost"):
        with pytest.raises(Unauthorized):
            await ident.login(name, "wrong password!", ip="192.0.2.99")
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT data, meta FROM events.events WHERE type = 'LoginFailed' ORDER BY position"
        )
    finally:
        await conn.close()
    got = [
        (json.loads(r["data"])["reason"], ident.address(json.loads(r["meta"])["ip"])) for r in rows
    ]
    assert got == [("password", "192.0.2.99"), ("unknown_user", "192.0.2.99")]
    assert "ghost" not in str([dict(r) for r in rows])


@pytest.mark.slow  # 120 argon2 verifications
async def test_unknown_user_and_wrong_password_take_the_same_time(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> None:
    # At production's argon2 cost (the suite runs at the 19 MiB bar): SECURITY.md's 10 % is
    # about what a guesser measures on a real server, and a sign-in three times shorter than
    # that drowns in the load of the other workers (CI saw 55 vs 66 ms medians; 27 vs 28 here)
    production = {"HP_PASSWORD_MEMORY_KIB": str(MEMORY_COST_KIB)}
    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, env=production
    ) as ident:
        await _same_time(ident)


async def _same_time(ident: Identity) -> None:
    await with_alice(ident)
    loop = asyncio.get_running_loop()
    times: dict[str, list[float]] = {"alice": [], "nobody": []}
    pairs: list[float] = []
    # Each pair's two tries run within a second of each other, under the same load of the
    # other workers; its relative difference cancels that load, which moves for seconds at a
    # time (a CI run saw the separate medians 13 % apart, the next one the other way round).
    # A path that skipped the hash, or did more work, moves the median of the pairs. A CI run
    # still saw 60 pairs' median at 10.6 % (idle here: under 0.4 %; under four busy loops:
    # under 4 %, quartiles +-10 %): a median past the bar measures 60 pairs more, up to 180,
    # and the bar holds for the median of them all. A path that skips the hash stays at 0.97.
    for i in range(180):  # one try of each name a pair, the order alternating
        for name in ("alice", "nobody") if i % 2 else ("nobody", "alice"):
            t0 = loop.time()
            with pytest.raises(Unauthorized):
                await ident.login(
                    name, "wrong password!", ip=f"10.{i // 250}.{i % 250}.{len(name)}"
                )
            times[name].append(loop.time() - t0)
        a, n = times["alice"][-1], times["nobody"][-1]
        pairs.append((a - n) / max(a, n))
        if len(pairs) % 60 == 0 and abs(_median(pairs)) < 0.10:
            break
    med = {k: _median(v) for k, v in times.items()}
    assert abs(_median(pairs)) < 0.10, (_median(pairs), len(pairs), med)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


async def test_replay_rebuilds_the_read_model(ident: Identity, dsn: str) -> None:
    admin, alice = await with_alice(ident)
    s = await ident.login("alice", ALICE["password"])
    await ident.cmd("set_admin", {"user_id": alice, "is_admin": True}, actor=admin)
    before = await ident.ask("users", {})
    applied = await replay_by_name("identity", dsn)
    assert applied >= 4
    assert await ident.ask("users", {}) == before
    assert (await ident.ask("whoami", {"session": s["session"]}))["is_admin"] is True


async def test_replay_from_a_fresh_process_keeps_every_area(ident: Identity, dsn: str) -> None:
    """`homeport replay identity` runs in a process of its own: every area's events count."""
    admin, alice = await with_alice(ident)
    group = await ident.cmd("create_group", {"name": "family"}, actor=admin)
    await ident.cmd(
        "add_group_member", {"group_id": group["group_id"], "user_id": alice}, actor=admin
    )
    app = {
        "app_id": "wiki",
        "access": {"all_users": False, "user_ids": [], "groups": [group["group_id"]]},
    }
    await ident.cmd("ldap_register_app", app, actor=admin)
    await ident.cmd("create_token", {"user_id": alice, "name": "ci", "scope": "read"})
    enrolment = await ident.cmd("totp_enrol", {"user_id": alice})
    assert enrolment["secret"]
    before = (
        await ident.ask("groups", {}),
        await ident.ask("ldap_apps", {}, actor=admin),
        await ident.ask("users", {}),
        await ident.ask("tokens", {"user_id": alice}),
        await ident.ask("totp_state", {"user_id": alice}),
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "replay", "identity", "--dsn", dsn,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    after = (
        await ident.ask("groups", {}),
        await ident.ask("ldap_apps", {}, actor=admin),
        await ident.ask("users", {}),
        await ident.ask("tokens", {"user_id": alice}),
        await ident.ask("totp_state", {"user_id": alice}),
    )
    assert after == before
    assert after[0]["items"][0]["members"] == [alice]


async def test_past_the_account_limit_the_real_user_with_totp_still_signs_in(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> None:
    env = {"HP_SIGNIN_ACCOUNT_LIMIT": "3"}
    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, env=env
    ) as ident:
        _, alice = await with_alice(ident)
        secret = (await ident.cmd("totp_enrol", {"user_id": alice}, actor=alice))["secret"]
        now = ident.clock.time()
        code = totp_at(secret, now)
        await ident.cmd("totp_confirm", {"user_id": alice, "code": code}, actor=alice)
        for i in range(3):
            with pytest.raises(Unauthorized):
                await ident.login("alice", "wrong password!", ip=f"198.51.100.{i}")
        new_ip = "198.51.100.77"  # never signed in from: past the limit

        async def attempt(**extra: str) -> Any:
            payload = {"username": "alice", "password": ALICE["password"], **extra}
            return await ident.cmd("login", payload, actor="anonymous", ip=new_ip)

        refusals = []
        for extra in ({}, {"totp": "000000"}):  # the right password alone, or with a wrong code
            with pytest.raises(Unauthorized) as e:
                await attempt(**extra)
            refusals.append(str(e.value))
        with pytest.raises(Unauthorized) as e:  # a wrong password with a code: the same answer
            await ident.cmd(
                "login",
                {"username": "alice", "password": "wrong password!", "totp": "000000"},
                actor="anonymous",
                ip=new_ip,
            )
        refusals.append(str(e.value))
        assert set(refusals) == {"wrong username or password"}  # no oracle for the password
        reply = await attempt(totp=totp_at(secret, now + 30))  # password and code together
        assert reply["user_id"] == alice and reply["session"]


async def _identity_rows(dsn: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of the tables a user's own events write, in a fixed order."""
    conn = await asyncpg.connect(dsn)
    try:
        out = {}
        for table, key in (
            ("users", "user_id"),
            ("sessions", "session_id"),
            ("api_tokens", "token_id"),
            ("login_failures", "user_id"),
        ):
            rows = await conn.fetch(f"SELECT * FROM identity.{table} ORDER BY {key}::text")
            # last_seen is touched by whoami, not an event: a rebuild sets it again
            out[table] = [{k: v for k, v in r.items() if k != "last_seen"} for r in rows]
        return out
    finally:
        await conn.close()


async def test_user_changes_applied_in_their_append_equal_a_replay_of_them(
    ident: Identity, dsn: str
) -> None:
    """The steps of a user's stream run within the append's own statement (no transaction
    when the decision asked nothing); a rebuild runs the same statements from the log. Every
    kind of them, then a replay: the same rows, and the rows each change should leave."""
    admin, alice = await with_alice(ident)
    bob = str(
        (
            await ident.cmd(
                "create_user",
                {"username": "bob", "email": "bob@example.test", "password": ALICE["password"]},
                actor=admin,
            )
        )["user_id"]
    )
    ip = "192.0.2.7"
    session = str((await ident.login("alice", ALICE["password"], ip=ip))["session"])
    await ident.cmd(
        "create_token", {"user_id": alice, "name": "ci", "scope": "read", "session": session},
        actor=alice, ip=ip,
    )  # fmt: skip
    update = {"user_id": alice, "email": "alice2@example.test", "display_name": "Alice A."}
    await ident.cmd("update_user", update, actor=admin)
    await ident.cmd("set_admin", {"user_id": bob, "is_admin": True}, actor=admin)
    rows = await _identity_rows(dsn)
    assert len(rows["sessions"]) == 1 and len(rows["api_tokens"]) == 1

    await ident.cmd("disable_user", {"user_id": alice}, actor=bob)  # by the new admin
    with pytest.raises(Unauthorized):
        await ident.ask("whoami", {"session": session})
    rows = await _identity_rows(dsn)
    assert rows["sessions"] == [] and rows["api_tokens"] == [], "a disable ends them"
    await ident.cmd("enable_user", {"user_id": alice}, actor=admin)
    await ident.cmd("update_profile", {"user_id": alice, "display_name": ""}, actor=alice)
    session = str((await ident.login("alice", ALICE["password"], ip=ip))["session"])
    kept = {"user_id": alice, "current_password": ALICE["password"], "session": session}
    await ident.cmd(
        "change_password", {**kept, "new_password": "yet another long phrase"}, actor=alice, ip=ip
    )
    await ident.cmd("set_admin", {"user_id": bob, "is_admin": False}, actor=admin)
    await ident.cmd("delete_user", {"user_id": bob}, actor=admin)

    before = await _identity_rows(dsn)
    users = {str(u["user_id"]): u for u in before["users"]}
    assert set(users) == {admin, alice}, "bob's row went with him"
    a = users[alice]
    assert (a["disabled"], a["is_admin"], a["display_name"]) == (False, False, None)
    profile = await ident.ask("profile", {"user_id": alice})
    assert (profile["email"], profile["display_name"]) == ("alice2@example.test", None)
    versions = await ident.ask("users", {})
    assert a["version"] == await _stream_version(dsn, f"user-{alice}")
    assert [s["user_id"] for s in before["sessions"]] == [a["user_id"]], "the kept session"
    assert await ident.ask("whoami", {"session": session})
    assert (await ident.login("alice", "yet another long phrase", ip=ip))["user_id"] == alice

    before = await _identity_rows(dsn)
    await replay_by_name("identity", dsn)
    assert await _identity_rows(dsn) == before
    assert await ident.ask("users", {}) == versions


async def _stream_version(dsn: str, stream: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval("SELECT version FROM events.streams WHERE stream = $1", stream)
        )
    finally:
        await conn.close()
