"""Prometheus metrics of a Homeport service, on a registry of their own.

A small implementation of the part of prometheus_client we use (Counter, Gauge, Histogram with
labels; the process, platform and GC collectors; the text 0.0.4 and OpenMetrics 1.0 expositions,
with the same names, samples and `_created` series): prometheus_client's package imports its HTTP
server, push gateway client and WSGI/ASGI apps, ~2.5 MiB of heap in every service process for
as long as it runs (`python -m bench idle_memory`). The expositions are checked against
prometheus_client's own parsers in tests/service/test_metrics.py.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import NamedTuple

__all__ = [
    "EVENTS_APPENDED",
    "HANDLER_ERRORS",
    "HANDLER_LATENCY",
    "LATENCY_BUCKETS",
    "REGISTRY",
    "RELAY_LAG_EVENTS",
    "RELAY_LAG_SECONDS",
    "Counter",
    "Gauge",
    "Histogram",
    "Metric",
    "Registry",
    "Sample",
    "render_metrics",
]

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


class Metric(NamedTuple):
    """One metric family as collected: its name (without `_total`), type, help and samples."""

    name: str
    type: str
    documentation: str
    samples: list[Sample]


Collector = Callable[[], Iterable[Metric]]


class Registry:
    """The metrics and collectors of this process, in the order registered."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []
        self._names: set[str] = set()
        self._lock = threading.Lock()

    def register(self, collector: Collector, names: Iterable[str] = ()) -> None:
        with self._lock:
            taken = self._names.intersection(names)
            if taken:
                raise ValueError(f"metric {sorted(taken)[0]} is registered already")
            self._names.update(names)
            self._collectors.append(collector)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            collectors = list(self._collectors)
        for c in collectors:
            yield from c()

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The value of sample `name` with exactly `labels`, or None (for tests)."""
        wanted = labels or {}
        for metric in self.collect():
            for s in metric.samples:
                if s.name == name and s.labels == wanted:
                    return s.value
        return None


REGISTRY = Registry()  # the process's: what /metrics shows


class _Child:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._created = time.time()

    def _samples(self, name: str) -> list[tuple[str, dict[str, str], float]]:
        raise NotImplementedError


class _CounterChild(_Child):
    def __init__(self) -> None:
        super().__init__()
        self._value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        with self._lock:
            self._value += amount

    def _samples(self, name: str) -> list[tuple[str, dict[str, str], float]]:
        return [(f"{name}_total", {}, self._value), (f"{name}_created", {}, self._created)]


class _GaugeChild(_Child):
    def __init__(self) -> None:
        super().__init__()
        self._value = 0.0

    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self._value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.inc(-amount)

    def get(self) -> float:
        return self._value

    def _samples(self, name: str) -> list[tuple[str, dict[str, str], float]]:
        return [(name, {}, self._value)]


class _Timer:
    def __init__(self, observe: Callable[[float], None]) -> None:
        self._observe = observe
        self._start = 0.0

    def __enter__(self) -> _Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._observe(max(time.perf_counter() - self._start, 0.0))


class _HistogramChild(_Child):
    def __init__(self, bounds: Sequence[float]) -> None:
        super().__init__()
        self._bounds = bounds
        self._counts = [0.0] * len(bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        with self._lock:
            self._sum += amount
            for i, bound in enumerate(self._bounds):
                if amount <= bound:
                    self._counts[i] += 1
                    break

    def time(self) -> _Timer:
        """A context manager observing the seconds its block took."""
        return _Timer(self.observe)

    def _samples(self, name: str) -> list[tuple[str, dict[str, str], float]]:
        out: list[tuple[str, dict[str, str], float]] = []
        total = 0.0
        with self._lock:
            for bound, count in zip(self._bounds, self._counts, strict=True):
                total += count
                out.append((f"{name}_bucket", {"le": _go_float(bound)}, total))
            out += [
                (f"{name}_count", {}, total),
                (f"{name}_sum", {}, self._sum),
                (f"{name}_created", {}, self._created),
            ]
        return out


class _Family:
    """A metric with label names; without labels, the one child's methods are its own."""

    _type = ""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: Registry | None = REGISTRY,
    ) -> None:
        self._name = name
        self._doc = documentation
        self._labelnames = tuple(labelnames)
        for label in self._labelnames:
            if not label.isidentifier() or label.startswith("__") or label == "le":
                raise ValueError(f"invalid label name {label!r} for metric {name}")
        self._children: dict[tuple[str, ...], _Child] = {}
        self._lock = threading.Lock()
        if not self._labelnames:
            self._children[()] = self._new_child()
        if registry is not None:
            registry.register(self.collect, self._sample_names())

    def _new_child(self) -> _Child:
        raise NotImplementedError

    def _sample_names(self) -> list[str]:
        return [self._name]

    def _child(self, values: tuple[str, ...]) -> _Child:
        with self._lock:
            child = self._children.get(values)
            if child is None:
                child = self._children[values] = self._new_child()
            return child

    def _key(self, values: Sequence[object], kw: dict[str, object]) -> tuple[str, ...]:
        if not self._labelnames:
            raise ValueError(f"metric {self._name} has no labels")
        if values and kw:
            raise ValueError("give label values by position or by name, not both")
        if kw:
            if set(kw) != set(self._labelnames):
                raise ValueError(f"metric {self._name} takes labels {list(self._labelnames)}")
            values = [kw[n] for n in self._labelnames]
        if len(values) != len(self._labelnames):
            raise ValueError(f"metric {self._name} takes labels {list(self._labelnames)}")
        return tuple(str(v) for v in values)

    def remove(self, *values: object) -> None:
        """Drop the child with these label values (KeyError if there is none)."""
        key = self._key(values, {})
        with self._lock:
            del self._children[key]

    def clear(self) -> None:
        with self._lock:
            self._children.clear()

    def collect(self) -> list[Metric]:
        samples: list[Sample] = []
        with self._lock:
            children = list(self._children.items())
        for values, child in children:
            base = dict(zip(self._labelnames, values, strict=True))
            for name, extra, value in child._samples(self._name):
                samples.append(Sample(name, {**base, **extra}, value))
        return [Metric(self._name, self._type, self._doc, samples)]


class Counter(_Family):
    """A count that only goes up; exposed as `<name>_total` (and `<name>_created`)."""

    _type = "counter"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: Registry | None = REGISTRY,
    ) -> None:
        super().__init__(name.removesuffix("_total"), documentation, labelnames, registry=registry)

    def _new_child(self) -> _Child:
        return _CounterChild()

    def _sample_names(self) -> list[str]:
        return [f"{self._name}_total", f"{self._name}_created"]

    def labels(self, *values: object, **kw: object) -> _CounterChild:
        child = self._child(self._key(values, kw))
        assert isinstance(child, _CounterChild)
        return child

    def inc(self, amount: float = 1.0) -> None:
        self._own().inc(amount)

    def _own(self) -> _CounterChild:
        child = self._children.get(())
        if not isinstance(child, _CounterChild):
            raise ValueError(f"metric {self._name} has labels: use labels() first")
        return child


class Gauge(_Family):
    """A value that is set, or goes up and down."""

    _type = "gauge"

    def _new_child(self) -> _Child:
        return _GaugeChild()

    def labels(self, *values: object, **kw: object) -> _GaugeChild:
        child = self._child(self._key(values, kw))
        assert isinstance(child, _GaugeChild)
        return child

    def _own(self) -> _GaugeChild:
        child = self._children.get(())
        if not isinstance(child, _GaugeChild):
            raise ValueError(f"metric {self._name} has labels: use labels() first")
        return child

    def set(self, value: float) -> None:
        self._own().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._own().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._own().dec(amount)

    def get(self) -> float:
        """The value now (of a gauge without labels)."""
        return self._own().get()


class Histogram(_Family):
    """Observations counted in cumulative buckets (`le`), with their count and sum."""

    _type = "histogram"
    DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        registry: Registry | None = REGISTRY,
    ) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds != [float(b) for b in buckets]:
            raise ValueError(f"buckets of {name} must be given in increasing order")
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = tuple(bounds)
        super().__init__(name, documentation, labelnames, registry=registry)

    def _new_child(self) -> _Child:
        return _HistogramChild(self._bounds)

    def _sample_names(self) -> list[str]:
        return [f"{self._name}{s}" for s in ("_bucket", "_count", "_sum", "_created")]

    def labels(self, *values: object, **kw: object) -> _HistogramChild:
        child = self._child(self._key(values, kw))
        assert isinstance(child, _HistogramChild)
        return child

    def _own(self) -> _HistogramChild:
        child = self._children.get(())
        if not isinstance(child, _HistogramChild):
            raise ValueError(f"metric {self._name} has labels: use labels() first")
        return child

    def observe(self, amount: float) -> None:
        self._own().observe(amount)

    def time(self) -> _Timer:
        return self._own().time()


# -- the process, platform and GC collectors (names as prometheus_client's) -------------------


def _process() -> list[Metric]:
    try:
        with open("/proc/self/stat", "rb") as stat:
            parts = stat.read().split(b")")[-1].split()
        ticks = float(os.sysconf("SC_CLK_TCK"))
        page = float(os.sysconf("SC_PAGE_SIZE"))
        with open("/proc/stat", "rb") as system:
            btime = next(float(line.split()[1]) for line in system if line.startswith(b"btime"))
        vsize, rss = float(parts[20]), float(parts[21]) * page
        start = float(parts[19]) / ticks + btime
        cpu = (float(parts[11]) + float(parts[12])) / ticks
    except (OSError, ValueError, StopIteration, IndexError):
        return []  # not Linux: no process metrics (as prometheus_client)

    def gauge(name: str, doc: str, value: float) -> Metric:
        return Metric(name, "gauge", doc, [Sample(name, {}, value)])

    out = [
        gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", vsize),
        gauge("process_resident_memory_bytes", "Resident memory size in bytes.", rss),
        gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            start,
        ),
        Metric(
            "process_cpu_seconds",
            "counter",
            "Total user and system CPU time spent in seconds.",
            [Sample("process_cpu_seconds_total", {}, cpu)],
        ),
    ]
    try:
        fds = float(len(os.listdir("/proc/self/fd")))
        out.append(gauge("process_open_fds", "Number of open file descriptors.", fds))
        with open("/proc/self/limits") as limits:
            for line in limits:
                if line.startswith("Max open files"):
                    most = float(line.split()[3])
                    doc = "Maximum number of open file descriptors."
                    out.append(gauge("process_max_fds", doc, most))
    except (OSError, ValueError, IndexError):
        pass
    return out


def _platform() -> list[Metric]:
    major, minor, patch = platform.python_version_tuple()
    labels = {
        "implementation": platform.python_implementation(),
        "major": major,
        "minor": minor,
        "patchlevel": patch,
        "version": platform.python_version(),
    }
    return [Metric("python_info", "gauge", "Python platform information", [
        Sample("python_info", labels, 1.0)
    ])]  # fmt: skip


def _gc() -> list[Metric]:
    stats = gc.get_stats()

    def counter(name: str, doc: str, key: str) -> Metric:
        return Metric(name, "counter", doc, [
            Sample(f"{name}_total", {"generation": str(i)}, float(s[key]))
            for i, s in enumerate(stats)
        ])  # fmt: skip

    return [
        counter("python_gc_objects_collected", "Objects collected during gc", "collected"),
        counter(
            "python_gc_objects_uncollectable",
            "Uncollectable objects found during GC",
            "uncollectable",
        ),
        counter(
            "python_gc_collections", "Number of times this generation was collected", "collections"
        ),
    ]


# -- exposition -------------------------------------------------------------------------------


def _go_float(value: float) -> str:
    """A float as Go (and so Prometheus and prometheus_client) writes it."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    s = repr(float(value))
    dot = s.find(".")
    if value > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return s


def _label_value(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _line(s: Sample) -> str:
    labels = ""
    if s.labels:
        labels = (
            "{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(s.labels.items())) + "}"
        )
    return f"{s.name}{labels} {_go_float(s.value)}\n"


def _text(registry: Registry) -> bytes:
    """Prometheus text format 0.0.4: `_created` samples as gauge families of their own."""
    out: list[str] = []
    for m in registry.collect():
        name = f"{m.name}_total" if m.type == "counter" else m.name
        doc = m.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out += [f"# HELP {name} {doc}\n", f"# TYPE {name} {m.type}\n"]
        created = []
        for s in m.samples:
            if s.name == f"{m.name}_created":
                created.append(_line(s))
            else:
                out.append(_line(s))
        if created:
            out += [f"# HELP {m.name}_created {doc}\n", f"# TYPE {m.name}_created gauge\n"]
            out += created
    return "".join(out).encode()


def _openmetrics(registry: Registry) -> bytes:
    out: list[str] = []
    for m in registry.collect():
        doc = _label_value(m.documentation)
        out += [f"# HELP {m.name} {doc}\n", f"# TYPE {m.name} {m.type}\n"]
        out += [_line(s) for s in m.samples]
    out.append("# EOF\n")
    return "".join(out).encode()


def render_metrics(accept: str = "") -> tuple[bytes, str]:
    """The exposition of REGISTRY and its content type (OpenMetrics if `accept` asks for it)."""
    for item in accept.split(","):
        if item.split(";")[0].strip() == "application/openmetrics-text":
            return _openmetrics(REGISTRY), CONTENT_TYPE_OPENMETRICS
    return _text(REGISTRY), CONTENT_TYPE_TEXT


REGISTRY.register(_process)
REGISTRY.register(_platform)
REGISTRY.register(_gc)

# 0.5 ms to 10 s: a query served from a read model up to a slow command.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

EVENTS_APPENDED = Counter(
    "homeport_events_appended",
    "Events appended to the event store, by event type.",
    ["type"],
    registry=REGISTRY,
)
RELAY_LAG_EVENTS = Gauge(
    "homeport_relay_lag_events",
    "Committed events not yet published to JetStream by the relay.",
    registry=REGISTRY,
)
RELAY_LAG_SECONDS = Gauge(
    "homeport_relay_lag_seconds",
    "Age of the oldest committed event not yet published by the relay.",
    registry=REGISTRY,
)
HANDLER_LATENCY = Histogram(
    "homeport_handler_latency_seconds",
    "Time to handle a command or query, by NATS subject.",
    ["subject"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
HANDLER_ERRORS = Counter(
    "homeport_handler_errors",
    "Command and query handler errors, by NATS subject and error code.",
    ["subject", "code"],
    registry=REGISTRY,
)
