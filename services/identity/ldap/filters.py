"""Matching: the attribute types the directory knows, DN syntax, entries, and search filters.

Filters evaluate with LDAP's three-valued logic (RFC 4511 section 4.5.1.7): `None` is
Undefined, which `not` leaves Undefined, so `(!(x>=1))` matches nothing when `x` has no
ordering. Values compare case-insensitively with insignificant spaces folded
(caseIgnoreMatch, caseIgnoreOrderingMatch for `>=` and `<=`); integer attributes compare as
numbers (integerMatch, integerOrderingMatch, and Active Directory's bitwise AND and OR rules);
DN-valued attributes compare as normalized DNs and have no ordering.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from services.identity.ldap.ber import BerError, Tlv

__all__ = [
    "ATTRIBUTE_TYPES",
    "And",
    "AttributeType",
    "Dn",
    "DnError",
    "Entry",
    "Equality",
    "Extensible",
    "Filter",
    "NormDn",
    "Not",
    "Or",
    "Ordering",
    "Present",
    "Substrings",
    "Syntax",
    "attribute_type",
    "decode_filter",
    "evaluate",
    "format_dn",
    "normalize_dn",
    "parse_dn",
    "prep",
]

MAX_FILTER_DEPTH = 32
IN_CHAIN = "1.2.840.113556.1.4.1941"  # AD's LDAP_MATCHING_RULE_IN_CHAIN; groups are flat here
_EQUALITY_RULES = frozenset(
    {
        IN_CHAIN, "2.5.13.1", "distinguishednamematch", "2.5.13.2", "caseignorematch",
        "2.5.13.14", "integermatch",
    }
)  # fmt: skip
BIT_AND = "1.2.840.113556.1.4.803"  # AD's LDAP_MATCHING_RULE_BIT_AND
BIT_OR = "1.2.840.113556.1.4.804"  # AD's LDAP_MATCHING_RULE_BIT_OR


class Syntax(StrEnum):
    STRING = "string"
    DN = "dn"
    INTEGER = "integer"


@dataclass(frozen=True, slots=True)
class AttributeType:
    name: str
    syntax: Syntax = Syntax.STRING
    operational: bool = False
    aliases: tuple[str, ...] = ()


ATTRIBUTE_TYPES: tuple[AttributeType, ...] = (
    AttributeType("objectClass"),
    AttributeType("uid", aliases=("userid", "0.9.2342.19200300.100.1.1")),
    # what directory-backed apps ask for besides: Active Directory's names for the same user
    # name, RFC 2307 (posixAccount, posixGroup) numbers and members, a plain `username`
    AttributeType("username"),
    AttributeType("sAMAccountName"),
    AttributeType("objectCategory"),
    AttributeType("sAMAccountType", Syntax.INTEGER),
    AttributeType("userAccountControl", Syntax.INTEGER),
    AttributeType("uidNumber", Syntax.INTEGER, aliases=("1.3.6.1.1.1.1.0",)),
    AttributeType("gidNumber", Syntax.INTEGER, aliases=("1.3.6.1.1.1.1.1",)),
    AttributeType("homeDirectory", aliases=("1.3.6.1.1.1.1.3",)),
    AttributeType("memberUid", aliases=("1.3.6.1.1.1.1.12",)),
    AttributeType("uniqueMember", Syntax.DN, aliases=("2.5.4.50",)),
    AttributeType("cn", aliases=("commonName", "2.5.4.3")),
    AttributeType("sn", aliases=("surname", "2.5.4.4")),
    AttributeType("givenName", aliases=("gn", "2.5.4.42")),
    AttributeType("displayName", aliases=("2.16.840.1.113730.3.1.241",)),
    AttributeType("mail", aliases=("rfc822Mailbox", "0.9.2342.19200300.100.1.3")),
    AttributeType("memberOf", Syntax.DN),
    AttributeType("member", Syntax.DN, aliases=("2.5.4.31",)),
    AttributeType("ou", aliases=("organizationalUnitName", "2.5.4.11")),
    AttributeType("dc", aliases=("domainComponent", "0.9.2342.19200300.100.1.25")),
    AttributeType("o", aliases=("organizationName", "2.5.4.10")),
    AttributeType("entryUUID", operational=True, aliases=("1.3.6.1.1.16.4",)),
    AttributeType("entryDN", Syntax.DN, operational=True, aliases=("1.3.6.1.1.20",)),
    # root DSE (RFC 4512 section 5.1); returned with "*" as well, since clients expect them
    AttributeType("namingContexts", Syntax.DN),
    AttributeType("supportedLDAPVersion"),
    AttributeType("supportedControl"),
    AttributeType("supportedExtension"),
    AttributeType("supportedFeatures"),
    AttributeType("supportedSASLMechanisms"),
    AttributeType("vendorName"),
)
_BY_NAME: dict[str, AttributeType] = {
    alias.lower(): t for t in ATTRIBUTE_TYPES for alias in (t.name, *t.aliases)
}


def attribute_type(description: str) -> AttributeType | None:
    """The attribute type an attribute description names (options after ';' ignored)."""
    return _BY_NAME.get(description.split(";", 1)[0].strip().lower())


def prep(value: str) -> str:
    """caseIgnoreMatch preparation: case folded, inner spaces collapsed, ends trimmed."""
    return " ".join(value.casefold().split())


# --- DN syntax (RFC 4514) ------------------------------------------------------------------

Dn = tuple[tuple[str, str], ...]  # ((type, value), ...) leaf first, values unescaped
NormDn = tuple[tuple[str, str], ...]  # types canonical lower-case, values prepared


class DnError(ValueError):
    """A string that is not a DN this directory can use."""


_SPECIAL = ' "#+,;<=>\\'
_HEX = "0123456789abcdefABCDEF"


def parse_dn(text: str) -> Dn:
    """Parse an RFC 4514 DN; multi-valued RDNs and `#hex` values are refused."""
    rdns: list[tuple[str, str]] = []
    i, n = 0, len(text)
    if not text.strip(" "):
        return ()
    while True:
        while i < n and text[i] == " ":
            i += 1
        start = i
        while i < n and text[i] != "=":
            if text[i] in ",+\\":
                raise DnError("attribute type without '='")
            i += 1
        if i >= n:
            raise DnError("attribute type without '='")
        atype = text[start:i].strip(" ")
        if not atype or not all(c.isascii() and (c.isalnum() or c in "-.") for c in atype):
            raise DnError(f"bad attribute type {atype!r}")
        i += 1
        while i < n and text[i] == " ":
            i += 1
        if i < n and text[i] == "#":
            raise DnError("#hex attribute values are not supported")
        buf = bytearray()
        keep = 0
        while i < n and text[i] not in ",+":
            c = text[i]
            if c == "\\":
                if i + 1 >= n:
                    raise DnError("DN ends inside an escape")
                nxt = text[i + 1]
                if nxt in _SPECIAL:
                    buf += nxt.encode()
                    i += 2
                elif nxt in _HEX and i + 2 < n and text[i + 2] in _HEX:
                    buf.append(int(text[i + 1 : i + 3], 16))
                    i += 3
                else:
                    raise DnError("bad escape in DN")
                keep = len(buf)
                continue
            buf += c.encode("utf-8", "surrogateescape")
            if c != " ":
                keep = len(buf)
            i += 1
        try:
            value = bytes(buf[:keep]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise DnError("DN value is not valid UTF-8") from e
        rdns.append((atype, value))
        if i >= n:
            return tuple(rdns)
        if text[i] == "+":
            raise DnError("multi-valued RDNs are not supported")
        i += 1  # ','


def _escape(value: str) -> str:
    out = []
    for k, c in enumerate(value):
        if c in '"+,;<>\\' or (k == 0 and c in "# ") or (k == len(value) - 1 and c == " "):
            out.append("\\" + c)
        elif c == "\0":
            out.append("\\00")
        else:
            out.append(c)
    return "".join(out)


def format_dn(dn: Dn) -> str:
    return ",".join(f"{t}={_escape(v)}" for t, v in dn)


def _norm_type(name: str) -> str:
    t = attribute_type(name)
    return t.name.lower() if t else name.lower()


def normalize(dn: Dn) -> NormDn:
    return tuple((_norm_type(t), prep(v)) for t, v in dn)


def normalize_dn(text: str) -> NormDn:
    """Parse and normalize a DN string, for comparing DNs (raises DnError)."""
    return normalize(parse_dn(text))


# --- entries ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One directory entry as served: its DN and attributes keyed by canonical type name."""

    dn: str
    ndn: NormDn
    attributes: Mapping[str, tuple[str, ...]]

    @classmethod
    def make(cls, dn: Dn, attributes: Mapping[str, Iterable[str]]) -> Entry:
        attrs: dict[str, tuple[str, ...]] = {}
        for name, values in attributes.items():
            t = attribute_type(name)
            if t is None:
                raise ValueError(f"attribute {name!r} is not in ATTRIBUTE_TYPES")
            vals = tuple(values)
            if vals:
                attrs[t.name] = vals
        return cls(format_dn(dn), normalize(dn), attrs)

    def values(self, t: AttributeType) -> tuple[str, ...]:
        return self.attributes.get(t.name, ())


# --- filters (RFC 4511 section 4.5.1.7) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Filter


@dataclass(frozen=True, slots=True)
class Equality:
    """equalityMatch, and approxMatch (served as equality)."""

    attribute: str
    value: str


@dataclass(frozen=True, slots=True)
class Substrings:
    attribute: str
    initial: str | None
    any: tuple[str, ...]
    final: str | None


@dataclass(frozen=True, slots=True)
class Present:
    attribute: str


@dataclass(frozen=True, slots=True)
class Ordering:
    """greaterOrEqual (`>=`) / lessOrEqual (`<=`)."""

    attribute: str
    value: str
    op: str


@dataclass(frozen=True, slots=True)
class Extensible:
    rule: str | None
    attribute: str | None
    value: str
    dn_attributes: bool


Filter = And | Or | Not | Equality | Substrings | Present | Ordering | Extensible


def _value(t: Tlv) -> str:
    # assertion values may be binary; unmatched bytes become lone surrogates that equal nothing
    return t.as_bytes().decode("utf-8", "surrogateescape")


def _ava(t: Tlv) -> tuple[str, str]:
    parts = t.children()
    if len(parts) != 2:
        raise BerError("an attribute value assertion has two parts")
    return parts[0].expect(0x04).as_str(), _value(parts[1].expect(0x04))


def decode_filter(t: Tlv, depth: int = 0) -> Filter:
    """Decode a Filter element; unknown choices and too deep nesting are protocol errors."""
    if depth > MAX_FILTER_DEPTH:
        raise BerError(f"filter nested deeper than {MAX_FILTER_DEPTH}")
    tag = t.tag
    if tag in (0xA0, 0xA1):
        items = tuple(decode_filter(c, depth + 1) for c in t.children())
        return And(items) if tag == 0xA0 else Or(items)
    if tag == 0xA2:
        inner = t.children()
        if len(inner) != 1:
            raise BerError("'not' holds exactly one filter")
        return Not(decode_filter(inner[0], depth + 1))
    if tag in (0xA3, 0xA8):
        return Equality(*_ava(t))
    if tag in (0xA5, 0xA6):
        attr, value = _ava(t)
        return Ordering(attr, value, ">=" if tag == 0xA5 else "<=")
    if tag == 0x87:
        return Present(t.as_str())
    if tag == 0xA4:
        return _decode_substrings(t)
    if tag == 0xA9:
        return _decode_extensible(t)
    raise BerError(f"unknown filter choice 0x{tag:02x}")


def _decode_substrings(t: Tlv) -> Substrings:
    parts = t.children()
    if len(parts) != 2:
        raise BerError("a substrings filter has a type and a sequence")
    attr = parts[0].expect(0x04).as_str()
    pieces = parts[1].expect(0x30).children()
    if not pieces:
        raise BerError("a substrings filter needs at least one piece")
    initial: str | None = None
    final: str | None = None
    anys: list[str] = []
    for k, p in enumerate(pieces):
        if p.tag == 0x80 and k == 0:
            initial = _value(p)
        elif p.tag == 0x81:
            anys.append(_value(p))
        elif p.tag == 0x82 and k == len(pieces) - 1:
            final = _value(p)
        else:
            raise BerError("misplaced substring piece")
    return Substrings(attr, initial, tuple(anys), final)


def _decode_extensible(t: Tlv) -> Extensible:
    rule: str | None = None
    attr: str | None = None
    value: str | None = None
    dn_attrs = False
    for p in t.children():
        if p.tag == 0x81:
            rule = p.as_str()
        elif p.tag == 0x82:
            attr = p.as_str()
        elif p.tag == 0x83:
            value = _value(p)
        elif p.tag == 0x84:
            dn_attrs = p.as_bool()
        else:
            raise BerError("unknown part in an extensible match")
    if value is None:
        raise BerError("an extensible match needs a value")
    return Extensible(rule, attr, value, dn_attrs)


def _integer(text: str) -> int | None:
    text = text.strip()
    if not text or len(text) > 20 or not text.lstrip("-").isdigit():
        return None
    return int(text)


def _equal(entry: Entry, attribute: str, assertion: str) -> bool | None:
    t = attribute_type(attribute)
    if t is None:
        return None
    values = entry.values(t)
    if t.syntax is Syntax.INTEGER:
        number = _integer(assertion)
        return None if number is None else any(_integer(v) == number for v in values)
    if t.syntax is Syntax.DN:
        try:
            want = normalize_dn(assertion)
        except DnError:
            return None
        return any(_norm_or_none(v) == want for v in values)
    p = prep(assertion)
    return any(prep(v) == p for v in values)


def _ordered(entry: Entry, f: Ordering) -> bool | None:
    """`>=` or `<=`: integers as numbers, strings as caseIgnoreOrderingMatch; DNs Undefined."""
    t = attribute_type(f.attribute)
    if t is None or t.syntax is Syntax.DN:
        return None
    values = entry.values(t)
    if t.syntax is Syntax.INTEGER:
        want = _integer(f.value)
        if want is None:
            return None
        have = [n for v in values if (n := _integer(v)) is not None]
        return any(n >= want if f.op == ">=" else n <= want for n in have)
    p = prep(f.value)
    return any(prep(v) >= p if f.op == ">=" else prep(v) <= p for v in values)


def _bitwise(entry: Entry, f: Extensible) -> bool | None:
    """AD's bit rules on an integer attribute: all bits set (AND) or any bit set (OR)."""
    t = attribute_type(f.attribute or "")
    want = _integer(f.value)
    if t is None or t.syntax is not Syntax.INTEGER or want is None:
        return None
    have = [n for v in entry.values(t) if (n := _integer(v)) is not None]
    if f.rule == BIT_AND:
        return any(n & want == want for n in have)
    return any(n & want != 0 for n in have)


def _norm_or_none(value: str) -> NormDn | None:
    try:
        return normalize_dn(value)
    except DnError:
        return None


def _substring_match(value: str, f: Substrings) -> bool:
    v = prep(value)
    pos = 0
    end = len(v)
    if f.initial is not None:
        init = prep(f.initial)
        if not v.startswith(init):
            return False
        pos = len(init)
    if f.final is not None:
        fin = prep(f.final)
        if len(fin) > end - pos or not v.endswith(fin):
            return False
        end -= len(fin)
    for piece in f.any:
        p = prep(piece)
        found = v.find(p, pos, end)
        if found < 0:
            return False
        pos = found + len(p)
    return True


def evaluate(f: Filter, entry: Entry) -> bool | None:
    """True, False or None (Undefined) for `entry`; only True selects it."""
    if isinstance(f, And):
        undefined = False
        for item in f.items:
            r = evaluate(item, entry)
            if r is False:
                return False
            undefined = undefined or r is None
        return None if undefined else True
    if isinstance(f, Or):
        undefined = False
        for item in f.items:
            r = evaluate(item, entry)
            if r is True:
                return True
            undefined = undefined or r is None
        return None if undefined else False
    if isinstance(f, Not):
        r = evaluate(f.item, entry)
        return None if r is None else not r
    if isinstance(f, Equality):
        return _equal(entry, f.attribute, f.value)
    if isinstance(f, Present):
        t = attribute_type(f.attribute)
        return t is not None and bool(entry.values(t))
    if isinstance(f, Substrings):
        t = attribute_type(f.attribute)
        if t is None:
            return None
        return any(_substring_match(v, f) for v in entry.values(t))
    if isinstance(f, Extensible):
        if f.attribute is None or f.dn_attributes:
            return None
        if f.rule in (BIT_AND, BIT_OR):
            return _bitwise(entry, f)
        if f.rule is not None and f.rule.lower() not in _EQUALITY_RULES:
            return None
        return _equal(entry, f.attribute, f.value)
    return _ordered(entry, f)
