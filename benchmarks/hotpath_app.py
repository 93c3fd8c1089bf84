"""The Celery app run by ``bench_hotpath.py`` in a real ``celery worker -P solo`` subprocess.

Configured from the environment (``HOTPATH_BROKER``, ``HOTPATH_PREFIX``, ``HOTPATH_EXPECT``,
``HOTPATH_RESULT_KEY``). The worker times itself from the first task received (``task_received``,
in the consumer) to the ``HOTPATH_EXPECT``-th task done (``task_postrun``) with in-process counters,
and writes the result (wall and CPU seconds of the window) once, to ``HOTPATH_RESULT_KEY``: no
Redis call per task of its own.
Not a benchmark itself (no ``bench_`` prefix).
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery, signals

BROKER = os.environ["HOTPATH_BROKER"]
PREFIX = os.environ["HOTPATH_PREFIX"]
EXPECT = int(os.environ["HOTPATH_EXPECT"])
RESULT_KEY = os.environ["HOTPATH_RESULT_KEY"]

app = Celery("hotpath_app", broker=BROKER, set_as_current=True)
app.conf.update(
    broker_transport_options={"global_keyprefix": f"{PREFIX}broker:"},
    broker_connection_retry_on_startup=True,
    redis_state_key_prefix=f"{PREFIX}state:",
    task_ignore_result=True,
    worker_hijack_root_logger=True,
)

_state = {"first": 0.0, "cpu": 0.0, "done": 0}


@app.task(name="hotpath.noop", ignore_result=True)
def noop() -> None:
    return None


@signals.task_received.connect
def _received(**_: object) -> None:
    if not _state["first"]:
        _state["first"], _state["cpu"] = time.perf_counter(), time.process_time()


@signals.task_postrun.connect
def _done(**_: object) -> None:
    _state["done"] += 1
    if _state["done"] == EXPECT:
        elapsed, cpu = time.perf_counter() - _state["first"], time.process_time() - _state["cpu"]
        client = redis.Redis.from_url(BROKER)
        client.set(RESULT_KEY, json.dumps({"tasks": EXPECT, "seconds": elapsed, "cpu_seconds": cpu}))
        client.close()
