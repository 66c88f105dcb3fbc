"""The test harness removes the folders its sessions made (a Postgres cluster each: left by
every run, they filled the disk and made the notify tests' disk alert fire), and never deletes
into a file system mounted below one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.servers import remove_tree

ROOT = Path(__file__).resolve().parents[1]


def test_a_session_folder_is_removed_with_what_it_holds(tmp_path: Path) -> None:
    root = tmp_path / "hp-test-x"
    (root / "pg" / "base").mkdir(parents=True)
    (root / "pg" / "base" / "1").write_bytes(b"x" * 1000)
    (root / "link").symlink_to(tmp_path)  # a link is removed, not followed
    remove_tree(root)
    assert not root.exists()
    assert tmp_path.exists()


def test_nothing_is_deleted_in_a_file_system_mounted_below_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "hp-test-y"
    (root / "mnt").mkdir(parents=True)
    script = textwrap.dedent(
        f"""
        import subprocess, sys
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        from tests.support.servers import remove_tree
        root = Path({str(root)!r})
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(root / "mnt")], check=True)
        (root / "mnt" / "kept").write_text("data")
        remove_tree(root)
        print((root / "mnt" / "kept").read_text())
        """
    )
    # a mount namespace of its own: the tmpfs goes when the child ends
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "left in place" in done.stdout and done.stdout.strip().endswith("data"), done.stdout
