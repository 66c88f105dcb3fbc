"""Every call one service makes on another with a literal subject is one its NATS user may make
(libs/events/nats_access.py CALLS): a call left out is refused by nats-server on a server
install and in the embedded stack (the request gets no answer, the caller waits out its
timeout), while the tests' harness user may call everything. Found in the source (each
`.command("<service>", "<name>", ...)` and `.query(...)` under services/<service>/)."""

from __future__ import annotations

import ast
from pathlib import Path

from libs.events.nats_access import CALLS, GATEWAY

SERVICES = Path(__file__).resolve().parents[2] / "services"
KINDS = {"command": "cmd", "query": "qry"}


def _calls(folder: Path) -> set[tuple[str, str]]:
    """(subject, where) of every call with a literal service and name under `folder`."""
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            kind = KINDS.get(node.func.attr)
            args = node.args[:2]
            if kind is None or len(args) < 2:
                continue
            if not all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args):
                continue
            service, name = (a.value for a in args)  # type: ignore[union-attr]
            if service in CALLS:
                where = f"{path.relative_to(SERVICES.parent)}:{node.lineno}"
                found.add((f"{kind}.{service}.{name}", where))
    return found


def test_every_literal_call_between_services_is_allowed_to_its_caller() -> None:
    checked = 0
    missing = []
    for user, allowed in CALLS.items():
        if user == GATEWAY or not (SERVICES / user).is_dir():
            continue
        for subject, where in sorted(_calls(SERVICES / user)):
            target = subject.split(".")[1]
            if target == user:
                continue  # its own subjects: served, not called
            checked += 1
            if subject not in allowed:
                missing.append(f"{user} calls {subject} ({where})")
    assert checked >= 30  # the scan finds the calls (a regression in it would pass vacuously)
    assert missing == [], missing
