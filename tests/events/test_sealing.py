"""Sealed values: AES-256-GCM, key id bound in the value, keyring file, crypto-shredding."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from libs.events.errors import EventStoreError
from libs.events.sealing import (
    SEALED_PLACEHOLDER,
    KeyDestroyed,
    Keyring,
    SealingError,
    SubjectDestroyed,
    UnknownKey,
    is_sealed,
    key_id_of,
    redact,
    seal_fields,
    unseal_fields,
)

ROOT = Path(__file__).resolve().parents[2]
SECRET = "correct horse battery staple"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "keyring.json"


@pytest.fixture
def kr(path: Path) -> Iterator[Keyring]:
    with Keyring(path) as k:
        yield k


def payload(value: str) -> bytes:
    blob = value.rsplit(":", 1)[1]
    return base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))


def doc(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(path.read_bytes())
    return out


def subject_entry(path: Path, value: str) -> dict[str, Any]:
    """The keyring file's entry for the subject whose key sealed `value`."""
    random_id = key_id_of(value).split(".")[1]
    entries: list[dict[str, Any]] = list(doc(path)["subjects"].values())
    [entry] = [e for e in entries if e["id"] == random_id]
    return entry


def all_key_strings(path: Path) -> list[str]:
    """Every key in the file, as stored (base64url) and as hex and as Python bytes repr."""
    d = doc(path)
    encoded = [*d["platform"].values(), d["subject_key"]]
    for s in d["subjects"].values():
        encoded += list(s["keys"].values())
    raw = [base64.urlsafe_b64decode(k) for k in encoded]
    return encoded + [r.hex() for r in raw] + [repr(r) for r in raw]


def write_keyring(path: Path, d: dict[str, Any]) -> None:
    tmp = path.with_name("edited.tmp")
    tmp.write_text(json.dumps(d))
    tmp.chmod(0o600)
    os.replace(tmp, path)


# -- the value format and the cipher --------------------------------------------------------------


def test_round_trip(kr: Keyring) -> None:
    for text in (SECRET, "", "ünïcødé ✓ 🔑", "x" * 100_000):
        assert kr.unseal_str(kr.seal(text)) == text
    assert kr.unseal(kr.seal(b"\x00\xff raw")) == b"\x00\xff raw"
    assert kr.unseal_str(kr.seal_for("user-1", SECRET)) == SECRET
    assert kr.unseal(kr.seal_for("user-1", b"\x01\x02")) == b"\x01\x02"


def test_value_names_the_key_and_hides_the_plaintext(kr: Keyring) -> None:
    value = kr.seal(SECRET)
    assert is_sealed(value)
    assert value.startswith(f"hp:sealed:v1:{kr.active_key_id}:")
    assert key_id_of(value) == kr.active_key_id
    assert SECRET not in value
    assert base64.b64encode(SECRET.encode()).decode()[:20] not in value
    subject_value = kr.seal_for("alice@example.com", SECRET)
    assert key_id_of(subject_value).startswith("s.") and "alice" not in subject_value
    assert not is_sealed(SECRET) and not is_sealed(None) and not is_sealed(b"hp:sealed:v1:")


def test_aes_256_gcm_with_fresh_96_bit_nonce_and_key_id_as_associated_data(
    kr: Keyring, path: Path
) -> None:
    values = [kr.seal(SECRET) for _ in range(50)]
    assert len(set(values)) == 50
    raws = [payload(v) for v in values]
    assert len({r[:12] for r in raws}) == 50
    assert all(len(r) == 12 + len(SECRET) + 16 for r in raws)
    # Decrypt with nothing but the key from the file and the documented format.
    key_id = kr.active_key_id
    key = base64.urlsafe_b64decode(doc(path)["platform"]["1"])
    assert len(key) == 32
    raw = raws[0]
    assert AESGCM(key).decrypt(raw[:12], raw[12:], key_id.encode()) == SECRET.encode()
    with pytest.raises(InvalidTag):
        AESGCM(key).decrypt(raw[:12], raw[12:], None)


@pytest.mark.parametrize("position", [0, 5, 11, 12, 20, -1])
def test_tampered_payload_fails(kr: Keyring, position: int) -> None:
    value = kr.seal(SECRET)
    raw = bytearray(payload(value))
    raw[position] ^= 0x01
    blob = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    tampered = value.rsplit(":", 1)[0] + ":" + blob
    with pytest.raises(SealingError, match="failed authentication") as e:
        kr.unseal(tampered)
    assert SECRET not in str(e.value)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda v: v[:-4],  # truncated payload
        lambda v: v[: v.rindex(":") + 10],  # far too short
        lambda v: v + "=",  # padding is not canonical
        lambda v: v + "!",  # not base64url
        lambda v: v.replace("hp:sealed:v1:", "hp:sealed:v2:"),
        lambda v: v.replace("hp:sealed:v1:", "hp:sealed:"),
        lambda v: v.replace("hp:sealed:", "hp:seald:"),
        lambda v: v.replace(".1:", ".01:"),
    ],
)
def test_malformed_values_fail(kr: Keyring, mangle: Any) -> None:
    value = kr.seal(SECRET)
    with pytest.raises(SealingError):
        kr.unseal(mangle(value))


def test_moving_a_ciphertext_to_another_key_id_fails(kr: Keyring) -> None:
    value = kr.seal(SECRET)
    old_id = key_id_of(value)
    new_id = kr.rotate()
    with pytest.raises(SealingError, match="failed authentication"):
        kr.unseal(value.replace(old_id, new_id))
    subject_id = key_id_of(kr.seal_for("alice", "x"))
    with pytest.raises(SealingError, match="failed authentication"):
        kr.unseal(value.replace(old_id, subject_id))


def test_key_id_is_bound_even_when_two_ids_share_a_key(path: Path) -> None:
    """Without the key id as associated data, this swap would decrypt."""
    with Keyring(path) as kr:
        value = kr.seal(SECRET)
        old_id = key_id_of(value)
        new_id = kr.rotate()
    d = doc(path)
    d["platform"]["2"] = d["platform"]["1"]
    write_keyring(path, d)
    with Keyring(path) as kr:
        assert kr.unseal_str(value) == SECRET
        assert kr.unseal_str(kr.seal(SECRET)) == SECRET  # the shared key itself works
        with pytest.raises(SealingError, match="failed authentication"):
            kr.unseal(value.replace(old_id, new_id))


def test_value_of_another_keyring_is_unknown(tmp_path: Path, kr: Keyring) -> None:
    with Keyring(tmp_path / "other.json") as other:
        value = other.seal(SECRET)
        subject_value = other.seal_for("alice", SECRET)
    for v in (value, subject_value):
        with pytest.raises(UnknownKey, match="is not in keyring") as e:
            kr.unseal(v)
        assert e.value.key_id == key_id_of(v)
        assert not isinstance(e.value, KeyDestroyed)


def test_unseal_str_of_binary_fails(kr: Keyring) -> None:
    with pytest.raises(SealingError, match="not UTF-8"):
        kr.unseal_str(kr.seal(b"\xff\xfe"))


def test_errors_are_event_store_errors() -> None:
    for cls in (UnknownKey, KeyDestroyed, SubjectDestroyed):
        assert issubclass(cls, SealingError)
    assert issubclass(SubjectDestroyed, KeyDestroyed)
    assert issubclass(SealingError, EventStoreError)


def test_only_text_or_bytes_can_be_sealed(kr: Keyring) -> None:
    with pytest.raises(TypeError):
        kr.seal(12)  # type: ignore[arg-type]
    for bad in ("", None):
        with pytest.raises(SealingError, match="subject"):
            kr.seal_for(bad, SECRET)  # type: ignore[arg-type]


# -- the keyring file -----------------------------------------------------------------------------


def test_keyring_file_is_created_0600(path: Path) -> None:
    old = os.umask(0)
    try:
        with Keyring(path) as kr:
            kr.seal_for("alice", SECRET)
            kr.rotate()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.with_name(path.name + ".lock").stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_keyring_file_holds_no_subject_in_clear(kr: Keyring, path: Path) -> None:
    kr.seal_for("alice@example.com", SECRET)
    kr.destroy_subject("bob@example.com")
    raw = path.read_bytes()
    assert b"alice" not in raw and b"bob" not in raw and SECRET.encode() not in raw


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_keyring_readable_by_others_is_refused(path: Path, mode: int) -> None:
    Keyring(path).close()
    path.chmod(mode)
    with pytest.raises(SealingError) as e:
        Keyring(path)
    assert str(path) in str(e.value) and f"{mode:04o}" in str(e.value)
    assert "chmod 600" in str(e.value)


def test_chmod_of_an_open_keyring_is_noticed(kr: Keyring, path: Path) -> None:
    value = kr.seal(SECRET)
    path.chmod(0o644)
    with pytest.raises(SealingError, match="0644"):
        kr.unseal(value)
    path.chmod(0o600)
    assert kr.unseal_str(value) == SECRET


def test_symlinked_or_invalid_keyring_is_refused(tmp_path: Path, path: Path) -> None:
    Keyring(path).close()
    link = tmp_path / "link.json"
    link.symlink_to(path)
    with pytest.raises(SealingError, match="symbolic link"):
        Keyring(link)
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": 1, "keyring_id": "zz"}')
    bad.chmod(0o600)
    with pytest.raises(SealingError, match=f"keyring {bad} is not valid"):
        Keyring(bad)
    bad.write_text("{not json")
    with pytest.raises(SealingError, match="is not valid"):
        Keyring(bad)


def test_reopened_keyring_unseals_everything(path: Path) -> None:
    with Keyring(path) as kr:
        v1 = kr.seal(SECRET)
        v2 = kr.seal_for("alice", "a")
        kr.rotate()
        v3 = kr.seal("after rotate")
    with Keyring(path) as kr:
        assert [kr.unseal_str(v) for v in (v1, v2, v3)] == [SECRET, "a", "after rotate"]
        assert kr.seal_for("alice", "again").split(":")[3] == key_id_of(v2)


def test_writes_replace_the_file_whole(kr: Keyring, path: Path) -> None:
    before = path.stat().st_ino
    kr.rotate()
    after = path.stat().st_ino
    assert after != before  # a new file renamed over the old one, not an edit in place
    kr.seal_for("alice", SECRET)
    assert path.stat().st_ino != after
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".lock"]


def test_closed_keyring_is_unusable(path: Path) -> None:
    kr = Keyring(path)
    value = kr.seal(SECRET)
    kr.close()
    with pytest.raises(SealingError, match="closed"):
        kr.unseal(value)
    with pytest.raises(SealingError, match="closed"):
        kr.rotate()


def test_lock_wait_has_a_deadline(path: Path) -> None:
    with Keyring(path, lock_timeout=0.2) as kr:
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with pytest.raises(SealingError, match="timed out"):
                kr.rotate()
            assert kr.unseal_str(kr.seal(SECRET)) == SECRET  # reading needs no lock
        finally:
            os.close(fd)
        kr.rotate()


# -- concurrent keyrings -------------------------------------------------------------------------


def test_two_keyrings_on_one_file_keep_each_others_keys(path: Path) -> None:
    with Keyring(path) as a, Keyring(path) as b:
        va = a.seal_for("alice", "for alice")
        vb = b.seal_for("bob", "for bob")  # b loaded the file before alice existed
        rotated = a.rotate()
        vc = b.seal("platform")
        assert key_id_of(vc) == rotated
        for k in (a, b):
            assert k.unseal_str(va) == "for alice" and k.unseal_str(vb) == "for bob"
    with Keyring(path) as c:
        assert c.unseal_str(va) == "for alice" and c.unseal_str(vb) == "for bob"
        assert c.unseal_str(vc) == "platform"


def test_threads_on_two_keyrings_lose_no_subject(path: Path) -> None:
    rings = [Keyring(path), Keyring(path)]
    sealed: dict[str, str] = {}
    errors: list[BaseException] = []

    def work(ring: Keyring, tag: str) -> None:
        try:
            for i in range(15):
                sealed[f"{tag}-{i}"] = ring.seal_for(f"{tag}-{i}", f"secret {tag}-{i}")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(rings[n % 2], f"t{n}")) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        assert not any(t.is_alive() for t in threads) and not errors
        with Keyring(path) as fresh:
            for subject, value in sealed.items():
                assert fresh.unseal_str(value) == f"secret {subject}"
        assert len(doc(path)["subjects"]) == 90
    finally:
        for r in rings:
            r.close()


_CHILD = """
import sys, time
from pathlib import Path
from libs.events.sealing import Keyring
path, tag, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
with Keyring(path) as kr:
    print("ready", flush=True)
    deadline = time.monotonic() + 30
    while not go.exists():
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.001)
    for i in range(20):
        print(kr.seal_for(f"{tag}-{i}", f"secret {tag}-{i}"), flush=True)
    if tag == "p0":
        print(kr.rotate(), flush=True)
"""


def test_processes_adding_subjects_concurrently_lose_none(path: Path, tmp_path: Path) -> None:
    Keyring(path).close()
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs: list[subprocess.Popen[str]] = []
    try:
        for n in range(3):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _CHILD, str(path), f"p{n}", str(go)],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline() == "ready\n"
        go.touch()
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    with Keyring(path) as kr:
        for n, (out, _) in enumerate(outputs):
            lines = out.split()
            values = lines[:20]
            assert len(values) == 20
            for i, value in enumerate(values):
                assert kr.unseal_str(value) == f"secret p{n}-{i}"
        assert kr.active_key_id == outputs[0][0].split()[20]
    assert len(doc(path)["subjects"]) == 60


# -- crypto-shredding ----------------------------------------------------------------------------


def test_destroy_subject_shreds_its_values_only(path: Path) -> None:
    with Keyring(path) as kr, Keyring(path) as other:
        alice = [kr.seal_for("alice", f"alice {i}") for i in range(3)]
        bob = kr.seal_for("bob", "bob's")
        platform = kr.seal(SECRET)
        assert other.unseal_str(alice[0]) == "alice 0"  # other holds alice's key in memory
        alice_key = subject_entry(path, alice[0])["keys"]["1"]
        assert alice_key.encode() in path.read_bytes()

        gone = kr.destroy_subject("alice")

        assert gone == (key_id_of(alice[0]),)
        raw = path.read_bytes()
        assert alice_key.encode() not in raw
        assert base64.urlsafe_b64decode(alice_key).hex().encode() not in raw
        assert key_id_of(alice[0]).split(".")[1].encode() in raw  # the tombstone
        for k in (kr, other):
            for v in alice:
                with pytest.raises(KeyDestroyed, match="destroyed") as e:
                    k.unseal(v)
                assert not isinstance(e.value, UnknownKey)
                assert "alice" not in str(e.value)
            assert k.unseal_str(bob) == "bob's"
            assert k.unseal_str(platform) == SECRET
            with pytest.raises(SubjectDestroyed):
                k.seal_for("alice", "again")
        assert kr.destroy_subject("alice") == ()  # idempotent
    with Keyring(path) as reopened:
        with pytest.raises(KeyDestroyed):
            reopened.unseal(alice[0])
        with pytest.raises(SubjectDestroyed):
            reopened.seal_for("alice", "again")
        assert reopened.unseal_str(bob) == "bob's"


def test_destroying_an_unseen_subject_refuses_it_later(kr: Keyring, path: Path) -> None:
    assert kr.destroy_subject("carol") == ()
    with pytest.raises(SubjectDestroyed, match="destroyed"):
        kr.seal_for("carol", SECRET)
    assert doc(path)["subjects"] == {}


# -- rotation -------------------------------------------------------------------------------------


def test_rotate_keeps_old_keys(kr: Keyring, path: Path) -> None:
    first = kr.active_key_id
    old = kr.seal(SECRET)
    second = kr.rotate()
    assert second != first and kr.active_key_id == second
    assert second.rsplit(".", 1)[1] == "2"
    new = kr.seal("new")
    assert key_id_of(new) == second and key_id_of(old) == first
    third = kr.rotate()
    assert kr.unseal_str(old) == SECRET and kr.unseal_str(new) == "new"
    assert key_id_of(kr.seal("x")) == third
    assert sorted(doc(path)["platform"]) == ["1", "2", "3"]


# -- fields of event data -------------------------------------------------------------------------


def test_seal_and_unseal_fields(kr: Keyring) -> None:
    data = {
        "name": "mail",
        "password": "hunter2",
        "dns": {"provider": "route53", "api_token": "tok-123", "extra": {"deep": "d"}},
        "empty": None,
        "count": 3,
    }
    fields = ["password", "dns.api_token", "dns.extra.deep", "empty", "missing", "nope.x"]
    sealed = seal_fields(data, fields, kr)
    assert data["password"] == "hunter2" and data["dns"]["api_token"] == "tok-123"  # type: ignore[index]
    assert is_sealed(sealed["password"]) and is_sealed(sealed["dns"]["api_token"])
    assert is_sealed(sealed["dns"]["extra"]["deep"])
    assert sealed["name"] == "mail" and sealed["dns"]["provider"] == "route53"
    assert sealed["empty"] is None and "missing" not in sealed and "nope" not in sealed
    text = json.dumps(sealed)
    assert "hunter2" not in text and "tok-123" not in text
    assert seal_fields(sealed, fields, kr) == sealed  # already sealed: left alone
    assert unseal_fields(sealed, fields, kr) == data
    assert sealed["password"].startswith("hp:sealed:v1:")


def test_seal_fields_for_a_subject_is_shredded_with_it(kr: Keyring) -> None:
    data = {"email": "alice@example.com", "profile": {"phone": "+33 1 23"}, "plan": "free"}
    fields = ["email", "profile.phone"]
    sealed = seal_fields(data, fields, kr, subject="alice")
    assert key_id_of(sealed["email"]).startswith("s.")
    assert unseal_fields(sealed, fields, kr) == data
    kr.destroy_subject("alice")
    with pytest.raises(KeyDestroyed):
        unseal_fields(sealed, fields, kr)
    assert redact(sealed) == {
        "email": SEALED_PLACEHOLDER,
        "profile": {"phone": SEALED_PLACEHOLDER},
        "plan": "free",
    }


def test_seal_fields_refuses_non_strings(kr: Keyring) -> None:
    with pytest.raises(SealingError, match="'port' is a int"):
        seal_fields({"port": 5432}, ["port"], kr)
    with pytest.raises(TypeError):
        seal_fields({"a": "b"}, "a", kr)


def test_redact_replaces_sealed_values_at_any_depth(kr: Keyring) -> None:
    v = kr.seal(SECRET)
    data = {
        "top": v,
        "plain": "hp:sealed is only a prefix check when it starts the string",
        "nested": {"list": [v, "keep", {"deeper": v}, (v, 1)], "n": 1, "none": None},
    }
    out = redact(data)
    assert out == {
        "top": SEALED_PLACEHOLDER,
        "plain": data["plain"],
        "nested": {
            "list": [
                SEALED_PLACEHOLDER,
                "keep",
                {"deeper": SEALED_PLACEHOLDER},
                [SEALED_PLACEHOLDER, 1],
            ],
            "n": 1,
            "none": None,
        },
    }
    assert data["top"] == v  # the input is not changed
    assert "hp:sealed:" not in json.dumps(out)


# -- nothing secret in reprs and messages ---------------------------------------------------------


def test_no_key_material_in_repr(kr: Keyring, path: Path) -> None:
    kr.seal_for("alice", SECRET)
    kr.rotate()
    keys = all_key_strings(path)
    assert len(keys) == 3 * 4  # two platform keys, the subject key, alice's key
    shown = " ".join([repr(kr), str(kr), repr(vars(kr))])
    assert str(path) in repr(kr)
    for k in keys:
        assert k not in shown
    assert "alice" not in shown


def test_no_plaintext_or_key_in_error_messages(kr: Keyring, path: Path) -> None:
    value = kr.seal_for("alice", SECRET)
    messages = []
    for bad in (value[:-2] + "AA", value[:-1], value.replace("hp:sealed:v1:", "hp:sealed:v9:")):
        with pytest.raises(SealingError) as e:
            kr.unseal(bad)
        messages.append(str(e.value))
    kr.destroy_subject("alice")
    for call in (lambda: kr.unseal(value), lambda: kr.seal_for("alice", SECRET)):
        with pytest.raises(KeyDestroyed) as e:
            call()
        messages.append(str(e.value))
    with pytest.raises(SealingError) as e:
        seal_fields({"n": 1}, ["n"], kr)
    messages.append(str(e.value))
    keys = all_key_strings(path)
    for m in messages:
        assert SECRET not in m and "alice" not in m
        assert not any(k in m for k in keys)


def test_blind_index_is_keyed_stable_and_separated_by_purpose(kr: Keyring, tmp_path: Path) -> None:
    a = kr.blind_index("username", "alice")
    assert a == kr.blind_index("username", "alice")  # stable: usable as a unique key
    assert a != kr.blind_index("username", "alicf")
    assert a != kr.blind_index("email", "alice")  # purposes never collide
    assert "alice" not in a and len(a) == 64
    kr.rotate()
    assert kr.blind_index("username", "alice") == a  # rotation keeps look-ups working
    with Keyring.open(tmp_path / "other.json") as other:
        assert other.blind_index("username", "alice") != a  # keyed: another keyring differs
    with pytest.raises(SealingError):
        kr.blind_index("user:name", "alice")
