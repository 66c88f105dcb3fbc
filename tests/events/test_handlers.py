"""Declared bus handlers: what `serve()` collects and the check against the contract."""

from __future__ import annotations

from typing import Any

import pytest

from libs.contracts import Contract
from libs.contracts.errors import Invalid
from libs.contracts.schema import obj, string
from libs.events.handlers import check_routes, command, query, routes_of

CONTRACT = Contract(
    "things",
    commands={"make": obj({"name": string(maxLength=8)}, required=["name"])},
    queries={"list": obj({})},
)


class Commands:
    @command("make")
    async def make(self, payload: dict[str, Any]) -> Any:
        return payload["name"]


class Queries:
    @query("list")
    async def list_(self, payload: dict[str, Any]) -> Any:
        return []

    async def helper(self) -> None:  # not marked: not served
        return None


async def test_marked_methods_are_collected_bound_and_match_the_contract() -> None:
    routes = routes_of(Commands(), Queries())
    assert sorted((r.kind, r.name) for r in routes) == [("cmd", "make"), ("qry", "list")]
    check_routes(CONTRACT, routes)
    make = next(r for r in routes if r.name == "make")
    assert await make.handler({"name": "x"}) == "x"


def test_a_handler_without_a_schema_or_a_schema_without_a_handler_is_refused() -> None:
    with pytest.raises(ValueError, match=r"without a handler: \['qry list'\]"):
        check_routes(CONTRACT, routes_of(Commands()))

    class Extra:
        @command("destroy")
        async def destroy(self, payload: dict[str, Any]) -> Any:
            return None

    with pytest.raises(ValueError, match=r"without a schema: \['cmd destroy'\]"):
        check_routes(CONTRACT, routes_of(Commands(), Queries(), Extra()))


def test_one_name_served_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="cmd make has two handlers"):
        routes_of(Commands(), Commands())


def test_the_contract_names_the_field_at_fault() -> None:
    with pytest.raises(Invalid) as missing:
        CONTRACT.check("cmd", "make", {})
    assert missing.value.field == "name"
    with pytest.raises(Invalid) as long:
        CONTRACT.check("cmd", "make", {"name": "x" * 5000})
    assert long.value.field == "name"
    with pytest.raises(Invalid) as unknown:
        CONTRACT.check("cmd", "make", {"name": "a", "is_admin": True})
    assert unknown.value.field == "is_admin"


def test_an_anchored_pattern_refuses_a_trailing_newline() -> None:
    """`$` ends the text as in JSON Schema: Python's would also match before a final "\\n"."""
    contract = Contract(
        "things",
        commands={
            "name": obj({"name": string(pattern=r"^[a-z]+$")}, required=["name"]),
            "price": obj({"price": string(pattern=r"^[0-9]+[$]?$")}, required=["price"]),
        },
        queries={},
    )
    contract.check("cmd", "name", {"name": "kim"})
    contract.check("cmd", "price", {"price": "12$"})
    for cmd, field, bad in (("name", "name", "kim\n"), ("price", "price", "12$\n")):
        with pytest.raises(Invalid) as e:
            contract.check("cmd", cmd, {field: bad})
        assert e.value.field == field
