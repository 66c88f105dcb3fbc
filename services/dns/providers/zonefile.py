"""Zone-file presentation of record values, as the PowerDNS API and Route 53 both speak it.

Our `Record.values` hold TXT text unquoted and names without a trailing dot; the providers want
TXT as quoted character-strings of at most 255 bytes (RFC 1035 section 5.1: `\\"`, `\\\\` and
`\\DDD` escapes) and names fully qualified with a trailing dot.
"""

from __future__ import annotations

from services.dns.providers.protocol import canonical_name

__all__ = ["from_presentation", "to_presentation", "txt_quote", "txt_unquote"]

_CHUNK = 255


def txt_quote(text: str) -> str:
    """`he said "hi"` -> `"he said \\"hi\\""`; long text is split into 255-byte strings."""
    raw = text.encode("utf-8")
    chunks = [raw[i : i + _CHUNK] for i in range(0, len(raw), _CHUNK)] or [b""]
    return " ".join('"' + "".join(_escape(b) for b in chunk) + '"' for chunk in chunks)


def _escape(b: int) -> str:
    if b in (0x22, 0x5C):
        return "\\" + chr(b)
    if 0x20 <= b < 0x7F:
        return chr(b)
    return f"\\{b:03d}"


def txt_unquote(content: str) -> str:
    """The inverse of `txt_quote`: the character-strings of `content`, concatenated."""
    out = bytearray()
    i, n = 0, len(content)
    quoted = False
    while i < n:
        c = content[i]
        if c == '"':
            quoted = not quoted
            i += 1
        elif c == "\\" and i + 1 < n:
            if content[i + 1 : i + 4].isdigit() and len(content[i + 1 : i + 4]) == 3:
                out.append(int(content[i + 1 : i + 4]) & 0xFF)
                i += 4
            else:
                out += content[i + 1].encode("utf-8")
                i += 2
        elif c.isspace() and not quoted:
            i += 1
        else:
            out += c.encode("utf-8")
            i += 1
    return out.decode("utf-8", "backslashreplace")


def to_presentation(type: str, value: str) -> str:
    """One of our values as a provider wants it."""
    if type == "TXT":
        return txt_quote(value)
    if type in ("CNAME", "NS", "PTR"):
        return canonical_name(value) + "."
    if type == "MX":
        pref, _, host = value.partition(" ")
        return f"{pref} {canonical_name(host)}."
    return value


def from_presentation(type: str, content: str) -> str:
    """A provider's value as one of ours."""
    if type == "TXT":
        return txt_unquote(content)
    if type in ("CNAME", "NS", "PTR"):
        return canonical_name(content)
    if type == "MX":
        pref, _, host = content.strip().partition(" ")
        return f"{pref} {canonical_name(host)}"
    return content.strip()
