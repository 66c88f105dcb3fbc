"""A keyring file per service, in a folder of its own (`<dir>/keyring/<service>/keyring.json`),
and the moves from older installs: from the one shared `keyring.json` (each service's copy made
once, old values still readable) and from `<dir>/keyring/<service>.json` (moved, once)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from libs.events.sealing import (
    KEYRING_OWNERS,
    Keyring,
    SealingError,
    UnknownKey,
    keyring_file,
    previous_keyring,
    shared_keyring,
)


def make_shared(path: Path) -> tuple[str, str, str]:
    """An older install's shared keyring: values sealed by identity and apps, and a blind index."""
    with Keyring.open(path) as shared:
        return (
            shared.seal_for("user-1", "alice@example.com"),
            shared.seal_for("app-1", "app secret"),
            shared.blind_index("username", "alice"),
        )


def test_each_service_has_its_own_file_and_cannot_read_anothers(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "keyring"
    with (
        Keyring.open(keyring_file(folder, "identity")) as identity,
        Keyring.open(keyring_file(folder, "apps")) as apps,
    ):
        sealed = identity.seal_for("user-1", "alice@example.com")
        platform = identity.seal("identity's platform value")
        for value in (sealed, platform):
            with pytest.raises(UnknownKey):
                apps.unseal(value)
        assert identity.unseal_str(sealed) == "alice@example.com"
        assert apps.blind_index("username", "a") != identity.blind_index("username", "a")
    assert sorted(str(p.relative_to(folder)) for p in folder.glob("*/*.json")) == [
        "apps/keyring.json",
        "identity/keyring.json",
    ]
    for p in folder.glob("*/*.json"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
        assert stat.S_IMODE(p.parent.stat().st_mode) == 0o700


def test_only_the_services_that_seal_have_a_keyring_file() -> None:
    assert set(KEYRING_OWNERS) == {"identity", "apps", "dns", "certs", "backup", "mail", "notify"}
    for other in ("gateway", "firewall", "relay", "keyring", "../identity"):
        with pytest.raises(SealingError, match="holds no sealing keys"):
            keyring_file(Path("/k"), other)


@pytest.mark.parametrize("layout", ["embedded", "server"])
def test_each_service_starts_from_the_shared_keyring_once(tmp_path: Path, layout: str) -> None:
    folder = tmp_path / "data" / "keyring"
    folder.mkdir(parents=True)
    shared = tmp_path / "data" / "keyring.json" if layout == "embedded" else folder / "keyring.json"
    user_value, app_value, index = make_shared(shared)
    assert shared_keyring(keyring_file(folder, "identity")) == shared

    with Keyring.open(keyring_file(folder, "identity")) as identity:
        assert keyring_file(folder, "identity").read_bytes() == shared.read_bytes()
        assert stat.S_IMODE(keyring_file(folder, "identity").stat().st_mode) == 0o600
        assert identity.unseal_str(user_value) == "alice@example.com"
        assert identity.blind_index("username", "alice") == index  # look-ups keep working
        new_user = identity.seal_for("user-2", "bob@example.com")
    with Keyring.open(keyring_file(folder, "apps")) as apps:
        assert apps.unseal_str(app_value) == "app secret"
        with pytest.raises(UnknownKey):  # made after the split: identity's file only
            apps.unseal(new_user)
    assert shared.exists()  # dns, certs and backup have no copy yet

    # a copy is made once: reopening does not copy the shared file over it again
    with Keyring.open(keyring_file(folder, "identity")) as identity:
        assert identity.unseal_str(new_user) == "bob@example.com"

    # a service newer than the shared keyring starts with keys of its own, none of the others'
    with Keyring.open(keyring_file(folder, "notify")) as notify:
        with pytest.raises(UnknownKey):
            notify.unseal(user_value)
    assert shared.exists()
    for owner in ("dns", "certs", "backup", "mail"):
        Keyring.open(keyring_file(folder, owner)).close()
    assert not shared.exists() and not os.path.lexists(f"{shared}.lock")
    with Keyring.open(keyring_file(folder, "backup")) as backup:  # still its copy
        assert backup.unseal_str(user_value) == "alice@example.com"


def test_a_new_install_has_no_shared_keyring(tmp_path: Path) -> None:
    folder = tmp_path / "keyring"
    with Keyring.open(keyring_file(folder, "identity")) as identity:
        identity.seal("x")
    assert sorted(p.name for p in folder.iterdir()) == ["identity"]
    assert sorted(p.name for p in (folder / "identity").iterdir()) == [
        "keyring.json",
        "keyring.json.lock",
    ]
    assert not (tmp_path / "keyring.json").exists()


def test_other_paths_never_take_a_shared_keyring(tmp_path: Path) -> None:
    make_shared(tmp_path / "keyring.json")
    assert shared_keyring(tmp_path / "keyring.json") is None
    assert shared_keyring(tmp_path / "identity.json") is None  # not in a keyring folder
    assert shared_keyring(tmp_path / "keyring" / "gateway" / "keyring.json") is None  # no owner
    assert shared_keyring(tmp_path / "keyring" / "identity.json") is None  # the older layout
    with Keyring.open(tmp_path / "elsewhere" / "identity.json") as k:
        with pytest.raises(UnknownKey):
            k.unseal(make_shared(tmp_path / "keyring2.json")[0])


def test_a_shared_keyring_that_is_a_link_or_loose_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "keyring"
    folder.mkdir()
    real = tmp_path / "real.json"
    make_shared(real)
    (folder / "keyring.json").symlink_to(real)
    with pytest.raises(SealingError, match="cannot open the shared keyring"):
        Keyring.open(keyring_file(folder, "identity"))
    (folder / "keyring.json").unlink()
    make_shared(folder / "keyring.json")
    (folder / "keyring.json").chmod(0o640)
    with pytest.raises(SealingError, match="mode 0640"):
        Keyring.open(keyring_file(folder, "identity"))
    assert not keyring_file(folder, "identity").exists()


def test_a_keyring_put_in_place_meanwhile_is_kept(tmp_path: Path) -> None:
    folder = tmp_path / "keyring"
    make_shared(folder / "keyring.json")
    with Keyring.open(tmp_path / "restored.json") as restored:
        value = restored.seal("restored")
    keyring_file(folder, "apps").parent.mkdir()
    os.link(tmp_path / "restored.json", keyring_file(folder, "apps"))
    with Keyring.open(keyring_file(folder, "apps")) as apps:
        assert apps.unseal_str(value) == "restored"


def test_a_keyring_of_the_older_per_service_layout_moves_into_its_folder(tmp_path: Path) -> None:
    """`<dir>/keyring/identity.json` (before each service had a folder) becomes
    `<dir>/keyring/identity/keyring.json`, byte for byte, and is gone from where it was; it
    wins over a shared keyring still there (it is the newer of the two)."""
    folder = tmp_path / "keyring"
    folder.mkdir()
    old = folder / "identity.json"
    user_value, _, index = make_shared(old)
    make_shared(folder / "keyring.json")  # a shared one not yet retired: not taken
    before = old.read_bytes()
    assert previous_keyring(keyring_file(folder, "identity")) == old
    with Keyring.open(keyring_file(folder, "identity")) as identity:
        assert keyring_file(folder, "identity").read_bytes() == before
        assert identity.unseal_str(user_value) == "alice@example.com"
        assert identity.blind_index("username", "alice") == index
    assert not os.path.lexists(old) and not os.path.lexists(f"{old}.lock")
    assert previous_keyring(keyring_file(folder, "identity")) is None
    # a link in its place is refused, nothing moved
    real = tmp_path / "real.json"
    make_shared(real)
    (folder / "apps.json").symlink_to(real)
    with pytest.raises(SealingError, match="cannot open the shared keyring"):
        Keyring.open(keyring_file(folder, "apps"))
    assert not keyring_file(folder, "apps").exists()
