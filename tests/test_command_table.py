"""The one table of every command the library sends (``statedb.commands.COMMANDS``), the README's ACL
rules (Security section) checked against it, and the admin APIs' commands recorded as they run."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from statedb import StateAdmin
from statedb.commands import ADMIN, COMMANDS, CONNECTION_COMMANDS, KEY_KINDS, WORKER, commands_of
from tests.acl_rules import ADMIN_USER, DOC_PREFIX, WORKER_USER, readme_rules
from tests.admin_contract import run_contract


def sample_key(kind: str, prefix: str = DOC_PREFIX) -> str:
    return KEY_KINDS[kind].format(prefix=prefix)


@pytest.mark.parametrize(("sender", "user"), [(WORKER, WORKER_USER), (ADMIN, ADMIN_USER)])
def test_the_readme_acl_allows_every_command_of_the_table_on_its_keys(sender: str, user: str) -> None:
    rule = readme_rules()[user]
    for use in (use for use in COMMANDS if use.sender == sender):
        for kind in use.keys or (None,):
            key = None if kind is None else sample_key(kind)
            assert rule.allows(use.command, key), f"{user} cannot {use.command} {key} ({use.why})"


@pytest.mark.parametrize(("sender", "user"), [(WORKER, WORKER_USER), (ADMIN, ADMIN_USER)])
def test_the_readme_acl_allows_nothing_the_table_does_not_send(sender: str, user: str) -> None:
    extra = readme_rules()[user].commands - set(commands_of(sender)) - set(CONNECTION_COMMANDS)
    assert not extra, f"the README lets {user} send {sorted(extra)}, which the library never sends"


def test_the_worker_acl_cannot_change_a_key_type() -> None:
    """String and hash commands reach only their own kinds of key (the strings: clocks, the fleet snapshot and
    its lock), sorted-set commands only sets."""
    rule = readme_rules()[WORKER_USER]
    for command, kinds in (("set", {"clock", "fleet-snapshot", "fleet-snapshot-lock"}), ("hset", {"info"}),
                           ("zadd", {"revoked", "stamps", "fleet-revoked",
                                                                             "fleet-stamps"})):
        allowed = {kind for kind in KEY_KINDS if rule.allows(command, sample_key(kind))}
        assert allowed == kinds, (command, allowed)


def _acl_name(command: Any) -> str:
    name = (command.decode() if isinstance(command, bytes) else str(command)).lower()
    return name.replace(" ", "|")


def _kind(key: Any, prefix: str) -> str | None:
    text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
    for kind in ("fleet-revoked", "fleet-stamps", "fleet-snapshot", "fleet-snapshot-lock"):
        if text == sample_key(kind, prefix):
            return kind
    suffix = text.rpartition(":")[2]
    return {"revoked": "revoked", "clock": "clock", "info": "info", "stamps": "stamps",
            "zrevoked": "legacy-blob"}.get(suffix, f"? {text}")


class RecordingRedis(aioredis.Redis):
    """A client that records (command, key) of everything its pipelines send."""

    sent: list[tuple[str, Any]]

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute, sent = pipe.execute, self.sent

        async def recorded(raise_on_error: bool = True) -> Any:
            for args, _ in pipe.command_stack:
                sent.append((_acl_name(args[0]), args[1] if len(args) > 1 else None))
            return await execute(raise_on_error=raise_on_error)

        pipe.execute = recorded  # type: ignore[method-assign]
        return pipe


async def test_every_command_the_admin_api_sends_is_in_the_table(redis_url: str, key_prefix: str,
                                                                 redis_client: redis.Redis) -> None:
    client = RecordingRedis.from_url(redis_url)
    client.sent = []
    try:
        await run_contract(StateAdmin(client, key_prefix=key_prefix), redis_client)
    finally:
        await client.aclose()
    table = commands_of(ADMIN)
    keyless = {use.command for use in COMMANDS if use.sender == ADMIN and not use.keys}
    seen = set()
    for command, key in client.sent:
        kind = None if command in keyless else _kind(key, key_prefix)
        assert command in table and (kind is None or kind in table[command]), f"{command} {key!r} not in the table"
        seen.add(command)
    # the contract exercises every admin command but the migrations' own and check's PING (their tests run them)
    assert set(table) - seen <= {"eval", "type", "zmscore", "ping"}
