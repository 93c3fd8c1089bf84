from __future__ import annotations

import re

import pytest

from statedb import ConfigurationError, Scope, StateDBConfig, UnavailablePolicy
from statedb.urls import is_redis_url, mask_url, parse_cluster_url, target_kind, validate_url


@pytest.mark.parametrize("url", ["redis://h:6379/0", "REDIS://h", "rediss://u:p@h:6380/2", "unix:///tmp/r.sock"])
def test_redis_urls_are_recognised(url: str) -> None:
    assert is_redis_url(url)
    assert validate_url(url) == url


@pytest.mark.parametrize("value", ["/var/run/celery/worker.db", "worker.db", "", None, 5, "http://h", "redis:/h"])
def test_anything_else_is_a_file_path_or_nothing(value: object) -> None:
    assert not is_redis_url(value)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://localhost:6379/0", "unsupported Redis URL scheme 'http'"),
        ("localhost:6379", "unsupported Redis URL scheme"),
        ("redis://localhost:notaport/0", "malformed Redis URL"),
        ("redis://localhost:99999/0", "malformed Redis URL"),
        ("redis://localhost:6379/abc", "database number 'abc'"),
        ("redis://localhost:6379/-1", "database number '-1'"),
        ("redis://localhost:0/0", "port 0"),
        ("unix://", "names no socket path"),
        ("   ", "non-empty string"),
    ],
)
def test_bad_urls_name_the_fault(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        validate_url(url)


def test_bad_url_errors_never_show_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        validate_url("redis://user:s3cret@localhost:6379/abc")
    assert "s3cret" not in str(info.value)
    assert "user:***@" in str(info.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("redis://user:pw@h:1/0", "redis://user:***@h:1/0"),
        # A userinfo without ':' is masked whole: most often a password in the user position.
        ("redis://SECRET@h:1/0", "redis://***@h:1/0"),
        ("redis://user@h:1/0", "redis://***@h:1/0"),
        ("rediss://SECRET@h:6380/0", "rediss://***@h:6380/0"),
        ("redis://p%40ss%3Aword@h:1/0", "redis://***@h:1/0"),
        ("redis://us%3Aer:p%40ss@h:1/0", "redis://us%3Aer:***@h:1/0"),
        ("redis://user:p%40ss%2Fw@h:1/0", "redis://user:***@h:1/0"),
        ("rediss://user:pw@h:6380/0", "rediss://user:***@h:6380/0"),
        ("rediss://:pw@h:6380/0", "rediss://:***@h:6380/0"),
        ("redis://:@h:1/0", "redis://:***@h:1/0"),
        ("rediss://h:1/0?password=pw&ssl_cert_reqs=required", "rediss://h:1/0?password=***&ssl_cert_reqs=required"),
        ("unix://:pw@/tmp/r.sock?db=1", "unix://:***@/tmp/r.sock?db=1"),
        ("unix://SECRET@/tmp/r.sock?db=1", "unix://***@/tmp/r.sock?db=1"),
        ("unix:///tmp/r.sock?db=0&password=pw", "unix:///tmp/r.sock?db=0&password=***"),
        ("unix:///tmp/r.sock?password=p%40w&db=0", "unix:///tmp/r.sock?password=***&db=0"),
        ("unix:///tmp/my%20dir/r.sock?db=0", "unix:///tmp/my%20dir/r.sock?db=0"),
        ("unix:///tmp/a@b.sock", "unix:///tmp/a@b.sock"),
        ("redis://h:1/0", "redis://h:1/0"),
        ("redis+cluster://:pw@h1:1,h2:2", "redis+cluster://:***@h1:1,h2:2"),
        ("rediss+cluster://user:p%40w@h1:1,h2:2/0", "rediss+cluster://user:***@h1:1,h2:2/0"),
        ("redis+cluster://SECRET@h1:1,h2:2", "redis+cluster://***@h1:1,h2:2"),
        ("redis+cluster://h1:1,h2:2?password=pw", "redis+cluster://h1:1,h2:2?password=***"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_url_never_raises_on_garbage() -> None:
    assert "pw" not in mask_url("redis://:pw@[::1")


def test_config_defaults_and_repr_hide_password() -> None:
    config = StateDBConfig(url="redis://:hunter2@localhost:6379/0")
    assert config.key_prefix == "celery:worker:state:"
    assert config.scope is Scope.WORKER
    assert config.on_unavailable is UnavailablePolicy.FAIL
    assert "hunter2" not in repr(config)
    assert "hunter2" not in str(config)
    assert config.safe_url == "redis://:***@localhost:6379/0"


def test_config_takes_strings_for_enums() -> None:
    config = StateDBConfig(url="redis://h", scope="shared", on_unavailable="degrade")  # type: ignore[arg-type]
    assert config.scope is Scope.SHARED
    assert config.on_unavailable is UnavailablePolicy.DEGRADE


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"scope": "fleet"}, "scope must be one of 'worker', 'shared'"),
        ({"on_unavailable": "ignore"}, "on_unavailable must be one of"),
        ({"key_prefix": ""}, "key prefix must not be empty"),
        ({"key_prefix": "a\nb"}, "control characters"),
        ({"socket_timeout": 0}, "socket_timeout must be finite and greater than zero"),
        ({"socket_timeout": float("nan")}, "socket_timeout"),
        ({"boot_timeout": -1}, "boot_timeout must be finite and zero or more"),
        ({"revoke_expires": float("inf")}, "revoke_expires"),
        ({"revokes_max": 0}, "revokes_max must be a positive integer"),
        ({"load_chunk_size": 1.5}, "load_chunk_size"),
        ({"url": "mysql://h"}, "unsupported Redis URL scheme"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict[str, object], fragment: str) -> None:
    values: dict[str, object] = {"url": "redis://localhost:6379/0", **kwargs}
    with pytest.raises(ConfigurationError, match=fragment):
        StateDBConfig(**values)  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    config = StateDBConfig(url="redis://h")
    with pytest.raises(AttributeError):
        config.key_prefix = "x:"  # type: ignore[misc]


@pytest.mark.parametrize(
    "url",
    ["redis://:s3cr#t@host:6379/0", "redis://:s3cr?t@host:6379/0", "redis://u:s3c/ret@host:6379/0",
     "redis://:s3c@ret@host:6379/0", "rediss://host:6380/0?ssl_password=s3cret",
     "rediss://host/0?ssl_keyfile_password=s3cret&db=1", "redis://host/0?token=s3cret"],
)
def test_passwords_with_url_metacharacters_and_secret_query_values_are_masked(url: str) -> None:
    assert "s3c" not in mask_url(url)
    try:
        validate_url(url)
    except ConfigurationError as exc:
        assert "s3c" not in str(exc)


@pytest.mark.parametrize("option", ["decode_responses=true", "socket_timeout=30", "retry_on_timeout=yes",
                                    "health_check_interval=1"])
def test_url_options_that_would_override_the_library_are_refused(option: str) -> None:
    with pytest.raises(ConfigurationError, match="not allowed here"):
        validate_url(f"redis://h:6379/0?{option}")


def test_other_url_options_pass() -> None:
    assert validate_url("rediss://h:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem&client_name=w1")


# -- redis+cluster:// ------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "redis+cluster://h1:7000", "redis+cluster://h1:7000,h2:7001,h3:7002", "REDIS+CLUSTER://h1:7000/0",
    "rediss+cluster://u:p@h1:7000,h2:7001/0?ssl_ca_certs=/tmp/ca.pem", "redis+cluster://[::1]:7000,h2",
    "redis+cluster://h1:7000?db=0&client_name=w",
])
def test_cluster_urls_are_recognised(url: str) -> None:
    assert is_redis_url(url)
    assert validate_url(url) == url
    assert target_kind(url) == "cluster"
    assert StateDBConfig(url=url).url == url


def test_a_cluster_url_names_its_nodes_and_a_url_for_the_options() -> None:
    parsed = parse_cluster_url("rediss+cluster://us%3Aer:p%40ss@h1:7000,[::1]:7001,h3?ssl_cert_reqs=none")
    assert parsed.nodes == (("h1", 7000), ("::1", 7001), ("h3", 6379))
    assert parsed.tls
    # redis-py's own parser reads the credentials and options from this one, as for redis://
    assert parsed.node_url == "rediss://us%3Aer:p%40ss@h1:7000/0?ssl_cert_reqs=none"


@pytest.mark.parametrize(("url", "fragment"), [
    ("redis+cluster://h1:7000/1", "selects database '1': a cluster has database 0 only"),
    ("redis+cluster://h1:7000?db=3", "selects database '3'"),
    ("redis+cluster://h1:7000/x", "selects database 'x'"),
    ("redis+cluster://", "malformed Redis Cluster URL"),
    ("redis+cluster://h1:7000,,h2:7001", "malformed Redis Cluster URL"),
    ("redis+cluster://h1:0", "port from 1 to 65535"),
    ("redis+cluster://h1:70000", "port from 1 to 65535"),
    ("redis+cluster://h1:port", "malformed Redis Cluster URL"),
    ("redis+cluster://h1:7000?ssl_ca_certs=/x", "not rediss+cluster://"),
    ("redis+cluster://h1:7000?socket_timeout=1", "use redis_state_socket_timeout"),
    ("redis+sentinel+cluster://h1:7000", "unsupported Redis URL scheme"),
])
def test_bad_cluster_urls_name_the_fault(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(fragment)):
        validate_url(url)


def test_bad_cluster_url_errors_never_show_the_password() -> None:
    for url in ("redis+cluster://user:s3cret@h1:7000/2", "redis+cluster://user:s3cret@h1:bad", "redis+cluster://:s3cret@[h"):
        with pytest.raises(ConfigurationError) as info:
            validate_url(url)
        assert "s3cret" not in str(info.value)
    assert "s3cret" not in repr(StateDBConfig(url="redis+cluster://:s3cret@h1:7000"))


@pytest.mark.parametrize("url", [
    "redis+sentinel://h1,h2/svc?sentinel_password=ab;cd-s3cr&x=1",
    "sentinel://h1:26379;sentinel://h2:26379/0?master_name=m&sentinel_password=ab;cd-s3cr",
    "rediss://h:6380/0?ssl_password=ab;cd-s3cr",
])
def test_a_secret_query_value_holding_a_semicolon_is_masked_whole(url: str) -> None:
    shown = mask_url(url)
    assert "cd-s3cr" not in shown and "***" in shown, shown
