"""Configuration precedence: command line > app.conf > environment > default."""

from __future__ import annotations

import pytest

from celery_redis_statedb import resolve_config
from celery_redis_statedb.install import worker_options
from statedb import ConfigurationError, Scope, UnavailablePolicy

URL = "redis://localhost:6379/0"


def test_defaults() -> None:
    config = resolve_config(URL)
    assert config.key_prefix == "celery:worker:state:"
    assert config.scope is Scope.WORKER
    assert config.revoke_expires is None  # Celery's own REVOKE_EXPIRES stays in force


def test_env_overrides_default() -> None:
    config = resolve_config(URL, env={"CELERY_REDIS_STATE_KEY_PREFIX": "env:", "CELERY_REDIS_STATE_TTL": "60",
                                      "CELERY_REDIS_STATE_SCOPE": "shared"})
    assert (config.key_prefix, config.revoke_expires, config.scope) == ("env:", 60.0, Scope.SHARED)


def test_app_conf_overrides_env() -> None:
    config = resolve_config(URL, conf={"redis_state_key_prefix": "conf:", "redis_state_ttl": 7200},
                            env={"CELERY_REDIS_STATE_KEY_PREFIX": "env:", "CELERY_REDIS_STATE_TTL": "60"})
    assert (config.key_prefix, config.revoke_expires) == ("conf:", 7200.0)


def test_cli_overrides_everything() -> None:
    config = resolve_config(
        URL,
        cli={"redis_state_key_prefix": "cli:", "redis_state_on_unavailable": "degrade"},
        conf={"redis_state_key_prefix": "conf:", "redis_state_on_unavailable": "fail"},
        env={"CELERY_REDIS_STATE_KEY_PREFIX": "env:"},
    )
    assert config.key_prefix == "cli:"
    assert config.on_unavailable is UnavailablePolicy.DEGRADE


def test_unset_and_blank_values_fall_through() -> None:
    config = resolve_config(URL, cli={"redis_state_key_prefix": None}, conf={"redis_state_key_prefix": None},
                            env={"CELERY_REDIS_STATE_KEY_PREFIX": "  "})
    assert config.key_prefix == "celery:worker:state:"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"env": {"CELERY_REDIS_STATE_TTL": "3h"}}, "environment variable CELERY_REDIS_STATE_TTL='3h'"),
        ({"conf": {"redis_state_boot_timeout": "soon"}}, "app.conf.redis_state_boot_timeout='soon'"),
        ({"cli": {"redis_state_ttl": "x"}}, "--redis-state-ttl='x'"),
        ({"conf": {"redis_state_scope": "everyone"}}, "scope must be one of"),
        ({"env": {"CELERY_REDIS_STATE_TTL": "-5"}}, "revoke_expires must be finite"),
    ],
)
def test_bad_values_name_their_source(kwargs: dict[str, dict[str, object]], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment.replace("(", r"\(").replace("?", r"\?")):
        resolve_config(URL, **kwargs)  # type: ignore[arg-type]


def test_worker_options_are_not_read_from_celery_autoenv() -> None:
    options = {option.name: option for option in worker_options()}
    assert "redis_state_key_prefix" in options
    assert "redis_statedb" in options
    assert all(not option.allow_from_autoenv for option in options.values())
