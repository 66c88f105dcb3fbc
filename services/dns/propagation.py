"""Propagation checks: ask each authoritative nameserver of a zone directly for a record.

The zone's NS set is found through the system resolver (aiodns). Each authoritative server is
then asked with a small stdlib DNS client (UDP, TCP when the answer is truncated, no recursion,
no cache): a resolver in between would answer from its cache, and tests need servers on high
ports. RFC 1035 section 4 has the wire format.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiodns
import aiodns.error

from services.dns.errors import DnsProviderError
from services.dns.providers.protocol import Progress, Record, canonical_name, format_record

__all__ = [
    "Answer",
    "find_nameservers",
    "lookup",
    "query",
    "resolve_hosts",
    "wait_for_record",
]

TYPE_CODES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28, "CAA": 257}
_TYPE_NAMES = {v: k for k, v in TYPE_CODES.items()}
_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
_QUERY_TIMEOUT = 2.0
# aiodns/c-ares error numbers meaning "the name has no such record" or "no such name".
_ARES_NODATA = (1, 4)


@dataclass(frozen=True)
class Answer:
    """What one server said: `status` is NOERROR, NXDOMAIN, SERVFAIL, REFUSED, ..., or
    `timeout` / `unreachable`; `values` are those of the asked type (after in-zone CNAMEs)."""

    server: tuple[str, int]
    status: str
    values: tuple[str, ...] = ()
    authoritative: bool = False

    def describe(self) -> str:
        where = _server_text(self.server)
        if self.status == "NOERROR" and self.values:
            return f"{where} answers {', '.join(self.values)}"
        if self.status == "NOERROR":
            return f"{where} answers no record of that type"
        if self.status == "NXDOMAIN":
            return f"{where} answers no such name (NXDOMAIN)"
        if self.status in ("timeout", "unreachable"):
            return f"{where} did not answer ({self.status})"
        return f"{where} answers {self.status}"


def _server_text(server: tuple[str, int]) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- wire format ----------------------------------------------------------------------------


def _encode_name(name: str) -> bytes:
    out = b""
    for label in canonical_name(name).split("."):
        if not label:
            continue
        raw = label.encode("idna") if not label.isascii() else label.encode()
        if len(raw) > 63:
            raise DnsProviderError(f"{name}: the label {label!r} is longer than 63 bytes")
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def _build_query(name: str, type: str) -> tuple[int, bytes]:
    qid = secrets.randbelow(0x10000)
    header = struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 0)  # RD=0: we ask the authority itself
    return qid, header + _encode_name(name) + struct.pack("!HH", TYPE_CODES[type], 1)


def _read_name(msg: bytes, pos: int) -> tuple[str, int]:
    labels: list[str] = []
    end: int | None = None
    for _ in range(128):  # bound on pointer jumps: a malicious loop cannot hang us
        length = msg[pos]
        if length & 0xC0 == 0xC0:
            if end is None:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | msg[pos + 1]
            continue
        if length == 0:
            return ".".join(labels).lower(), (end if end is not None else pos + 1)
        labels.append(msg[pos + 1 : pos + 1 + length].decode("ascii", "backslashreplace"))
        pos += 1 + length
    raise ValueError("name compression loop")


def _rdata_text(msg: bytes, type_code: int, start: int, length: int) -> str:
    rd = msg[start : start + length]
    if type_code == 1:
        return str(ipaddress.IPv4Address(rd))
    if type_code == 28:
        return str(ipaddress.IPv6Address(rd))
    if type_code in (2, 5, 12):
        return _read_name(msg, start)[0]
    if type_code == 15:
        return f"{struct.unpack('!H', rd[:2])[0]} {_read_name(msg, start + 2)[0]}"
    if type_code == 16:
        parts, i = [], 0
        while i < len(rd):
            parts.append(rd[i + 1 : i + 1 + rd[i]])
            i += 1 + rd[i]
        return b"".join(parts).decode("utf-8", "backslashreplace")
    if type_code == 257:
        taglen = rd[1]
        tag = rd[2 : 2 + taglen].decode("ascii", "backslashreplace")
        value = rd[2 + taglen :].decode("utf-8", "backslashreplace")
        return f'{rd[0]} {tag} "{value}"'
    if type_code == 6:
        mname, pos = _read_name(msg, start)
        rname, pos = _read_name(msg, pos)
        nums = struct.unpack("!IIIII", msg[pos : pos + 20])
        return " ".join([mname, rname, *map(str, nums)])
    return rd.hex()


def _parse(msg: bytes, qid: int, name: str, type: str, server: tuple[str, int]) -> Answer | None:
    """None if `msg` is not the answer to our query (wrong id) or was truncated."""
    if len(msg) < 12:
        return None
    rid, flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", msg[:12])
    if rid != qid or not flags & 0x8000:
        return None
    if flags & 0x0200:
        raise _Truncated
    status = _RCODES.get(flags & 0xF, f"RCODE {flags & 0xF}")
    pos = 12
    for _ in range(qd):
        pos = _read_name(msg, pos)[1] + 4
    rrs: list[tuple[str, int, str]] = []
    for _ in range(an):
        owner, pos = _read_name(msg, pos)
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", msg[pos : pos + 10])
        pos += 10
        rrs.append((owner, rtype, _rdata_text(msg, rtype, pos, rdlen)))
        pos += rdlen
    want = TYPE_CODES[type]
    owner = canonical_name(name)
    if want != 5:  # follow CNAMEs the server put in the same answer
        for _ in range(16):
            nxt = next((v for o, t, v in rrs if o == owner and t == 5), None)
            if nxt is None:
                break
            owner = nxt
    values = tuple(sorted({v for o, t, v in rrs if o == owner and t == want}))
    return Answer(server, status, values, bool(flags & 0x0400))


class _Truncated(Exception):
    pass


class _UdpReply(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.error: Exception | None = None

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        self.error = exc
        self.queue.put_nowait(b"")


async def _udp(server: tuple[str, int], name: str, type: str, limit: float) -> Answer:
    loop = asyncio.get_running_loop()
    qid, packet = _build_query(name, type)
    transport, proto = await loop.create_datagram_endpoint(_UdpReply, remote_addr=server)
    try:
        transport.sendto(packet)
        async with asyncio.timeout(limit):
            while True:
                data = await proto.queue.get()
                if proto.error is not None:
                    return Answer(server, "unreachable")
                answer = _parse(data, qid, name, type, server)
                if answer is not None:
                    return answer
    finally:
        transport.close()


async def _tcp(server: tuple[str, int], name: str, type: str, limit: float) -> Answer:
    qid, packet = _build_query(name, type)
    async with asyncio.timeout(limit):
        reader, writer = await asyncio.open_connection(*server)
        try:
            writer.write(struct.pack("!H", len(packet)) + packet)
            await writer.drain()
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            data = await reader.readexactly(size)
        finally:
            writer.close()
            await writer.wait_closed()
    answer = _parse(data, qid, name, type, server)
    if answer is None:
        return Answer(server, "FORMERR")
    return answer


async def query(
    server: tuple[str, int], name: str, type: str, limit: float = _QUERY_TIMEOUT
) -> Answer:
    """Ask one server for `name`/`type`; never raises for network trouble (see Answer.status)."""
    type = type.upper()
    if type not in TYPE_CODES:
        raise DnsProviderError(f"{name} {type}: cannot look up this record type")
    try:
        try:
            return await _udp(server, name, type, limit)
        except _Truncated:
            return await _tcp(server, name, type, limit)
    except TimeoutError:
        return Answer(server, "timeout")
    except (OSError, asyncio.IncompleteReadError, ValueError, struct.error, IndexError):
        return Answer(server, "unreachable")


# -- finding the authoritative servers ------------------------------------------------------


async def find_nameservers(
    name: str,
    *,
    resolver: Sequence[str] | None = None,
    port: int = 53,
) -> list[tuple[str, int]]:
    """The addresses of the authoritative servers of the zone holding `name` (its NS set, found
    by walking up from `name`), each with `port`. `resolver` ("ip" or "ip:port" strings)
    replaces the system's resolvers."""
    labels = canonical_name(name).split(".")
    try:
        async with aiodns.DNSResolver(nameservers=list(resolver) if resolver else None) as r:
            for i in range(len(labels) - 1):
                candidate = ".".join(labels[i:])
                try:
                    result = await r.query_dns(candidate, "NS")
                except aiodns.error.DNSError as e:
                    if e.args and e.args[0] in _ARES_NODATA:
                        continue
                    raise DnsProviderError(
                        f"looking up the nameservers of {candidate} failed ({_dns_error(e)}): "
                        "check this server's DNS resolver"
                    ) from e
                hosts = [
                    canonical_name(str(rr.data.nsdname))
                    for rr in result.answer
                    if hasattr(rr.data, "nsdname")
                ]
                if not hosts:
                    continue
                addrs = await _addresses(r, hosts)
                if not addrs:
                    raise DnsProviderError(
                        f"the nameservers of {candidate} ({', '.join(hosts)}) have no address: "
                        "check their A/AAAA records at the registrar"
                    )
                return [(a, port) for a in addrs]
    except aiodns.error.DNSError as e:
        raise DnsProviderError(f"DNS look-up for {name} failed: {_dns_error(e)}") from e
    raise DnsProviderError(
        f"no zone with nameservers found for {name}: check that the domain is registered and "
        "delegated (NS records at the registrar)"
    )


async def _addresses(r: aiodns.DNSResolver, hosts: Sequence[str]) -> list[str]:
    out: list[str] = []
    for host in sorted(hosts):
        for qtype in ("A", "AAAA"):
            try:
                result = await r.query_dns(host, qtype)
            except aiodns.error.DNSError:
                continue
            for rr in result.answer:
                addr = getattr(rr.data, "addr", None)
                if addr and addr not in out:
                    out.append(str(addr))
    return out


async def resolve_hosts(
    hosts: Sequence[str], *, resolver: Sequence[str] | None = None, port: int = 53
) -> list[tuple[str, int]]:
    """The addresses of nameserver `hosts`, each with `port`."""
    async with aiodns.DNSResolver(nameservers=list(resolver) if resolver else None) as r:
        addrs = await _addresses(r, hosts)
    if not addrs:
        raise DnsProviderError(
            f"the nameservers {', '.join(hosts)} have no address: check their A/AAAA records"
        )
    return [(a, port) for a in addrs]


def _dns_error(e: aiodns.error.DNSError) -> str:
    return str(e.args[1]) if len(e.args) > 1 else str(e)


async def _servers_for(
    name: str, nameservers: Sequence[tuple[str, int]] | None, zone: str | None
) -> list[tuple[str, int]]:
    if nameservers:
        return list(nameservers)
    return await find_nameservers(zone or name)


async def lookup(
    name: str,
    type: str,
    nameservers: Sequence[tuple[str, int]] | None = None,
    *,
    zone: str | None = None,
) -> Record | None:
    """`name`/`type` as the first authoritative server that answers has it (None: no record)."""
    servers = await _servers_for(name, nameservers, zone)
    answers = []
    for server in servers:
        answer = await query(server, name, type)
        if answer.status in ("NOERROR", "NXDOMAIN"):
            if not answer.values:
                return None
            return Record(name, type, answer.values)
        answers.append(answer)
    raise DnsProviderError(
        f"no nameserver answered for {canonical_name(name)} {type.upper()}: "
        + "; ".join(a.describe() for a in answers)
        + ": check that these servers serve the zone"
    )


def _limit(end: float) -> float:
    return min(_QUERY_TIMEOUT, max(0.2, end - time.monotonic()))


# -- waiting --------------------------------------------------------------------------------


async def wait_for_record(
    record: Record,
    nameservers: Sequence[tuple[str, int]] | None,
    deadline: float,
    progress: Progress | None = None,
    *,
    zone: str | None = None,
) -> None:
    """Return once every authoritative server answers exactly `record.values`; raise
    DnsProviderError after `deadline` seconds naming each server that does not."""
    end = time.monotonic() + deadline
    servers = await _servers_for(record.name, nameservers, zone)
    what = format_record(record)
    wanted = tuple(sorted(record.values))
    said: int | None = None
    pause = 0.2
    while True:
        answers = await asyncio.gather(
            *(
                query(
                    s,
                    record.name,
                    record.type,
                    min(_QUERY_TIMEOUT, max(0.2, end - time.monotonic())),
                )
                for s in servers
            )
        )
        good = [a for a in answers if a.status == "NOERROR" and a.values == wanted]
        if progress is not None and len(good) != said:
            said = len(good)
            await progress(f"{len(good)} of {len(servers)} nameservers answer {what}")
        if len(good) == len(servers):
            return
        left = end - time.monotonic()
        if left <= 0:
            bad = "; ".join(a.describe() for a in answers if a not in good)
            raise DnsProviderError(
                f"{what} is not answered by every nameserver after {deadline:g}s: {bad}; "
                "check the record at the DNS provider and that these servers serve the zone, "
                "or wait longer"
            )
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 1.5, 3.0)
