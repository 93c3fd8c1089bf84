"""Least-privilege ACL users for the tests: the rules the README documents, and the server's ACL log."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis

from celery_redis_statedb.local_servers import PrivateServer

# What a worker sends: PING, ZADD, ZREVRANGEBYSCORE, ZREVRANGE, ZCARD, ZCOUNT, ZMSCORE on the sorted
# sets; GET and EVAL (whose script calls GET and SET) on clock keys only; HSET on its info hash only
# (last seen, with each clock save); TIME and INFO (keyless: the server's clock and eviction policy);
# plus HELLO (redis-py >= 6 speaks RESP3), SELECT (db other than 0) and CLIENT SETINFO (redis-py >= 5
# on Redis >= 7.2 or Valkey: refused harmlessly, but it fills the ACL log).
WORKER_COMMANDS = "+ping +hello +select +zadd +zrevrangebyscore +zrevrange +zcard +zcount +zmscore +time +info"
CLOCK_COMMANDS = "+get +set +eval"
INFO_COMMANDS = "+hset"
OPTIONAL_COMMANDS = "+client|setinfo"
# The admin CLI and APIs add reads, purges and restores over every set of the prefix.
ADMIN_COMMANDS = WORKER_COMMANDS + " +get +set +eval +scan +type +zrange +zscore +zrem +zremrangebyscore" \
                                  " +memory|usage"
ACL_PASSWORD = "acl-pw-1"


def _optional(client: redis.Redis) -> list[str]:
    try:
        client.execute_command("ACL", "DRYRUN", "default", "CLIENT", "SETINFO", "LIB-NAME", "x")
        return [OPTIONAL_COMMANDS]
    except redis.exceptions.ResponseError:
        return []  # Redis < 7.2: no CLIENT SETINFO (nor ACL DRYRUN)


def acl_rule(prefix: str, commands: str, client: redis.Redis) -> list[str]:
    """``ACL SETUSER`` arguments for a user limited to ``prefix``; CLIENT SETINFO where the server knows it."""
    return ["on", f">{ACL_PASSWORD}", "resetkeys", f"~{prefix}*", "resetchannels", "-@all", *commands.split(),
            *_optional(client)]


def worker_acl_rule(prefix: str, client: redis.Redis, clock_commands: str = CLOCK_COMMANDS,
                    info_commands: str | None = INFO_COMMANDS) -> list[str]:
    """The README's worker rule: the sorted-set commands on the sorted sets only, and selectors for the
    clock keys (GET, SET, EVAL) and the info hashes (HSET), so a worker credential cannot change any key's
    type. ``info_commands=None``: a rule written before the info hash (no selector for it)."""
    keys = [f"~{prefix}*:revoked", f"~{prefix}*:stamps", f"~{prefix}shared:fleet-revoked",
            f"~{prefix}shared:fleet-stamps"]
    info = [] if info_commands is None else [f"(~{prefix}*:info {info_commands})"]
    return ["on", f">{ACL_PASSWORD}", "resetkeys", *keys, "resetchannels", "-@all", *WORKER_COMMANDS.split(),
            *_optional(client), f"(~{prefix}*:clock {clock_commands})", *info]


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
