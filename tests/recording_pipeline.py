"""A stand-in for a redis pipeline that records what the sans-I/O layer stages on it (no server)."""

from __future__ import annotations

from typing import Any

from statedb import commands


class RecordingPipeline:
    """Stands in for a pipeline: remembers each staged call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def stage(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, args, kwargs))

        return stage


def staged(operation: commands.Operation[Any]) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    """The (method, args, kwargs) calls ``operation`` stages: one per key it declares."""
    pipe = RecordingPipeline()
    operation.stage(pipe)  # type: ignore[arg-type]
    assert len(pipe.calls) == len(operation.keys)
    return pipe.calls
