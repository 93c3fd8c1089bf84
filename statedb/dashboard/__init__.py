"""An embeddable admin dashboard: a FastAPI router with its own page (``pip install
'celery-redis-statedb[dashboard]'``). See :func:`make_router`; ``celery_redis_statedb.dashboard``
wires it to a Celery app (its URL, prefix and scope, and its live workers)."""

try:
    import fastapi  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("the statedb dashboard needs FastAPI: pip install 'celery-redis-statedb[dashboard]'") from exc

from statedb.dashboard.router import LiveWorkers, make_router

__all__ = ["LiveWorkers", "make_router"]
