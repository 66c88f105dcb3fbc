"""LDAPv3 messages (RFC 4511): decoding the requests this server reads, encoding its answers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from services.identity.ldap.ber import (
    BerError,
    Tlv,
    decode_one,
    encode_bool,
    encode_enum,
    encode_int,
    encode_octets,
    encode_tlv,
)
from services.identity.ldap.filters import Filter, decode_filter

__all__ = [
    "NOTICE_OF_DISCONNECTION",
    "PAGED_RESULTS",
    "WHO_AM_I",
    "AbandonRequest",
    "BindRequest",
    "CompareRequest",
    "Control",
    "ExtendedRequest",
    "Message",
    "Request",
    "ResultCode",
    "Scope",
    "SearchRequest",
    "UnbindRequest",
    "WriteRequest",
    "decode_message",
    "decode_paged_control",
    "encode_bind_response",
    "encode_control",
    "encode_extended_response",
    "encode_notice_of_disconnection",
    "encode_paged_control",
    "encode_result",
    "encode_search_entry",
]

PAGED_RESULTS = "1.2.840.113556.1.4.319"  # RFC 2696
WHO_AM_I = "1.3.6.1.4.1.4203.1.11.3"  # RFC 4532
NOTICE_OF_DISCONNECTION = "1.3.6.1.4.1.1466.20036"

MAX_INT = 2**31 - 1

# response tags ([APPLICATION n], constructed)
BIND_RESPONSE = 0x61
SEARCH_RESULT_ENTRY = 0x64
SEARCH_RESULT_DONE = 0x65
MODIFY_RESPONSE = 0x67
ADD_RESPONSE = 0x69
DELETE_RESPONSE = 0x6B
MODIFY_DN_RESPONSE = 0x6D
COMPARE_RESPONSE = 0x6F
EXTENDED_RESPONSE = 0x78

# request tags that change the directory, and the response each one gets
_WRITES: dict[int, tuple[str, int]] = {
    0x66: ("modify", MODIFY_RESPONSE),
    0x68: ("add", ADD_RESPONSE),
    0x4A: ("delete", DELETE_RESPONSE),
    0x6C: ("modifyDN", MODIFY_DN_RESPONSE),
}


class ResultCode(IntEnum):
    SUCCESS = 0
    OPERATIONS_ERROR = 1
    PROTOCOL_ERROR = 2
    SIZE_LIMIT_EXCEEDED = 4
    COMPARE_FALSE = 5
    COMPARE_TRUE = 6
    AUTH_METHOD_NOT_SUPPORTED = 7
    UNAVAILABLE_CRITICAL_EXTENSION = 12
    NO_SUCH_ATTRIBUTE = 16
    UNDEFINED_ATTRIBUTE_TYPE = 17
    NO_SUCH_OBJECT = 32
    INVALID_DN_SYNTAX = 34
    INVALID_CREDENTIALS = 49
    INSUFFICIENT_ACCESS_RIGHTS = 50
    BUSY = 51
    UNAVAILABLE = 52
    UNWILLING_TO_PERFORM = 53
    OTHER = 80


class Scope(IntEnum):
    BASE = 0
    ONE = 1
    SUB = 2
    CHILDREN = 3  # subordinateSubtree (draft-sermersheim-ldap-subordinate-scope)


@dataclass(frozen=True, slots=True)
class Control:
    oid: str
    critical: bool
    value: bytes | None


@dataclass(frozen=True, slots=True)
class BindRequest:
    version: int
    name: str
    password: bytes | None  # None: a SASL bind
    sasl_mechanism: str | None

    def __repr__(self) -> str:  # never show the password
        return f"BindRequest(version={self.version}, name={self.name!r})"


@dataclass(frozen=True, slots=True)
class UnbindRequest:
    pass


@dataclass(frozen=True, slots=True)
class SearchRequest:
    base: str
    scope: Scope
    size_limit: int
    types_only: bool
    filter: Filter
    attributes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AbandonRequest:
    message_id: int


@dataclass(frozen=True, slots=True)
class CompareRequest:
    dn: str
    attribute: str
    value: str


@dataclass(frozen=True, slots=True)
class ExtendedRequest:
    name: str
    value: bytes | None


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """Any request that would change the directory; this server is read-only."""

    kind: str
    response_tag: int


Request = (
    BindRequest
    | UnbindRequest
    | SearchRequest
    | AbandonRequest
    | CompareRequest
    | ExtendedRequest
    | WriteRequest
)


@dataclass(frozen=True, slots=True)
class Message:
    message_id: int
    request: Request
    controls: tuple[Control, ...]
    # the encoded protocolOp, to tell a paged search's follow-up from a new one (never shown:
    # for a bind it holds the password)
    op_bytes: bytes = field(repr=False)


def _int(t: Tlv, lo: int = 0, hi: int = MAX_INT) -> int:
    v = t.as_int()
    if not lo <= v <= hi:
        raise BerError(f"integer {v} out of range {lo}..{hi}")
    return v


def decode_message(data: bytes) -> Message:
    """Decode one LDAPMessage; raises BerError on anything malformed or not a request."""
    parts = decode_one(data).expect(0x30).children()
    if len(parts) not in (2, 3):
        raise BerError("an LDAPMessage has two or three parts")
    message_id = _int(parts[0].expect(0x02), 1)
    op = parts[1]
    controls: tuple[Control, ...] = ()
    if len(parts) == 3:
        controls = _decode_controls(parts[2].expect(0xA0))
    return Message(message_id, _decode_request(op), controls, encode_tlv(op.tag, op.as_bytes()))


def _decode_controls(t: Tlv) -> tuple[Control, ...]:
    out: list[Control] = []
    for c in t.children():
        fields = c.expect(0x30).children()
        if not fields:
            raise BerError("a control needs a type")
        oid = fields[0].expect(0x04).as_str()
        critical = False
        value: bytes | None = None
        rest = fields[1:]
        if rest and rest[0].tag == 0x01:
            critical = rest[0].as_bool()
            rest = rest[1:]
        if rest:
            value = rest[0].expect(0x04).as_bytes()
            rest = rest[1:]
        if rest:
            raise BerError("trailing fields in a control")
        out.append(Control(oid, critical, value))
    return tuple(out)


def _decode_request(op: Tlv) -> Request:
    tag = op.tag
    if tag == 0x60:
        return _decode_bind(op)
    if tag == 0x42:
        if len(op.value):
            raise BerError("an unbind request is empty")
        return UnbindRequest()
    if tag == 0x63:
        return _decode_search(op)
    if tag == 0x50:
        return AbandonRequest(_int(op))
    if tag == 0x6E:
        parts = op.children()
        ava = parts[1].expect(0x30).children() if len(parts) == 2 else []
        if len(ava) != 2:
            raise BerError("a compare request has a DN and an assertion")
        dn, (attr, value) = parts[0], ava
        return CompareRequest(
            dn.expect(0x04).as_str(),
            attr.expect(0x04).as_str(),
            value.expect(0x04).as_bytes().decode("utf-8", "surrogateescape"),
        )
    if tag == 0x77:
        return _decode_extended(op)
    if tag in _WRITES:
        kind, response_tag = _WRITES[tag]
        return WriteRequest(kind, response_tag)
    raise BerError(f"unknown request tag 0x{tag:02x}")


def _decode_bind(op: Tlv) -> BindRequest:
    parts = op.children()
    if len(parts) != 3:
        raise BerError("a bind request has three parts")
    version = _int(parts[0].expect(0x02), 1, 127)
    name = parts[1].expect(0x04).as_str()
    auth = parts[2]
    if auth.tag == 0x80:
        return BindRequest(version, name, auth.as_bytes(), None)
    if auth.tag == 0xA3:
        sasl = auth.children()
        if not sasl:
            raise BerError("a SASL bind names its mechanism")
        return BindRequest(version, name, None, sasl[0].expect(0x04).as_str())
    raise BerError(f"unknown authentication choice 0x{auth.tag:02x}")


def _decode_search(op: Tlv) -> SearchRequest:
    parts = op.children()
    if len(parts) != 8:
        raise BerError("a search request has eight parts")
    base = parts[0].expect(0x04).as_str()
    scope_n = _int(parts[1].expect(0x0A), 0, 3)
    _int(parts[2].expect(0x0A), 0, 3)  # derefAliases: there are no aliases here
    size_limit = _int(parts[3].expect(0x02))
    _int(parts[4].expect(0x02))  # timeLimit: searches are in memory and short
    types_only = parts[5].expect(0x01).as_bool()
    flt = decode_filter(parts[6])
    attrs = tuple(a.expect(0x04).as_str() for a in parts[7].expect(0x30).children())
    return SearchRequest(base, Scope(scope_n), size_limit, types_only, flt, attrs)


def _decode_extended(op: Tlv) -> ExtendedRequest:
    name: str | None = None
    value: bytes | None = None
    for p in op.children():
        if p.tag == 0x80 and name is None:
            name = p.as_str()
        elif p.tag == 0x81 and name is not None and value is None:
            value = p.as_bytes()
        else:
            raise BerError("malformed extended request")
    if name is None:
        raise BerError("an extended request names its operation")
    return ExtendedRequest(name, value)


def decode_paged_control(value: bytes | None) -> tuple[int, bytes]:
    """(page size, cookie) from a paged results control value."""
    if value is None:
        raise BerError("the paged results control needs a value")
    parts = decode_one(value).expect(0x30).children()
    if len(parts) != 2:
        raise BerError("the paged results control value has two parts")
    return _int(parts[0].expect(0x02)), parts[1].expect(0x04).as_bytes()


# --- encoding ----------------------------------------------------------------------------


def _message(message_id: int, op: bytes, controls: Sequence[bytes] = ()) -> bytes:
    body = encode_int(message_id) + op
    if controls:
        body += encode_tlv(0xA0, b"".join(controls))
    return encode_tlv(0x30, body)


def _result_body(code: ResultCode, matched: str = "", message: str = "") -> bytes:
    return encode_enum(code) + encode_octets(matched) + encode_octets(message)


def encode_result(
    message_id: int,
    tag: int,
    code: ResultCode,
    message: str = "",
    *,
    matched: str = "",
    controls: Sequence[bytes] = (),
) -> bytes:
    """A response that is just an LDAPResult (search done, modify, add, compare, ...)."""
    return _message(message_id, encode_tlv(tag, _result_body(code, matched, message)), controls)


def encode_bind_response(message_id: int, code: ResultCode, message: str = "") -> bytes:
    return encode_result(message_id, BIND_RESPONSE, code, message)


def encode_extended_response(
    message_id: int,
    code: ResultCode,
    message: str = "",
    *,
    name: str | None = None,
    value: bytes | None = None,
) -> bytes:
    body = _result_body(code, "", message)
    if name is not None:
        body += encode_octets(name, 0x8A)
    if value is not None:
        body += encode_octets(value, 0x8B)
    return _message(message_id, encode_tlv(EXTENDED_RESPONSE, body))


def encode_notice_of_disconnection(code: ResultCode, message: str) -> bytes:
    """The unsolicited notice (RFC 4511 section 4.4.1) sent before closing on bad input."""
    return encode_extended_response(0, code, message, name=NOTICE_OF_DISCONNECTION)


def encode_search_entry(
    message_id: int, dn: str, attributes: Iterable[tuple[str, Sequence[str]]]
) -> bytes:
    attrs = b"".join(
        encode_tlv(
            0x30,
            encode_octets(name) + encode_tlv(0x31, b"".join(encode_octets(v) for v in values)),
        )
        for name, values in attributes
    )
    body = encode_octets(dn) + encode_tlv(0x30, attrs)
    return _message(message_id, encode_tlv(SEARCH_RESULT_ENTRY, body))


def encode_paged_control(size: int, cookie: bytes) -> bytes:
    value = encode_tlv(0x30, encode_int(size) + encode_octets(cookie))
    return encode_tlv(0x30, encode_octets(PAGED_RESULTS) + encode_octets(value))


def encode_control(oid: str, critical: bool, value: bytes | None) -> bytes:
    """A Control element (used by tests and clients of this module)."""
    body = encode_octets(oid)
    if critical:
        body += encode_bool(True)
    if value is not None:
        body += encode_octets(value)
    return encode_tlv(0x30, body)
