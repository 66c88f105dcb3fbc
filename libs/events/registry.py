"""Event types: names, schema versions and upcasters.

An event class is a frozen dataclass registered under a PascalCase, past-tense type name and a
schema number. When a class changes shape, its schema number goes up and an upcaster turns the
data of the previous schema into the next one; events are stored as written and upcast on read,
so an old event always comes back in the current shape.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from libs.events.envelope import NewEvent, RecordedEvent
from libs.events.errors import EventStoreError, UnknownEventType

__all__ = ["REGISTRY", "EventRegistry", "EventType", "Upcaster"]

T = TypeVar("T")
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z0-9]{2,63}$")


@dataclass(frozen=True, slots=True)
class EventType:
    name: str
    schema: int
    cls: type[Any]


class EventRegistry:
    """Maps type names to classes and holds the upcaster chain of each type."""

    def __init__(self) -> None:
        self._by_name: dict[str, EventType] = {}
        self._by_cls: dict[type[Any], EventType] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def event(self, name: str, schema: int = 1) -> Callable[[type[T]], type[T]]:
        """Class decorator: register a frozen dataclass as event type `name` at `schema`."""
        if not _TYPE_NAME.match(name):
            raise EventStoreError(f"event type {name!r}: must be PascalCase, 3-64 letters/digits")
        if schema < 1:
            raise EventStoreError(f"event type {name}: schema must be >= 1")

        def register(cls: type[T]) -> type[T]:
            if not dataclasses.is_dataclass(cls):
                raise EventStoreError(f"event type {name}: {cls.__name__} must be a dataclass")
            positional = [f.name for f in dataclasses.fields(cls) if not f.kw_only]
            if positional:
                # Two fields of one type given by position can be swapped without a sound.
                raise EventStoreError(
                    f"event type {name}: {cls.__name__} must be keyword-only "
                    f"(@dataclass(kw_only=True)); positional: {', '.join(positional)}"
                )
            known = self._by_name.get(name)
            if known is not None and known.cls is not cls:
                raise EventStoreError(f"event type {name} is already registered")
            et = EventType(name, schema, cls)
            self._by_name[name] = et
            self._by_cls[cls] = et
            return cls

        return register

    def upcaster(self, name: str, from_schema: int) -> Callable[[Upcaster], Upcaster]:
        """Function decorator: turn data of `name` at `from_schema` into `from_schema + 1`."""

        def register(fn: Upcaster) -> Upcaster:
            key = (name, from_schema)
            if key in self._upcasters:
                raise EventStoreError(f"upcaster for {name} schema {from_schema} already exists")
            self._upcasters[key] = fn
            return fn

        return register

    def current_schema(self, name: str) -> int | None:
        et = self._by_name.get(name)
        return None if et is None else et.schema

    def upcast(self, name: str, schema: int, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Bring `data` of type `name` from `schema` up to the registered schema."""
        et = self._by_name.get(name)
        if et is None:
            return schema, data
        while schema < et.schema:
            fn = self._upcasters.get((name, schema))
            if fn is None:
                raise EventStoreError(
                    f"event type {name}: no upcaster from schema {schema} to {schema + 1}"
                )
            data = fn(dict(data))
            schema += 1
        return schema, data

    def upcast_recorded(self, ev: RecordedEvent) -> RecordedEvent:
        et = self._by_name.get(ev.type)
        if et is None or ev.schema >= et.schema:
            return ev
        schema, data = self.upcast(ev.type, ev.schema, ev.data)
        return dataclasses.replace(ev, schema=schema, data=data)

    def to_new_event(self, obj: Any, meta: dict[str, Any] | None = None) -> NewEvent:
        """An instance of a registered class -> a NewEvent (summary() goes into meta)."""
        et = self._by_cls.get(type(obj))
        if et is None:
            raise UnknownEventType(f"{type(obj).__name__} is not a registered event class")
        m = dict(meta or {})
        summary = getattr(obj, "summary", None)
        if callable(summary):
            m.setdefault("summary", str(summary()))
        return NewEvent(type=et.name, schema=et.schema, data=dataclasses.asdict(obj), meta=m)

    def decode(self, ev: RecordedEvent) -> Any:
        """A recorded event -> an instance of its registered class, in the current shape."""
        return self.decode_data(ev.type, ev.schema, ev.data)

    def decode_data(self, name: str, schema: int, data: dict[str, Any]) -> Any:
        """An event's type, schema and data -> an instance of its registered class."""
        et = self._by_name.get(name)
        if et is None:
            raise UnknownEventType(f"no class registered for event type {name}")
        _, data = self.upcast(name, schema, data)
        names = {f.name for f in dataclasses.fields(et.cls)}
        return et.cls(**{k: v for k, v in data.items() if k in names})


REGISTRY = EventRegistry()
"""The process-wide registry that services register their event classes in."""
