"""What a service imports to start: heavy packages that only some paths use stay out.

Each costs every process that imports it its memory for as long as it runs (`python -m bench
idle_memory` measures the whole platform at rest); they are imported where they are used.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# module run by the stack -> packages it must not import at start (MiB each cost at import)
NOT_AT_START = {
    # aiohttp (~11 MiB): the probes are served without it, nats-py gets it on first use only;
    # prometheus_client (~2.5 MiB with its HTTP server and push client): libs.service.metrics
    "libs.events.relay": ["cryptography", "aiohttp", "prometheus_client"],  # no keyring
    "services.firewall": ["cryptography", "aiohttp", "prometheus_client"],
    "services.dns": ["aioboto3", "botocore", "aiohttp", "prometheus_client"],  # Route 53: 14 MiB
    "services.backup": ["aioboto3", "botocore", "fastcdc", "aiohttp", "prometheus_client"],
    "services.certs": ["acme", "josepy", "requests", "aiohttp", "prometheus_client"],  # ACME
    "services.identity": ["zxcvbn", "aiohttp", "prometheus_client"],  # its common passwords
    "services.apps": ["aiohttp", "prometheus_client"],  # aiohttp: when an app starts or runs
    "services.gateway": ["prometheus_client"],
}


@pytest.mark.parametrize("module", sorted(NOT_AT_START))
def test_a_service_starts_without_the_packages_only_some_paths_need(module: str) -> None:
    main = module if module.startswith("libs.") else f"{module}.__main__"
    code = (
        f"import importlib, json, sys; importlib.import_module({main!r}); "
        f"print(json.dumps(sorted(m for m in {NOT_AT_START[module]!r} if m in sys.modules)))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [], f"{module} imports {r.stdout.strip()} at start"


def test_identity_still_refuses_common_passwords_without_importing_zxcvbn() -> None:
    code = (
        "import sys; from services.identity import passwords as p; "
        "print(p.COMMON_PASSWORD_COUNT, p.is_common_password('Password123'), "
        "p.is_common_password('a long bench passphrase'), 'zxcvbn' in sys.modules)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    count, common, uncommon, imported = r.stdout.split()
    assert int(count) >= 3000 and common == "True" and uncommon == "False"
    assert imported == "False"
