"""Least-privilege ACL users for the tests: the README's rules (Security section, parsed by
:mod:`tests.acl_rules`) applied to a test's own key prefix, and the server's ACL log."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis

from celery_redis_statedb.local_servers import PrivateServer
from tests.acl_rules import ADMIN_USER, WORKER_USER, readme_rules

# Added to the README's rules where a test needs them: SELECT (a database other than 0) and CLIENT
# SETINFO (redis-py >= 5 on Redis >= 7.2 or Valkey: refused harmlessly, but it fills the ACL log).
OPTIONAL_COMMANDS = "+client|setinfo"
ACL_PASSWORD = "acl-pw-1"


def _optional(client: redis.Redis) -> list[str]:
    try:
        client.execute_command("ACL", "DRYRUN", "default", "CLIENT", "SETINFO", "LIB-NAME", "x")
        return [OPTIONAL_COMMANDS]
    except redis.exceptions.ResponseError:
        return []  # Redis < 7.2: no CLIENT SETINFO (nor ACL DRYRUN)


def acl_rule(prefix: str, commands: str, client: redis.Redis) -> list[str]:
    """``ACL SETUSER`` arguments for a user limited to ``prefix`` with ``commands`` (not a README rule)."""
    return ["on", f">{ACL_PASSWORD}", "resetkeys", f"~{prefix}*", "resetchannels", "-@all", *commands.split(),
            *_optional(client)]


def admin_acl_rule(prefix: str, client: redis.Redis) -> list[str]:
    """The README's admin rule for ``prefix``; CLIENT SETINFO where the server knows it."""
    return readme_rules()[ADMIN_USER].setuser_args(prefix, ACL_PASSWORD, "+select", *_optional(client))


def worker_acl_rule(prefix: str, client: redis.Redis, clock_commands: str | None = None,
                    info_commands: str | None = "+hset") -> list[str]:
    """The README's worker rule for ``prefix``: the sorted-set commands on the sorted sets only, and
    selectors for the clock keys (GET, SET, EVAL; ``clock_commands`` instead if given) and the info
    hashes (HSET; ``info_commands=None``: a rule written before the info hash, without that selector)."""
    args = readme_rules()[WORKER_USER].setuser_args(prefix, ACL_PASSWORD, "+select", *_optional(client))
    clock, info = f"(~{prefix}*:clock ", f"(~{prefix}*:info "
    if clock_commands is not None:
        args = [f"{clock}{clock_commands})" if arg.startswith(clock) else arg for arg in args]
    if info_commands is None:
        args = [arg for arg in args if not arg.startswith(info)]
    elif info_commands != "+hset":
        args = [f"{info}{info_commands})" if arg.startswith(info) else arg for arg in args]
    return args


def acl_log(client: redis.Redis) -> list[str]:
    entries: list[dict[str, Any]] = client.acl_log()
    return [f"{e.get('reason')} {e.get('object')} {e.get('username')}" for e in entries]


@contextlib.contextmanager
def worker_acl_server(prefix: str, **rule: Any) -> Iterator[tuple[PrivateServer, redis.Redis, str]]:
    """A private server whose user ``statedb`` has the worker rule for ``prefix`` (``rule``: the
    arguments of :func:`worker_acl_rule`), its ACL log empty; yields it, an admin client, the user's URL."""
    server = PrivateServer().start()
    admin = server.client()
    try:
        admin.execute_command("ACL", "SETUSER", "statedb", *worker_acl_rule(prefix, admin, **rule))
        admin.execute_command("ACL", "LOG", "RESET")
        yield server, admin, f"redis://statedb:{ACL_PASSWORD}@127.0.0.1:{server.port}/0"
    finally:
        admin.close()
        server.close()
