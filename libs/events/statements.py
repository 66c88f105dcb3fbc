"""A read model's change as SQL statements that run inside the statement of the append itself.

An inline read model (inline.py) is written in the transaction of its events. When one event's
change is a few data-modifying statements, they can instead be parts of the append's own
statement, as data-modifying CTEs:

    WITH appended AS (SELECT ... FROM events.append($1, ..., $8)),
         s0 AS (UPDATE identity.users u SET version = a.out_version FROM appended a
                WHERE u.user_id = $9)
    SELECT ... FROM appended

One round trip instead of two, and one statement is atomic on its own: a command whose decision
needed no query of its own then needs no BEGIN and COMMIT either (repository.py, `OnDemand`).

The rules a `Statement` keeps:
- It reads the appended event (`out_position`, `out_version`, `out_recorded_at`) from the
  relation `appended`, and joins it (`FROM appended` / `USING appended`). Postgres runs the
  sub-statements of one WITH in no set order; a join makes every row it changes wait for the
  append, so the append's locks (the projection's lock shared, then the head) come first, as
  they do for a writer that applies after appending. `compose` refuses a statement without it.
- Its parameters are numbered from $1; `compose` renumbers them after the head's.
- The statements of one change all see the database as it was before the statement began:
  they must not depend on each other's writes, nor change one row twice.

The same statements rebuild the read model (`RECORDED_HEAD`: the event's position, version and
time as parameters), so there is one description of each change for the live path and a replay.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["RECORDED_HEAD", "Statement", "compose"]

_PARAM = re.compile(r"\$(\d+)")
_APPENDED = re.compile(r"\bappended\b")

# `appended` for a replay: an event already in the log, its figures given as parameters.
RECORDED_HEAD = (
    "SELECT $1::bigint AS out_position, $2::integer AS out_version,"
    " $3::timestamptz AS out_recorded_at"
)


@dataclass(frozen=True, slots=True)
class Statement:
    """One data-modifying statement of a read model's change (see the module's rules)."""

    sql: str
    args: tuple[Any, ...] = ()


def compose(
    head: str, head_args: Sequence[Any], statements: Sequence[Statement], result: str
) -> tuple[str, list[Any]]:
    """One statement: `head` as the relation `appended`, each statement a CTE after it (its
    parameters renumbered), then `result` (a SELECT, e.g. of `appended`)."""
    parts = [f"appended AS ({head})"]
    args = list(head_args)
    for i, st in enumerate(statements):
        if not _APPENDED.search(st.sql):
            raise ValueError(f"a read-model statement must join `appended`: {st.sql}")
        sql = _PARAM.sub(_shifted(len(args)), st.sql)
        parts.append(f"s{i} AS ({sql})")
        args.extend(st.args)
    return f"WITH {', '.join(parts)} {result}", args


def _shifted(offset: int) -> Callable[[re.Match[str]], str]:
    def shift(m: re.Match[str]) -> str:
        return f"${int(m[1]) + offset}"

    return shift
