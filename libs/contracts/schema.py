"""The subset of JSON Schema (2020-12) the API declares, a validator for it, and builders.

Supported keywords: `type` (one or a list), `properties`, `required`, `additionalProperties`
(bool or schema), `items`, `minItems`, `maxItems`, `enum`, `const`, `minLength`, `maxLength`,
`pattern` (searched, as in JSON Schema; anchor it), `format` (`date-time` with a zone, `uuid`),
`minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`; annotations (`title`,
`description`, `default`, `examples`, `deprecated`, `readOnly`, `writeOnly`). A schema using
anything else is refused when the route is declared, so a typo never validates nothing.

Validation stops at the first problem and names its field as a dotted path (`members.0.email`).
Integers are JSON integers only (`1.0` is not one); booleans are never numbers. No string or
object key may hold a NUL byte or a lone surrogate (neither can be stored nor sent as UTF-8).

`json_int`, `json_float` and `json_constant` are `json.loads` hooks that refuse numbers beyond
the parser's limits (an integer over Python's digit limit, a float that overflows to infinity)
and the non-JSON NaN and Infinity as Invalid.
"""

from __future__ import annotations

import math
import re
import sys
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from libs.contracts.errors import Invalid

__all__ = [
    "Schema",
    "SchemaError",
    "array",
    "boolean",
    "check_schema",
    "coerce_params",
    "integer",
    "json_constant",
    "json_float",
    "json_int",
    "nullable",
    "obj",
    "string",
    "validate",
]

Schema = Mapping[str, Any]

_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly"}
)
_KEYWORDS = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "minItems",
        "maxItems", "enum", "const", "minLength", "maxLength", "pattern", "format", "minimum",
        "maximum", "exclusiveMinimum", "exclusiveMaximum",
    }
) | _ANNOTATIONS  # fmt: skip
_FORMATS = frozenset({"date-time", "uuid"})
_INT_TEXT = re.compile(r"-?[0-9]{1,18}")
_NUM_TEXT = re.compile(r"-?[0-9]{1,18}(\.[0-9]{1,18})?([eE][-+]?[0-9]{1,3})?")
_UNFIT = re.compile("[\x00\ud800-\udfff]")


class SchemaError(ValueError):
    """A declared schema uses something this validator does not support."""


# -- declaring ------------------------------------------------------------------------------


def check_schema(schema: Schema, where: str = "schema") -> None:
    """Raise SchemaError unless `schema` stays within the supported subset."""
    if not isinstance(schema, Mapping):
        raise SchemaError(f"{where} must be a mapping, got {schema!r:.80}")
    unknown = sorted(set(schema) - _KEYWORDS)
    if unknown:
        raise SchemaError(f"{where} uses unsupported keyword(s) {unknown}")
    for t in _types(schema):
        if t not in _TYPES:
            raise SchemaError(f"{where}: unknown type {t!r}")
    props = schema.get("properties", {})
    if not isinstance(props, Mapping):
        raise SchemaError(f"{where}.properties must be a mapping")
    for name, sub in props.items():
        check_schema(sub, f"{where}.properties.{name}")
    required = schema.get("required", [])
    if not isinstance(required, list | tuple) or not all(isinstance(r, str) for r in required):
        raise SchemaError(f"{where}.required must be a list of names")
    if "properties" in schema and set(required) - set(props):
        raise SchemaError(f"{where}.required names {sorted(set(required) - set(props))}")
    extra = schema.get("additionalProperties", True)
    if not isinstance(extra, bool):
        check_schema(extra, f"{where}.additionalProperties")
    if "items" in schema:
        check_schema(schema["items"], f"{where}.items")
    if "pattern" in schema:
        try:
            re.compile(schema["pattern"])
        except (re.error, TypeError) as e:
            raise SchemaError(f"{where}.pattern does not compile: {e}") from None
    if "format" in schema and schema["format"] not in _FORMATS:
        raise SchemaError(f"{where}: format {schema['format']!r} is not one of {sorted(_FORMATS)}")
    if "enum" in schema and not isinstance(schema["enum"], list | tuple):
        raise SchemaError(f"{where}.enum must be a list")


def _types(schema: Schema) -> tuple[str, ...]:
    t = schema.get("type")
    if t is None:
        return ()
    return (t,) if isinstance(t, str) else tuple(t)


# -- validating -----------------------------------------------------------------------------


def validate(schema: Schema, value: Any, field: str = "") -> None:
    """Raise Invalid naming the first field of `value` that does not satisfy `schema`."""
    types = _types(schema)
    if types and not any(_is(t, value) for t in types):
        raise _bad(field, f"must be {_a(types)}")
    if "const" in schema and not _same(value, schema["const"]):
        raise _bad(field, f"must be {schema['const']!r}")
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        raise _bad(field, "must be one of " + ", ".join(repr(e) for e in schema["enum"]))
    if isinstance(value, str):
        _check_string(schema, value, field)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        _check_number(schema, value, field)
    elif isinstance(value, list):
        _check_array(schema, value, field)
    elif isinstance(value, dict):
        _check_object(schema, value, field)


def _is(t: str, v: Any) -> bool:
    if t == "object":
        return isinstance(v, dict)
    if t == "array":
        return isinstance(v, list)
    if t == "string":
        return isinstance(v, str)
    if t == "integer":
        return isinstance(v, int) and not isinstance(v, bool)
    if t == "number":
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    if t == "boolean":
        return isinstance(v, bool)
    return v is None  # "null"


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and bool(a == b)


_ARTICLES = {
    "object": "an object", "array": "a list", "string": "a string", "integer": "an integer",
    "number": "a number", "boolean": "true or false", "null": "null",
}  # fmt: skip


def _a(types: Iterable[str]) -> str:
    return " or ".join(_ARTICLES[t] for t in types)


def _bad(field: str, problem: str) -> Invalid:
    name = field or "body"
    return Invalid(f"{name} {problem}", field=field or None)


def _join(field: str, key: str | int) -> str:
    return f"{field}.{key}" if field else str(key)


def _check_string(schema: Schema, v: str, field: str) -> None:
    _check_text(v, field)
    if "minLength" in schema and len(v) < schema["minLength"]:
        n = schema["minLength"]
        raise _bad(field, "must not be empty" if n == 1 else f"must be at least {n} characters")
    if "maxLength" in schema and len(v) > schema["maxLength"]:
        raise _bad(field, f"must be at most {schema['maxLength']} characters")
    if "pattern" in schema and not _regex(schema["pattern"]).search(v):
        hint = schema.get("description") or f"text matching {schema['pattern']}"
        raise _bad(field, f"has the wrong form: expected {hint}")
    fmt = schema.get("format")
    if fmt == "date-time" and not _is_datetime(v):
        raise _bad(field, "must be an ISO 8601 time with a zone, e.g. 2026-11-22T08:00:00Z")
    if fmt == "uuid" and not _is_uuid(v):
        raise _bad(field, "must be a UUID")


def _check_text(v: str, field: str) -> None:
    found = _UNFIT.search(v)
    if found is not None:
        what = "a NUL byte" if found.group() == "\x00" else "a lone surrogate (not UTF-8)"
        raise _bad(field, f"must not contain {what}")


@lru_cache(maxsize=512)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(_end_is_end(pattern))


def _end_is_end(pattern: str) -> str:
    """`pattern` with each `$` anchor (outside a character class, not escaped) as `\\Z`: in
    JSON Schema (ECMA-262) `$` is the end of the text, in Python it also matches before a
    final newline, which would let "name\\n" through `^[a-z]+$`."""
    out, escaped, in_class = [], False, False
    for c in pattern:
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == "[":
            in_class = True
        elif c == "]":
            in_class = False
        elif c == "$" and not in_class:
            out.append("\\Z")
            continue
        out.append(c)
    return "".join(out)


def _is_datetime(v: str) -> bool:
    if len(v) > 40 or "T" not in v.upper():
        return False
    try:
        when = datetime.fromisoformat(v.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return False
    return when.tzinfo is not None


def _is_uuid(v: str) -> bool:
    try:
        return len(v) == 36 and str(uuid.UUID(v)) == v.lower()
    except ValueError:
        return False


def _check_number(schema: Schema, v: float, field: str) -> None:
    if "minimum" in schema and v < schema["minimum"]:
        raise _bad(field, _range(schema))
    if "maximum" in schema and v > schema["maximum"]:
        raise _bad(field, _range(schema))
    if "exclusiveMinimum" in schema and v <= schema["exclusiveMinimum"]:
        raise _bad(field, f"must be greater than {schema['exclusiveMinimum']}")
    if "exclusiveMaximum" in schema and v >= schema["exclusiveMaximum"]:
        raise _bad(field, f"must be less than {schema['exclusiveMaximum']}")


def _range(schema: Schema) -> str:
    what = "an integer" if "integer" in _types(schema) else "a number"
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if lo is not None and hi is not None:
        return f"must be {what} from {lo} to {hi}"
    return f"must be at least {lo}" if lo is not None else f"must be at most {hi}"


def _check_array(schema: Schema, v: list[Any], field: str) -> None:
    if "minItems" in schema and len(v) < schema["minItems"]:
        raise _bad(field, f"must have at least {schema['minItems']} item(s)")
    if "maxItems" in schema and len(v) > schema["maxItems"]:
        raise _bad(field, f"must have at most {schema['maxItems']} item(s)")
    items = schema.get("items")
    if items is not None:
        for i, item in enumerate(v):
            validate(items, item, _join(field, i))


def _check_object(schema: Schema, v: dict[str, Any], field: str) -> None:
    props: Mapping[str, Schema] = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in v:
            raise Invalid(f"{_join(field, name)} is required", field=_join(field, name))
    extra = schema.get("additionalProperties", True)
    for key, item in v.items():
        if _UNFIT.search(key):
            raise _bad(field, "has a key with a NUL byte or a lone surrogate in it")
        sub = props.get(key)
        if sub is not None:
            validate(sub, item, _join(field, key))
        elif extra is False:
            known = ", ".join(props) or "none"
            raise Invalid(f"unknown field {key!r}; known: {known}", field=_join(field, key))
        elif extra is not True:
            validate(extra, item, _join(field, key))


# -- query and path parameters --------------------------------------------------------------


def coerce_params(schema: Schema, items: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Turn query/path strings into the types `schema` (an object schema) declares, validated.

    A parameter given twice is refused; an unknown one is refused unless the schema allows it.
    """
    props: Mapping[str, Schema] = schema.get("properties", {})
    out: dict[str, Any] = {}
    for name, raw in items:
        if name in out:
            raise Invalid(f"{name} is given more than once", field=name)
        sub = props.get(name)
        if sub is None and schema.get("additionalProperties", True) is False:
            known = f"use one of {', '.join(props)}" if props else "this route takes none"
            raise Invalid(f"unknown parameter {name!r}; {known}", field=name)
        out[name] = _coerce(sub, raw) if sub is not None else raw
    validate(schema, out)
    return out


def _coerce(schema: Schema, raw: str) -> Any:
    types = _types(schema)
    if "string" in types or not types:
        return raw
    if "integer" in types and _INT_TEXT.fullmatch(raw):
        return int(raw)
    if "number" in types and _NUM_TEXT.fullmatch(raw):
        return float(raw)
    if "boolean" in types and raw in ("true", "false"):
        return raw == "true"
    if "null" in types and raw == "":
        return None
    return raw  # left a string: validate() names the field and the type it wants


# -- parsing JSON numbers ------------------------------------------------------------------


def json_int(text: str) -> int:
    """`json.loads(parse_int=...)`: an integer within Python's digit limit, else Invalid."""
    limit = sys.get_int_max_str_digits()
    if limit and len(text.lstrip("-")) > limit:
        raise Invalid(f"a number has more than {limit} digits: send a smaller one")
    return int(text)


def json_float(text: str) -> float:
    """`json.loads(parse_float=...)`: a finite float, else Invalid (1e999 is not infinity)."""
    value = float(text)
    if not math.isfinite(value):
        shown = text if len(text) <= 20 else text[:20] + "..."
        raise Invalid(f"the number {shown} is too large: send a smaller one")
    return value


def json_constant(name: str) -> Any:
    """`json.loads(parse_constant=...)`: NaN, Infinity and -Infinity are not JSON (Invalid)."""
    raise Invalid(f"{name} is not a JSON value: send a finite number")


# -- building -------------------------------------------------------------------------------


def obj(
    properties: Mapping[str, Schema],
    *,
    required: Iterable[str] = (),
    additional: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """An object schema; unknown properties are refused unless `additional`."""
    s: dict[str, Any] = {
        "type": "object",
        "properties": dict(properties),
        "additionalProperties": additional,
    }
    req = list(required)
    if req:
        s["required"] = req
    return {**s, **extra}


def string(**kw: Any) -> dict[str, Any]:
    """A string schema (`minLength`, `maxLength`, `pattern`, `format`, `enum`, ...)."""
    return {"type": "string", **kw}


def integer(**kw: Any) -> dict[str, Any]:
    """An integer schema (`minimum`, `maximum`, ...)."""
    return {"type": "integer", **kw}


def boolean(**kw: Any) -> dict[str, Any]:
    """A boolean schema."""
    return {"type": "boolean", **kw}


def array(items: Schema, **kw: Any) -> dict[str, Any]:
    """A list schema of `items`."""
    return {"type": "array", "items": dict(items), **kw}


def nullable(schema: Schema) -> dict[str, Any]:
    """`schema` or null."""
    types = _types(schema)
    out = dict(schema)
    if types:
        out["type"] = [*types, "null"]
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out
