"""A stream of revoke commands sent to a real worker as fast as it answers, counting what was acknowledged:
the fault scenarios (test_faults, test_e2e_sentinel) check that none of those is ever lost."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from tests.workers import WorkerHarness, WorkerProcess, new_task_id, wait_until


def assert_clean(worker: WorkerProcess) -> None:
    log = worker.all_logs()
    assert "Traceback" not in log, log[-5000:]


@dataclass
class RevokeStream:
    """A thread sending revoke commands to one worker as fast as it answers; counts sent and acked ids."""

    harness: WorkerHarness
    worker: WorkerProcess
    batch: int = 3
    reply_timeout: float = 1.0
    sent: int = 0
    acked: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        app = self.harness.new_control_app()
        try:
            while not self._stop.is_set():
                ids = [new_task_id() for _ in range(self.batch)]
                self.sent += len(ids)
                started = time.monotonic()
                if self.harness.try_revoke(self.worker, ids, timeout=self.reply_timeout, app=app):
                    self.latencies.append(time.monotonic() - started)
                    self.acked.extend(ids)
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)
        finally:
            app.close()

    def start(self) -> RevokeStream:
        self._thread = threading.Thread(target=self._run, name="revoke-stream", daemon=True)
        self._thread.start()
        return self

    def wait_acked(self, count: int, timeout: float = 15.0) -> None:
        """Wait until ``count`` ids in total have been acknowledged."""
        try:
            wait_until(lambda: len(self.acked) >= count or None, timeout, f"{count} acknowledged revokes",
                       interval=0.02)
        except TimeoutError as exc:
            raise AssertionError(f"{exc} (got {len(self.acked)}); worker log:\n{self.worker.log()[-5000:]}") from None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
            assert not self._thread.is_alive(), "the revoke stream did not stop"
        assert not self.errors, self.errors
