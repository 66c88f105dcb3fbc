"""The idle-memory benchmark refuses a figure other processes lowered (bench/memory.py)."""

from __future__ import annotations

import subprocess

from bench.memory import strangers
from deploy.embedded import find_binary, free_port


def _nats() -> subprocess.Popen[bytes]:
    argv = [find_binary("nats-server"), "-a", "127.0.0.1", "-p", str(free_port())]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_server_binary_run_outside_the_stack_is_named() -> None:
    """PSS splits shared pages with every process of the same binary: a second nats-server
    makes the stack's read low, so the benchmark names it (and calls its figure a miss)."""
    ours, other = _nats(), _nats()
    try:
        state = {"parts": [{"name": "nats", "pid": ours.pid}]}
        found = strangers(state)
        assert f"nats-server {other.pid}" in found
        assert f"nats-server {ours.pid}" not in found
        other.terminate()
        other.wait(10)
        assert f"nats-server {other.pid}" not in strangers(state)
    finally:
        for p in (ours, other):
            p.kill()
            p.wait(10)
