"""Least-privilege ACL users for the tests: the rules the README documents, and the server's ACL log."""

from __future__ import annotations

from typing import Any

import redis

# What a worker sends: PING, ZADD, ZREVRANGEBYSCORE, ZREVRANGE, ZCARD, ZCOUNT, ZMSCORE on the sorted
# sets; GET and EVAL (whose script calls GET and SET) on clock keys only; TIME and INFO (keyless: the
# server's clock and eviction policy); plus HELLO (redis-py >= 6 speaks RESP3), SELECT (db other than
# 0) and CLIENT SETINFO (redis-py >= 5 on Redis >= 7.2 or Valkey: refused harmlessly, but it fills the
# ACL log).
WORKER_COMMANDS = "+ping +hello +select +zadd +zrevrangebyscore +zrevrange +zcard +zcount +zmscore +time +info"
CLOCK_COMMANDS = "+get +set +eval"
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


def worker_acl_rule(prefix: str, client: redis.Redis, clock_commands: str = CLOCK_COMMANDS) -> list[str]:
    """The README's worker rule: the sorted-set commands on the sorted sets only, and a selector for the
    clock keys (GET, SET, EVAL), so a worker credential cannot change any key's type."""
    keys = [f"~{prefix}*:revoked", f"~{prefix}*:stamps", f"~{prefix}shared:fleet-revoked",
            f"~{prefix}shared:fleet-stamps"]
    return ["on", f">{ACL_PASSWORD}", "resetkeys", *keys, "resetchannels", "-@all", *WORKER_COMMANDS.split(),
            *_optional(client), f"(~{prefix}*:clock {clock_commands})"]


def acl_log(client: redis.Redis) -> list[str]:
    entries: list[dict[str, Any]] = client.acl_log()
    return [f"{e.get('reason')} {e.get('object')} {e.get('username')}" for e in entries]
