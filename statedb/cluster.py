"""Redis Cluster, sans-I/O: how operations are staged on a cluster pipeline, and how a plain
client finds out it was pointed at a cluster node.

The command layer stages the same commands for any server. On a cluster the repositories
stage them through :class:`ClusterStaging`, which works around what redis-py's cluster
pipelines refuse or misroute:

- ``PING``, ``TIME`` and ``INFO`` are refused as pipeline methods: staged as raw commands,
  they go to the client's default node (one node answers for the cluster);
- the sync ``ClusterPipeline.eval`` is broken (it takes no argument): ``EVAL`` is staged as a
  raw command, routed by its key like any other keyed command;
- ``WAIT``/``WAITAOF`` would go to the default node: they go to the primary of the key staged
  just before them, where the pipeline sends them on the connection that carried that write.

Every operation touches one key per command, so a pipeline spanning slots is fine:
redis-py groups its commands by node and follows ``MOVED``/``ASK`` redirections itself.
"""

from __future__ import annotations

from typing import Any

from statedb.commands import LenientOperation, Operation

# Commands a cluster pipeline refuses as methods but sends, as raw commands, to its default node.
KEYLESS = ("PING", "TIME", "INFO")
# Commands that apply to the writes before them on the same connection.
AFTER_WRITE = ("WAIT", "WAITAOF")


class ClusterStaging:
    """Stages on a cluster pipeline of ``client``; see the module's docstring.

    Any other method is the pipeline's own, its first argument taken as the key.
    """

    def __init__(self, pipe: Any, client: Any) -> None:
        self._pipe, self._client = pipe, client
        self._last_key: Any = None

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._pipe, name)

        def stage(*args: Any, **kwargs: Any) -> Any:
            self._last_key = args[0] if args else None
            return method(*args, **kwargs)

        return stage

    def execute_command(self, *args: Any, **options: Any) -> Any:
        name = str(args[0]).upper()
        if name in ("EVAL", "EVALSHA"):
            self._last_key = args[3] if len(args) > 3 and int(args[2]) > 0 else None
        elif name in AFTER_WRITE and "target_nodes" not in options and self._last_key is not None:
            options["target_nodes"] = self._client.get_node_from_key(self._last_key)
        elif name not in KEYLESS and name not in AFTER_WRITE:
            self._last_key = args[1] if len(args) > 1 else None
        return self._pipe.execute_command(*args, **options)

    def ping(self, **_: Any) -> Any:
        return self.execute_command("PING")

    def time(self) -> Any:
        return self.execute_command("TIME")

    def info(self, section: str | None = None, *args: str) -> Any:
        return self.execute_command("INFO", *([] if section is None else [section, *args]))

    def eval(self, script: Any, numkeys: int, *keys_and_args: Any) -> Any:
        return self.execute_command("EVAL", script, numkeys, *keys_and_args)

    def wait(self, num_replicas: int, timeout: int) -> Any:
        return self.execute_command("WAIT", num_replicas, timeout)

    def waitaof(self, num_local: int, num_replicas: int, timeout: int) -> Any:
        return self.execute_command("WAITAOF", num_local, num_replicas, timeout)


def cluster_enabled() -> Operation[bool | None]:
    """Whether the server is a Redis Cluster node (``INFO cluster``); None if INFO is refused (an ACL)."""

    def stage(pipe: Any) -> None:
        pipe.info("cluster")

    def parse(replies: Any) -> bool | None:
        reply = replies[0]
        if isinstance(reply, Exception) or not isinstance(reply, dict):
            return None
        return str(reply.get("cluster_enabled", 0)) == "1"

    return LenientOperation((None,), stage, parse, optional=frozenset({0}))


def standalone_on_cluster_message(target: str) -> str:
    return (f"Redis at {target} is a Redis Cluster node: a redis:// URL sees only the keys of that node "
            f"(and is refused the others with MOVED); use redis+cluster://host:port[,host:port...] "
            f"(or rediss+cluster://) to use the whole cluster")
