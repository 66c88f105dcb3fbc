"""Service config: read once from HP_* variables, every problem named in one error, no secrets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from libs.service.config import ConfigError, ServiceConfig, check, load_config

BASE = {"HP_DATABASE_URL": "postgresql://hp@127.0.0.1/hp", "HP_NATS_URL": "nats://127.0.0.1:4222"}


@dataclass(frozen=True)
class WorkerConfig(ServiceConfig):
    """A service's own settings on top of the shared ones."""

    workers: int = 4
    zones: tuple[str, ...] = ()
    verbose: bool = False
    api_token: str = field(default="", metadata=check(lambda s: len(s) >= 32, "32+ characters"))
    upstream_url: str = field(
        default="https://example.org",
        metadata=check(lambda s: s.startswith("https://"), "an https:// URL"),
    )


def test_valid_environment_parses_every_field() -> None:
    env = {
        **BASE,
        "HP_HTTP_HOST": "0.0.0.0",
        "HP_HTTP_PORT": "8081",
        "HP_LOG_LEVEL": "debug",
        "HP_DRAIN_SECONDS": "2.5",
        "HP_KEYRING": "/etc/homeport/keyring.json",
        "HP_DATA_DIR": "/var/lib/homeport",
        "HP_WORKERS": " 8 ",
        "HP_ZONES": "example.org, example.net,",
        "HP_VERBOSE": "yes",
        "UNRELATED": "ignored",
    }
    cfg = load_config(WorkerConfig, env)
    assert cfg == WorkerConfig(
        database_url="postgresql://hp@127.0.0.1/hp",
        nats_url="nats://127.0.0.1:4222",
        http_host="0.0.0.0",
        http_port=8081,
        log_level="debug",
        drain_seconds=2.5,
        keyring=Path("/etc/homeport/keyring.json"),
        data_dir=Path("/var/lib/homeport"),
        workers=8,
        zones=("example.org", "example.net"),
        verbose=True,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.http_port = 1  # type: ignore[misc]


def test_defaults_apply_and_empty_counts_as_unset() -> None:
    cfg = load_config(ServiceConfig, {**BASE, "HP_HTTP_PORT": "", "HP_LOG_LEVEL": ""})
    assert (cfg.http_host, cfg.http_port, cfg.log_level, cfg.drain_seconds) == (
        "127.0.0.1",
        0,
        "INFO",
        10.0,
    )


def test_every_problem_is_reported_in_one_error_naming_its_variable() -> None:
    env = {
        "HP_NATS_URL": "nats://127.0.0.1:4222",
        "HP_HTTP_PORT": "70000",
        "HP_LOG_LEVEL": "LOUD",
        "HP_DRAIN_SECONDS": "soon",
        "HP_WORKERS": "many",
        "HP_VERBOSE": "perhaps",
    }
    with pytest.raises(ConfigError) as e:
        load_config(WorkerConfig, env)
    problems = e.value.problems
    named = {p.split(":", 1)[0] for p in problems}
    assert named == {
        "HP_DATABASE_URL",
        "HP_HTTP_PORT",
        "HP_LOG_LEVEL",
        "HP_DRAIN_SECONDS",
        "HP_WORKERS",
        "HP_VERBOSE",
    }
    text = str(e.value)
    assert text.startswith("6 configuration problems:")
    assert "HP_DATABASE_URL: required, not set" in text
    assert "HP_HTTP_PORT: expected an integer 0-65535, got '70000'" in text
    assert "HP_LOG_LEVEL: expected one of DEBUG, INFO" in text
    assert "HP_WORKERS: expected an integer, got 'many'" in text
    assert "HP_NATS_URL" not in text


def test_secret_values_are_never_echoed() -> None:
    env = {
        **BASE,
        "HP_API_TOKEN": "hunter2-short-token",
        "HP_UPSTREAM_URL": "http://admin:pa55word@upstream.example.org/",
    }
    with pytest.raises(ConfigError) as e:
        load_config(WorkerConfig, env)
    text = str(e.value)
    assert "HP_API_TOKEN: expected 32+ characters, got [redacted]" in text
    assert "HP_UPSTREAM_URL: expected an https:// URL" in text
    assert "upstream.example.org" in text, "the rest of the URL helps the operator"
    assert "hunter2" not in text
    assert "pa55word" not in text


def test_repr_hides_the_urls_that_may_carry_passwords() -> None:
    cfg = load_config(ServiceConfig, {**BASE, "HP_DATABASE_URL": "postgresql://hp:s3cret@db/hp"})
    assert "s3cret" not in repr(cfg)
    assert cfg.database_url == "postgresql://hp:s3cret@db/hp"


def test_a_non_dataclass_or_unsupported_type_is_a_programming_error() -> None:
    @dataclass(frozen=True)
    class Odd(ServiceConfig):
        weights: dict[str, int] = field(default_factory=dict)

    with pytest.raises(TypeError, match=r"Odd\.weights: unsupported config type"):
        load_config(Odd, BASE)
    with pytest.raises(TypeError, match="is not a dataclass"):
        load_config(int, BASE)
