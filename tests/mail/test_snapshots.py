"""The mail store's snapshot for a backup and a restored store taken back
(services/mail/snapshots.py), on the real file system, as root: messages hard-linked, Dovecot's
own files copied, deliveries under way left out, links never followed; a restored store given
to the vmail user whatever the backup held (a fifo, a link to a file elsewhere, odd modes), a
mailbox found in the store kept aside, and the work finished when it was cut short."""

from __future__ import annotations

import os
import pwd
import stat
import time
from pathlib import Path

import pytest

from services.mail import snapshots
from services.mail.snapshots import BEFORE_RESTORE, PENDING, adopt, forget, forget_stale, take

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the mail store is root's: run as root")

VMAIL = pwd.getpwnam("mail")


def _mailbox(store: Path, folder: str, messages: dict[str, bytes]) -> Path:
    """A mailbox as Dovecot keeps it: Maildir with new/cur/tmp, a subfolder, its indexes, a
    Sieve script and the active-script link."""
    home = store / folder
    md = home / "Maildir"
    for sub in ("new", "cur", "tmp", ".Sent/new", ".Sent/cur", ".Sent/tmp"):
        (md / sub).mkdir(parents=True)
    for name, body in messages.items():
        (md / name).write_bytes(body)
    (md / "tmp" / "1700000000.M1P2.host").write_bytes(b"half a delivery")
    (md / "dovecot.index.log").write_bytes(b"index log")
    (md / "dovecot-uidlist").write_bytes(b"3 V1 N2\n")
    (home / "sieve").mkdir()
    (home / "sieve" / "filters.sieve").write_text('require "fileinto";\n')
    (home / ".dovecot.sieve").symlink_to("sieve/filters.sieve")
    return home


def test_a_snapshot_links_messages_copies_the_rest_and_leaves_deliveries_out(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    a = _mailbox(
        store,
        "aaa",
        {
            "cur/1700000001.M1P1.host:2,S": b"read mail",
            "new/1700000002.M2P1.host": b"new mail",
            ".Sent/cur/1700000003.M3P1.host:2,S": b"sent mail",
        },
    )
    _mailbox(store, "bbb", {})
    dest = tmp_path / "snapshots" / "s1"
    taken = take(store, dest)

    assert taken.mailboxes == 2
    copy = dest / "aaa" / "Maildir"
    for name in (
        "cur/1700000001.M1P1.host:2,S",
        "new/1700000002.M2P1.host",
        ".Sent/cur/1700000003.M3P1.host:2,S",
    ):
        # the very message file: no second copy of a mail store's bytes
        assert os.stat(copy / name).st_ino == os.stat(a / "Maildir" / name).st_ino, name
    # Dovecot rewrites its own files in place: copies, so the backup reads them as they were
    for name in ("dovecot.index.log", "dovecot-uidlist"):
        assert os.stat(copy / name).st_ino != os.stat(a / "Maildir" / name).st_ino
        assert (copy / name).read_bytes() == (a / "Maildir" / name).read_bytes()
    (a / "Maildir" / "dovecot-uidlist").write_bytes(b"changed later")
    assert (copy / "dovecot-uidlist").read_bytes() == b"3 V1 N2\n"
    # a delivery under way is not a message yet: tmp/ is there, empty
    assert (copy / "tmp").is_dir() and list((copy / "tmp").iterdir()) == []
    assert list((copy / ".Sent" / "tmp").iterdir()) == []
    # the Sieve script and the link to it, as a link
    assert (dest / "aaa" / "sieve" / "filters.sieve").read_text() == 'require "fileinto";\n'
    assert os.readlink(dest / "aaa" / ".dovecot.sieve") == "sieve/filters.sieve"
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o700
    # aaa: 3 messages, 2 Dovecot files, the script; bbb: 2 Dovecot files, the script
    assert taken.files == 9
    assert taken.bytes >= len(b"read mail" + b"new mail" + b"sent mail")

    # forgotten once stored (the messages stay in the store); again: nothing to forget
    assert forget(tmp_path, "s1") is True
    assert not dest.exists() and (a / "Maildir" / "new" / "1700000002.M2P1.host").exists()
    assert forget(tmp_path, "s1") is False


def test_a_message_renamed_while_the_snapshot_is_taken_is_found_under_its_new_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    home = _mailbox(store, "aaa", {"cur/1700000001.M1P1.host:2,": b"a message"})
    cur = home / "Maildir" / "cur"
    real_link = os.link
    renamed = []

    def link(src: str | Path, dst: str | Path, **kw: object) -> None:
        if not renamed and str(src).endswith(":2,"):
            # Dovecot marks the message read between the listing and the link
            os.rename(cur / "1700000001.M1P1.host:2,", cur / "1700000001.M1P1.host:2,S")
            renamed.append(True)
        real_link(src, dst, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshots.os, "link", link)
    take(store, tmp_path / "snap")
    assert renamed
    names = os.listdir(tmp_path / "snap" / "aaa" / "Maildir" / "cur")
    assert names == ["1700000001.M1P1.host:2,S"]


def test_a_folder_swapped_for_a_link_while_the_snapshot_is_taken_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's user swaps a mailbox's Maildir for a link to a folder only root may read,
    after the snapshot listed the mailbox and before it reads the Maildir: the snapshot holds
    the link, not what it points to (the backup would carry root's files into a mailbox)."""
    store = tmp_path / "store"
    home = _mailbox(store, "aaa", {"cur/1700000001.M1P1.host:2,S": b"a message"})
    secret = tmp_path / "root-only" / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (secret / sub).mkdir(parents=True)
    (secret / "cur" / "1700000009.M9P9.host:2,S").write_bytes(b"root's secret")
    secret.parent.chmod(0o700)
    real_readlink = os.readlink

    def readlink(path: object, **kw: object) -> str:
        # `.dovecot.sieve` comes before `Maildir`: swap the folder now
        if (home / "Maildir").is_dir() and not (home / "Maildir").is_symlink():
            os.rename(home / "Maildir", home / "Maildir.moved")
            (home / "Maildir").symlink_to(secret)
        return real_readlink(path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshots.os, "readlink", readlink)
    take(store, tmp_path / "snap")
    copied = tmp_path / "snap" / "aaa" / "Maildir"
    assert copied.is_symlink() and os.readlink(copied) == str(secret)
    leaked = [p for p in (tmp_path / "snap").rglob("*") if p.is_file() and not p.is_symlink()]
    assert all(b"root's secret" not in p.read_bytes() for p in leaked), leaked


def test_no_store_yet_gives_an_empty_snapshot_and_an_existing_one_is_not_overwritten(
    tmp_path: Path,
) -> None:
    taken = take(tmp_path / "no-store", tmp_path / "snapshots" / "s1")
    assert (taken.mailboxes, taken.files, taken.bytes) == (0, 0, 0)
    assert list((tmp_path / "snapshots" / "s1").iterdir()) == []
    with pytest.raises(FileExistsError):
        take(tmp_path / "no-store", tmp_path / "snapshots" / "s1")
    assert forget(tmp_path, "s1") is True
    assert not (tmp_path / "snapshots" / "s1").exists()


def test_snapshots_a_cut_backup_left_go_after_a_day(tmp_path: Path) -> None:
    old, new = tmp_path / "snapshots" / "old", tmp_path / "snapshots" / "new"
    for folder in (old, new):
        (folder / "aaa").mkdir(parents=True)
    day_ago = time.time() - 25 * 3600
    os.utime(old, (day_ago, day_ago))
    assert forget_stale(tmp_path) == ["old"]
    assert not old.exists() and new.exists()
    assert forget_stale(tmp_path / "nothing-here") == []


def test_a_restored_store_is_given_to_the_vmail_user_and_moved_in(tmp_path: Path) -> None:
    root, store = tmp_path / "root", tmp_path / "root" / "store"
    store.mkdir(parents=True)
    pending = root / PENDING
    _mailbox(pending, "aaa", {"cur/1700000001.M1P1.host:2,S": b"kept mail"})
    _mailbox(pending, "bbb", {"new/1700000002.M2P1.host": b"other mail"})
    # what a crafted backup could hold: odd modes, a fifo, a link to a file elsewhere
    (pending / "aaa" / "Maildir" / "cur" / "1700000001.M1P1.host:2,S").chmod(0o4777)
    os.mkfifo(pending / "aaa" / "a-fifo")
    outside = tmp_path / "outside.txt"
    outside.write_text("root's own")
    (pending / "aaa" / "escape").symlink_to(outside)
    # a mailbox the store has already (made by a sign-in before the restore was taken in)
    (store / "bbb" / "Maildir" / "new").mkdir(parents=True)
    (store / "bbb" / "Maildir" / "new" / "1700000009.M9P9.host").write_bytes(b"newer")

    moved = adopt(root, store, VMAIL.pw_uid, VMAIL.pw_gid)

    assert sorted(moved) == ["aaa", "bbb"]
    assert not pending.exists()
    message = store / "aaa" / "Maildir" / "cur" / "1700000001.M1P1.host:2,S"
    assert message.read_bytes() == b"kept mail"
    for path in (store / "aaa", store / "bbb", *store.glob("*/**/*")):
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == (VMAIL.pw_uid, VMAIL.pw_gid), path
        if stat.S_ISDIR(st.st_mode):
            assert stat.S_IMODE(st.st_mode) == 0o700, path
        elif stat.S_ISREG(st.st_mode):
            assert stat.S_IMODE(st.st_mode) == 0o600, path
    assert not os.path.lexists(store / "aaa" / "a-fifo")
    # the link itself changed hands; what it points to did not
    assert os.stat(outside).st_uid == 0 and outside.read_text() == "root's own"
    # the mailbox that was there is kept aside, not mixed in nor lost
    assert (store / "bbb" / "Maildir" / "new" / "1700000002.M2P1.host").exists()
    aside = list((root / BEFORE_RESTORE).iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("bbb-")
    assert (aside[0] / "Maildir" / "new" / "1700000009.M9P9.host").read_bytes() == b"newer"
    # nothing pending: nothing done
    assert adopt(root, store, VMAIL.pw_uid, VMAIL.pw_gid) == []


def test_a_take_in_cut_short_is_finished_at_the_next_start(tmp_path: Path) -> None:
    root, store = tmp_path / "root", tmp_path / "root" / "store"
    store.mkdir(parents=True)
    _mailbox(root / PENDING, "aaa", {"new/1700000001.M1P1.host": b"first"})
    _mailbox(root / PENDING, "bbb", {"new/1700000002.M2P1.host": b"second"})
    # the first start moved aaa in, then stopped
    os.rename(root / PENDING / "aaa", store / "aaa")
    assert adopt(root, store, VMAIL.pw_uid, VMAIL.pw_gid) == ["bbb"]
    assert (store / "aaa" / "Maildir" / "new" / "1700000001.M1P1.host").read_bytes() == b"first"
    assert (store / "bbb" / "Maildir" / "new" / "1700000002.M2P1.host").read_bytes() == b"second"
    assert not (root / PENDING).exists() and not (root / BEFORE_RESTORE).exists()


def test_a_pending_folder_swapped_for_a_link_is_not_followed(tmp_path: Path) -> None:
    root, store = tmp_path / "root", tmp_path / "root" / "store"
    store.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    _mailbox(elsewhere, "aaa", {"new/1700000001.M1P1.host": b"not ours"})
    (root / PENDING).symlink_to(elsewhere)
    assert adopt(root, store, VMAIL.pw_uid, VMAIL.pw_gid) == []
    assert os.lstat(elsewhere / "aaa").st_uid == 0
    assert list(store.iterdir()) == []
