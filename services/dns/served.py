"""What a zone's authoritative nameservers serve for a record, asked of each directly (the `served`
query): every server at once, each for `ASK_WITHIN` seconds at most, so a dead nameserver gives
an error text, never a hang.

Values come back in the canonical form `Record` gives them (TXT unquoted and joined, MX
`10 mail.example.org`, addresses as Python writes them), so they compare with what Homeport
wrote.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from services.dns.propagation import Answer, query
from services.dns.providers.protocol import Record

__all__ = ["ASK_WITHIN", "ask_served", "served_answer"]

ASK_WITHIN = 2.0  # seconds one nameserver has to answer one record
_ANSWERED = ("NOERROR", "NXDOMAIN")


async def ask_served(
    name: str, type_: str, servers: Sequence[tuple[str, int]], within: float = ASK_WITHIN
) -> dict[str, Any]:
    """Ask every server in `servers` for `name`/`type_` at once (see `served_answer`)."""
    answers = await asyncio.gather(*(query(s, name, type_, within) for s in servers))
    return served_answer(name, type_, answers)


def served_answer(name: str, type_: str, answers: Sequence[Answer]) -> dict[str, Any]:
    """`values`: what the first server that answered serves (canonical, sorted; [] for no such
    record), None when none answered; `error`: why that is not the whole truth (a server that
    did not answer, or answered otherwise), else None."""
    said = [a for a in answers if a.status in _ANSWERED]
    values: list[str] | None = None
    problems = [a.describe() for a in answers if a.status not in _ANSWERED]
    if said:
        values = _canonical(name, type_, said[0])
        problems += [a.describe() for a in said[1:] if _canonical(name, type_, a) != values]
        if len(problems) > len(answers) - len(said):
            problems.insert(0, said[0].describe())  # they disagree: say who said what
    error = None
    if not answers:
        error = "no nameserver to ask"
    elif values is None:
        error = "no nameserver answered: " + "; ".join(problems)
    elif problems:
        error = "; ".join(problems)
    return {"name": name, "type": type_, "values": values, "error": error}


def _canonical(name: str, type_: str, answer: Answer) -> list[str]:
    return list(Record(name, type_, answer.values).values)
