"""``celery -A <app> statedb ...`` through click's runner, for the CLI tests (one app module per test).

The test process's ``CELERY_*`` and ``REDIS_STATEDB_*`` variables are dropped for the test: only what
a test sets (e.g. ``REDIS_STATEDB_URL``) reaches the CLI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from celery.bin.celery import celery
from click.testing import CliRunner, Result

from tests.workers import DROPPED_ENV_PREFIXES

APP_ENV = "CLI_TEST_APP"


def cli_app(tmp_path: Path, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch,
            **conf: object) -> CliRunner:
    """Write an app module whose statedb keys and broker keys live under ``key_prefix`` (and ``conf``);
    a runner for it."""
    module = f"cliapp_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(
        "from celery import Celery\n"
        f"app = Celery('cliapp', broker={redis_url!r}, set_as_current=False)\n"
        f"app.conf.redis_state_key_prefix = {key_prefix!r}\n"
        "app.conf.broker_transport_options = {'global_keyprefix': "
        f"{key_prefix + 'broker:'!r}}}\n"
        + "".join(f"app.conf.{name} = {value!r}\n" for name, value in conf.items())
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [name for name in os.environ if name.startswith(DROPPED_ENV_PREFIXES)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(APP_ENV, module)
    return CliRunner()


def run_cli(cli: CliRunner, redis_url: str | None, *args: str, input: str | None = None) -> Result:
    """``statedb --url redis_url args...``; without a URL the CLI finds one as it does for users (env, app)."""
    url = ["--url", redis_url] if redis_url is not None else []
    return cli.invoke(celery, ["-A", os.environ[APP_ENV], "statedb", *url, *args], input=input,
                      catch_exceptions=False)
