"""REST bodies that a route sends on as a service command's payload, taken from that service's
contract (`libs/contracts/<service>.py`): the API validates and documents exactly what the
service takes, and no schema is written twice.

A route fills some fields itself (the app id from its path, the caller's user id): `without`
leaves them out. `notes` adds documentation only (descriptions, writeOnly, ...) at a dotted
path, never a rule: validation stays the contract's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from libs.contracts import Contract
from libs.contracts.schema import Schema, check_schema

__all__ = ["command_body"]

_NOTES = frozenset({"title", "description", "default", "examples", "deprecated", "writeOnly"})


def command_body(
    contract: Contract,
    command: str,
    *,
    without: Iterable[str] = (),
    notes: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The body schema of a route that sends its body on as `contract`'s `command`."""
    schema = contract.schema("cmd", command)
    if schema is None:
        raise ValueError(f"libs/contracts/{contract.service}.py declares no command {command}")
    props: Mapping[str, Schema] = schema.get("properties", {})
    drop = set(without)
    unknown = sorted(drop - set(props))
    if unknown:
        raise ValueError(f"{contract.service} {command} has no field {', '.join(unknown)}")
    body: dict[str, Any] = {
        **schema,
        "properties": {k: v for k, v in props.items() if k not in drop},
    }
    required = [r for r in schema.get("required", ()) if r not in drop]
    if required:
        body["required"] = required
    else:
        body.pop("required", None)
    for path, added in (notes or {}).items():
        _annotate(body, path.split("."), added, f"{contract.service} {command}: {path}")
    check_schema(body, f"the body of {contract.service} {command}")
    return body


def _annotate(
    schema: dict[str, Any], path: list[str], notes: Mapping[str, Any], where: str
) -> None:
    rules = sorted(set(notes) - _NOTES)
    if rules:
        raise ValueError(f"{where}: {', '.join(rules)} would change validation; only notes")
    props = schema.get("properties", {})
    if path[0] not in props:
        raise ValueError(f"{where}: no such field")
    node = dict(props[path[0]])
    if len(path) == 1:
        node.update(notes)
    else:
        _annotate(node, path[1:], notes, where)
    schema["properties"] = {**props, path[0]: node}
