"""Bus handlers declared where they are written: `@command("install")` and `@query("apps")`
mark methods; `routes_of(...)` collects the marked methods of the objects a service serves.

`libs.events.wiring.serve` checks them against the service's contract (`libs/contracts`), so a
handler without a schema, or a schema without a handler, stops the service at start.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from libs.contracts import Contract, Kind
from libs.events.bus import Handler

__all__ = ["Route", "check_routes", "command", "query", "routes_of"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_MARK = "__homeport_bus__"


@dataclass(frozen=True, slots=True)
class Route:
    """One served command or query: its kind, name and bound handler."""

    kind: Kind
    name: str
    handler: Handler


def _mark(kind: Kind, name: str) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        marks: list[tuple[Kind, str]] = list(getattr(fn, _MARK, ()))
        marks.append((kind, name))
        setattr(fn, _MARK, tuple(marks))
        return fn

    return decorate


def command(name: str) -> Callable[[F], F]:
    """Serve the decorated method as command `hp.cmd.<service>.<name>`."""
    return _mark("cmd", name)


def query(name: str) -> Callable[[F], F]:
    """Serve the decorated method as query `hp.qry.<service>.<name>`."""
    return _mark("qry", name)


def routes_of(*objects: object) -> list[Route]:
    """Every marked method of `objects`, bound; a name declared twice is an error."""
    found: dict[tuple[Kind, str], Route] = {}
    for obj in objects:
        for attr, fn in inspect.getmembers(type(obj), callable):
            for kind, name in getattr(fn, _MARK, ()):
                if (kind, name) in found:
                    raise ValueError(f"{kind} {name} has two handlers ({attr} is the second)")
                found[(kind, name)] = Route(kind, name, getattr(obj, attr))
    return list(found.values())


def check_routes(contract: Contract, routes: Iterable[Route]) -> None:
    """Raise unless `routes` and `contract` name exactly the same commands and queries."""
    served = {(r.kind, r.name) for r in routes}
    declared = {("cmd", n) for n in contract.commands} | {("qry", n) for n in contract.queries}
    missing = sorted(f"{k} {n}" for k, n in declared - served)
    extra = sorted(f"{k} {n}" for k, n in served - declared)
    if missing or extra:
        raise ValueError(
            f"the handlers of {contract.service} do not match libs/contracts/"
            f"{contract.service}.py: without a handler: {missing or 'none'}; "
            f"without a schema: {extra or 'none'}"
        )
