"""What DNS serves of the records mail needs, beside what Homeport wants: each record of the
domain view gets `found` (the values served, None when unknown), `ok` (found is what Homeport
wants, in any order) and `error` (why unknown, or what differs).

The dns service is asked (`served`: the zone's authoritative nameservers, directly) when the
view is asked for (the sync asks it only about a DKIM rotation's next key, while one waits).
An answer is kept `ttl` seconds (one that is not all ok at most `_RECHECK`, so a fix shows
soon) and the views of one domain asked at once share one ask, so a dashboard refreshed in many
tabs does not flood the nameservers. A dns service that
does not answer makes every `found` unknown with the reason; the view is answered all the same.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from libs.contracts.dns import MAX_SERVED
from libs.events.bus import BusClient, BusError
from services.mail.people import SYSTEM

__all__ = ["FoundRecords"]

# dns answers within ~3.5 s (servers found in 1.5 s, each asked for 2 s); the gateway gives the
# whole view 5 s.
_ASK_TIMEOUT = 4.0
_RECHECK = 5.0  # seconds an answer with a record not ok is kept at most

_Key = tuple[tuple[str, str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class _Kept:
    key: _Key
    until: float
    records: list[dict[str, Any]]


@dataclass
class FoundRecords:
    """The `found` side of a domain's records, asked of dns and kept a moment."""

    bus: BusClient
    ttl: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _kept: dict[str, _Kept] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def check(self, domain: str, wanted: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """`wanted` (name, type, values each) with found, ok and error added (new dicts)."""
        if not wanted:
            return []
        key: _Key = tuple((w["name"], w["type"], tuple(sorted(w["values"]))) for w in wanted)
        async with self._locks.setdefault(domain, asyncio.Lock()):
            kept = self._kept.get(domain)
            if kept is not None and kept.key == key and kept.until > self.clock():
                return list(kept.records)
            records = await self._ask(wanted)
            now = self.clock()
            self._kept = {d: k for d, k in self._kept.items() if k.until > now}
            keep = self.ttl if all(r["ok"] for r in records) else min(self.ttl, _RECHECK)
            if keep > 0:
                self._kept[domain] = _Kept(key, now + keep, records)
            return list(records)

    async def _ask(self, wanted: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        chunks = [wanted[i : i + MAX_SERVED] for i in range(0, len(wanted), MAX_SERVED)]
        replies = await asyncio.gather(*(self._served(c) for c in chunks))
        answers = [a for reply in replies for a in reply]
        return [_compare(w, a) for w, a in zip(wanted, answers, strict=True)]

    async def _served(self, records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """dns's answer for each of `records` (in order); an error for each when dns fails."""
        payload = {
            "records": [
                {"name": r["name"], "type": r["type"], "expected": r["values"]} for r in records
            ]
        }
        try:
            reply = await self.bus.query("dns", "served", payload, ctx=SYSTEM, timeout=_ASK_TIMEOUT)
            answers = reply["records"]
            if not isinstance(answers, list) or len(answers) != len(records):
                raise TypeError("not one answer for each record")
        except BusError as e:
            why = f"DNS could not be asked: {e.message}"
            return [{"values": None, "error": why}] * len(records)
        except (TypeError, KeyError) as e:
            why = f"DNS could not be asked: the dns service answered out of form ({e})"
            return [{"values": None, "error": why}] * len(records)
        return [a if isinstance(a, Mapping) else {} for a in answers]


def _compare(wanted: Mapping[str, Any], answer: Mapping[str, Any]) -> dict[str, Any]:
    """`wanted` with what dns said of it: found, ok, error."""
    values = answer.get("values")
    told = answer.get("error")
    if not isinstance(values, list):
        error = str(told) if told else "DNS did not say what it serves"
        return {**wanted, "found": None, "ok": False, "error": error}
    found = [str(v) for v in values]
    same = answer.get("same") is True  # dns compares, in the form it writes records
    problems = []
    if not found:
        problems.append("not served by the domain's nameservers")
    elif not same:
        problems.append("the nameservers serve other values")
    if told:
        problems.append(str(told))
    return {
        **wanted,
        "found": found,
        "ok": same and not told,
        "error": "; ".join(problems) or None,
    }
