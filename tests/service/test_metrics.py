"""libs.service.metrics: what /metrics shows, read with prometheus_client's own parsers."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from libs.service.metrics import Counter, Gauge, Histogram, Registry, _openmetrics, _text


def _om(body: bytes) -> list[Any]:
    return list(openmetrics_families(body.decode()))  # type: ignore[no-untyped-call]


def _registry() -> tuple[Registry, Counter, Gauge, Histogram]:
    reg = Registry()
    c = Counter(
        "t_handled_total", 'Handled, with "quotes" and a \\ backslash.', ["subject"], registry=reg
    )
    g = Gauge("t_level", "A level.", registry=reg)
    h = Histogram("t_seconds", "Durations.", ["kind"], buckets=(0.1, 1.0), registry=reg)
    return reg, c, g, h


def test_the_text_format_reads_back_with_the_values_given() -> None:
    reg, c, g, h = _registry()
    c.labels(subject='a "b"\nc\\').inc(2)
    c.labels("x").inc()
    g.set(1.5e12)
    h.labels(kind="k").observe(0.05)
    h.labels(kind="k").observe(0.5)
    h.labels(kind="k").observe(7)
    with h.labels(kind="t").time():
        pass

    families = {f.name: f for f in text_string_to_metric_families(_text(reg).decode())}
    handled = {s.labels["subject"]: s.value for s in families["t_handled"].samples}
    assert handled == {'a "b"\nc\\': 2.0, "x": 1.0}
    assert families["t_handled"].documentation == 'Handled, with "quotes" and a \\ backslash.'
    assert families["t_level"].samples[0].value == 1.5e12
    buckets = {
        s.labels["le"]: s.value
        for s in families["t_seconds"].samples
        if s.name == "t_seconds_bucket" and s.labels["kind"] == "k"
    }
    assert buckets == {"0.1": 1.0, "1.0": 2.0, "+Inf": 3.0}
    sums = {s.name: s.value for s in families["t_seconds"].samples if s.labels.get("kind") == "k"}
    assert sums["t_seconds_count"] == 3.0 and math.isclose(sums["t_seconds_sum"], 7.55)
    assert families["t_handled_created"].type == "gauge"


def test_the_openmetrics_format_is_valid_and_has_the_process_metrics() -> None:
    from libs.service.metrics import REGISTRY

    reg, c, _, h = _registry()
    c.labels("x").inc()
    h.labels("k").observe(0.2)
    families = {f.name: f for f in _om(_openmetrics(reg))}
    assert families["t_handled"].type == "counter"
    names = {s.name for s in families["t_handled"].samples}
    assert names == {"t_handled_total", "t_handled_created"}
    assert families["t_seconds"].type == "histogram"

    own = {f.name: f for f in _om(_openmetrics(REGISTRY))}
    for name in ("process_resident_memory_bytes", "process_cpu_seconds", "python_info"):
        assert name in own, name
    assert own["process_resident_memory_bytes"].samples[0].value > 1e6
    gc = {s.labels["generation"] for s in own["python_gc_collections"].samples}
    assert gc == {"0", "1", "2"}


def test_misuse_is_refused_with_the_metric_named() -> None:
    reg, c, g, h = _registry()
    with pytest.raises(ValueError, match="non-negative"):
        c.labels("x").inc(-1)
    with pytest.raises(ValueError, match=r"t_handled takes labels \['subject'\]"):
        c.labels(nope="x")
    with pytest.raises(ValueError, match="t_level has no labels"):
        g.labels("x")
    with pytest.raises(ValueError, match="use labels"):
        h.observe(1)
    with pytest.raises(ValueError, match="registered already"):
        Gauge("t_level", "again", registry=reg)
    g.inc(2)
    g.dec(0.5)
    assert reg.get_sample_value("t_level") == 1.5
    c.labels("gone").inc()
    c.remove("gone")
    assert reg.get_sample_value("t_handled_total", {"subject": "gone"}) is None
    with pytest.raises(KeyError):
        c.remove("gone")
