"""Addresses sealed to their week's key (libs/events/periods.py): sealing with the public key
only, destroying weeks after the retention period, the key file, and the store's `meta.ip`."""

from __future__ import annotations

import base64
import grp
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from libs.events import context
from libs.events.envelope import NewEvent
from libs.events.periods import (
    PeriodError,
    PeriodExpired,
    PeriodKeys,
    PublicPeriods,
    UnknownPeriod,
    is_period_sealed,
    period_of,
    public_path,
    readable,
)
from libs.events.sealing import SEALED_PLACEHOLDER, redact
from libs.events.store import PostgresEventStore

START = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)  # a Wednesday of week 2026-W49
RETENTION = timedelta(days=30)


class Clock:
    def __init__(self, at: datetime = START) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "identity" / "ip-keys.json"


def test_weeks_are_iso_weeks() -> None:
    assert period_of(START) == "2026-W49"
    assert period_of(datetime(2027, 1, 1, tzinfo=UTC)) == "2026-W53"
    assert period_of(datetime(2026, 12, 6, 23, 59, tzinfo=UTC)) == "2026-W49"
    assert period_of(datetime(2026, 12, 7, tzinfo=UTC)) == "2026-W50"


def test_seal_and_unseal_with_the_week_key(path: Path, clock: Clock) -> None:
    keys = PeriodKeys(path, clock=clock)
    sealed = keys.seal("203.0.113.7")
    assert sealed.startswith("hp:sealed:t1:2026-W49:") and is_period_sealed(sealed)
    assert "203.0.113.7" not in sealed
    again = keys.seal("203.0.113.7")
    assert again != sealed  # a random nonce each time
    assert keys.unseal(sealed) == keys.unseal(again) == "203.0.113.7"

    # one sealer keeps its ephemeral key (the payload's first 32 bytes) for a while: a seal is
    # one AES-GCM, not an X25519 exchange; another sealer has its own
    def eph(value: str) -> bytes:
        blob = value.rsplit(":", 1)[1]
        return base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))[:32]

    assert eph(again) == eph(sealed)
    other = PeriodKeys(path, clock=clock).seal("203.0.113.7")
    assert eph(other) != eph(sealed) and keys.unseal(other) == "203.0.113.7"
    # like every sealed value, the activity log and `redact` hide it
    assert redact({"ip": sealed}) == {"ip": SEALED_PLACEHOLDER}
    # the file is the owner's only; the public keys are beside it for processes that only seal
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pub = public_path(path)
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert "private" not in pub.read_text()
    assert set(json.loads(pub.read_text())["public"]) == {"2026-W49", "2026-W50"}
    by_public = PublicPeriods(pub, clock=clock).seal("Firefox/140")
    assert keys.unseal(by_public) == "Firefox/140"


def test_an_altered_value_fails(path: Path, clock: Clock) -> None:
    keys = PeriodKeys(path, clock=clock)
    sealed = keys.seal("192.0.2.1")
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(PeriodError, match=r"failed authentication|malformed"):
        keys.unseal(flipped)
    # the week is bound: the same payload under another week's name does not open
    keys.housekeep(None)
    moved = sealed.replace("2026-W49", "2026-W50")
    with pytest.raises(PeriodError, match="failed authentication"):
        keys.unseal(moved)
    with pytest.raises(PeriodError, match="not a value sealed to a week"):
        keys.unseal("hp:sealed:v1:p.0123456789abcdef.1:AAAA")


def test_weeks_expire_after_the_retention_period(path: Path, clock: Clock) -> None:
    keys = PeriodKeys(path, clock=clock)
    reader = PeriodKeys(path, clock=clock, writer=False)  # the firewall's view of the file
    old = keys.seal("198.51.100.4")
    clock.at = START + timedelta(days=27)  # W49 began on Monday 2026-11-30: 29 days ago
    assert keys.housekeep(RETENTION) == ()
    assert reader.unseal(old) == "198.51.100.4"
    clock.at = START + timedelta(days=40)
    assert keys.housekeep(RETENTION) == ("2026-W49", "2026-W50")
    new = keys.seal("198.51.100.4")
    assert period_of(clock.at) in new
    with pytest.raises(PeriodExpired, match="2026-W49"):
        reader.unseal(old)  # the other process sees the destruction on its next call
    assert reader.unseal(new) == "198.51.100.4"
    assert readable(reader, old) is None and readable(reader, new) == "198.51.100.4"
    assert readable(reader, "192.0.2.8") == "192.0.2.8"  # an event from before sealing
    assert readable(None, new) is None
    # the private key is gone from the file; a tombstone says it existed
    doc = json.loads(path.read_text())
    assert "2026-W49" not in doc["periods"] and "2026-W49" in doc["destroyed"]
    assert "2026-W49" not in json.loads(public_path(path).read_text())["public"]
    never = new.replace(period_of(clock.at), "2020-W01")
    with pytest.raises(UnknownPeriod):
        reader.unseal(never)


def test_a_week_is_never_destroyed_before_it_ends(path: Path, clock: Clock) -> None:
    keys = PeriodKeys(path, clock=clock)
    sealed = keys.seal("192.0.2.44")
    assert keys.housekeep(timedelta(days=1)) == ()  # one day's retention, the week goes on
    assert keys.unseal(sealed) == "192.0.2.44"
    clock.at = datetime(2026, 12, 7, 0, 0, 1, tzinfo=UTC)
    assert keys.housekeep(timedelta(days=1)) == ("2026-W49",)


def test_a_reader_without_the_file_reads_nothing_and_writes_nothing(path: Path) -> None:
    reader = PeriodKeys(path, writer=False)
    assert not path.exists() and reader.weeks() == ()
    with pytest.raises(PeriodError, match="no key for this week"):
        reader.seal("192.0.2.1")
    with pytest.raises(PeriodError, match="only identity changes it"):
        reader.housekeep(RETENTION)
    with pytest.raises(PeriodError, match="no public key"):
        PublicPeriods(public_path(path)).seal("192.0.2.1")


def test_a_symlinked_key_file_is_refused(path: Path, tmp_path: Path, clock: Clock) -> None:
    PeriodKeys(path, clock=clock).housekeep(None)
    link = tmp_path / "link.json"
    link.symlink_to(path)
    for opener in (
        lambda: PeriodKeys(link, clock=clock),
        lambda: PeriodKeys(link, writer=False),
    ):
        with pytest.raises(PeriodError, match="symbolic link"):
            opener()
    pub_link = tmp_path / "link.pub.json"
    pub_link.symlink_to(public_path(path))
    with pytest.raises(PeriodError, match="symbolic link"):
        PublicPeriods(pub_link)


def test_a_loose_mode_or_a_bad_file_is_refused(path: Path, clock: Clock) -> None:
    keys = PeriodKeys(path, clock=clock)
    keys.housekeep(None)
    os.chmod(path, 0o640)  # the firewall's group may read it
    assert PeriodKeys(path, writer=False).weeks() == ("2026-W49", "2026-W50")
    clock.at += timedelta(days=7)
    keys.housekeep(None)  # a change keeps the group's read access
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    os.chmod(path, 0o644)
    with pytest.raises(PeriodError, match="mode 0644"):
        PeriodKeys(path, writer=False)
    os.chmod(path, 0o600)
    doc = json.loads(path.read_text())
    week = sorted(doc["periods"])[0]
    doc["periods"][week]["public"] = doc["periods"][sorted(doc["periods"])[1]]["public"]
    path.write_text(json.dumps(doc))
    with pytest.raises(PeriodError, match="not the private key's"):
        PeriodKeys(path, writer=False).weeks()  # the keys are read on first use


async def test_the_store_seals_client_addresses(dsn: str, path: Path) -> None:
    keys = PeriodKeys(path)
    async with await PostgresEventStore.open(dsn, addresses=keys) as store:
        with context.use(context.Context(actor="user-7", ip="192.0.2.9")):
            await store.append("thing-1", [NewEvent("ThingHappened", {"n": 1})])
            await store.append("thing-1", [NewEvent("ThingHappened", {"n": 2})])
        with context.use(context.Context(actor="user-7", ip=keys.seal("192.0.2.10"))):
            await store.append("thing-1", [NewEvent("ThingHappened", {"n": 3})])
        rows = await store.pool.fetch("SELECT meta::text AS meta FROM events.events")
        assert rows and not any("192.0.2." in r["meta"] for r in rows)
        got = await store.read_stream("thing-1")
        assert [keys.unseal(e.meta["ip"]) for e in got] == ["192.0.2.9", "192.0.2.9", "192.0.2.10"]
    # without a key source (a test that does not care), the store behaves as before
    async with await PostgresEventStore.open(dsn) as plain:
        with context.use(context.Context(ip="192.0.2.11")):
            await plain.append("thing-2", [NewEvent("ThingHappened", {})])
        (e,) = await plain.read_stream("thing-2")
        assert e.meta["ip"] == "192.0.2.11"


async def test_expiry_leaves_the_rows_and_the_chain_alone(dsn: str, path: Path) -> None:
    clock = Clock()
    keys = PeriodKeys(path, clock=clock)
    async with await PostgresEventStore.open(dsn, addresses=keys) as store:
        with context.use(context.Context(ip="198.51.100.20")):
            await store.append("thing-1", [NewEvent("ThingHappened", {})])
        before = await store.pool.fetch("SELECT * FROM events.events ORDER BY position")
        clock.at += timedelta(days=60)
        assert keys.housekeep(RETENTION) != ()
        with context.use(context.Context(ip="198.51.100.21")):
            await store.append("thing-1", [NewEvent("ThingHappened", {})])
        after = await store.pool.fetch("SELECT * FROM events.events ORDER BY position")
        assert [dict(r) for r in after[:1]] == [dict(r) for r in before]
        report = await store.verify_chain()
        assert report.ok and report.checked == 2
        old, new = await store.read_stream("thing-1")
        assert readable(keys, old.meta["ip"]) is None
        assert readable(keys, new.meta["ip"]) == "198.51.100.21"


async def test_an_address_that_cannot_be_sealed_is_left_out(dsn: str, path: Path) -> None:
    """No key for this week (identity never ran): the event is appended without the address,
    never with it in clear."""
    async with await PostgresEventStore.open(
        dsn, addresses=PublicPeriods(public_path(path))
    ) as store:
        with context.use(context.Context(actor="user-7", ip="192.0.2.12")):
            await store.append("thing-1", [NewEvent("ThingHappened", {})])
        (e,) = await store.read_stream("thing-1")
        assert "ip" not in e.meta and e.meta["actor"] == "user-7"


def test_in_a_folder_shared_with_the_firewalls_group_the_private_file_is_its_to_read(
    tmp_path: Path, clock: Clock
) -> None:
    """A server's <data>/ip-keys is identity's and readable by the group homeport-ipkeys (the
    firewall is in it): the private file is made 0640 with that group, and keeps both when
    identity replaces it; elsewhere it is 0600 (the test above)."""
    if os.geteuid() != 0:
        pytest.skip("giving a file another group than one's own needs root here")
    reader = grp.getgrnam("nogroup").gr_gid  # stands for homeport-ipkeys
    folder = tmp_path / "ip-keys"
    folder.mkdir()
    os.chown(folder, -1, reader)
    os.chmod(folder, 0o2751)  # as the installer makes it: setgid
    path = folder / "ip-keys.json"
    keys = PeriodKeys(path, clock=clock)
    for _ in range(2):  # made, then replaced a week later
        keys.housekeep(None)
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, reader)
        assert stat.S_IMODE(public_path(path).stat().st_mode) == 0o644
        clock.at += timedelta(days=7)
    assert PeriodKeys(path, writer=False).weeks() == ("2026-W49", "2026-W50", "2026-W51")
