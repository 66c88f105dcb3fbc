"""A data directory on a small file system (a 16 MiB tmpfs the test mounts) filled by the test:
the disk alert opens at 90 % (not at 80 %), the critical one at 95 %, and both resolve once
space is freed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.events.context import Context
from tests.identity.kit import running_identity
from tests.support.bus import relaying
from tests.support.notify import notify_env, running_notify
from tests.support.servers import need_server
from tests.support.waits import wait_until

SIZE = 16 << 20


@contextlib.contextmanager
def small_fs(where: Path) -> Iterator[Path]:
    where.mkdir()
    if os.geteuid() != 0:
        need_server("a small file system (mounting a tmpfs needs root)", PermissionError())
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(where)],
        check=True,
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill_to(fs: Path, percent: float) -> None:
    """Write (or shrink) one file so that the file system is about `percent` full."""
    st = os.statvfs(fs)
    total = st.f_blocks * st.f_frsize
    path = fs / "filler"
    have = path.stat().st_size if path.exists() else 0
    used_by_others = (st.f_blocks - st.f_bfree) * st.f_frsize - have
    want = max(0, int(total * percent / 100) - used_by_others)
    with path.open("ab") as f:
        f.truncate(0)
        f.write(b"\0" * want)  # tmpfs keeps written pages: real use, not a sparse file


async def test_disk_alerts_at_90_and_95_percent(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> None:
    with small_fs(tmp_path / "data") as data:
        env = notify_env(
            dsn=dsn,
            nats_url=nats_url,
            uniq=uniq,
            tmp_path=data,
            extra={"HP_NOTIFY_DISK_PATHS": str(data), "HP_NOTIFY_MEMORY_AVAILABLE": "0.001"},
        )
        async with (
            running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as ident,
            relaying(dsn, nats_url, uniq),
            running_notify(monkeypatch, env),
        ):
            admin = Context(actor=await ident.set_up(), admin=True)

            async def open_keys() -> set[str]:
                got = await ident.bus.query("notify", "alerts", {}, ctx=admin)
                return {a["key"] for a in got["items"] if a["open"]}

            fill_to(data, 80)
            await asyncio.sleep(1.5)  # three of the service's rounds (0.5 s in tests) at 80 %
            assert not {k for k in await open_keys() if k.startswith("disk:")}

            fill_to(data, 92)

            async def warned() -> bool:
                return f"disk:90:{data}" in await open_keys()

            await wait_until(warned, 15, "the disk alert at 90 %")
            assert f"disk:95:{data}" not in await open_keys()
            items = (await ident.bus.query("notify", "notifications", {}, ctx=admin))["items"]
            title = next(i["title"] for i in items if i["kind"] == "opened")
            assert title.startswith("Disk 9") and str(data) in title

            fill_to(data, 97)

            async def critical() -> bool:
                return f"disk:95:{data}" in await open_keys()

            await wait_until(critical, 15, "the disk alert at 95 %")

            (data / "filler").unlink()

            async def cleared() -> bool:
                return not {k for k in await open_keys() if k.startswith("disk:")}

            await wait_until(cleared, 15, "the disk alerts to resolve")
            items = (await ident.bus.query("notify", "notifications", {}, ctx=admin))["items"]
            assert sorted(i["kind"] for i in items if "Disk" in i["title"]) == [
                "opened",
                "opened",
                "resolved",
                "resolved",
            ]
