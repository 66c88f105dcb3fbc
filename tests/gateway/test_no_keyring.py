"""The gateway process holds no sealing key: started as the stack starts it, it opens no keyring
and makes none (its environment names none, so a keyring it opened would be made at the
default path under its working directory)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from deploy.embedded import free_port

REPO = Path(__file__).resolve().parents[2]


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _open_files(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue  # closed meanwhile
    return out


async def test_the_gateway_process_has_no_sealing_key(
    dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> None:
    work, data = tmp_path / "work", tmp_path / "data"
    work.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HP_")}
    env |= {
        "PYTHONPATH": str(REPO),
        "HP_DATABASE_URL": dsn,
        "HP_NATS_URL": nats_url,
        "HP_EVENTS_STREAM": f"EV_{uniq}",
        "HP_EVENTS_PREFIX": f"t{uniq}.evt",
        "HP_DATA_DIR": str(data),
        "HP_HTTP_HOST": "127.0.0.1",
        "HP_HTTP_PORT": str(port),
        "HP_DRAIN_SECONDS": "1",
    }
    with (tmp_path / "gateway.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.gateway"],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while not await asyncio.to_thread(_ready, port):
                assert proc.poll() is None, (tmp_path / "gateway.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the gateway was not ready within 30 s"
                await asyncio.sleep(0.1)
            files = _open_files(proc.pid)
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 30)
    assert proc.returncode == 0, (tmp_path / "gateway.log").read_text()[-3000:]
    assert not any(v.startswith(b"HP_KEYRING=") for v in environ)
    assert not [f for f in files if "keyring" in f or f.endswith(".json")], files
    made = [p for p in (*work.rglob("*"), *data.rglob("*")) if "keyring" in p.name]
    assert made == []
