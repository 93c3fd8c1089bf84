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


@pytest.mark.parametrize(
    ("source", "value", "seconds"),
    [
        ("env", "30d", 30 * 86400.0),
        ("env", "12h", 12 * 3600.0),
        ("conf", 3600, 3600.0),
        ("cli", "90m", 5400.0),
        ("env", "0", None),
        ("conf", "none", None),
        ("cli", "NONE", None),
        ("conf", 0, None),
    ],
)
def test_the_horizon_takes_durations_and_no_limit(source: str, value: object, seconds: float | None) -> None:
    given = {"env": {"CELERY_REDIS_STATE_HORIZON": value}, "conf": {"redis_state_horizon": value},
             "cli": {"redis_state_horizon": value}}[source]
    assert resolve_config(URL, **{source: given}).horizon == seconds  # type: ignore[arg-type]


def test_the_horizon_defaults_to_no_limit() -> None:
    assert resolve_config(URL).horizon is None


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"env": {"CELERY_REDIS_STATE_HORIZON": "a month"}}, "CELERY_REDIS_STATE_HORIZON='a month' is not valid: "
                                                             "expected a duration"),
        ({"conf": {"redis_state_horizon": -5}}, "horizon must be finite and zero or more"),
        ({"cli": {"redis_state_horizon": "30x"}}, "--redis-state-horizon='30x' is not valid"),
    ],
)
def test_a_bad_horizon_names_its_source(kwargs: dict[str, dict[str, object]], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        resolve_config(URL, **kwargs)  # type: ignore[arg-type]


def test_the_horizon_is_a_worker_option() -> None:
    assert "redis_state_horizon" in {option.name for option in worker_options()}


def test_the_write_budget_setting() -> None:
    assert resolve_config(URL).write_budget == 0.5
    assert resolve_config(URL, env={"CELERY_REDIS_STATE_WRITE_BUDGET": "0.25"}).write_budget == 0.25
    assert resolve_config(URL, conf={"redis_state_write_budget": 1},
                          env={"CELERY_REDIS_STATE_WRITE_BUDGET": "0.25"}).write_budget == 1.0
    with pytest.raises(ConfigurationError, match="write_budget must be finite and greater than zero"):
        resolve_config(URL, conf={"redis_state_write_budget": 0})
    with pytest.raises(ConfigurationError, match="CELERY_REDIS_STATE_WRITE_BUDGET='soon'"):
        resolve_config(URL, env={"CELERY_REDIS_STATE_WRITE_BUDGET": "soon"})
