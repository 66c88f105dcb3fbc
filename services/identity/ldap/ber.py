"""A small BER codec: the subset LDAPv3 uses (RFC 4511 section 5.1), strict about lengths."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

__all__ = [
    "BOOLEAN",
    "ENUMERATED",
    "INTEGER",
    "NULL",
    "OCTET_STRING",
    "SEQUENCE",
    "SET",
    "BerError",
    "FrameTooLarge",
    "Tlv",
    "decode_one",
    "encode_bool",
    "encode_enum",
    "encode_int",
    "encode_octets",
    "encode_tlv",
    "read_frame",
]

BOOLEAN = 0x01
INTEGER = 0x02
OCTET_STRING = 0x04
NULL = 0x05
ENUMERATED = 0x0A
SEQUENCE = 0x30
SET = 0x31

_CONSTRUCTED = 0x20
_MAX_LENGTH_OCTETS = 4
_MAX_INT_OCTETS = 8


class BerError(ValueError):
    """The bytes are not a well-formed BER encoding of what LDAP expects there."""


class FrameTooLarge(BerError):
    """A message announced a length above the server's limit."""


@dataclass(frozen=True, slots=True)
class Tlv:
    """One decoded element: its (single-octet) tag and its value octets."""

    tag: int
    value: memoryview

    @property
    def constructed(self) -> bool:
        return bool(self.tag & _CONSTRUCTED)

    def children(self) -> list[Tlv]:
        """The elements inside a constructed value, which must fill it exactly."""
        if not self.constructed:
            raise BerError(f"tag 0x{self.tag:02x} is primitive, expected a constructed value")
        out: list[Tlv] = []
        offset = 0
        while offset < len(self.value):
            child, offset = _decode_at(self.value, offset)
            out.append(child)
        return out

    def expect(self, tag: int) -> Tlv:
        if self.tag != tag:
            raise BerError(f"expected tag 0x{tag:02x}, got 0x{self.tag:02x}")
        return self

    def as_bytes(self) -> bytes:
        return bytes(self.value)

    def as_str(self) -> str:
        try:
            return bytes(self.value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise BerError("a string is not valid UTF-8") from e

    def as_int(self) -> int:
        if self.constructed:
            raise BerError("an integer must be primitive")
        if not 0 < len(self.value) <= _MAX_INT_OCTETS:
            raise BerError(f"an integer of {len(self.value)} octets")
        return int.from_bytes(self.value, "big", signed=True)

    def as_bool(self) -> bool:
        if self.constructed or len(self.value) != 1:
            raise BerError("a boolean must be one octet")
        return self.value[0] != 0


def _decode_at(data: memoryview, offset: int) -> tuple[Tlv, int]:
    end = len(data)
    if offset + 2 > end:
        raise BerError("truncated element header")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise BerError("multi-octet tags are not used by LDAP")
    first = data[offset + 1]
    offset += 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise BerError("indefinite lengths are not allowed in LDAP")
    else:
        n = first & 0x7F
        if n > _MAX_LENGTH_OCTETS or offset + n > end:
            raise BerError("bad length octets")
        length = int.from_bytes(data[offset : offset + n], "big")
        offset += n
    if offset + length > end:
        raise BerError("element longer than its container")
    return Tlv(tag, data[offset : offset + length]), offset + length


def decode_one(data: bytes | memoryview) -> Tlv:
    """Decode exactly one element that fills `data`."""
    view = memoryview(data)
    tlv, end = _decode_at(view, 0)
    if end != len(view):
        raise BerError("trailing octets after the element")
    return tlv


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def encode_tlv(tag: int, value: bytes = b"") -> bytes:
    return bytes([tag]) + _length(len(value)) + value


def encode_int(n: int, tag: int = INTEGER) -> bytes:
    size = max(1, (n.bit_length() + 8) // 8)
    return encode_tlv(tag, n.to_bytes(size, "big", signed=True))


def encode_enum(n: int) -> bytes:
    return encode_int(n, ENUMERATED)


def encode_bool(b: bool) -> bytes:
    return encode_tlv(BOOLEAN, b"\xff" if b else b"\x00")


def encode_octets(s: str | bytes, tag: int = OCTET_STRING) -> bytes:
    return encode_tlv(tag, s.encode("utf-8") if isinstance(s, str) else s)


async def read_frame(reader: asyncio.StreamReader, max_size: int) -> bytes | None:
    """Read one whole SEQUENCE element from the stream; None at a clean end of stream."""
    try:
        head = await reader.readexactly(2)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise BerError("connection closed inside a message header") from e
    if head[0] != SEQUENCE:
        raise BerError(f"a message must start with a SEQUENCE, got tag 0x{head[0]:02x}")
    first = head[1]
    if first < 0x80:
        length = first
        prefix = head
    elif first == 0x80:
        raise BerError("indefinite lengths are not allowed in LDAP")
    else:
        n = first & 0x7F
        if n > _MAX_LENGTH_OCTETS:
            raise BerError("bad length octets")
        octets = await _exactly(reader, n)
        length = int.from_bytes(octets, "big")
        prefix = head + octets
    if length + len(prefix) > max_size:
        raise FrameTooLarge(f"message of {length} octets is above the limit of {max_size}")
    return prefix + await _exactly(reader, length)


async def _exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError as e:
        raise BerError("connection closed inside a message") from e
