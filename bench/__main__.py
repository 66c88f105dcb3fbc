"""`python -m bench [name ...]`: run the benchmarks (all by default) and check their targets."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

from bench import apps, backup, edge, events, firewall, gateway, mail, memory, stack
from bench.common import Bench, BenchConfig, BenchError, Benchmark, Result, say, servers
from libs.service.runner import run_on_service_loop

__all__ = ["main"]

BENCHMARKS: dict[str, Benchmark] = {
    **events.BENCHMARKS,
    **gateway.BENCHMARKS,
    **apps.BENCHMARKS,
    **edge.BENCHMARKS,
    **backup.BENCHMARKS,
    **mail.BENCHMARKS,
    **firewall.BENCHMARKS,
    **memory.BENCHMARKS,
    **stack.BENCHMARKS,
}


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    """SIGTERM outside the event loop: unwind like Ctrl-C, so the servers are stopped."""
    raise KeyboardInterrupt


def _load() -> str:
    """The 1-minute load average: anything else running on the machine skews the figures."""
    return f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus"


async def _run_all(chosen: Sequence[Benchmark], cfg: BenchConfig, bench: Bench) -> list[Result]:
    """Run each benchmark in turn; one that fails is reported and the others still run."""
    me = asyncio.current_task()
    assert me is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, me.cancel)
    results: list[Result] = []
    for bm in chosen:
        say(f"== {bm.name}  (load average {_load()})")
        t0 = time.perf_counter()
        try:
            result = await bm.run(bench)
        except Exception as e:
            traceback.print_exc()
            say(f"  FAILED: {type(e).__name__}: {e}")
            result = Result(bm.name, None, bm.target, bm.op, misses=(str(e),))
        say(f"  wall time {time.perf_counter() - t0:.1f} s (load average {_load()})")
        for miss in result.misses:
            say(f"  MISSED: {miss}")
        say(result.line)
        results.append(result)
    return results


def main(argv: Sequence[str]) -> int:
    names = list(argv) or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        say(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    try:
        cfg = BenchConfig.from_env(os.environ)
    except BenchError as e:
        say(f"bench: {e}")
        return 2
    chosen = [BENCHMARKS[n] for n in names]
    t0 = time.perf_counter()
    signal.signal(signal.SIGTERM, _interrupt)
    shared = [bm for bm in chosen if not bm.alone]
    alone = [bm for bm in chosen if bm.alone]
    results: list[Result] = []
    try:
        if shared:
            with servers(with_nats=any(bm.needs_nats for bm in shared)) as srv:
                say(
                    f"bench: Postgres (fsync on) on port {srv.pg.port}"
                    + (f", nats-server on port {srv.nats.port}" if srv.nats else "")
                    + f", in {srv.root}; {cfg.rounds} rounds each ({cfg.replay_rounds} for"
                    " replay), ours and baseline interleaved, medians compared"
                )
                results += run_on_service_loop(_run_all(shared, cfg, Bench(cfg, srv)))
                signal.signal(signal.SIGTERM, _interrupt)  # closing the loop reset it
        if alone:
            say("bench: now with no server of the harness running (they would share pages)")
            results += run_on_service_loop(_run_all(alone, cfg, Bench(cfg, None)))
            signal.signal(signal.SIGTERM, _interrupt)
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("bench: interrupted; servers stopped and temporary files removed")
        return 130
    missed = [r for r in results if not r.met]
    say(f"== summary ({time.perf_counter() - t0:.0f} s)")
    for r in results:
        say(f"{r.line}{'' if r.met else '  MISSED'}")
    say(f"bench: {len(results) - len(missed)} of {len(results)} targets met")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
