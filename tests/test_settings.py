"""Configuration precedence: command line > app.conf > environment > default."""

from __future__ import annotations

import pytest

from celery_redis_statedb import resolve_config
from celery_redis_statedb.install import worker_options
from celery_redis_statedb.settings import choose_url, percent_escape
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


# -- which Redis: the URL a worker of the app uses (issue 12, defect 1) --------------------------


def test_the_url_is_found_where_celery_worker_finds_it() -> None:
    conf = {"worker_state_db": "redis://conf/1", "broker_url": "redis://broker/0"}
    env = {"CELERY_WORKER_STATEDB": "redis://env/2", "REDIS_STATEDB_URL": "redis://lib/3"}
    steps = [
        (dict(conf), dict(env), "redis://explicit/4", ("redis://explicit/4", "--url", False)),
        (dict(conf), dict(env), None, ("redis://env/2", "environment variable CELERY_WORKER_STATEDB", False)),
        (dict(conf), {"REDIS_STATEDB_URL": "redis://lib/3"}, None, ("redis://conf/1", "app.conf.worker_state_db",
                                                                     False)),
        ({"broker_url": "redis://broker/0"}, {"REDIS_STATEDB_URL": "redis://lib/3"}, None,
         ("redis://lib/3", "environment variable REDIS_STATEDB_URL", False)),
    ]
    for conf_now, env_now, explicit, (url, source, broker) in steps:
        choice = choose_url(conf_now, env_now, explicit=explicit, explicit_label="--url")
        assert (choice.url, choice.source, choice.broker) == (url, source, broker)
    fallback = choose_url({"broker_url": "redis://broker/0"}, {})
    assert fallback.broker and fallback.source.startswith("app.conf.broker_url (the broker: no statedb URL")
    assert "redis://broker" not in repr(fallback)  # a URL may hold a password: never in a repr


def test_a_worker_value_is_expanded_as_celery_worker_expands_it() -> None:
    if percent_escape():
        choice = choose_url({"worker_state_db": "redis://:p%%40ss@host/0"}, {}, node="celery@box")
        assert choice.url == "redis://:p%40ss@host/0"
    else:  # Celery 5.3: no %% escape at all, as celery worker would say
        with pytest.raises(ConfigurationError, match="this Celery has no %% escape"):
            choose_url({"worker_state_db": "redis://:p%%40ss@host/0"}, {}, node="celery@box")
    assert choose_url({}, {"CELERY_WORKER_STATEDB": "redis://%h:6379/0"}, node="w1@box.example").url == \
        "redis://box.example:6379/0"
    assert choose_url({}, {"REDIS_STATEDB_URL": "redis://:p%40ss@host/0"}).url == "redis://:p%40ss@host/0"  # ours
    with pytest.raises(ConfigurationError, match="cannot expand") as caught:
        choose_url({}, {"CELERY_WORKER_STATEDB": "redis://:p%40ss@host/0"})
    assert "p%40ss" not in str(caught.value)


def test_no_url_and_file_statedbs() -> None:
    with pytest.raises(ConfigurationError, match="set one with redis_url, \\$CELERY_WORKER_STATEDB"):
        choose_url({"broker_url": "amqp://guest@localhost//"}, {})
    with pytest.raises(ConfigurationError, match="a file path"):
        choose_url({"worker_state_db": "/var/run/w.db", "broker_url": "redis://broker/0"}, {})
    assert choose_url({"worker_state_db": "/var/run/w.db"}, {}, required=False) is None
    assert choose_url({"broker_url": "redis://b/0"}, {}, allow_broker=False, required=False) is None
    assert choose_url({"worker_state_db": "/w.db"}, {"REDIS_STATEDB_URL": "redis://lib/3"}).url == "redis://lib/3"
    with pytest.raises(ConfigurationError, match="environment variable REDIS_STATEDB_URL='ftp://x' is not valid"):
        choose_url({}, {"REDIS_STATEDB_URL": "ftp://x"})
    with pytest.raises(ConfigurationError, match=r"^--url: malformed Redis URL"):
        choose_url({}, {}, explicit="redis://h:70000/0", explicit_label="--url")


@pytest.mark.parametrize(("setting", "value", "accepted"), [
    ("CELERY_REDIS_STATE_SCOPE", "Shared", "'worker', 'shared'"),
    ("CELERY_REDIS_STATE_ON_UNAVAILABLE", "retry", "'fail', 'degrade'"),
])
def test_enum_settings_name_their_source_and_the_accepted_values(setting: str, value: str, accepted: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_config(URL, env={setting: value})
    assert str(caught.value).startswith(f"environment variable {setting}={value!r} is not valid: ")
    assert accepted in str(caught.value)


def test_overrides_name_the_option_they_came_from() -> None:
    config = resolve_config(URL, overrides={"scope": ("shared", "--scope"), "key_prefix": (None, "--key-prefix")},
                            conf={"redis_state_key_prefix": "conf:"})
    assert (config.scope, config.key_prefix) == (Scope.SHARED, "conf:")
    with pytest.raises(ConfigurationError, match=r"^--scope='all' is not valid: scope must be one of"):
        resolve_config(URL, overrides={"scope": ("all", "--scope")})
