"""Sentinel URLs (issue 13): both grammars, their errors, masking, and the settings that feed them."""

from __future__ import annotations

import pytest

from celery_redis_statedb.settings import resolve_config
from statedb import ConfigurationError, StateDBConfig
from statedb.urls import SentinelTarget, is_redis_url, mask_url, parse_sentinel_url, target_kind, validate_url

PRIMARY_ONLY = "redis://"


@pytest.mark.parametrize(
    ("url", "sentinels", "service", "primary_url"),
    [
        ("redis+sentinel://h1/mymaster", [("h1", 26379)], "mymaster", "redis:///"),
        ("redis+sentinel://h1:26380,h2,[::1]:5/svc/3", [("h1", 26380), ("h2", 26379), ("::1", 5)], "svc",
         "redis:///3"),
        ("REDIS+SENTINEL://u:p%40w@h1/svc/1?client_name=w", [("h1", 26379)], "svc", "redis://u:p%40w@/1?client_name=w"),
        ("rediss+sentinel://:pw@h1/svc?ssl_cert_reqs=none&sentinel_password=sp", [("h1", 26379)], "svc",
         "rediss://:pw@/?ssl_cert_reqs=none"),
        ("redis+sentinel://h1/my%2Dservice/0", [("h1", 26379)], "my-service", "redis:///0"),
        # kombu's form: the service from ?master_name=, credentials and database on any part
        ("sentinel://h1:26379;sentinel://h2:26380/2?master_name=mm", [("h1", 26379), ("h2", 26380)], "mm",
         "redis:///2"),
        ("sentinel://:pw@h1;sentinel://:pw@h2/0?master_name=mm&client_name=w", [("h1", 26379), ("h2", 26379)], "mm",
         "redis://:pw@/0?client_name=w"),
        ("sentinel://h1/1?master_name=mm", [("h1", 26379)], "mm", "redis:///1"),
    ],
)
def test_sentinel_urls_are_parsed(url: str, sentinels: list[tuple[str, int]], service: str, primary_url: str) -> None:
    assert is_redis_url(url) and target_kind(url) == "sentinel"
    assert validate_url(url) == url
    target = parse_sentinel_url(url)
    assert (list(target.sentinels), target.service_name, target.primary_url) == (sentinels, service, primary_url)
    assert target.tls == url.lower().startswith("rediss+")


def test_the_sentinels_credentials_are_their_own() -> None:
    target = parse_sentinel_url("redis+sentinel://user:pw@h/svc?sentinel_username=su&sentinel_password=sp%21")
    assert (target.sentinel_username, target.sentinel_password) == ("su", "sp!")
    assert target.primary_url == "redis://user:pw@/"
    assert parse_sentinel_url("redis+sentinel://user:pw@h/svc").sentinel_password is None


def test_credentials_and_sentinel_passwords_never_show_in_the_target_repr() -> None:
    target = parse_sentinel_url("redis+sentinel://u:S3cr3t@h/svc?sentinel_password=S3cr3t")
    assert isinstance(target, SentinelTarget)
    assert "S3cr3t" not in repr(target)


def test_one_server_urls_are_standalone() -> None:
    assert target_kind("redis://h/0") == target_kind("unix:///r.sock") == "standalone"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("redis+sentinel://h1", "names no service: write redis+sentinel://host[:port][,host[:port]...]/SERVICE_NAME"),
        ("redis+sentinel://h1/", "names no service"),
        ("redis+sentinel://h1/0", "names service '0', a number: the path is /SERVICE_NAME[/db]"),
        ("redis+sentinel://h1/svc/0/1", "too many path segments"),
        ("redis+sentinel://h1/svc/zero", "database number 'zero'"),
        ("redis+sentinel://h1/svc?db=x", "database number 'x'"),
        ("redis+sentinel://h1:26x/svc", "gives Sentinel host 'h1' the port '26x': a number from 1 to 65535"),
        ("redis+sentinel://h1:0/svc", "the port '0'"),
        ("redis+sentinel://h1:70000/svc", "the port '70000'"),
        ("sentinel://h1:\u00b2?master_name=m", "the port '\u00b2'"),  # a digit to str.isdigit, not to int
        ("redis+sentinel://h1:\u0663\u0663/svc", "the port '\u0663\u0663'"),  # Arabic-Indic 33: not a port here
        ("redis+sentinel://h1/svc/\u00b2", "database number '\u00b2'"),
        ("redis+sentinel://h1,,h2/svc", "names an empty Sentinel host"),
        ("redis+sentinel://:26379/svc", "names an empty Sentinel host"),
        ("redis+sentinel://[::1/svc", "malformed IPv6 host"),
        ("redis+sentinel://h/svc#x", "has a '#'"),
        ("redis+sentinel://h/my%20svc", "a name without spaces"),
        ("redis+sentinel://h/svc?master_name=x", "the service name is the URL's path"),
        ("redis+sentinel://h/svc?sentinel_kwargs=x", "the Sentinel options are sentinel_username, sentinel_password"),
        ("redis+sentinel://h/svc?ssl_ca_certs=/ca.pem", "use rediss+sentinel:// for TLS"),
        ("redis+sentinel://h/svc?decode_responses=true", "not allowed here"),
        ("redis+sentinel://h/svc?socket_timeout=5", "use redis_state_socket_timeout"),
        ("sentinel://h1;sentinel://h2/0", "names no service: add ?master_name=NAME, or set redis_state_master_name"),
        ("sentinel://h1;redis://h2/0?master_name=m", "each ';'-separated part must be sentinel://"),
        ("sentinel://h1,h2/0?master_name=m", "a sentinel:// part names one host"),
        ("sentinel://h1/svc/0?master_name=m", "a sentinel:// part's path is the database number alone"),
        ("sentinel://h1/0;sentinel://h2/1?master_name=m", "gives different database numbers"),
        ("sentinel://:a@h1;sentinel://:b@h2?master_name=m", "gives different credentials"),
        ("sentinel://h1?master_name=a;sentinel://h2?master_name=b", "gives different master_name values"),
        ("sentinel://h1/0?master_name=m&ssl_cert_reqs=none", "use rediss+sentinel:// for TLS"),
    ],
)
def test_malformed_sentinel_urls_name_the_fault(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        validate_url(url)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "url",
    ["redis+sentinel://u:S3cr3t@h:2x/svc", "redis+sentinel://:S3cr3t@h/0", "sentinel://:S3cr3t@h1;sentinel://h2/0",
     "redis+sentinel://u:S3/cr3t@h/svc", "redis+sentinel://u:S3?cr3t@h/svc", "redis+sentinel://u:S3#cr3t@h/svc",
     "rediss+sentinel://h/svc?sentinel_password=S3cr3t&ssl_password=S3cr3t&db=x",
     "sentinel://:S3cr3t@h1;sentinel://:S3cr3t@h2:99999/0?master_name=m",
     # a path holding a second, unencoded userinfo (its database number is not quoted)
     "redis://:S3cr3t@h1;sentinel://:S3cr3t@h2/0?master_name=m", "redis://:S3cr3t@h/x:S3cr3t@h2"],
)
def test_errors_and_masks_never_show_a_password(url: str) -> None:
    assert "S3" not in mask_url(url)
    with pytest.raises(ConfigurationError) as info:
        StateDBConfig(url=url)
    assert "S3" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis+sentinel://u:pw@h1,h2:26380/svc/0", "redis+sentinel://u:***@h1,h2:26380/svc/0"),
        ("rediss+sentinel://:pw@h1/svc?sentinel_password=sp&client_name=w",
         "rediss+sentinel://:***@h1/svc?sentinel_password=***&client_name=w"),
        ("redis+sentinel://h1/svc?sentinel_username=su&sentinel_password=sp",
         "redis+sentinel://h1/svc?sentinel_username=su&sentinel_password=***"),
        ("sentinel://:pw@h1:26379;sentinel://:pw@h2:26379/0?master_name=m",
         "sentinel://:***@h1:26379;sentinel://:***@h2:26379/0?master_name=m"),
        ("sentinel://h1;SENTINEL://u:pw@h2/0", "sentinel://h1;SENTINEL://u:***@h2/0"),
        ("sentinel://:p;w@h1", "sentinel://:***@h1"),  # a ';' inside a password does not split it
    ],
)
def test_sentinel_urls_are_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked


# -- the service name of kombu's form from the settings --------------------------------------

KOMBU = "sentinel://h1:26379;sentinel://h2:26379/0"


def test_the_master_name_setting_completes_kombus_url() -> None:
    config = resolve_config(KOMBU, env={"CELERY_REDIS_STATE_MASTER_NAME": "mymaster"})
    assert config.master_name == "mymaster"
    assert config.url == f"{KOMBU}?master_name=mymaster"  # it stands alone: the admin APIs get only the URL
    assert parse_sentinel_url(config.url).service_name == "mymaster"
    config = resolve_config(f"{KOMBU}?x=1", conf={"redis_state_master_name": "a+b"})
    assert config.url == f"{KOMBU}?x=1&master_name=a%2Bb"
    assert parse_sentinel_url(config.url).service_name == "a+b"


def test_the_broker_transport_options_give_the_master_name_of_a_reused_broker_url() -> None:
    conf = {"broker_url": KOMBU, "broker_transport_options": {"master_name": "brokermaster"}}
    assert parse_sentinel_url(resolve_config(KOMBU, conf=conf).url).service_name == "brokermaster"
    # The setting wins over the broker's option; a redis+sentinel URL names its own service.
    assert resolve_config(KOMBU, conf={**conf, "redis_state_master_name": "mine"}).master_name == "mine"
    assert resolve_config("redis+sentinel://h/svc", conf=conf).master_name is None


def test_the_broker_sentinel_kwargs_give_the_sentinels_credentials_of_a_reused_broker_url() -> None:
    """kombu keeps the Sentinels' own credentials in broker_transport_options['sentinel_kwargs']."""
    options = {"master_name": "m", "sentinel_kwargs": {"username": "su", "password": "p;w&=%x", "socket_timeout": 1}}
    conf = {"broker_url": KOMBU, "broker_transport_options": options}
    config = resolve_config(KOMBU, conf=conf)
    target = parse_sentinel_url(config.url)
    assert (target.service_name, target.sentinel_username, target.sentinel_password) == ("m", "su", "p;w&=%x")
    assert "p;w" not in mask_url(config.url) and "p%3Bw" not in mask_url(config.url)
    # The URL's own Sentinel credentials, even one of them or an empty one, are all there is.
    for own, expected in ((f"{KOMBU}?sentinel_password=own", (None, "own")),
                          (f"{KOMBU}?sentinel_username=alice", ("alice", None)),
                          (f"{KOMBU}?sentinel_password=", (None, None))):
        target = parse_sentinel_url(resolve_config(own, conf=conf).url)
        assert (target.sentinel_username, target.sentinel_password) == expected
    upper = "sentinel://H1;sentinel://h2:26379/0"  # host names are not case-sensitive; 26379 is the default
    assert parse_sentinel_url(resolve_config(upper, conf=conf).url).sentinel_password == "p;w&=%x"
    for broken in ("sentinel://h:\u00b2", "sentinel://", "redis://h:x"):  # the broker's URL is kombu's to judge
        assert parse_sentinel_url(resolve_config(KOMBU, conf={**conf, "broker_url": broken}).url
                                  ).sentinel_password is None
    # Never sent to Sentinels that are not the broker's, nor read for a redis+sentinel URL.
    elsewhere = "sentinel://h1:26379;sentinel://other:26379/0"
    assert parse_sentinel_url(resolve_config(elsewhere, conf=conf).url).sentinel_password is None
    assert parse_sentinel_url(resolve_config(KOMBU, conf={"broker_transport_options": options}).url
                              ).sentinel_password is None  # no broker URL to compare with
    assert resolve_config("redis+sentinel://h/svc", conf=conf).url == "redis+sentinel://h/svc"
    for bad, said in ((b"x", "must be text, got bytes"), ("\udcff", "must be text, got a string that is not valid")):
        with pytest.raises(ConfigurationError, match=rf"sentinel_kwargs'\]\['password'\] {said}"):
            resolve_config(KOMBU, conf={**conf, "broker_transport_options": {**options,
                                                                              "sentinel_kwargs": {"password": bad}}})


def test_a_master_name_that_disagrees_with_the_url_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="names service 'svc' but the master name setting"):
        resolve_config("redis+sentinel://h/svc", env={"CELERY_REDIS_STATE_MASTER_NAME": "other"})
    with pytest.raises(ConfigurationError, match="names service 'm' but the master name setting"):
        StateDBConfig(url=f"{KOMBU}?master_name=m", master_name="other")
    with pytest.raises(ConfigurationError, match="master_name must be a non-empty string"):
        StateDBConfig(url=KOMBU, master_name=" ")


def test_a_one_server_url_ignores_the_master_name() -> None:
    assert StateDBConfig(url="redis://h/0", master_name="m").url == "redis://h/0"
