"""The wire contract of each service: the payload schema of every command and query it serves.

A service's contract lives in `libs/contracts/<service>.py` as one `Contract`. The serving side
(`libs/events/wiring.serve`) refuses to start unless its handlers and its contract name the same
commands and queries, and validates every payload before the handler runs; the calling side
(`BusClient`) validates before sending; the gateway builds its OpenAPI from the same schemas.
One validator (`libs/contracts/schema.py`) serves all three, so no service imports another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from libs.contracts.schema import Schema, check_schema, validate

__all__ = ["Contract", "Kind"]

Kind = Literal["cmd", "qry"]


@dataclass(frozen=True)
class Contract:
    """The commands and queries of `service`, each with the JSON Schema of its payload."""

    service: str
    commands: Mapping[str, Schema] = field(default_factory=dict)
    queries: Mapping[str, Schema] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, table in (("command", self.commands), ("query", self.queries)):
            for name, schema in table.items():
                check_schema(schema, f"{self.service} {kind} {name}")

    def schema(self, kind: Kind, name: str) -> Schema | None:
        """The payload schema of command (`cmd`) or query (`qry`) `name`, if declared."""
        return (self.commands if kind == "cmd" else self.queries).get(name)

    def check(self, kind: Kind, name: str, payload: Mapping[str, Any]) -> None:
        """Raise Invalid (naming the field) unless `payload` meets the declared schema."""
        schema = self.schema(kind, name)
        if schema is not None:
            validate(schema, payload)
