"""Events: the store, the bus over NATS, the relay, projections, handlers and their wiring.

nats-py is imported here, with three of its import-time costs avoided (each is paid by every
service process for as long as it runs; `python -m bench idle_memory` measures them):
- its transport module imports aiohttp (~11 MiB of heap) for the WebSocket transport only (we
  connect over TCP), and most services otherwise never need aiohttp (their probes are served by
  libs.service.probes): aiohttp is hidden while nats is imported, and the transport gets a
  stand-in that imports it on first use, so a WebSocket URL still works;
- its client reads its own version with importlib.metadata, which imports email, zipfile, csv
  and more and scans every installed distribution (~1.4 MiB): it is given a `version` that
  reads the name of the dist-info folder instead;
- its JetStream modules import email.parser (~1.1 MiB with the rest of the email package) to
  parse the headers of a message read by sequence (`get_msg`), which most services never do:
  they get a BytesParser that imports the real one on first use.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any


class _OnFirstUse:
    """Stands for module `name`: imports it when one of its attributes is first read."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __bool__(self) -> bool:
        return True


class _BytesParserOnFirstUse:
    """email.parser.BytesParser, made (and email.parser imported) when first used."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self._args, self._kw = args, kw
        self._real: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._real is None:
            from email.parser import BytesParser

            self._real = BytesParser(*self._args, **self._kw)
        return getattr(self._real, attr)


def _dist_version(name: str) -> str:
    """The version of installed distribution `name` from its dist-info folder's name."""
    prefix = name.replace("-", "_").lower() + "-"
    for entry in sys.path:
        try:
            for d in Path(entry or ".").glob("*.dist-info"):
                if d.name.lower().startswith(prefix):
                    return d.name[len(prefix) : -len(".dist-info")]
        except OSError:
            continue
    raise LookupError(f"no distribution {name}")  # nats falls back to "0.0.0"


def _import_nats_lightly() -> None:
    if "nats.aio.client" in sys.modules or "aiohttp" in sys.modules:
        return  # too late (or aiohttp is loaded anyway): nothing to save
    modules: dict[str, ModuleType | None] = sys.modules  # type: ignore[assignment]
    hidden = [m for m in ("aiohttp", "importlib.metadata", "email.parser") if m not in modules]
    modules["aiohttp"] = None  # `import aiohttp` raises ImportError while this is there
    if "importlib.metadata" in hidden:
        metadata = ModuleType("importlib.metadata")
        metadata.version = _dist_version  # type: ignore[attr-defined]
        modules["importlib.metadata"] = metadata
    if "email.parser" in hidden:
        parser = ModuleType("email.parser")
        parser.BytesParser = _BytesParserOnFirstUse  # type: ignore[attr-defined]
        modules["email.parser"] = parser
    try:
        import nats.aio.transport as transport
    finally:
        for m in hidden:
            del modules[m]
    for name in ("aiohttp", "multidict"):
        setattr(transport, name, _OnFirstUse(name))


_import_nats_lightly()
