"""Benchmark of the firewall: HTTPS through nginx with a full block list against an empty one.

`firewall_blocklist_cost` (issue 18): requests/s of a 1 KB page over HTTPS through Homeport's
table holding a 100,000-entry block list (`MAX_BLOCK`) over the same with the block list empty,
same run, same `wrk` settings, runs interleaved; target >= 0.9.

Nothing of the host's packet filter is touched. The run makes its own network namespaces, as
the firewall's tests do (tests/firewall/netkit.py; benchmarks do not import tests, so a small
equivalent lives here): `cli`, where `wrk -t2` runs, linked by a veth pair to each of two server
namespaces, "blocked" (192.0.2.1) and "empty" (192.0.2.5). Each server runs nginx (one worker,
a self-signed ECDSA certificate, the edge's TLS settings as services/gateway/edge renders them)
on its address, port 443, and holds the table the firewall itself renders and applies
(`ruleset.render`, `nft.Table.apply`, nft run through `ip netns exec`), with SSH and the edge
open: 100,000 entries in one, none in the other. Every packet to nginx crosses the table's
prerouting hook, where blocked sources are dropped (`ip saddr @blocked4`, before connection
tracking: one set lookup per packet, established or not), then its input chain.

Two servers rather than one whose table is swapped between runs: replacing a 100,000-entry
table takes 1-3 s, and on a shared machine the other load changes from second to second, so
short runs alternating back to back compare like with like; both tables stay as applied for the
whole run. Each round runs both sides back to back for each kind of load (ABBA: the side that
goes first swaps every round and between the two kinds), and the figure is the median of the
rounds' ratios blocked/empty: a burst of other load hits one pair, not the whole figure (the
ratio of the two sides' median rates is printed too; with both lists empty, on a loaded 2-core
machine, it strayed to 1.14 where the median of the rounds' ratios gave 1.00).
HP_BENCH_FIREWALL_ENTRIES=0 gives both servers an empty list: the result then shows what the
setup alone gives (about 1).

The list is seeded random, a mix like published block lists: 60 % IPv4 addresses, 35 % IPv4
/24, 2.5 % IPv6 /48 and 2.5 % IPv6 addresses (global unicast), plus 198.51.100.0/24, from which
a second source address of `cli` checks once that each table is in the path (dropped by the
blocked server, answered by the empty one); nothing covers 192.0.2.0/24. The output says how
many elements nft holds after its auto-merge, and how many packets the server received per
request.

Two kinds of load, each measured: keep-alive (`-c` connections kept open, about 1 packet in per
request) and one connection per request (`Connection: close`: TCP and TLS handshakes every time,
about 8 packets in per request). The RESULT line is the connection-per-request figure, the
harder one (lower in four runs of six). Likely why: a keep-alive client sends the same source
address again and again with little work in between, so the set's lookup walks the same few
cache lines, still warm; with a TLS handshake between each few packets it walks them cold, as it
does for the many addresses of real clients. In six runs on a shared 2-core machine the
per-request figure came out between 0.90 and 1.02 (median 0.98) and keep-alive 0.99-1.00; with
both lists empty (HP_BENCH_FIREWALL_ENTRIES=0) 0.99-1.04: about 5 % is noise.
Both figures are printed.

Each run lasts HP_BENCH_FIREWALL_SECONDS (default 2); there are twice HP_BENCH_ROUNDS rounds (10
by default, 40 runs, about a minute and a half in all). Needs root (network namespaces), nft,
nginx, wrk and curl.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Bench, BenchConfig, BenchError, Benchmark, Result, _env_int, say
from bench.edge import _self_signed
from bench.gateway import _Load, _parse_wrk
from deploy.embedded import EmbeddedError, astop, find_binary
from libs.contracts.firewall import MAX_BLOCK
from services.firewall.errors import NftError
from services.firewall.nft import Nft, Table
from services.firewall.ruleset import Opening, Rules, render
from services.gateway.edge.render import CIPHERS

__all__ = ["BENCHMARKS"]

_TARGET = 0.9
_SEED = 18
_TABLE = "homeport"
_PORT = 443
_PAGE = 1024
_PROBE_NET = "198.51.100.0/24"  # in the list: a source there must be dropped
_PROBE_SOURCE = "198.51.100.7"
_OPENINGS = (Opening("tcp", _PORT, "edge"), Opening("tcp", 22, "ssh"))
_MODES = {"keep-alive": (), "close": ("-H", "Connection: close")}
_RESULT_MODE = "close"


async def _run(*argv: str) -> str:
    """Run a command; its stdout, or BenchError with its stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


def _inside(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


@dataclass(slots=True)
class _Side:
    """One server namespace: its link to `cli`, nginx on `address`, its table's script, and
    what wrk measured against it."""

    label: str
    ns: str
    link: str  # the server's end of the veth
    address: str  # the server's (nginx listens here)
    client: str  # cli's, on this link
    script: str
    loads: dict[str, list[_Load]] = field(default_factory=lambda: {m: [] for m in _MODES})
    packets: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in _MODES})

    @property
    def url(self) -> str:
        return f"https://{self.address}:{_PORT}/"

    def rate(self, mode: str) -> float:
        return statistics.median(x.rate for x in self.loads[mode])

    async def received(self) -> int:
        """Packets the server has received on its link (each crossed its table's hooks)."""
        out = await _run("ip", "-n", self.ns, "-j", "-s", "link", "show", "dev", self.link)
        return int(json.loads(out)[0]["stats64"]["rx"]["packets"])


# -- the network and nginx -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _network(cli: str, sides: Sequence[_Side]) -> AsyncIterator[None]:
    """Namespace `cli` linked to each side's namespace by a veth pair (a /30 each); the probe
    source 198.51.100.7 sits on cli's loopback, and each server routes its network back."""
    made: list[str] = []
    try:
        for ns in (cli, *(s.ns for s in sides)):
            await _run("ip", "netns", "add", ns)
            made.append(ns)
            await _run(*_inside(ns, "ip", "link", "set", "lo", "up"))
        await _run(*_inside(cli, "ip", "addr", "add", f"{_PROBE_SOURCE}/32", "dev", "lo"))
        for s in sides:
            peer = f"c{s.link}"
            await _run(
                "ip", "link", "add", s.link, "netns", s.ns,
                "type", "veth", "peer", peer, "netns", cli,
            )  # fmt: skip
            await _run(*_inside(s.ns, "ip", "addr", "add", f"{s.address}/30", "dev", s.link))
            await _run(*_inside(cli, "ip", "addr", "add", f"{s.client}/30", "dev", peer))
            await _run(*_inside(s.ns, "ip", "link", "set", s.link, "up"))
            await _run(*_inside(cli, "ip", "link", "set", peer, "up"))
            await _run(*_inside(s.ns, "ip", "route", "add", _PROBE_NET, "via", s.client))
        yield
    finally:
        for ns in made:
            with contextlib.suppress(BenchError):
                await _run("ip", "netns", "delete", ns)


def _nginx_conf(folder: Path, address: str, cert: Path, key: Path) -> str:
    """A static HTTPS server with the edge's TLS settings, one worker."""
    user = "user www-data;\n" if os.geteuid() == 0 else ""
    t = folder / "tmp"
    return (
        f"{user}worker_processes 1;\npid {folder}/nginx.pid;\n"
        f"error_log {folder}/error.log warn;\nevents {{ worker_connections 4096; }}\n"
        f"http {{\n access_log off;\n client_body_temp_path {t}; proxy_temp_path {t};\n"
        f" fastcgi_temp_path {t}; uwsgi_temp_path {t}; scgi_temp_path {t};\n"
        " sendfile on; keepalive_requests 100000;\n"
        " ssl_protocols TLSv1.2 TLSv1.3;\n"
        f" ssl_ciphers {CIPHERS};\n ssl_prefer_server_ciphers off;\n"
        " ssl_ecdh_curve X25519:prime256v1:secp384r1;\n ssl_session_tickets off;\n"
        " ssl_session_cache shared:hp_tls:10m;\n ssl_session_timeout 1d;\n"
        f" server {{\n  listen {address}:{_PORT} ssl;\n  ssl_certificate {cert};\n"
        f"  ssl_certificate_key {key};\n  root {folder}/www;\n }}\n}}\n"
    )


@contextlib.asynccontextmanager
async def _nginx(side: _Side, folder: Path, cert: Path, key: Path) -> AsyncIterator[None]:
    """nginx in the side's namespace serving the page over HTTPS on its address."""
    folder.mkdir(mode=0o755, parents=True)
    (folder / "www").mkdir(mode=0o755)
    (folder / "www" / "index.html").write_bytes(b"x" * _PAGE)
    (folder / "nginx.conf").write_text(_nginx_conf(folder, side.address, cert, key))
    try:
        binary = find_binary("nginx")
    except EmbeddedError as e:
        raise BenchError("nginx not found: install the Debian package nginx-light") from e
    proc = await asyncio.create_subprocess_exec(
        *_inside(side.ns, binary, "-e", "stderr", "-p", f"{folder}/",
                 "-c", str(folder / "nginx.conf"), "-g", "daemon off;"),
        stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        yield
    finally:
        await astop(proc, signal.SIGQUIT, 10)


async def _get(cli: str, url: str, source: str, wait: float) -> bytes | None:
    """The page as `cli` gets it from `source`; None when nothing answers within `wait` s."""
    proc = await asyncio.create_subprocess_exec(
        *_inside(cli, "curl", "-sS", "-k", "--http1.1", "--fail",
                 "--interface", source, "--max-time", str(wait), url),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return out if proc.returncode == 0 else None


# -- the block list and the tables -----------------------------------------------------------


def _blocklist(n: int, seed: int) -> tuple[str, ...]:
    """`n` distinct entries (the probe network first among them), normalised as the
    firewall's read model gives them (`address/len`), sorted; none covers 192.0.2.0/24."""
    if n == 0:
        return ()
    rng = random.Random(seed)
    keep = int(ipaddress.ip_address("192.0.2.0")) >> 8
    v4: set[tuple[int, int]] = {(int(ipaddress.ip_address("198.51.100.0")), 24)}
    v6: set[tuple[int, int]] = set()
    doc6 = int(ipaddress.ip_address("2001:db8::")) >> 96
    while len(v4) + len(v6) < n:
        k = rng.random()
        if k < 0.95:
            a = rng.getrandbits(32)
            if a >> 8 == keep:
                continue
            v4.add((a, 32) if k < 0.6 else (a & ~0xFF, 24))
        else:
            a = (1 << 125) | rng.getrandbits(125)  # 2000::/3
            if a >> 96 == doc6:
                continue
            v6.add((a, 128) if k < 0.975 else (a & ~((1 << 80) - 1), 48))
    out = [f"{ipaddress.IPv4Address(a)}/{p}" for a, p in sorted(v4)]
    return (*out, *(f"{ipaddress.IPv6Address(a)}/{p}" for a, p in sorted(v6)))


async def _apply(side: _Side) -> None:
    """The side's table, applied by the firewall's own code in its namespace."""
    table = Table(Nft(_inside(side.ns, "nft")), _TABLE)
    t0 = time.perf_counter()
    try:
        await table.apply(side.script)
    except NftError as e:
        raise BenchError(f"the {side.label} table was refused: {e}") from e
    took = time.perf_counter() - t0
    held = []
    for name in ("blocked4", "blocked6"):
        doc = json.loads(await table.nft.run("-j", "list", "set", "inet", _TABLE, name))
        held.append(sum(len(i["set"].get("elem", ())) for i in doc["nftables"] if "set" in i))
    say(
        f"  table {side.label:<7} applied in {took:.1f} s (checked, then loaded); nft holds"
        f" {held[0]:,} + {held[1]:,} elements in blocked4 + blocked6"
    )


# -- measuring ------------------------------------------------------------------------------


async def _wrk(cli: str, side: _Side, cfg: BenchConfig, seconds: int, mode: str) -> _Load:
    try:
        wrk = find_binary("wrk")
    except EmbeddedError as e:
        raise BenchError("wrk not found: `make bench` installs it (Debian package wrk)") from e
    argv = [wrk, "-t2", f"-c{cfg.http_connections}", f"-d{seconds}s", "--latency", *_MODES[mode]]
    proc = await asyncio.create_subprocess_exec(
        *_inside(cli, *argv, side.url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
    finally:
        await astop(proc, signal.SIGTERM, 5)
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with code {proc.returncode}:\n{out.decode(errors='replace')}")
    return _parse_wrk(out.decode(errors="replace"))


async def _measure(cli: str, side: _Side, cfg: BenchConfig, seconds: int, mode: str) -> _Load:
    before = await side.received()
    load = await _wrk(cli, side, cfg, seconds, mode)
    side.loads[mode].append(load)
    side.packets[mode].append((await side.received() - before) / max(load.requests, 1))
    return load


async def firewall_blocklist_cost(b: Bench) -> Result:
    if os.geteuid() != 0:
        raise BenchError("this benchmark makes network namespaces: run it as root")
    for tool in ("ip", "nft", "curl"):
        try:
            find_binary(tool)
        except EmbeddedError as e:
            raise BenchError(f"{tool} not found: install iproute2, nftables and curl") from e
    seconds = _env_int(os.environ, "HP_BENCH_FIREWALL_SECONDS", 2, 1)
    size = _env_int(os.environ, "HP_BENCH_FIREWALL_ENTRIES", MAX_BLOCK, 0)
    rounds = 2 * b.cfg.rounds
    t0 = time.perf_counter()
    entries = _blocklist(size, _SEED)
    kinds = [sum(e.endswith(f"/{n}") for e in entries) for n in (32, 24, 48, 128)]
    tag = uuid.uuid4().hex[:6]
    cli = f"hpbfc{tag}"
    blocked = _Side(
        "blocked", f"hpbfb{tag}", f"b{tag}", "192.0.2.1", "192.0.2.2",
        render(_TABLE, Rules(openings=_OPENINGS, blocked=entries)),
    )  # fmt: skip
    empty = _Side(
        "empty", f"hpbfe{tag}", f"e{tag}", "192.0.2.5", "192.0.2.6",
        render(_TABLE, Rules(openings=_OPENINGS)),
    )  # fmt: skip
    say(
        f"  block list: {len(entries):,} entries ({kinds[0]:,} IPv4 addresses, {kinds[1]:,}"
        f" IPv4 /24, {kinds[2]:,} IPv6 /48, {kinds[3]:,} IPv6 addresses), seeded; made and"
        f" rendered in {time.perf_counter() - t0:.1f} s"
    )
    folder = Path(tempfile.mkdtemp(prefix="hp-bench-fw-"))
    folder.chmod(0o755)
    try:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(_network(cli, (blocked, empty)))
            cert, key = _self_signed(folder, ("firewall.bench.test",))  # reached by address
            for side in (blocked, empty):
                await _apply(side)
                await stack.enter_async_context(_nginx(side, folder / side.label, cert, key))
            for side in (blocked, empty):
                for _ in range(100):
                    page = await _get(cli, side.url, side.client, 2)
                    if page is not None:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise BenchError(f"nginx in {side.ns} did not answer on {side.url}")
                if len(page) != _PAGE:
                    raise BenchError(f"the page is {len(page)} bytes, not the {_PAGE} B page")
                answered = await _get(cli, side.url, _PROBE_SOURCE, 1) is not None
                if answered != (side is empty or not entries):
                    raise BenchError(
                        f"{_PROBE_SOURCE} {'got' if answered else 'got no'} answer from the"
                        f" {side.label} side: the table is not in the path as it should be"
                    )
            probe = "answered by both (no entries)"
            if entries:
                probe = "dropped by the blocked side, answered by the empty one"
            say(
                f"  cli gets the {_PAGE} B page over HTTPS from each side's nginx (1 worker);"
                f" {_PROBE_SOURCE} is {probe}"
            )
            say(
                f"  wrk -t2 -c{b.cfg.http_connections} -d{seconds}s per run, keep-alive and"
                f" `Connection: close`; {rounds} rounds, each side once per kind, alternating"
            )
            warm = [await _wrk(cli, side, b.cfg, 1, m) for side in (blocked, empty) for m in _MODES]
            say(f"  warm-up (not counted): {', '.join(f'{w.rate:,.0f}' for w in warm)} req/s")
            for r in range(rounds):
                order = (empty, blocked) if r % 2 == 0 else (blocked, empty)
                for mode in _MODES:
                    for side in order if mode == "keep-alive" else order[::-1]:
                        load = await _measure(cli, side, b.cfg, seconds, mode)
                        errors = f"; socket errors: {load.errors}" if load.errors else ""
                        say(
                            f"  round {r + 1:<2} {side.label:<7} {mode:<10} {load.rate:>9,.0f}"
                            f" req/s  p50 {load.p50 * 1e3:.2f} ms, p99 {load.p99 * 1e3:.2f} ms"
                            f"{errors}"
                        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ratios = {}
    for mode in _MODES:
        pairs = [
            x.rate / y.rate for x, y in zip(blocked.loads[mode], empty.loads[mode], strict=True)
        ]
        ratios[mode] = statistics.median(pairs)
        per = statistics.median([*blocked.packets[mode], *empty.packets[mode]])
        say(f"  {mode:<10} rounds' ratios blocked/empty: {', '.join(f'{x:.2f}' for x in pairs)}")
        say(
            f"  {mode:<10} median blocked {blocked.rate(mode):,.0f} req/s, empty"
            f" {empty.rate(mode):,.0f} req/s (ratio of the medians"
            f" {blocked.rate(mode) / empty.rate(mode):.3f}); {per:.1f} packets in per request"
        )
        say(f"  {mode:<10} median of the rounds' ratios = {ratios[mode]:.3f}")
    say(f"  result: {_RESULT_MODE} (a connection per request), median of the rounds' ratios")
    return Result("firewall_blocklist_cost", ratios[_RESULT_MODE], _TARGET)


BENCHMARKS: dict[str, Benchmark] = {
    # alone: it needs neither the harness's Postgres nor its NATS (fewer processes competing)
    "firewall_blocklist_cost": Benchmark(
        "firewall_blocklist_cost", firewall_blocklist_cost, _TARGET, alone=True
    ),
}
